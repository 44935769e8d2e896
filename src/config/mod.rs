//! The agent's configuration: read once, from TOML plus environment overrides, into
//! validated types.
//!
//! Every key can be overridden by an environment variable named
//! `DECKHAND_<SECTION>_<KEY>` in upper case (`DECKHAND_QUEUE_URL`,
//! `DECKHAND_AGENT_SLOTS`, `DECKHAND_PROFILES_BIG_MEMORY_MB`). This module is the only
//! place that reads those variables: callers hand it a snapshot of the environment,
//! which keeps it testable without `set_var`.
//!
//! Validation does not stop at the first problem. Like linkerd's `parse_config`, it
//! collects every invalid key, each named in full with the rule it broke, so an
//! operator fixes a config in one round trip instead of one per typo.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use toml::Table;

mod admission;
mod admission_ecr;
mod agent;
mod autoscaling;
mod aws;
mod cache;
mod caches;
mod credentials;
mod disk;
mod docker;
mod drain;
mod forwarder;
mod git;
mod images;
mod imds;
mod metrics;
mod profiles;
mod queue;
mod reader;
mod results;
mod retries;
mod secrets;

pub use admission::{AdmissionConfig, AdmissionFail, AdmissionRule, check_webhook_url};
pub use admission_ecr::{EcrConfig, EcrOverride, EcrRule, Severity};
pub use agent::{AgentConfig, OnExit};
pub use autoscaling::AutoscalingConfig;
pub use aws::AwsConfig;
pub use cache::CacheConfig;
pub use caches::{CachesConfig, ProfileCaches, valid_name as valid_cache_name};
pub use credentials::CredentialsConfig;
pub use disk::DiskConfig;
pub use docker::DockerConfig;
pub use drain::{DrainConfig, RebalancePolicy, SpotPolicy};
pub use forwarder::LogForwarderConfig;
pub use git::{GitConfig, ProfileGit, Seed};
pub use images::{ImagesConfig, WarmFailure};
pub use imds::ImdsConfig;
pub use metrics::MetricsConfig;
pub use profiles::Profile;
pub use queue::QueueConfig;
pub use results::ResultsConfig;
pub use retries::Retries;
pub use secrets::SecretsConfig;

/// Every section's defaults, one source: the readers, the `Default` impls and
/// docs/config.md (checked by a test) all use these.
pub mod defaults {
    pub use super::admission::{DEFAULT_CACHE_SECS, DEFAULT_FAIL, DEFAULT_TIMEOUT_MS};
    pub use super::admission_ecr::{DEFAULT_MAX_SEVERITY, DEFAULT_REQUIRE_SCAN};
    pub use super::agent::{
        DEFAULT_IDLE_SHUTDOWN_SECS, DEFAULT_SECRETS_DIR, DEFAULT_SHUTDOWN_COMMAND, DEFAULT_SLOTS,
        DEFAULT_WORK_DIR,
    };
    pub use super::cache::{DEFAULT_MOUNT, DEFAULT_REFRESH_SECS};
    pub use super::caches::{DEFAULT_CACHE_MAX_MB, DEFAULT_CACHES_PREFIX, DEFAULT_HOST_MAX_MB};
    pub use super::credentials::{DEFAULT_LISTEN, DEFAULT_SESSION_SECS};
    pub use super::disk::{DEFAULT_GC_FREE_MB, DEFAULT_MIN_FREE_MB};
    pub use super::docker::DEFAULT_SOCKET;
    pub use super::drain::{
        DEFAULT_LOG_FLUSH_TIMEOUT_SECS, DEFAULT_SAFETY_MARGIN_SECS, DEFAULT_STOP_GRACE_SECS,
        DEFAULT_STOP_TIMEOUT_SECS,
    };
    pub use super::forwarder::DEFAULT_MAX_DISK_MB;
    pub use super::git::{DEFAULT_FETCH_TIMEOUT_SECS, DEFAULT_SEED_MAX_MB, DEFAULT_SOURCE_MAX_MB};
    pub use super::images::DEFAULT_PULL_TIMEOUT_SECS;
    pub use super::imds::{DEFAULT_ENDPOINT, DEFAULT_POLL_MS};
    pub use super::profiles::{
        DEFAULT_ARTIFACTS_MAX_FILES, DEFAULT_ARTIFACTS_MAX_MB, DEFAULT_CPUS, DEFAULT_INPUTS_MAX_MB,
        DEFAULT_MAX_LOG_MB, DEFAULT_MAX_SERVICES, DEFAULT_MAX_TIMEOUT_SECS, DEFAULT_MEMORY_MB,
        DEFAULT_NETWORK, DEFAULT_PIDS, DEFAULT_SERVICES_CPUS, DEFAULT_SERVICES_MEMORY_MB,
        DEFAULT_TIMEOUT_SECS, MAX_JOB_TIMEOUT_SECS,
    };
    pub use super::queue::{
        DEFAULT_VISIBILITY_TIMEOUT_SECS, DEFAULT_WAIT_SECS, MAX_VISIBILITY_SECS,
    };
    pub use super::results::{DEFAULT_CANCEL_POLL_SECS, DEFAULT_LOG_FLUSH_SECS, DEFAULT_PREFIX};
    pub use super::secrets::DEFAULT_BOOT_TIMEOUT_SECS;
}

