//! Admission: before any container of a job is created, each image it runs
//! (the job's and every service's, pulled, so their digests are known) is put to
//! the pool's webhook, which answers whether it may run. A denial ends the job
//! `rejected`; a webhook that fails ends the attempt `error` or, with
//! `fail = "open"`, lets it run unchecked.
//!
//! The answer is someone else's to shape, so the exchange is bounded: no
//! redirect is followed, the whole of it keeps `admission.timeout_ms`, and no
//! more than [`MAX_ANSWER_BYTES`] of the body is read.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::{AdmissionConfig, AdmissionFail, AdmissionRule, Config};
use crate::host::secrets::Secrets;
use crate::job::spec::MAX_REASON_BYTES;

/// The most of the webhook's answer read: `{"allowed": …, "reason": …}` fits in
/// far less, and a reason is cut to 1 KiB anyway.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Decisions kept at most: past it, expired ones go, then new ones are not kept.
const CACHE_ENTRIES: usize = 4096;

/// What the webhook is asked about one image.
#[derive(Debug, Serialize)]
pub struct Ask<'a> {
    /// The reference as the job wrote it.
    pub image: &'a str,
    /// What the registry resolved it to (`sha256:…`), or the image id when it
    /// gave no digest.
    pub digest: &'a str,
    pub job_id: &'a str,
    pub profile: &'a str,
    pub kind: Kind,
    /// The service's name; `null` for the job's own image.
    pub name: Option<&'a str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Job,
    Service,
}

/// The webhook's answer; other fields are ignored.
#[derive(Debug, Deserialize)]
struct Answer {
    allowed: bool,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allowed,
    Denied,
    /// The webhook failed and `fail = "open"` let the image run.
    Unchecked,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Denied => "denied",
            Decision::Unchecked => "unchecked",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum By {
    Webhook,
    Cache,
}

impl By {
    pub fn as_str(self) -> &'static str {
        match self {
            By::Webhook => "webhook",
            By::Cache => "cache",
        }
    }
}

/// One image's check, as the result records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checked {
    pub decision: Decision,
    pub by: By,
    /// The webhook's reason (bounded and escaped), or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Time spent on it; 0 from the cache.
    pub ms: u64,
}

/// The result's `admission`: the job image's check, and each service's by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Admitted {
    #[serde(flatten)]
    pub job: Checked,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, Checked>,
}

/// Why the webhook gave no decision.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// `cause`: reqwest's error and its sources, where "connection refused" is.
    #[error("POST {url}: {cause}")]
    Send { url: String, cause: String },
    #[error("POST {url}: answered {status}, not 2xx (redirects are not followed)")]
    Status { url: String, status: u16 },
    #[error("POST {url}: no whole answer within admission.timeout_ms = {ms}")]
    Timeout { url: String, ms: u128 },
    #[error("read the answer of {url}: {cause}")]
    Read { url: String, cause: String },
    #[error("read the answer of {url}: over {MAX_ANSWER_BYTES} bytes; not reading more")]
    TooLarge { url: String },
    #[error("read the answer of {url}: not {{\"allowed\": bool, \"reason\": string}}: {source}")]
    Shape {
        url: String,
        source: serde_json::Error,
    },
}

/// Why an image may not run.
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    /// The webhook said no: the job's to fix, never retried.
    #[error("admission: webhook: {0}")]
    Denied(String),
    /// The webhook failed and `fail = "closed"`: the host's trouble, retried.
    #[error("admission: the webhook failed (admission.fail = \"closed\"): {0}")]
    Failed(#[source] WebhookError),
}

impl AdmissionError {
    /// Whether the job itself is refused (`rejected`), not the attempt.
    pub fn is_denial(&self) -> bool {
        matches!(self, AdmissionError::Denied(_))
    }
}

/// One image's check: its record, and what stops the job, if anything.
pub struct Verdict {
    pub checked: Checked,
    pub refusal: Option<AdmissionError>,
}

/// The admission token named a secret the bundle lacks.
#[derive(Debug, thiserror::Error)]
#[error("admission.token_secret: names secret {name:?}, which is not in the bundle")]
pub struct MissingToken {
    pub name: String,
}

/// (digest, profile): a decision is the image's, as the profile's webhook saw it.
type CacheKey = (String, String);
/// When it expires, whether allowed, the webhook's reason.
type Cached = (Instant, bool, Option<String>);

