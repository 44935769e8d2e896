//! Admission: before any container of a job is created, each image it runs
//! (the job's and every service's, pulled, so their digests are known) is put to
//! ECR's scan findings (`ecr.rs`, for images in ECR) and then to the pool's
//! webhook, which answers whether it may run; both must allow it. A denial ends
//! the job `rejected`; a webhook (or ECR) that fails ends the attempt `error` or,
//! with `fail = "open"`, lets it run unchecked.
//!
//! The answer is someone else's to shape, so the exchange is bounded: no
//! redirect is followed, the whole of it keeps `admission.timeout_ms`, and no
//! more than [`MAX_ANSWER_BYTES`] of the body is read.

mod cache;
mod ecr;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::{AdmissionConfig, AdmissionFail, AdmissionRule, Config};
use crate::host::secrets::Secrets;
use crate::image::ImageRef;
use crate::job::spec::MAX_REASON_BYTES;
use cache::Decisions;
pub use ecr::{EcrFailure, EcrScans};

/// The most of the webhook's answer read: `{"allowed": …, "reason": …}` fits in
/// far less, and a reason is cut to 1 KiB anyway.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

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
    /// An image the job's `image_build` made and pushed; `name` is its tag.
    Build,
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

/// Who decided: the webhook or ECR's findings, or a decision of either reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum By {
    Webhook,
    /// The webhook's decision, from the cache.
    Cache,
    Ecr,
    /// ECR's decision, from the cache.
    EcrCache,
}

impl By {
    pub fn as_str(self) -> &'static str {
        match self {
            By::Webhook => "webhook",
            By::Cache => "cache",
            By::Ecr => "ecr",
            By::EcrCache => "ecr_cache",
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
    /// The checks that let the image through before this one (ECR's, when the
    /// webhook was asked after it), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub before: Vec<Checked>,
}

impl Checked {
    /// This check and those before it.
    pub fn all(&self) -> impl Iterator<Item = &Checked> {
        self.before.iter().chain(std::iter::once(self))
    }

    /// Applies `change` to this check's reason and to those before it.
    pub fn each_reason(&mut self, change: &mut impl FnMut(&mut String)) {
        for earlier in &mut self.before {
            earlier.each_reason(change);
        }
        if let Some(reason) = &mut self.reason {
            change(reason);
        }
    }
}

/// The result's `admission`: the job image's check, and each service's by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Admitted {
    #[serde(flatten)]
    pub job: Checked,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, Checked>,
    /// Each image its `image_build` pushed, by tag.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub images: BTreeMap<String, Checked>,
}

