//! `[admission]`: the webhook asked whether an image may run, after its pull and
//! before any container of the job is created; a profile may point elsewhere or
//! turn it off (`admission_webhook_url`, `admission_fail`).

use std::net::IpAddr;
use std::time::Duration;

use toml::Table;

use super::Config;
use super::reader::{Reader, Section};
use super::secrets::SecretsConfig;

/// How long the whole exchange with the webhook may take, connect to last byte.
pub const DEFAULT_TIMEOUT_MS: u64 = 2000;
/// How long a decision for one (digest, profile) is reused.
pub const DEFAULT_CACHE_SECS: u64 = 300;
/// `"closed"`: an image nobody could vouch for does not run.
pub const DEFAULT_FAIL: AdmissionFail = AdmissionFail::Closed;

/// What a webhook that does not answer (down, slow, garbage) means for the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmissionFail {
    /// The attempt ends `error` and the queue retries it.
    Closed,
    /// The job runs, with a warning and `unchecked` in its result.
    Open,
}

impl AdmissionFail {
    const CHOICES: [(&'static str, AdmissionFail); 2] = [
        ("closed", AdmissionFail::Closed),
        ("open", AdmissionFail::Open),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AdmissionFail::Closed => "closed",
            AdmissionFail::Open => "open",
        }
    }
}

/// The pool's admission webhook; `webhook_url` `None`: no admission check.
#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    pub webhook_url: Option<String>,
    /// The whole exchange: a webhook that has not answered by then has failed.
    pub timeout: Duration,
    /// The bundle secret sent as `Authorization: Bearer <value>`.
    pub token_secret: Option<String>,
    pub fail: AdmissionFail,
    /// How long a decision is reused; zero: never.
    pub cache: Duration,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            webhook_url: None,
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            token_secret: None,
            fail: DEFAULT_FAIL,
            cache: Duration::from_secs(DEFAULT_CACHE_SECS),
        }
    }
}

/// What one job's profile makes of the pool's admission: where to ask, and what
/// a silent webhook means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionRule<'a> {
    pub webhook_url: &'a str,
    pub fail: AdmissionFail,
}

impl AdmissionConfig {
    /// `secrets`: the token must come from the pool's bundle.
    pub(super) fn read(r: &mut Reader<'_>, root: &mut Table, secrets: &SecretsConfig) -> Self {
        let mut section = r.section(root, "admission");
        let webhook_url = webhook_url(r, &mut section, "webhook_url");
        let admission = AdmissionConfig {
            webhook_url,
            timeout: Duration::from_millis(r.int(
                &mut section,
                "timeout_ms",
                1..=60_000,
                DEFAULT_TIMEOUT_MS,
            )),
            token_secret: r.opt_string(&mut section, "token_secret"),
            fail: r.choice(&mut section, "fail", &AdmissionFail::CHOICES, DEFAULT_FAIL),
            cache: Duration::from_secs(r.int(
                &mut section,
                "cache_secs",
                0..=86_400,
                DEFAULT_CACHE_SECS,
            )),
        };
        if admission.token_secret.is_some() && secrets.bundle.is_none() {
            r.issue(
                "admission.token_secret",
                "names a secret, and this pool has no secret bundle ([secrets] bucket and key)",
            );
        }
        r.finish(section);
        admission
    }
}

/// A profile's `admission_webhook_url` (`""`: no admission for it) and
/// `admission_fail`.
pub(super) fn read_profile(
    r: &mut Reader<'_>,
    section: &mut Section,
) -> (Option<String>, Option<AdmissionFail>) {
    let key = "admission_webhook_url";
    let url = match r.opt_string_or_empty(section, key) {
        Some(url) if url.is_empty() => Some(url),
        Some(url) => {
            if let Err(rule) = check_webhook_url(&url) {
                r.issue(&section.key(key), &rule);
            }
            Some(url)
        }
        None => None,
    };
    let fail = r.opt_string(section, "admission_fail").map(|text| {
        match AdmissionFail::CHOICES.iter().find(|(n, _)| *n == text) {
            Some((_, fail)) => *fail,
            None => {
                r.issue(
                    &section.key("admission_fail"),
                    &format!("{text:?} is not one of \"closed\", \"open\""),
                );
                DEFAULT_FAIL
            }
        }
    });
    (url, fail)
}

