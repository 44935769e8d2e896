//! `[admission]`: the webhook asked whether an image may run, after its pull and
//! before any container of the job is created; a profile may point elsewhere or
//! turn it off (`admission_webhook_url`, `admission_fail`). `[admission.ecr]`,
//! ECR's scan findings, is read in `admission_ecr.rs`.

use std::net::IpAddr;
use std::time::Duration;

use toml::Table;

use super::Config;
use super::admission_ecr::{self, EcrConfig, EcrRule};
use super::reader::{Reader, Section};
use super::secrets::SecretsConfig;

/// How long the whole exchange with the webhook may take, connect to last byte.
pub const DEFAULT_TIMEOUT_MS: u64 = 2000;
/// How long a decision for one (digest, profile) is reused.
pub const DEFAULT_CACHE_SECS: u64 = 300;
/// `"closed"`: an image nobody could vouch for does not run.
pub const DEFAULT_FAIL: AdmissionFail = AdmissionFail::Closed;

/// What a webhook or ECR that does not answer (down, slow, garbage) means for
/// the job.
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

/// The pool's admission webhook and ECR check; neither: no admission check.
#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    pub webhook_url: Option<String>,
    /// The whole exchange: a webhook (or ECR) that has not answered by then has
    /// failed.
    pub timeout: Duration,
    /// The bundle secret sent as `Authorization: Bearer <value>`.
    pub token_secret: Option<String>,
    pub fail: AdmissionFail,
    /// How long a decision is reused; zero: never.
    pub cache: Duration,
    /// `[admission.ecr]`: ECR's scan findings decide too.
    pub ecr: Option<EcrConfig>,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            webhook_url: None,
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            token_secret: None,
            fail: DEFAULT_FAIL,
            cache: Duration::from_secs(DEFAULT_CACHE_SECS),
            ecr: None,
        }
    }
}

/// What one job's profile makes of the pool's admission: ECR's findings and
/// where to ask, at least one of them, and what a silent one means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionRule<'a> {
    pub webhook_url: Option<&'a str>,
    pub ecr: Option<EcrRule<'a>>,
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
            ecr: admission_ecr::read(r, &mut section),
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
        let webhook_url = match profile.and_then(|p| p.admission_webhook_url.as_deref()) {
            Some("") => None,
            Some(url) => Some(url),
            None => self.admission.webhook_url.as_deref(),
        };
        let ecr = admission_ecr::rule(
            self.admission.ecr.as_ref(),
            profile.map(|p| p.admission_ecr).unwrap_or_default(),
        );
        if webhook_url.is_none() && ecr.is_none() {
            return None;
        }
        let fail = profile
            .and_then(|p| p.admission_fail)
            .unwrap_or(self.admission.fail);
        Some(AdmissionRule {
            webhook_url,
            ecr,
            fail,
        })
    }

    /// Whether any profile's jobs go through ECR's check: the agent then needs
    /// an ECR client.
    pub fn admission_uses_ecr(&self) -> bool {
        self.profiles.keys().any(|name| {
            self.admission_for(name)
                .is_some_and(|rule| rule.ecr.is_some())
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
                webhook_url: Some("https://pool.internal/"),
                ecr: None,
                fail: AdmissionFail::Closed
            })
        );
        assert_eq!(
            config.admission_for("own"),
            Some(AdmissionRule {
                webhook_url: Some("https://own.internal/"),
                ecr: None,
                fail: AdmissionFail::Open
            })
        );
        assert_eq!(config.admission_for("off"), None);
        assert_eq!(parse("").unwrap().admission_for("default"), None);
    }
}

#[cfg(test)]
mod ecr_tests {
    use super::super::admission_ecr::Severity;
    use super::*;

    fn parse(text: &str) -> Result<Config, super::super::ConfigError> {
        let env: super::super::Env = std::iter::empty::<(String, String)>().collect();
        Config::parse(text, &env)
    }

    #[test]
    fn ecr_defaults_and_a_profile_that_raises_the_bar_or_turns_it_off() {
        let text = "[admission.ecr]\nregistries = [\"127.0.0.1:5000\"]\n[profiles.lax]\nadmission_ecr_max_severity = \"CRITICAL\"\nadmission_ecr_require_scan = false\n[profiles.off]\nadmission_ecr_max_severity = \"\"\n";
        let config = parse(text).unwrap();
        let pool = config.admission_for("default").unwrap();
        assert_eq!(pool.webhook_url, None);
        let ecr = pool.ecr.unwrap();
        assert_eq!(
            (ecr.max_severity, ecr.require_scan, ecr.registries),
            (Severity::High, true, &["127.0.0.1:5000".to_owned()][..])
        );
        let lax = config.admission_for("lax").unwrap().ecr.unwrap();
        assert_eq!(
            (lax.max_severity, lax.require_scan),
            (Severity::Critical, false)
        );
        assert_eq!(config.admission_for("off"), None);
        assert!(config.admission_uses_ecr());
        assert!(!parse("").unwrap().admission_uses_ecr());
    }

    #[test]
    fn a_profile_may_ask_for_ecr_where_the_pool_has_none() {
        let text = "[profiles.strict]\nadmission_ecr_max_severity = \"MEDIUM\"\n";
        let config = parse(text).unwrap();
        assert_eq!(config.admission_for("default"), None);
        let strict = config.admission_for("strict").unwrap().ecr.unwrap();
        assert_eq!(
            (strict.max_severity, strict.require_scan),
            (Severity::Medium, true)
        );
    }

    #[test]
    fn a_wrong_severity_or_host_is_refused_naming_the_key() {
        let text = "[admission.ecr]\nmax_severity = \"high\"\nregistries = [\"not a host\"]\nrequire_scan = \"yes\"\n[profiles.p]\nadmission_ecr_max_severity = \"SEVERE\"\n";
        let error = parse(text).unwrap_err();
        let mut keys: Vec<&str> = error.issues().iter().map(|i| i.key.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "admission.ecr.max_severity",
                "admission.ecr.registries",
                "admission.ecr.require_scan",
                "profiles.p.admission_ecr_max_severity",
            ],
            "{error}"
        );
    }
}
