//! `[git]`: the host's git mirrors (how long a fetch may take, the bundles that
//! seed them at boot), and a profile's git keys (the remotes its jobs may check
//! out from, the pool secret each one's fetch uses, the size of a checkout).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use toml::{Table, Value};

use super::reader::{Reader, Section};
use crate::rules::S3Location;
use crate::rules::git::check_remote_url;

/// How long one fetch into a mirror (or one step of a checkout) may take.
pub const DEFAULT_FETCH_TIMEOUT_SECS: u64 = 600;
/// The most one seed bundle may weigh.
pub const DEFAULT_SEED_MAX_MB: u64 = 10_240;
/// The most a job's checkout (its `.git` and its files) may weigh.
pub const DEFAULT_SOURCE_MAX_MB: u64 = 2048;

#[derive(Debug, Clone)]
pub struct GitConfig {
    pub fetch_timeout: Duration,
    /// Mirrors made from S3 git bundles at boot, before the agent is ready.
    pub seed: Vec<Seed>,
    /// The most one seed bundle may weigh, in MB.
    pub seed_max_mb: u64,
    /// An OpenSSH `known_hosts` file: an `ssh://` remote's host key must be
    /// in it. Without it a host key is trusted on first use (per agent run).
    pub known_hosts: Option<PathBuf>,
}

/// One repository's mirror, seeded from a bundle (`git bundle create --all`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    pub repo: String,
    pub bundle: S3Location,
}

impl Default for GitConfig {
    fn default() -> Self {
        GitConfig {
            fetch_timeout: Duration::from_secs(DEFAULT_FETCH_TIMEOUT_SECS),
            seed: Vec::new(),
            seed_max_mb: DEFAULT_SEED_MAX_MB,
            known_hosts: None,
        }
    }
}

impl GitConfig {
    pub(super) fn read(r: &mut Reader<'_>, root: &mut Table) -> Self {
        let mut section = r.section(root, "git");
        let fetch_timeout_secs = r.int(
            &mut section,
            "fetch_timeout_secs",
            1..=3600,
            DEFAULT_FETCH_TIMEOUT_SECS,
        );
        let seed_max_mb = r.int(
            &mut section,
            "seed_max_mb",
            1..=1 << 20,
            DEFAULT_SEED_MAX_MB,
        );
        let known_hosts = match r.opt_string(&mut section, "known_hosts") {
            Some(path) if path.starts_with('/') => Some(PathBuf::from(path)),
            Some(path) => {
                let key = section.key("known_hosts");
                r.issue(&key, &format!("{path:?} must be an absolute path"));
                None
            }
            None => None,
        };
        let key = section.key("seed");
        let seed = r
            .tables(&mut section, "seed")
            .into_iter()
            .enumerate()
            .filter_map(|(i, table)| read_seed(r, &format!("{key}[{i}]"), table))
            .collect();
        r.finish(section);
        GitConfig {
            fetch_timeout: Duration::from_secs(fetch_timeout_secs),
            seed,
            seed_max_mb,
            known_hosts,
        }
    }
}

fn read_seed(r: &mut Reader<'_>, key: &str, mut table: Table) -> Option<Seed> {
    let mut text = |name: &str, r: &mut Reader<'_>| match table.remove(name) {
        Some(Value::String(s)) => Some(s),
        _ => {
            r.issue(&format!("{key}.{name}"), "required, a string");
            None
        }
    };
    let repo = text("repo", r);
    let bundle = text("bundle", r);
    for other in table.keys() {
        r.issue(&format!("{key}.{other}"), "unknown key (repo, bundle)");
    }
    if let Some(Err(rule)) = repo.as_deref().map(check_remote_url) {
        r.issue(&format!("{key}.repo"), &rule);
        return None;
    }
    let location = bundle.as_deref().and_then(S3Location::parse);
    if bundle.is_some() && location.is_none() {
        r.issue(&format!("{key}.bundle"), "must be s3://<bucket>/<key>");
    }
    Some(Seed {
        repo: repo?,
        bundle: location?,
    })
}

/// A profile's git keys.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProfileGit {
    /// The URL prefixes a job's `source.repo` (and its submodules) may start with.
    pub remotes: Vec<String>,
    /// Remote prefix → the pool secret the agent's fetch from it uses.
    pub credentials: BTreeMap<String, String>,
    /// The most a checkout may weigh, in MB.
    pub source_max_mb: u64,
}

impl ProfileGit {
    /// The secret for `url`'s fetch: the longest prefix that names one.
    pub fn credential_for(&self, url: &str) -> Option<&str> {
        self.credentials
            .iter()
            .filter(|(prefix, _)| url.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, secret)| secret.as_str())
    }
}

/// `git_remotes`, `git_credentials` and `source_max_mb`. A prefix ends with a
/// `/` after its host: else `https://host` would allow `https://host.evil.example`.
pub(super) fn read_profile(r: &mut Reader<'_>, section: &mut Section) -> ProfileGit {
    let remotes = r.strings(section, "git_remotes");
    let key = section.key("git_remotes");
    for prefix in &remotes {
        if let Err(rule) = check_remote_url(prefix) {
            r.issue(&key, &format!("{prefix:?}: {rule}"));
        } else if !prefix.ends_with('/')
            || prefix
                .split_once("://")
                .is_some_and(|(_, rest)| !rest.contains('/'))
        {
            r.issue(
                &key,
                &format!("{prefix:?} must end with / after the host (else it allows other hosts)"),
            );
        }
    }
    let credentials = r.string_table(section, "git_credentials");
    let key = section.key("git_credentials");
    for (prefix, secret) in &credentials {
        if !remotes.contains(prefix) {
            r.issue(&key, &format!("{prefix:?} is not one of git_remotes"));
        }
        if !crate::rules::valid_id(secret) {
            r.issue(&key, &format!("{secret:?} is not a secret name"));
        }
    }
    let source_max_mb = r.int(section, "source_max_mb", 1..=1 << 30, DEFAULT_SOURCE_MAX_MB);
    ProfileGit {
        remotes,
        credentials,
        source_max_mb,
    }
}
