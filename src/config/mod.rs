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
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value};

use crate::rules::S3Location;

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
    pub drain: DrainConfig,
    pub metrics: MetricsConfig,
    pub disk: DiskConfig,
    pub credentials: CredentialsConfig,
    /// Job profiles by name; `default` always exists.
    pub profiles: BTreeMap<String, Profile>,
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// How many jobs run at once.
    pub slots: usize,
    /// Scratch space for the agent (spooled logs, cache markers). Never holds
    /// secrets.
    pub work_dir: PathBuf,
    /// Where each job's secret files are written; must be on tmpfs.
    pub secrets_dir: PathBuf,
    /// Stop after this long without a job; `None` never does.
    pub idle_shutdown: Option<Duration>,
    /// Overrides the instance id that results and logs carry (off EC2, or in tests).
    pub instance_id: Option<String>,
    /// What to do with the instance after an idle drain or an Auto Scaling
    /// termination.
    pub on_exit: OnExit,
    /// The command `on_exit = "shutdown"` runs (and `terminate` falls back to when
    /// EC2 refuses to terminate the instance).
    pub shutdown_command: Vec<String>,
    /// The Auto Scaling termination hook to complete once drained. `None`: the
    /// group's one `autoscaling:EC2_INSTANCE_TERMINATING` hook, if it has exactly one.
    pub lifecycle_hook: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExit {
    None,
    /// TerminateInstanceInAutoScalingGroup, decrementing the desired capacity;
    /// TerminateInstances for an instance in no group.
    Terminate,
    Shutdown,
}

#[derive(Debug, Clone)]
pub struct ImdsConfig {
    /// Off EC2 (or in tests without a simulator) the watchers are off.
    pub enabled: bool,
    pub endpoint: String,
    pub poll: Duration,
}

#[derive(Debug, Clone)]
pub struct DockerConfig {
    pub socket: PathBuf,
}

#[derive(Debug, Clone)]
pub struct CredentialsConfig {
    /// Where `deckhand run` serves per-job credentials, and the address jobs are
    /// given. AWS SDKs accept only a loopback or the ECS link-local address over
    /// plain HTTP; the host puts 169.254.170.2 on `lo`, which a job's network
    /// reaches through the host.
    pub listen: SocketAddr,
    /// How long each job's role session lasts before it is renewed.
    pub session: Duration,
}

