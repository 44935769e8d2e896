//! A job's `caches`: keyed trees restored into its container before it starts
//! and saved after it succeeds, on this host and in S3 (see
//! [`host::caches`](crate::host::caches)). The rules of the field, what a job
//! may do with it under its profile, and what its result says of each.

use serde::{Deserialize, Serialize};

use crate::config::{Profile, valid_cache_name};
use crate::rules::{check_container_path, is_under, workdir_segments};

/// The most caches a job may name.
pub const MAX_CACHES: usize = 8;
/// The most paths one cache may hold, and restore keys it may try.
pub const MAX_CACHE_PATHS: usize = 16;
pub const MAX_RESTORE_KEYS: usize = 8;

/// The wire form of one cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    pub key: String,
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restore_keys: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

/// Whether a cache is restored, saved, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    PullPush,
    Pull,
    Push,
}

impl Policy {
    pub fn pulls(self) -> bool {
        self != Policy::Push
    }

    pub fn pushes(self) -> bool {
        self != Policy::Pull
    }
}

/// A cache that passed every rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    pub key: String,
    /// Absolute container paths, normalised (the workdir's joined on).
    pub paths: Vec<String>,
    pub restore_keys: Vec<String>,
    pub policy: Policy,
}

/// A job's caches with what its profile lets it do with them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobCaches {
    pub caches: Vec<Cache>,
    /// Where its saves go and its restores look first.
    pub scope: String,
    /// Its scope, then the profile's `cache_restore_scopes`.
    pub read_scopes: Vec<String>,
    /// The profile's `caches_writable`.
    pub writable: bool,
    /// The profile's `cache_max_mb`, in bytes.
    pub max_bytes: u64,
}

/// What became of one cache, in the job's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheReport {
    pub key: String,
    /// The key restored (`SCOPE/KEY`), if any.
    pub matched_key: Option<String>,
    /// `exact`, `prefix` or `miss`.
    pub hit: String,
    /// `host` or `s3`, where it came from.
    pub tier: Option<String>,
    pub restore_bytes: u64,
    pub restore_ms: u64,
    pub saved: bool,
    pub save_bytes: u64,
    pub save_ms: u64,
    /// Why it missed, or was not saved.
    pub reason: Option<String>,
}

impl CacheReport {
    pub fn new(key: &str) -> Self {
        CacheReport {
            key: key.to_owned(),
            matched_key: None,
            hit: "miss".to_owned(),
            tier: None,
            restore_bytes: 0,
            restore_ms: 0,
            saved: false,
            save_bytes: 0,
            save_ms: 0,
            reason: None,
        }
    }

    /// Adds `why` to the reason.
    pub fn note(&mut self, why: impl Into<String>) {
        let why = why.into();
        self.reason = Some(match self.reason.take() {
            Some(before) => format!("{before}; {why}"),
            None => why,
        });
    }
}

/// Every cache checked against the profile (`profile_name` is its scope by
/// default); each broken rule with its field (`caches[0].key`).
pub fn check(
    specs: &[CacheSpec],
    workdir: &str,
    profile: &Profile,
    profile_name: &str,
) -> Result<JobCaches, Vec<(String, String)>> {
    let mut problems = Vec::new();
    if specs.len() > MAX_CACHES {
        problems.push((
            "caches".to_owned(),
            format!("{} caches; at most {MAX_CACHES}", specs.len()),
        ));
        return Err(problems);
    }
    let allowed = &profile.caches.paths;
    let caches: Vec<Cache> = (0..specs.len())
        .map(|i| check_one(i, specs, workdir, allowed, &mut problems))
        .collect();
    if !problems.is_empty() {
        return Err(problems);
    }
    let scope = profile
        .caches
        .scope
        .clone()
        .unwrap_or_else(|| profile_name.to_owned());
    let mut read_scopes = vec![scope.clone()];
    read_scopes.extend(
        profile
            .caches
            .restore_scopes
            .iter()
            .filter(|s| **s != scope)
            .cloned(),
    );
    Ok(JobCaches {
        caches,
        scope,
        read_scopes,
        writable: profile.caches.writable,
        max_bytes: profile.caches.max_mb.saturating_mul(1_000_000),
    })
}