/// The pool's webhook client and its cache of decisions; shared by every job.
pub struct Admission {
    client: reqwest::Client,
    timeout: Duration,
    cache_for: Duration,
    token: Option<String>,
    cache: Mutex<HashMap<CacheKey, Cached>>,
}

impl Admission {
    /// The pool's admission, when it or any profile names a webhook; the token
    /// from `secrets`.
    pub fn for_pool(config: &Config, secrets: &Secrets) -> Result<Option<Admission>, MissingToken> {
        let any = config.admission.webhook_url.is_some()
            || config.profiles.values().any(|p| {
                p.admission_webhook_url
                    .as_ref()
                    .is_some_and(|u| !u.is_empty())
            });
        if !any {
            return Ok(None);
        }
        let token = match &config.admission.token_secret {
            Some(name) => match secrets.get(name) {
                Some(value) => Some(value.expose().to_owned()),
                None => return Err(MissingToken { name: name.clone() }),
            },
            None => None,
        };
        Ok(Some(Admission::new(&config.admission, token)))
    }

    pub fn new(config: &AdmissionConfig, token: Option<String>) -> Admission {
        Admission {
            client: reqwest::Client::builder()
                // A redirect would take the question, and the token, elsewhere.
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("a reqwest client with rustls builds"),
            timeout: config.timeout,
            cache_for: config.cache,
            token,
            cache: Mutex::default(),
        }
    }

    /// Asks about one image, from the cache when a decision for its digest and
    /// profile is fresh.
    pub async fn check(&self, rule: AdmissionRule<'_>, ask: &Ask<'_>) -> Verdict {
        let key = (ask.digest.to_owned(), ask.profile.to_owned());
        if let Some((allowed, reason)) = self.cached(&key) {
            return verdict(allowed, By::Cache, reason, 0, ask);
        }
        let started = Instant::now();
        let asked = tokio::time::timeout(self.timeout, self.ask(rule.webhook_url, ask))
            .await
            .unwrap_or_else(|_| {
                Err(WebhookError::Timeout {
                    url: rule.webhook_url.to_owned(),
                    ms: self.timeout.as_millis(),
                })
            });
        let ms = started.elapsed().as_millis() as u64;
        match asked {
            Ok(answer) => {
                let reason = answer
                    .reason
                    .filter(|r| !r.is_empty())
                    .map(|r| crate::rules::bounded_text(&r, MAX_REASON_BYTES));
                self.remember(key, answer.allowed, reason.clone());
                verdict(answer.allowed, By::Webhook, reason, ms, ask)
            }
            Err(error) => failed(rule.fail, error, ms),
        }
    }

    /// One POST, its answer read in chunks up to the cap.
    async fn ask(&self, url: &str, ask: &Ask<'_>) -> Result<Answer, WebhookError> {
        let body = serde_json::to_vec(ask).expect("an Ask serializes");
        let mut request = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let send = |error| WebhookError::Send {
            url: url.to_owned(),
            cause: causes(error),
        };
        let mut response = request.send().await.map_err(send)?;
        if !response.status().is_success() {
            return Err(WebhookError::Status {
                url: url.to_owned(),
                status: response.status().as_u16(),
            });
        }
        let too_large = || WebhookError::TooLarge {
            url: url.to_owned(),
        };
        if response
            .content_length()
            .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|error| WebhookError::Read {
            url: url.to_owned(),
            cause: causes(error),
        })? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|source| WebhookError::Shape {
            url: url.to_owned(),
            source,
        })
    }

    fn cached(&self, key: &CacheKey) -> Option<(bool, Option<String>)> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        match cache.get(key) {
            Some((expires, allowed, reason)) if Instant::now() < *expires => {
                Some((*allowed, reason.clone()))
            }
            _ => None,
        }
    }

    fn remember(&self, key: CacheKey, allowed: bool, reason: Option<String>) {
        if self.cache_for.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, (expires, ..)| now < *expires);
        }
        if cache.len() < CACHE_ENTRIES {
            cache.insert(key, (now + self.cache_for, allowed, reason));
        }
    }
}