impl Admitted {
    /// Every check of every image: the job's, then each service's, then each
    /// built one's.
    pub fn checks(&self) -> impl Iterator<Item = &Checked> {
        let images = std::iter::once(&self.job)
            .chain(self.services.values())
            .chain(self.images.values());
        images.flat_map(Checked::all)
    }
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
    /// ECR's findings (or its lack of a scan) said no.
    #[error("admission: ecr: {0}")]
    EcrDenied(String),
    /// ECR gave no answer and `fail = "closed"`.
    #[error("admission: ECR failed (admission.fail = \"closed\"): {0}")]
    EcrFailed(#[source] EcrFailure),
}

impl AdmissionError {
    /// Whether the job itself is refused (`rejected`), not the attempt.
    pub fn is_denial(&self) -> bool {
        matches!(
            self,
            AdmissionError::Denied(_) | AdmissionError::EcrDenied(_)
        )
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

/// The pool's webhook client, its ECR client, and their caches of decisions;
/// shared by every job.
pub struct Admission {
    client: reqwest::Client,
    timeout: Duration,
    token: Option<String>,
    decisions: Decisions,
    /// When any profile's jobs go through ECR's check.
    ecr: Option<EcrScans>,
}

impl Admission {
    /// The pool's admission, when it or any profile names a webhook or ECR's
    /// check; the token from `secrets`, ECR's client from `sdk` (asked for only
    /// then).
    pub async fn for_pool<F>(
        config: &Config,
        secrets: &Secrets,
        sdk: impl FnOnce() -> F,
    ) -> Result<Option<Admission>, MissingToken>
    where
        F: Future<Output = aws_config::SdkConfig>,
    {
        let webhook = config.admission.webhook_url.is_some()
            || config.profiles.values().any(|p| {
                p.admission_webhook_url
                    .as_ref()
                    .is_some_and(|u| !u.is_empty())
            });
        let ecr = config.admission_uses_ecr();
        if !webhook && !ecr {
            return Ok(None);
        }
        let token = match &config.admission.token_secret {
            Some(name) => match secrets.get(name) {
                Some(value) => Some(value.expose().to_owned()),
                None => return Err(MissingToken { name: name.clone() }),
            },
            None => None,
        };
        let mut admission = Admission::new(&config.admission, token);
        if ecr {
            let client = crate::aws::ecr_client(&sdk().await);
            admission.ecr = Some(EcrScans::new(client, &config.admission));
        }
        Ok(Some(admission))
    }

    /// The webhook's side only: [`Admission::for_pool`] adds ECR's client
    /// wherever a profile names ECR's check, which `admit` relies on.
    fn new(config: &AdmissionConfig, token: Option<String>) -> Admission {
        Admission {
            client: crate::tls::reqwest_builder()
                // A redirect would take the question, and the token, elsewhere.
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("a reqwest client with rustls builds"),
            timeout: config.timeout,
            token,
            decisions: Decisions::new(config.cache),
            ecr: None,
        }
    }

    /// Puts one image to every check its profile's `rule` names: ECR's findings
    /// first (the registry's own record of the image; a denial there spares the
    /// webhook the question), then the webhook. Both must allow it; the first
    /// refusal ends it. The record is the last check made, with those that
    /// allowed it before. `registry_digest`: the digest the registry gave, if
    /// it gave one (ECR knows the image by it).
    pub async fn admit(
        &self,
        rule: AdmissionRule<'_>,
        ask: &Ask<'_>,
        image: &ImageRef,
        registry_digest: Option<&str>,
    ) -> Verdict {
        let mut before = Vec::new();
        if let (Some(ecr_rule), Some(ecr)) = (rule.ecr, &self.ecr) {
            let verdict = ecr
                .check(ecr_rule, rule.fail, ask, image, registry_digest)
                .await;
            if verdict.refusal.is_some() || rule.webhook_url.is_none() {
                return verdict;
            }
            before.push(verdict.checked);
        }
        let Some(url) = rule.webhook_url else {
            unreachable!("a rule names ECR's check or a webhook, and ECR's is built when named")
        };
        let mut verdict = self.check(url, rule.fail, ask).await;
        verdict.checked.before = before;
        verdict
    }

    /// Asks the webhook at `url` about one image, from the cache when a
    /// decision for its digest and profile is fresh.
    pub async fn check(&self, url: &str, fail: AdmissionFail, ask: &Ask<'_>) -> Verdict {
        if let Some((allowed, reason)) = self.decisions.get(ask.digest, ask.profile) {
            return verdict(allowed, By::Cache, reason, 0, ask);
        }
        let started = Instant::now();
        let asked = tokio::time::timeout(self.timeout, self.ask(url, ask))
            .await
            .unwrap_or_else(|_| {
                Err(WebhookError::Timeout {
                    url: url.to_owned(),
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
                let allowed = answer.allowed;
                self.decisions
                    .put(ask.digest, ask.profile, allowed, reason.clone());
                verdict(allowed, By::Webhook, reason, ms, ask)
            }
            Err(error) => failed(fail, AdmissionError::Failed(error), ms),
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

/// The decision of the webhook or of ECR's findings (`by`) on `ask`, logged.
pub(super) fn verdict(
    allowed: bool,
    by: By,
    reason: Option<String>,
    ms: u64,
    ask: &Ask<'_>,
) -> Verdict {
    let kind = match ask.kind {
        Kind::Job => "job",
        Kind::Service => "service",
        Kind::Build => "build",
    };
    let ecr = matches!(by, By::Ecr | By::EcrCache);
    let (decision, refusal) = if allowed {
        tracing::info!(
            kind,
            service = ask.name,
            digest = ask.digest,
            by = by.as_str(),
            ms,
            reason,
            "Image admitted."
        );
        (Decision::Allowed, None)
    } else {
        let (service, digest, by) = (ask.name, ask.digest, by.as_str());
        if ecr {
            tracing::warn!(
                kind,
                service,
                digest,
                by,
                reason,
                "ECR's scan denied the image."
            );
        } else {
            tracing::warn!(
                kind,
                service,
                digest,
                by,
                reason,
                "Admission webhook denied the image."
            );
        }
        let why = reason.as_deref().unwrap_or("denied (no reason given)");
        let why = match ask.name {
            Some(name) => format!("service {name}: {why}"),
            None => why.to_owned(),
        };
        let refusal = match ecr {
            true => AdmissionError::EcrDenied(why),
            false => AdmissionError::Denied(why),
        };
        (Decision::Denied, Some(refusal))
    };
    Verdict {
        checked: Checked {
            decision,
            by,
            reason,
            ms,
            before: Vec::new(),
        },
        refusal,
    }
}

/// The webhook or ECR (`refusal` says which) failed: the attempt ends, or with
/// `fail = "open"` the image runs.
pub(super) fn failed(fail: AdmissionFail, refusal: AdmissionError, ms: u64) -> Verdict {
    let (by, error): (By, &dyn std::error::Error) = match &refusal {
        AdmissionError::Failed(error) => (By::Webhook, error),
        AdmissionError::EcrFailed(error) => (By::Ecr, error),
        AdmissionError::Denied(_) | AdmissionError::EcrDenied(_) => {
            unreachable!("a denial is not a failure")
        }
    };
    let text = error.to_string();
    let checked = Checked {
        decision: Decision::Unchecked,
        by,
        reason: Some(crate::rules::bounded_text(&text, MAX_REASON_BYTES)),
        ms,
        before: Vec::new(),
    };
    let error = crate::rules::bounded_text(&text, MAX_REASON_BYTES);
    let refusal = match (fail, by) {
        (AdmissionFail::Open, By::Ecr) => {
            tracing::warn!(
                error,
                "ECR's scan findings could not be read; running the job unchecked."
            );
            None
        }
        (AdmissionFail::Open, _) => {
            tracing::warn!(
                error,
                "Admission webhook failed; running the job unchecked."
            );
            None
        }
        (AdmissionFail::Closed, By::Ecr) => {
            tracing::warn!(
                error,
                "ECR's scan findings could not be read; not running the job (admission.fail = \"closed\")."
            );
            Some(refusal)
        }
        (AdmissionFail::Closed, _) => {
            tracing::warn!(
                error,
                "Admission webhook failed; not running the job (admission.fail = \"closed\")."
            );
            Some(refusal)
        }
    };
    Verdict { checked, refusal }
}

#[cfg(test)]
mod tests {
    use super::*;

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