fn webhook_url(r: &mut Reader<'_>, section: &mut Section, key: &str) -> Option<String> {
    let url = r.opt_string(section, key)?;
    if let Err(rule) = check_webhook_url(&url) {
        r.issue(&section.key(key), &rule);
    }
    Some(url)
}

/// HTTPS anywhere; plain HTTP only to a loopback address (an adapter beside the
/// agent), since the answer decides what runs and the token rides along; no
/// credentials in the URL, which would be logged.
pub fn check_webhook_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(
            "must not carry credentials: name a bundle secret in admission.token_secret".into(),
        );
    }
    let Some(host) = parsed.host_str() else {
        return Err(format!("{url:?} names no host"));
    };
    // An IPv6 host keeps its brackets here.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(format!(
            "{url:?}: plain http:// only to a loopback address (127.0.0.1, [::1]); use https://"
        )),
        _ => Err(format!("{url:?} must be an https:// URL")),
    }
}

impl Config {
    /// The admission a job of `profile` goes through; `None`: none (the pool has
    /// no webhook, or the profile turned it off with an empty URL).
    pub fn admission_for(&self, profile: &str) -> Option<AdmissionRule<'_>> {
        let profile = self.profiles.get(profile);
        let url = match profile.and_then(|p| p.admission_webhook_url.as_deref()) {
            Some("") => return None,
            Some(url) => url,
            None => self.admission.webhook_url.as_deref()?,
        };
        let fail = profile
            .and_then(|p| p.admission_fail)
            .unwrap_or(self.admission.fail);
        Some(AdmissionRule {
            webhook_url: url,
            fail,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, super::super::ConfigError> {
        let env: super::super::Env = std::iter::empty::<(String, String)>().collect();
        Config::parse(text, &env)
    }

    #[test]
    fn https_anywhere_and_http_only_to_loopback() {
        for good in [
            "https://scanner.internal/admit",
            "http://127.0.0.1:8089/admit",
            "http://127.1.2.3/x",
            "http://[::1]:9000/",
        ] {
            assert_eq!(check_webhook_url(good), Ok(()), "{good}");
        }
        for bad in [
            "http://scanner.internal/admit",
            "http://10.0.0.1/admit",
            "http://localhost/admit",
            "ftp://127.0.0.1/",
            "https://user:pw@scanner.internal/",
            "not a url",
        ] {
            assert!(check_webhook_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_plain_http_webhook_elsewhere_is_refused_naming_the_key() {
        let text = "[admission]\nwebhook_url = \"http://scanner.internal/admit\"\n[profiles.big]\nadmission_webhook_url = \"http://10.1.1.1/\"\nadmission_fail = \"maybe\"\n";
        let error = parse(text).unwrap_err();
        let mut keys: Vec<&str> = error.issues().iter().map(|i| i.key.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "admission.webhook_url",
                "profiles.big.admission_fail",
                "profiles.big.admission_webhook_url",
            ],
            "{error}"
        );
    }

    #[test]
    fn a_token_needs_a_bundle() {
        let text = "[admission]\nwebhook_url = \"https://s.internal/\"\ntoken_secret = \"t\"\n";
        let error = parse(text).unwrap_err();
        assert_eq!(error.issues()[0].key, "admission.token_secret", "{error}");
    }

    #[test]
    fn a_profile_points_elsewhere_turns_it_off_or_fails_open() {
        let text = "[admission]\nwebhook_url = \"https://pool.internal/\"\n[profiles.own]\nadmission_webhook_url = \"https://own.internal/\"\nadmission_fail = \"open\"\n[profiles.off]\nadmission_webhook_url = \"\"\n";
        let config = parse(text).unwrap();
        assert_eq!(config.admission.timeout, Duration::from_millis(2000));
        assert_eq!(config.admission.cache, Duration::from_secs(300));
        assert_eq!(
            config.admission_for("default"),
            Some(AdmissionRule {
                webhook_url: "https://pool.internal/",
                fail: AdmissionFail::Closed
            })
        );
        assert_eq!(
            config.admission_for("own"),
            Some(AdmissionRule {
                webhook_url: "https://own.internal/",
                fail: AdmissionFail::Open
            })
        );
        assert_eq!(config.admission_for("off"), None);
        assert_eq!(parse("").unwrap().admission_for("default"), None);
    }
}