/// `error` and each of its sources, without the URL reqwest repeats: its own
/// text alone says only "error sending request".
fn causes(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The webhook's decision on `ask`, logged.
fn verdict(allowed: bool, by: By, reason: Option<String>, ms: u64, ask: &Ask<'_>) -> Verdict {
    let kind = match ask.kind {
        Kind::Job => "job",
        Kind::Service => "service",
    };
    let (decision, refusal) = if allowed {
        tracing::info!(
            kind,
            service = ask.name,
            digest = ask.digest,
            by = by.as_str(),
            ms,
            "Image admitted."
        );
        (Decision::Allowed, None)
    } else {
        tracing::warn!(
            kind,
            service = ask.name,
            digest = ask.digest,
            by = by.as_str(),
            reason,
            "Admission webhook denied the image."
        );
        let why = reason.as_deref().unwrap_or("denied (no reason given)");
        let why = match ask.name {
            Some(name) => format!("service {name}: {why}"),
            None => why.to_owned(),
        };
        (Decision::Denied, Some(AdmissionError::Denied(why)))
    };
    Verdict {
        checked: Checked {
            decision,
            by,
            reason,
            ms,
        },
        refusal,
    }
}

/// The webhook failed: the attempt ends, or with `fail = "open"` the image runs.
fn failed(fail: AdmissionFail, error: WebhookError, ms: u64) -> Verdict {
    let reason = Some(crate::rules::bounded_text(
        &error.to_string(),
        MAX_REASON_BYTES,
    ));
    let checked = Checked {
        decision: Decision::Unchecked,
        by: By::Webhook,
        reason,
        ms,
    };
    match fail {
        AdmissionFail::Open => {
            tracing::warn!(%error, "Admission webhook failed; running the job unchecked.");
            Verdict {
                checked,
                refusal: None,
            }
        }
        AdmissionFail::Closed => {
            tracing::warn!(%error, "Admission webhook failed; not running the job (admission.fail = \"closed\").");
            Verdict {
                checked,
                refusal: Some(AdmissionError::Failed(error)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(digest: &str) -> CacheKey {
        (digest.to_owned(), "default".to_owned())
    }

    fn with_cache(secs: u64) -> Admission {
        let config = AdmissionConfig {
            cache: Duration::from_secs(secs),
            ..AdmissionConfig::default()
        };
        Admission::new(&config, None)
    }

    #[tokio::test(start_paused = true)]
    async fn a_decision_is_kept_for_cache_secs_then_asked_again() {
        let admission = with_cache(300);
        admission.remember(key("sha256:a"), false, Some("critical".into()));
        let kept = Some((false, Some("critical".to_owned())));
        assert_eq!(admission.cached(&key("sha256:a")), kept);
        assert_eq!(admission.cached(&key("sha256:b")), None);
        tokio::time::advance(Duration::from_secs(299)).await;
        assert!(admission.cached(&key("sha256:a")).is_some());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(admission.cached(&key("sha256:a")), None);
    }

    #[tokio::test(start_paused = true)]
    async fn no_cache_keeps_nothing_and_a_full_one_makes_room_only_from_the_expired() {
        let none = with_cache(0);
        none.remember(key("sha256:a"), true, None);
        assert_eq!(none.cached(&key("sha256:a")), None);
        let admission = with_cache(60);
        for i in 0..CACHE_ENTRIES {
            admission.remember(key(&format!("sha256:{i}")), true, None);
        }
        admission.remember(key("sha256:over"), true, None);
        assert_eq!(
            admission.cached(&key("sha256:over")),
            None,
            "full: not kept"
        );
        tokio::time::advance(Duration::from_secs(61)).await;
        admission.remember(key("sha256:later"), true, None);
        assert!(admission.cached(&key("sha256:later")).is_some());
        let len = admission.cache.lock().unwrap().len();
        assert_eq!(len, 1, "the expired went to make room");
    }

    #[test]
    fn the_question_is_the_documented_json() {
        let ask = Ask {
            image: "r.internal/ci/rust:1.83",
            digest: "sha256:ab",
            job_id: "build-1",
            profile: "default",
            kind: Kind::Service,
            name: Some("db"),
        };
        let json = serde_json::to_value(&ask).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"image": "r.internal/ci/rust:1.83", "digest": "sha256:ab",
                "job_id": "build-1", "profile": "default", "kind": "service", "name": "db"})
        );
    }
}