use reader::Reader;

/// Where the config lives unless `--config` or `DECKHAND_CONFIG` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/deckhand/config.toml";

/// Environment variables under our prefix that are not config overrides.
const NON_OVERRIDE_VARS: &[&str] = &["DECKHAND_CONFIG", "DECKHAND_LOG_FORMAT", "DECKHAND_LOG"];

const ENV_PREFIX: &str = "DECKHAND_";

/// The validated configuration. Built only by [`Config::load`] or [`Config::parse`].
#[derive(Debug, Clone)]
pub struct Config {
    pub agent: AgentConfig,
    pub docker: DockerConfig,
    pub aws: AwsConfig,
    pub imds: ImdsConfig,
    pub queue: QueueConfig,
    pub results: ResultsConfig,
    pub secrets: SecretsConfig,
    pub images: ImagesConfig,
    pub cache: CacheConfig,
    pub caches: CachesConfig,
    pub drain: DrainConfig,
    pub metrics: MetricsConfig,
    pub disk: DiskConfig,
    pub credentials: CredentialsConfig,
    pub admission: AdmissionConfig,
    pub git: GitConfig,
    pub autoscaling: AutoscalingConfig,
    pub log_forwarder: LogForwarderConfig,
    /// Job profiles by name; `default` always exists.
    pub profiles: BTreeMap<String, Profile>,
}

/// Why the config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config {path}: {} invalid key(s):\n{}", issues.len(), Issues(issues))]
    Invalid { path: PathBuf, issues: Vec<Issue> },
    #[error("config: {} key(s) `deckhand run` needs:\n{}", issues.len(), Issues(issues))]
    NotForRun { issues: Vec<Issue> },
}

/// Where `deckhand run` takes jobs from and records results: optional for the
/// other commands, required by the agent.
#[derive(Debug, Clone, Copy)]
pub struct RunTargets<'a> {
    pub queue_url: &'a str,
    pub bucket: &'a str,
}

/// One invalid key and the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// The full key (`queue.wait_secs`) or environment variable.
    pub key: String,
    pub rule: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.rule)
    }
}

struct Issues<'a>(&'a [Issue]);

impl fmt::Display for Issues<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  {issue}")?;
        }
        Ok(())
    }
}

/// A snapshot of the process environment, and which of our variables were used.
pub struct Env {
    vars: BTreeMap<String, String>,
    used: RefCell<BTreeSet<String>>,
}

impl Env {
    pub fn from_process() -> Self {
        Self::from_iter(std::env::vars())
    }

    fn get(&self, name: &str) -> Option<String> {
        let value = self.vars.get(name)?;
        self.used.borrow_mut().insert(name.to_owned());
        Some(value.clone())
    }

