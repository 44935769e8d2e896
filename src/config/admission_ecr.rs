//! `[admission.ecr]`: ECR's own scan of an image decides whether it runs, for
//! images in an ECR registry (and in the hosts `registries` names as ECR); a
//! profile may lower or raise the bar (`admission_ecr_max_severity`,
//! `admission_ecr_require_scan`) or turn it off (`admission_ecr_max_severity =
//! ""`).

use toml::Table;

use super::reader::{Reader, Section};

/// A finding of HIGH or CRITICAL denies.
pub const DEFAULT_MAX_SEVERITY: Severity = Severity::High;
/// An image ECR never scanned (or whose scan has not finished) does not run.
pub const DEFAULT_REQUIRE_SCAN: bool = true;

/// ECR's ranked severities, lowest first; ECR also answers `UNDEFINED` (basic
/// scanning) and `UNTRIAGED` (enhanced), which rank nowhere and never deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Informational,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 5] = [
        Severity::Informational,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    /// ECR's spelling, which the config uses too.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Informational => "INFORMATIONAL",
            Severity::Low => "LOW",
            Severity::Medium => "MEDIUM",
            Severity::High => "HIGH",
            Severity::Critical => "CRITICAL",
        }
    }

    pub fn parse(text: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// The pool's ECR check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcrConfig {
    /// A finding at or above it denies.
    pub max_severity: Severity,
    /// No scan, or one not `COMPLETE`, denies.
    pub require_scan: bool,
    /// Registry hosts that serve this account's ECR repositories in the agent's
    /// region under another name (a pull-through proxy, a mirror, the tests'
    /// local registry): their images are checked as ECR's.
    pub registries: Vec<String>,
}

/// What a profile changes of the pool's ECR check; `off`: no ECR check for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EcrOverride {
    pub off: bool,
    pub max_severity: Option<Severity>,
    pub require_scan: Option<bool>,
}

/// One profile's ECR check: what [`EcrConfig`] and [`EcrOverride`] make of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EcrRule<'a> {
    pub max_severity: Severity,
    pub require_scan: bool,
    pub registries: &'a [String],
}

/// `[admission.ecr]`, read whether or not it is there (so every key is known to
/// the reader); `None` when neither the file nor the environment sets it.
pub(super) fn read(r: &mut Reader<'_>, admission: &mut Section) -> Option<EcrConfig> {
    let present = admission.table.contains_key("ecr");
    let mut section = if present {
        r.subsection(admission, "ecr")
    } else {
        Section {
            path: admission.key("ecr"),
            table: Table::new(),
        }
    };
    let max_severity = severity(r, &mut section, "max_severity");
    let require_scan = r.bool(&mut section, "require_scan", DEFAULT_REQUIRE_SCAN);
    let registries = r.strings(&mut section, "registries");
    for host in &registries {
        if !crate::rules::valid_registry_host(host) {
            r.issue(
                &section.key("registries"),
                &format!("{host:?} is not a registry host[:port]"),
            );
        }
    }
    r.finish(section);
    (present || max_severity.is_some()).then(|| EcrConfig {
        max_severity: max_severity.unwrap_or(DEFAULT_MAX_SEVERITY),
        require_scan,
        registries: registries.iter().map(|h| h.to_ascii_lowercase()).collect(),
    })
}

/// A profile's `admission_ecr_max_severity` (`""`: off) and
/// `admission_ecr_require_scan`.
pub(super) fn read_profile(r: &mut Reader<'_>, section: &mut Section) -> EcrOverride {
    let key = "admission_ecr_max_severity";
    let mut ecr = EcrOverride::default();
    match r.opt_string_or_empty(section, key) {
        Some(text) if text.is_empty() => ecr.off = true,
        Some(text) => ecr.max_severity = Some(parse_or_issue(r, &section.key(key), &text)),
        None => {}
    }
    ecr.require_scan = r.opt_bool(section, "admission_ecr_require_scan");
    ecr
}

fn severity(r: &mut Reader<'_>, section: &mut Section, key: &str) -> Option<Severity> {
    let text = r.opt_string(section, key)?;
    Some(parse_or_issue(r, &section.key(key), &text))
}

fn parse_or_issue(r: &mut Reader<'_>, key: &str, text: &str) -> Severity {
    Severity::parse(text).unwrap_or_else(|| {
        r.issue(
            key,
            &format!(
                "{text:?} is not one of \"INFORMATIONAL\", \"LOW\", \"MEDIUM\", \"HIGH\", \"CRITICAL\""
            ),
        );
        DEFAULT_MAX_SEVERITY
    })
}

/// The ECR check of a profile with `profile`'s changes to the pool's `pool`.
pub(super) fn rule<'a>(pool: Option<&'a EcrConfig>, profile: EcrOverride) -> Option<EcrRule<'a>> {
    if profile.off {
        return None;
    }
    const NONE: &[String] = &[];
    let (max_severity, require_scan, registries) = match pool {
        Some(pool) => (
            pool.max_severity,
            pool.require_scan,
            pool.registries.as_slice(),
        ),
        // A profile may ask for ECR's check where the pool has none.
        None => (profile.max_severity?, DEFAULT_REQUIRE_SCAN, NONE),
    };
    Some(EcrRule {
        max_severity: profile.max_severity.unwrap_or(max_severity),
        require_scan: profile.require_scan.unwrap_or(require_scan),
        registries,
    })
}
