//! `[caches]` and a profile's `cache_*` keys: the jobs' keyed write-back caches,
//! kept on this host (under `agent.work_dir/caches`) and in S3.

use toml::Table;

use super::reader::{Reader, Section};

/// Where in the bucket the caches go.
pub const DEFAULT_CACHES_PREFIX: &str = "caches/";
/// The most the host tier keeps before the least recently used cache goes.
pub const DEFAULT_HOST_MAX_MB: u64 = 10_240;
/// The most one cache may weigh, packed or unpacked.
pub const DEFAULT_CACHE_MAX_MB: u64 = 2048;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachesConfig {
    /// The S3 tier's bucket; `None`: the host tier only.
    pub bucket: Option<String>,
    pub prefix: String,
    pub host_max_mb: u64,
    /// `SCOPE/KEY`s restored into the host tier before the agent is ready.
    pub prewarm: Vec<String>,
}

impl Default for CachesConfig {
    fn default() -> Self {
        CachesConfig {
            bucket: None,
            prefix: DEFAULT_CACHES_PREFIX.to_owned(),
            host_max_mb: DEFAULT_HOST_MAX_MB,
            prewarm: Vec::new(),
        }
    }
}

impl CachesConfig {
    pub(super) fn read(r: &mut Reader<'_>, root: &mut Table) -> Self {
        let mut section = r.section(root, "caches");
        let bucket = r.opt_string(&mut section, "bucket");
        let prefix = r
            .opt_string(&mut section, "prefix")
            .unwrap_or_else(|| DEFAULT_CACHES_PREFIX.to_owned());
        if prefix.starts_with('/') || prefix.len() > 256 {
            r.issue(
                "caches.prefix",
                "must not start with / and is at most 256 bytes",
            );
        }
        let host_max_mb = r.int(
            &mut section,
            "host_max_mb",
            0..=1 << 30,
            DEFAULT_HOST_MAX_MB,
        );
        let prewarm = r.strings(&mut section, "prewarm");
        for entry in &prewarm {
            let valid = entry
                .split_once('/')
                .is_some_and(|(scope, key)| valid_name(scope) && valid_name(key));
            if !valid {
                r.issue(
                    "caches.prewarm",
                    &format!(
                        "{:?} must be SCOPE/KEY, each 1 to 256 of [A-Za-z0-9._-]",
                        crate::rules::truncate(entry, 64)
                    ),
                );
            }
        }
        r.finish(section);
        CachesConfig {
            bucket,
            prefix,
            host_max_mb,
            prewarm,
        }
    }
}

/// What a profile's jobs may do with caches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileCaches {
    /// Absolute container paths a cache's `paths` may name (beside the workdir's).
    pub paths: Vec<String>,
    /// `false`: its jobs restore and never save (untrusted work: forks).
    pub writable: bool,
    /// The namespace its jobs' keys live in; `None`: the profile's name.
    pub scope: Option<String>,
    /// Other scopes its jobs may restore from, after their own.
    pub restore_scopes: Vec<String>,
    /// The most one cache may weigh, packed or unpacked, in MB.
    pub max_mb: u64,
}

impl Default for ProfileCaches {
    fn default() -> Self {
        ProfileCaches {
            paths: Vec::new(),
            writable: true,
            scope: None,
            restore_scopes: Vec::new(),
            max_mb: DEFAULT_CACHE_MAX_MB,
        }
    }
}

pub(super) fn read_profile(r: &mut Reader<'_>, section: &mut Section) -> ProfileCaches {
    let paths = r.strings(section, "cache_paths");
    for path in &paths {
        if let Err(rule) = crate::rules::check_container_path(path) {
            r.issue(&section.key("cache_paths"), &rule);
        }
    }
    let writable = r.bool(section, "caches_writable", true);
    let scope = r.opt_string(section, "cache_scope");
    let restore_scopes = r.strings(section, "cache_restore_scopes");
    for name in scope.iter().chain(&restore_scopes) {
        if !valid_name(name) {
            r.issue(
                &section.key("cache_scope"),
                &format!(
                    "{:?}: a scope is 1 to 256 of [A-Za-z0-9._-], not . or ..",
                    crate::rules::truncate(name, 64)
                ),
            );
        }
    }
    let max_mb = r.int(section, "cache_max_mb", 1..=1 << 30, DEFAULT_CACHE_MAX_MB);
    ProfileCaches {
        paths,
        writable,
        scope,
        restore_scopes,
        max_mb,
    }
}

/// A cache key, a restore prefix or a scope: 1 to 256 of `[A-Za-z0-9._-]`, and
/// not `.` or `..` (each is a folder name on the host and part of an S3 key).
pub fn valid_name(name: &str) -> bool {
    (1..=256).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