    /// The config file named by `DECKHAND_CONFIG`, if any.
    pub fn config_path(&self) -> Option<PathBuf> {
        self.vars.get("DECKHAND_CONFIG").map(PathBuf::from)
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Env {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Env {
            vars: iter
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            used: RefCell::default(),
        }
    }
}

// === impl Config ===

impl Config {
    /// Reads and validates the file at `path` with `env`'s overrides.
    pub fn load(path: &Path, env: &Env) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, env).map_err(|e| e.at(path))
    }

    /// Validates TOML text; errors carry an empty path until [`Config::load`] fills it.
    pub fn parse(text: &str, env: &Env) -> Result<Config, ConfigError> {
        let table: Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax {
                path: PathBuf::new(),
                message: e.message().to_owned(),
            })?;
        let mut issues = Vec::new();
        let config = read(
            &mut Reader {
                env,
                issues: &mut issues,
            },
            table,
        );
        for name in env.vars.keys() {
            let ours = name.starts_with(ENV_PREFIX) && !NON_OVERRIDE_VARS.contains(&name.as_str());
            if ours && !env.used.borrow().contains(name) {
                issues.push(Issue {
                    key: name.clone(),
                    rule: "names no config key (overrides are DECKHAND_<SECTION>_<KEY>)".into(),
                });
            }
        }
        if issues.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: PathBuf::new(),
                issues,
            })
        }
    }

    /// The profile a job names, if the pool has it.
    /// What `deckhand run` needs beyond a valid file; `deckhand check` reports the
    /// same issues.
    pub fn run_targets(&self) -> Result<RunTargets<'_>, ConfigError> {
        let mut issues = Vec::new();
        let mut need = |key: &str, value: &Option<String>, why: &str| {
            if value.is_none() {
                issues.push(Issue {
                    key: key.to_owned(),
                    rule: format!("is not set: {why}"),
                });
            }
        };
        need(
            "queue.url",
            &self.queue.url,
            "`deckhand run` takes jobs from it",
        );
        need(
            "results.bucket",
            &self.results.bucket,
            "`deckhand run` records results in it",
        );
        match (&self.queue.url, &self.results.bucket) {
            (Some(queue_url), Some(bucket)) => Ok(RunTargets { queue_url, bucket }),
            _ => Err(ConfigError::NotForRun { issues }),
        }
    }

    pub fn profile(&self, name: &str) -> Option<&Profile> {
        self.profiles.get(name)
    }
}

impl ConfigError {
    fn at(self, path: &Path) -> Self {
        match self {
            ConfigError::Syntax { message, .. } => ConfigError::Syntax {
                path: path.to_owned(),
                message,
            },
            ConfigError::Invalid { issues, .. } => ConfigError::Invalid {
                path: path.to_owned(),
                issues,
            },
            other => other,
        }
    }

    /// The invalid keys, for callers (and tests) that want them one by one.
    pub fn issues(&self) -> &[Issue] {
        match self {
            ConfigError::Invalid { issues, .. } | ConfigError::NotForRun { issues } => issues,
            _ => &[],
        }
    }
}

/// Reads every section in a fixed order (issues are reported in it), then
/// reports what is left of the file as unknown.
fn read(r: &mut Reader<'_>, mut root: Table) -> Config {
    let agent = AgentConfig::read(r, &mut root);
    let docker = DockerConfig::read(r, &mut root);
    let aws = AwsConfig::read(r, &mut root);
    let imds = ImdsConfig::read(r, &mut root);
    let queue = QueueConfig::read(r, &mut root);
    let results = ResultsConfig::read(r, &mut root);
    let secrets = SecretsConfig::read(r, &mut root, &results);
    let images = ImagesConfig::read(r, &mut root);
    let cache = CacheConfig::read(r, &mut root);
    let caches = CachesConfig::read(r, &mut root);
    let drain = DrainConfig::read(r, &mut root);
    let metrics = MetricsConfig::read(r, &mut root);
    let credentials = CredentialsConfig::read(r, &mut root);
    let disk = DiskConfig::read(r, &mut root);
    let admission = AdmissionConfig::read(r, &mut root, &secrets);
    let git = GitConfig::read(r, &mut root);
    let autoscaling = AutoscalingConfig::read(r, &mut root);
    let log_forwarder = LogForwarderConfig::read(r, &mut root);
    let profiles = profiles::read(r, &mut root);
    profiles::check_fits_the_queue(r, &profiles, images.pull_timeout, drain.stop_grace);
    for key in root.keys() {
        r.issue(key, "unknown section");
    }
    Config {
        agent,
        docker,
        aws,
        imds,
        queue,
        results,
        secrets,
        images,
        cache,
        caches,
        drain,
        metrics,
        disk,
        credentials,
        admission,
        git,
        autoscaling,
        log_forwarder,
        profiles,
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod docs_tests;
#[cfg(test)]
mod properties;