impl Default for CredentialsConfig {
    fn default() -> Self {
        CredentialsConfig {
            listen: SocketAddr::from(([169, 254, 170, 2], 51679)),
            session: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DiskConfig {
    /// Below this much free space (Docker's data root or the work dir) no job
    /// starts; 0 never stops intake.
    pub min_free_mb: u64,
    /// Below this, unused images the agent ran are removed; 0 never collects.
    pub gc_free_mb: u64,
}

impl Default for DiskConfig {
    fn default() -> Self {
        DiskConfig {
            min_free_mb: 2048,
            gc_free_mb: 10240,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct MetricsConfig {
    /// Where `deckhand run` serves `/metrics` and `/healthz`; `None`: nowhere.
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Default)]
pub struct AwsConfig {
    pub region: Option<String>,
    /// A local emulator (moto). Never set in production.
    pub endpoint_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Required by `deckhand run`; `exec` needs no queue.
    pub url: Option<String>,
    /// Long-poll wait of one ReceiveMessage.
    pub wait: Duration,
    /// How long a received message stays hidden; heartbeats extend it while the job runs.
    pub visibility_timeout: Duration,
    pub dead_letter_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ResultsConfig {
    pub bucket: Option<String>,
    /// Key prefix; a result lands at `<prefix><id>/result.json`.
    pub prefix: String,
    pub queue_url: Option<String>,
    pub webhook_url: Option<String>,
    /// The name of the secret (in the bundle) whose value signs webhook bodies
    /// (`X-Deckhand-Signature`).
    pub webhook_secret: Option<String>,
}

/// The pool's sealed secret bundle (see `deckhand seal`).
#[derive(Debug, Clone, Default)]
pub struct SecretsConfig {
    /// `None`: this pool has no secrets.
    pub bundle: Option<S3Location>,
    /// The KMS encryption context the bundle was sealed with.
    pub context: BTreeMap<String, String>,
    /// The only KMS key the agent will decrypt with: a bundle sealed under any
    /// other key is refused (IncorrectKeyException in AWS; AccessDenied in moto),
    /// even where the role could use that key.
    pub kms_key_id: Option<String>,
    /// How long bootstrap retries transient failures before giving up.
    pub boot_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ImagesConfig {
    /// `host[:port]` of every registry jobs may use.
    pub allowed_registries: Vec<String>,
    pub require_digest: bool,
    pub pull_timeout: Duration,
    /// Pulled before the agent reports ready.
    pub warm: Vec<crate::job::image::ImageRef>,
    pub warm_failure: WarmFailure,
    /// Registry `host[:port]` to the name of a secret holding `user:password`.
    pub registry_auth: BTreeMap<String, String>,
}

impl ImagesConfig {
    pub fn policy(&self) -> crate::job::image::Policy<'_> {
        crate::job::image::Policy {
            allowed_registries: &self.allowed_registries,
            require_digest: self.require_digest,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarmFailure {
    /// Exit 69: a host without its base images is not ready.
    Fail,
    Continue,
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// A Docker volume mounted read-only into every job, if set.
    pub volume: Option<String>,
    /// An archive in S3 extracted into a volume of its own and mounted read-only.
    pub source: Option<S3Location>,
    pub mount: String,
    /// How often to look for a new version of `source`; `None`: only at boot.
    pub refresh: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct DrainConfig {
    /// Running jobs on a spot notice: hand back at once, or finish if they can
    /// before the deadline.
    pub on_spot: SpotPolicy,
    pub on_rebalance: RebalancePolicy,
    /// The drain's deadline is the interruption time minus this.
    pub safety_margin: Duration,
    /// On SIGTERM, how long running jobs may go on before they are stopped and released.
    pub stop_timeout: Duration,
    /// Between a container's SIGTERM and its SIGKILL.
    pub stop_grace: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpotPolicy {
    Release,
    FinishIfPossible,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebalancePolicy {
    Ignore,
    /// Take no more jobs; finish the running ones.
    StopIntake,
    /// As on SIGTERM.
    Drain,
}

/// A job profile: the pool's "task definition". Holds the defaults and the caps of
/// what a job may ask for.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub memory_mb: u64,
    pub cpus: f64,
    pub pids: u64,
    /// A job's timeout when it names none.
    pub timeout: Duration,
    /// The longest timeout a job may ask for.
    pub max_timeout: Duration,
    /// Docker network mode: `bridge`, `none` or a user-defined network.
    pub network: String,
    /// Secrets a job of this profile may ask for.
    pub secrets: Vec<String>,
    /// Of those, the ones also given as environment variables.
    pub env_secrets: Vec<String>,
    /// The IAM role whose credentials a job of this profile gets, and no other.
    pub role_arn: Option<String>,
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            memory_mb: 2048,
            cpus: 1.0,
            pids: 1024,
            timeout: Duration::from_secs(3600),
            max_timeout: Duration::from_secs(86_400),
            network: "bridge".to_owned(),
            secrets: Vec::new(),
            env_secrets: Vec::new(),
            role_arn: None,
        }
    }
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
        let config = Reader {
            env,
            issues: &mut issues,
        }
        .config(table);
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

// === the reader ===

/// Walks the TOML table section by section, taking each known key (or its
/// environment override), recording every problem, and reporting what is left over
/// as unknown.
struct Reader<'a> {
    env: &'a Env,
    issues: &'a mut Vec<Issue>,
}

/// One table being read: its dotted path and the keys not yet taken.
struct Section {
    path: String,
    table: Table,
}

impl Reader<'_> {
    fn config(&mut self, mut root: Table) -> Config {
        let mut section = self.section(&mut root, "agent");
        let agent = AgentConfig {
            slots: self.int(&mut section, "slots", 1..=64, 1) as usize,
            work_dir: self.abs_path(&mut section, "work_dir", "/var/lib/deckhand"),
            secrets_dir: self.abs_path(&mut section, "secrets_dir", "/run/deckhand/secrets"),
            idle_shutdown: match self.int(&mut section, "idle_shutdown_secs", 0..=604_800, 0) {
                0 => None,
                secs => Some(Duration::from_secs(secs)),
            },
            instance_id: self.opt_string(&mut section, "instance_id"),
            on_exit: self.choice(
                &mut section,
                "on_exit",
                &[
                    ("none", OnExit::None),
                    ("terminate", OnExit::Terminate),
                    ("shutdown", OnExit::Shutdown),
                ],
                OnExit::None,
            ),
            shutdown_command: {
                let command = self.strings(&mut section, "shutdown_command");
                if command.is_empty() {
                    vec!["shutdown".into(), "-h".into(), "now".into()]
                } else {
                    command
                }
            },
            lifecycle_hook: self.opt_string(&mut section, "lifecycle_hook"),
        };
        self.finish(section);

        let mut docker = self.section(&mut root, "docker");
        let docker_cfg = DockerConfig {
            socket: self.abs_path(&mut docker, "socket", "/var/run/docker.sock"),
        };
        self.finish(docker);

        let mut aws = self.section(&mut root, "aws");
        let aws_cfg = AwsConfig {
            region: self.opt_string(&mut aws, "region"),
            endpoint_url: self.opt_url(&mut aws, "endpoint_url"),
        };
        self.finish(aws);

        let mut imds = self.section(&mut root, "imds");
        let imds_cfg = ImdsConfig {
            enabled: self.bool(&mut imds, "enabled", true),
            endpoint: self
                .opt_url(&mut imds, "endpoint")
                .unwrap_or_else(|| "http://169.254.169.254".to_owned()),
            poll: Duration::from_millis(self.int(&mut imds, "poll_ms", 100..=5000, 1000)),
        };
        self.finish(imds);

        let mut queue = self.section(&mut root, "queue");
        let queue_cfg = QueueConfig {
            url: self.opt_url(&mut queue, "url"),
            wait: Duration::from_secs(self.int(&mut queue, "wait_secs", 0..=20, 20)),
            visibility_timeout: Duration::from_secs(self.int(
                &mut queue,
                "visibility_timeout_secs",
                30..=43_200,
                300,
            )),
            dead_letter_url: self.opt_url(&mut queue, "dead_letter_url"),
        };
        self.finish(queue);

        let mut results = self.section(&mut root, "results");
        let results_cfg = ResultsConfig {
            bucket: self.opt_string(&mut results, "bucket"),
            prefix: self
                .opt_string(&mut results, "prefix")
                .unwrap_or_else(|| "results/".to_owned()),
            queue_url: self.opt_url(&mut results, "queue_url"),
            webhook_url: self.opt_url(&mut results, "webhook_url"),
            webhook_secret: self.opt_string(&mut results, "webhook_secret"),
        };
        if results_cfg.webhook_url.is_some() && results_cfg.webhook_secret.is_none() {
            self.issue(
                "results.webhook_secret",
                "required when results.webhook_url is set (results are signed)",
            );
        }
        self.finish(results);

        let mut secrets = self.section(&mut root, "secrets");
        let bucket = self.opt_string(&mut secrets, "bucket");
        let key = self.opt_string(&mut secrets, "key");
        let bundle = match (bucket, key) {
            (Some(bucket), Some(key)) => Some(S3Location { bucket, key }),
            (None, None) => None,
            (Some(_), None) => {
                self.issue("secrets.key", "required when secrets.bucket is set");
                None
            }
            (None, Some(_)) => {
                self.issue("secrets.bucket", "required when secrets.key is set");
                None
            }
        };
        let secrets_cfg = SecretsConfig {
            bundle,
            context: self.string_table(&mut secrets, "context"),
            kms_key_id: self.opt_string(&mut secrets, "kms_key_id"),
            boot_timeout: Duration::from_secs(self.int(
                &mut secrets,
                "boot_timeout_secs",
                1..=3600,
                120,
            )),
        };
        if secrets_cfg.bundle.is_some() && secrets_cfg.context.is_empty() {
            self.issue(
                "secrets.context",
                "required with a bundle: the KMS encryption context binds the bundle to this pool (e.g. { pool = \"ci\" })",
            );
        }
        if results_cfg.webhook_secret.is_some() && secrets_cfg.bundle.is_none() {
            self.issue(
                "results.webhook_secret",
                "names a secret, and this pool has no secret bundle ([secrets] bucket and key)",
            );
        }
        self.finish(secrets);

        let mut images = self.section(&mut root, "images");
        let allowed_registries = self.registries(&mut images);
        let require_digest = self.bool(&mut images, "require_digest", false);
        let pull_timeout =
            Duration::from_secs(self.int(&mut images, "pull_timeout_secs", 1..=7200, 600));
        let mut images_cfg = ImagesConfig {
            allowed_registries,
            require_digest,
            pull_timeout,
            warm: Vec::new(),
            warm_failure: self.choice(
                &mut images,
                "warm_failure",
                &[
                    ("fail", WarmFailure::Fail),
                    ("continue", WarmFailure::Continue),
                ],
                WarmFailure::Fail,
            ),
            registry_auth: self
                .string_table(&mut images, "registry_auth")
                .into_iter()
                .map(|(registry, secret)| (registry.to_ascii_lowercase(), secret))
                .collect(),
        };
        for image in self.strings(&mut images, "warm") {
            // Warm images obey the same policy as jobs' images.
            match crate::job::image::ImageRef::parse(&image, images_cfg.policy()) {
                Ok(image) => images_cfg.warm.push(image),
                Err(rule) => self.issue("images.warm", &format!("{image:?}: {rule}")),
            }
        }
        for registry in images_cfg.registry_auth.keys() {
            if !images_cfg.allowed_registries.contains(registry) {
                self.issue(
                    &format!("images.registry_auth.{registry}"),
                    "names a registry that is not in images.allowed_registries",
                );
            }
        }
        self.finish(images);

        let mut cache = self.section(&mut root, "cache");
        let cache_cfg = CacheConfig {
            volume: self.opt_string(&mut cache, "volume"),
            source: self.opt_string(&mut cache, "source").and_then(|url| {
                let location = crate::rules::S3Location::parse(&url);
                if location.is_none() {
                    self.issue(
                        "cache.source",
                        &format!("{url:?} must be s3://<bucket>/<key>"),
                    );
                }
                location
            }),
            mount: self.container_path(&mut cache, "mount", "/cache"),
            refresh: match self.int(&mut cache, "refresh_secs", 0..=86_400, 300) {
                0 => None,
                secs => Some(Duration::from_secs(secs)),
            },
        };
        if cache_cfg.volume.is_some() && cache_cfg.source.is_some() {
            self.issue("cache.volume", "set cache.volume or cache.source, not both");
        }
        self.finish(cache);

        let mut drain = self.section(&mut root, "drain");
        let drain_cfg = DrainConfig {
            on_spot: self.choice(
                &mut drain,
                "on_spot",
                &[
                    ("release", SpotPolicy::Release),
                    ("finish-if-possible", SpotPolicy::FinishIfPossible),
                ],
                SpotPolicy::FinishIfPossible,
            ),
            on_rebalance: self.choice(
                &mut drain,
                "on_rebalance",
                &[
                    ("ignore", RebalancePolicy::Ignore),
                    ("stop-intake", RebalancePolicy::StopIntake),
                    ("drain", RebalancePolicy::Drain),
                ],
                RebalancePolicy::StopIntake,
            ),
            safety_margin: Duration::from_secs(self.int(
                &mut drain,
                "safety_margin_secs",
                0..=110,
                15,
            )),
            stop_timeout: Duration::from_secs(self.int(
                &mut drain,
                "stop_timeout_secs",
                0..=86_400,
                60,
            )),
            stop_grace: Duration::from_secs(self.int(&mut drain, "stop_grace_secs", 0..=300, 10)),
        };
        self.finish(drain);

        let mut metrics = self.section(&mut root, "metrics");
        let metrics_cfg = MetricsConfig {
            listen: self.opt_string(&mut metrics, "listen").and_then(|text| {
                match text.parse::<SocketAddr>() {
                    Ok(address) => Some(address),
                    Err(_) => {
                        self.issue(
                            "metrics.listen",
                            &format!(
                                "{text:?} must be an IP address and a port, like \"127.0.0.1:9102\""
                            ),
                        );
                        None
                    }
                }
            }),
        };
        self.finish(metrics);

        let mut credentials = self.section(&mut root, "credentials");
        let defaults = CredentialsConfig::default();
        let credentials_cfg = CredentialsConfig {
            listen: self
                .opt_string(&mut credentials, "listen")
                .and_then(|text| match text.parse::<SocketAddr>() {
                    Ok(address) => Some(address),
                    Err(_) => {
                        self.issue(
                            "credentials.listen",
                            &format!("{text:?} must be an IP address and a port, like \"169.254.170.2:51679\""),
                        );
                        None
                    }
                })
                .unwrap_or(defaults.listen),
            session: Duration::from_secs(self.int(
                &mut credentials,
                "session_secs",
                900..=43_200,
                defaults.session.as_secs(),
            )),
        };
        self.finish(credentials);

        let mut disk = self.section(&mut root, "disk");
        let defaults = DiskConfig::default();
        let disk_cfg = DiskConfig {
            min_free_mb: self.int(
                &mut disk,
                "min_free_mb",
                0..=1_000_000_000,
                defaults.min_free_mb,
            ),
            gc_free_mb: self.int(
                &mut disk,
                "gc_free_mb",
                0..=1_000_000_000,
                defaults.gc_free_mb,
            ),
        };
        if disk_cfg.gc_free_mb < disk_cfg.min_free_mb {
            self.issue(
                "disk.gc_free_mb",
                &format!(
                    "{} is below disk.min_free_mb = {}: images must be collected before intake stops",
                    disk_cfg.gc_free_mb, disk_cfg.min_free_mb
                ),
            );
        }
        self.finish(disk);

        let profiles = self.profiles(&mut root);

        for key in root.keys() {
            self.issue(key, "unknown section");
        }

        Config {
            agent,
            docker: docker_cfg,
            aws: aws_cfg,
            imds: imds_cfg,
            queue: queue_cfg,
            results: results_cfg,
            secrets: secrets_cfg,
            images: images_cfg,
            cache: cache_cfg,
            drain: drain_cfg,
            metrics: metrics_cfg,
            disk: disk_cfg,
            credentials: credentials_cfg,
            profiles,
        }
    }

    fn profiles(&mut self, root: &mut Table) -> BTreeMap<String, Profile> {
        let mut profiles = BTreeMap::new();
        let mut all = self.section(root, "profiles");
        // `default` is read even when the file leaves it out, so its keys can still
        // be overridden from the environment.
        all.table
            .entry("default")
            .or_insert_with(|| Value::Table(Table::new()));
        let names: Vec<String> = all.table.keys().cloned().collect();
        for name in names {
            if !valid_profile_name(&name) {
                self.issue(
                    &format!("profiles.{name}"),
                    "a profile name is 1 to 64 of [a-z0-9_-], starting with a letter or digit",
                );
            }
            let mut section = self.subsection(&mut all, &name);
            let default = Profile::default();
            let memory_mb = self.int(&mut section, "memory_mb", 6..=1 << 24, default.memory_mb);
            let cpus = self.float(&mut section, "cpus", 0.01..=512.0, default.cpus);
            let pids = self.int(&mut section, "pids", 1..=1 << 22, default.pids);
            let timeout_secs = self.int(&mut section, "timeout_secs", 1..=86_400, 3600);
            let max_timeout_secs = self.int(&mut section, "max_timeout_secs", 1..=86_400, 86_400);
            if timeout_secs > max_timeout_secs {
                self.issue(
                    &format!("profiles.{name}.timeout_secs"),
                    &format!("{timeout_secs} is above max_timeout_secs ({max_timeout_secs})"),
                );
            }
            let network = self.network(&mut section);
            let secrets = self.strings(&mut section, "secrets");
            let env_secrets = self.strings(&mut section, "env_secrets");
            for name in &env_secrets {
                let env = crate::rules::secret_env_name(name);
                if crate::rules::reserved_env_prefix(&env).is_some() || env == "CI" {
                    self.issue(
                        &format!("profiles.{}.env_secrets", name_of(&section)),
                        &format!(
                            "{name:?} would be the variable {env}, which deckhand sets itself"
                        ),
                    );
                }
                if !secrets.contains(name) {
                    self.issue(
                        &format!("profiles.{name_}.env_secrets", name_ = name_of(&section)),
                        &format!("{name:?} is not in this profile's secrets"),
                    );
                }
            }
            let role_arn = self.opt_string(&mut section, "role_arn");
            if let Some(arn) = &role_arn
                && !valid_role_arn(arn)
            {
                self.issue(
                    &format!("profiles.{}.role_arn", name_of(&section)),
                    &format!("{arn:?} must be an IAM role ARN, arn:aws:iam::<account>:role/<name>"),
                );
            }
            self.finish(section);
            profiles.insert(
                name,
                Profile {
                    memory_mb,
                    cpus,
                    pids,
                    timeout: Duration::from_secs(timeout_secs),
                    max_timeout: Duration::from_secs(max_timeout_secs),
                    network,
                    secrets,
                    env_secrets,
                    role_arn,
                },
            );
        }
        profiles
    }

    fn network(&mut self, section: &mut Section) -> String {
        let Some(network) = self.opt_string(section, "network") else {
            return Profile::default().network;
        };
        let key = section.key("network");
        if network == "host" {
            self.issue(
                &key,
                "\"host\" is not allowed: it would share the host's network and its instance metadata",
            );
        } else if network.starts_with("container:") {
            self.issue(&key, "joining another container's network is not allowed");
        } else if !valid_docker_name(&network) {
            self.issue(
                &key,
                "must be \"bridge\", \"none\" or the name of a Docker network",
            );
        }
        network
    }

    fn registries(&mut self, section: &mut Section) -> Vec<String> {
        let key = section.key("allowed_registries");
        let registries = self.strings(section, "allowed_registries");
        for registry in &registries {
            if !crate::rules::valid_registry_host(registry) {
                self.issue(&key, &format!("{registry:?} is not a registry host[:port]"));
            }
        }
        registries
            .into_iter()
            .map(|r| r.to_ascii_lowercase())
            .collect()
    }

    // --- primitives: each takes the key from the section (env first), checks it,
    // --- records an issue and falls back to the default when it is wrong.

    fn section(&mut self, root: &mut Table, name: &str) -> Section {
        let table = match root.remove(name) {
            None => Table::new(),
            Some(Value::Table(t)) => t,
            Some(_) => {
                self.issue(name, "must be a table ([section])");
                Table::new()
            }
        };
        Section {
            path: name.to_owned(),
            table,
        }
    }

    fn subsection(&mut self, parent: &mut Section, name: &str) -> Section {
        let path = parent.key(name);
        let table = match parent.table.remove(name) {
            Some(Value::Table(t)) => t,
            _ => {
                self.issue(&path, "must be a table");
                Table::new()
            }
        };
        Section { path, table }
    }

    /// Reports the keys nobody took.
    fn finish(&mut self, section: Section) {
        for key in section.table.keys() {
            self.issue(&section.key(key), "unknown key");
        }
    }

    fn take(&mut self, section: &mut Section, key: &str) -> Option<Value> {
        let from_file = section.table.remove(key);
        match self.env.get(&section.env_name(key)) {
            Some(text) => Some(env_value(&text)),
            None => from_file,
        }
    }

    fn int(
        &mut self,
        section: &mut Section,
        key: &str,
        range: RangeInclusive<u64>,
        default: u64,
    ) -> u64 {
        self.number(
            section,
            key,
            range,
            default,
            "a whole number",
            |value| match value {
                Value::Integer(i) => u64::try_from(i).ok(),
                Value::String(s) => s.trim().parse().ok(),
                _ => None,
            },
        )
    }

    fn float(
        &mut self,
        section: &mut Section,
        key: &str,
        range: RangeInclusive<f64>,
        default: f64,
    ) -> f64 {
        self.number(
            section,
            key,
            range,
            default,
            "a number",
            |value| match value {
                Value::Float(f) => Some(f),
                Value::Integer(i) => Some(i as f64),
                Value::String(s) => s.trim().parse().ok(),
                _ => None,
            },
        )
    }

    /// A number in `range`; `kind` names what a value that does not parse should be.
    fn number<T: PartialOrd + fmt::Display + Copy>(
        &mut self,
        section: &mut Section,
        key: &str,
        range: RangeInclusive<T>,
        default: T,
        kind: &str,
        parse: impl FnOnce(Value) -> Option<T>,
    ) -> T {
        let full = section.key(key);
        let Some(value) = self.take(section, key) else {
            return default;
        };
        match parse(value) {
            Some(v) if range.contains(&v) => v,
            Some(v) => {
                self.issue(
                    &full,
                    &format!("{v} is out of range ({} to {})", range.start(), range.end()),
                );
                default
            }
            None => {
                self.issue(&full, &format!("must be {kind}"));
                default
            }
        }
    }

    fn choice<T: Copy>(
        &mut self,
        section: &mut Section,
        key: &str,
        options: &[(&str, T)],
        default: T,
    ) -> T {
        let full = section.key(key);
        let Some(text) = self.opt_string(section, key) else {
            return default;
        };
        match options.iter().find(|(name, _)| *name == text) {
            Some((_, value)) => *value,
            None => {
                let names: Vec<String> = options.iter().map(|(n, _)| format!("{n:?}")).collect();
                self.issue(
                    &full,
                    &format!("{text:?} is not one of {}", names.join(", ")),
                );
                default
            }
        }
    }

    fn bool(&mut self, section: &mut Section, key: &str, default: bool) -> bool {
        let full = section.key(key);
        match self.take(section, key) {
            None => default,
            Some(Value::Boolean(b)) => b,
            Some(Value::String(s)) if s == "true" => true,
            Some(Value::String(s)) if s == "false" => false,
            Some(_) => {
                self.issue(&full, "must be true or false");
                default
            }
        }
    }

    fn opt_string(&mut self, section: &mut Section, key: &str) -> Option<String> {
        let full = section.key(key);
        match self.take(section, key) {
            None => None,
            Some(Value::String(s)) if s.trim().is_empty() => {
                self.issue(&full, "must not be empty (leave the key out instead)");
                None
            }
            Some(Value::String(s)) => Some(s),
            Some(_) => {
                self.issue(&full, "must be a string");
                None
            }
        }
    }

    fn opt_url(&mut self, section: &mut Section, key: &str) -> Option<String> {
        let url = self.opt_string(section, key)?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            self.issue(&section.key(key), "must be an http:// or https:// URL");
        }
        Some(url)
    }

    fn abs_path(&mut self, section: &mut Section, key: &str, default: &str) -> PathBuf {
        match self.opt_string(section, key) {
            None => PathBuf::from(default),
            Some(p) if p.starts_with('/') => PathBuf::from(p),
            Some(p) => {
                self.issue(
                    &section.key(key),
                    &format!("{p:?} must be an absolute path"),
                );
                PathBuf::from(default)
            }
        }
    }

    fn container_path(&mut self, section: &mut Section, key: &str, default: &str) -> String {
        match self.opt_string(section, key) {
            None => default.to_owned(),
            Some(p) => {
                if let Err(rule) = crate::rules::check_container_path(&p) {
                    self.issue(&section.key(key), &rule);
                }
                p
            }
        }
    }

    /// A table of string to string (`context = { pool = "ci" }`).
    fn string_table(&mut self, section: &mut Section, key: &str) -> BTreeMap<String, String> {
        let full = section.key(key);
        match self.take(section, key) {
            None => BTreeMap::new(),
            Some(Value::Table(table)) => {
                let mut out = BTreeMap::new();
                for (k, v) in table {
                    match v {
                        Value::String(s) => {
                            out.insert(k, s);
                        }
                        _ => self.issue(&format!("{full}.{k}"), "must be a string"),
                    }
                }
                out
            }
            Some(_) => {
                self.issue(&full, "must be a table of strings");
                BTreeMap::new()
            }
        }
    }

    fn strings(&mut self, section: &mut Section, key: &str) -> Vec<String> {
        let full = section.key(key);
        match self.take(section, key) {
            None => Vec::new(),
            Some(Value::Array(items)) => {
                let mut out = Vec::new();
                for item in items {
                    match item {
                        Value::String(s) => out.push(s),
                        _ => self.issue(&full, "must be a list of strings"),
                    }
                }
                out
            }
            Some(_) => {
                self.issue(&full, "must be a list of strings");
                Vec::new()
            }
        }
    }

    fn issue(&mut self, key: &str, rule: &str) {
        self.issues.push(Issue {
            key: key.to_owned(),
            rule: rule.to_owned(),
        });
    }
}

impl Section {
    fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    fn env_name(&self, key: &str) -> String {
        let dotted = self.key(key);
        let mut name = String::from(ENV_PREFIX);
        name.extend(dotted.chars().map(|c| match c {
            '.' | '-' => '_',
            c => c.to_ascii_uppercase(),
        }));
        name
    }
}

/// An override's text is a TOML value where it parses as one (`4`, `true`,
/// `["a", "b"]`), and a plain string otherwise (`http://…`).
fn env_value(text: &str) -> Value {
    let wrapped = format!("v = {text}");
    match wrapped.parse::<Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| Value::String(text.to_owned())),
        Err(_) if text.contains(',') && !text.contains("://") => Value::Array(
            text.split(',')
                .map(|s| Value::String(s.trim().to_owned()))
                .collect(),
        ),
        Err(_) => Value::String(text.to_owned()),
    }
}

/// The profile name of a `profiles.NAME` section.
fn name_of(section: &Section) -> &str {
    section
        .path
        .strip_prefix("profiles.")
        .unwrap_or(&section.path)
}

fn valid_profile_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// `arn:<partition>:iam::<12 digits>:role/<path and name>`.
fn valid_role_arn(arn: &str) -> bool {
    let Some((partition, rest)) = arn
        .strip_prefix("arn:")
        .and_then(|rest| rest.split_once(":iam::"))
    else {
        return false;
    };
    let Some((account, name)) = rest.split_once(":role/") else {
        return false;
    };
    partition.starts_with("aws")
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && !name.is_empty()
        && name.len() <= 512
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_/-".contains(&b))
}

/// Docker's rule for network and volume names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub(crate) fn valid_docker_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

#[cfg(test)]
mod tests;