/// One cache's rules; `specs[i]` is the cache, the ones before it are earlier.
fn check_one(
    i: usize,
    specs: &[CacheSpec],
    workdir: &str,
    allowed: &[String],
    problems: &mut Vec<(String, String)>,
) -> Cache {
    let spec = &specs[i];
    let mut push = |field: &str, rule: String| {
        problems.push((format!("caches[{i}].{field}"), rule));
    };
    if !valid_cache_name(&spec.key) {
        push("key", name_rule(&spec.key));
    } else if specs[..i].iter().any(|other| other.key == spec.key) {
        push("key", "named by an earlier cache".to_owned());
    }
    let paths = check_paths(&spec.paths, workdir, allowed, &mut push);
    if spec.restore_keys.len() > MAX_RESTORE_KEYS {
        push(
            "restore_keys",
            format!(
                "{} keys; at most {MAX_RESTORE_KEYS}",
                spec.restore_keys.len()
            ),
        );
    }
    for (j, prefix) in spec.restore_keys.iter().enumerate() {
        if !valid_cache_name(prefix) {
            push(&format!("restore_keys[{j}]"), name_rule(prefix));
        }
    }
    let policy = match spec.policy.as_deref() {
        None | Some("pull-push") => Policy::PullPush,
        Some("pull") => Policy::Pull,
        Some("push") => Policy::Push,
        Some(other) => {
            push(
                "policy",
                format!(
                    "{:?} must be \"pull-push\", \"pull\" or \"push\"",
                    crate::rules::truncate(other, 32)
                ),
            );
            Policy::PullPush
        }
    };
    Cache {
        key: spec.key.clone(),
        paths,
        restore_keys: spec.restore_keys.clone(),
        policy,
    }
}

fn name_rule(name: &str) -> String {
    format!(
        "{:?} must be 1 to 256 of [A-Za-z0-9._-], not . or ..",
        crate::rules::truncate(name, 64)
    )
}

/// Each path as an absolute container path: relative ones inside the workdir
/// (not the workdir itself), absolute ones under one of `allowed`.
fn check_paths(
    paths: &[String],
    workdir: &str,
    allowed: &[String],
    push: &mut impl FnMut(&str, String),
) -> Vec<String> {
    if paths.is_empty() || paths.len() > MAX_CACHE_PATHS {
        push(
            "paths",
            format!("names 1 to {MAX_CACHE_PATHS} paths, not {}", paths.len()),
        );
    }
    let mut out = Vec::new();
    for (j, path) in paths.iter().enumerate() {
        let field = format!("paths[{j}]");
        if path.starts_with('/') {
            if let Err(rule) = check_container_path(path) {
                push(&field, rule);
            } else if !allowed.iter().any(|dir| is_under(path, dir)) {
                push(
                    &field,
                    format!(
                        "{:?} is not under the profile's cache_paths ({})",
                        crate::rules::truncate(path, 64),
                        allowed.join(", ")
                    ),
                );
            } else {
                out.push(path.clone());
            }
            continue;
        }
        match workdir_segments(path, "caches go") {
            Ok(segments) if segments.is_empty() => {
                push(
                    &field,
                    "names a folder in the workdir, not the workdir itself".to_owned(),
                );
            }
            Ok(segments) => out.push(format!("{workdir}/{}", segments.join("/"))),
            Err(rule) => push(&field, rule),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(key: &str, paths: &[&str]) -> CacheSpec {
        CacheSpec {
            key: key.to_owned(),
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            restore_keys: Vec::new(),
            policy: None,
        }
    }

    #[test]
    fn each_rule_names_its_field() {
        let mut profile = Profile::default();
        profile.caches.paths = vec!["/root/.cargo".to_owned()];
        let ok = check(
            &[spec("deps-1", &["target/", "/root/.cargo/registry"])],
            "/work",
            &profile,
            "ci",
        )
        .unwrap();
        assert_eq!(ok.scope, "ci");
        assert_eq!(
            ok.caches[0].paths,
            ["/work/target", "/root/.cargo/registry"]
        );
        assert_eq!(ok.caches[0].policy, Policy::PullPush);
        let mut bad = spec("..", &["../up", "/etc/passwd", ""]);
        bad.restore_keys = vec!["a/b".to_owned()];
        bad.policy = Some("both".to_owned());
        let problems = check(&[bad, spec("x", &[])], "/work", &profile, "ci").unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "caches[0].key",
                "caches[0].paths[0]",
                "caches[0].paths[1]",
                "caches[0].paths[2]",
                "caches[0].restore_keys[0]",
                "caches[0].policy",
                "caches[1].paths",
            ]
        );
        assert!(problems[2].1.contains("cache_paths"), "{problems:?}");
        let many: Vec<CacheSpec> = (0..9).map(|i| spec(&format!("k{i}"), &["a"])).collect();
        assert_eq!(
            check(&many, "/w", &profile, "ci").unwrap_err()[0].0,
            "caches"
        );
    }

    #[test]
    fn a_profile_scopes_its_reads_and_writes() {
        let mut profile = Profile::default();
        profile.caches.scope = Some("fork".to_owned());
        profile.caches.restore_scopes = vec!["main".to_owned(), "fork".to_owned()];
        profile.caches.writable = false;
        let caches = check(&[spec("k", &["a"])], "/w", &profile, "pr").unwrap();
        assert_eq!(caches.scope, "fork");
        assert_eq!(caches.read_scopes, ["fork", "main"]);
        assert!(!caches.writable);
    }
}
