//! The job message, version 1: parsed strictly, then checked against the pool's
//! policy. A [`Job`] exists only once every rule has passed.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::defaults::MAX_JOB_TIMEOUT_SECS;
use crate::config::{Config, Profile};
use crate::image::ImageRef;
use crate::job::artifacts::{Caps, MAX_PATTERNS, Pattern};
use crate::job::inputs::{Input, InputSpec};
use crate::job::source::{Source, SourceSpec};
use crate::rules::{
    check_container_path, is_under, reserved_env_prefix, truncate, valid_env_name, valid_id,
};
use limits::{ResourceCaps, check_limits};
pub use retry::RetrySpec;
pub use services::{Ready, Service, ServiceSpec};

/// The longest environment variable name a job may set.
pub const MAX_ENV_NAME_BYTES: usize = 256;
/// The longest `NAME=value` the kernel passes to a process (MAX_ARG_STRLEN, less
/// its NUL): past it the container could not start.
pub const MAX_ENV_ENTRY_BYTES: usize = 131_071;

/// The least CPU share Docker turns into a limit.
pub const MIN_CPUS: f64 = 0.01;

/// The schema version this agent speaks.
pub const VERSION: u32 = 1;

/// The wire form of a job. Unknown fields are an error: a typo must not be ignored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub version: u32,
    pub id: String,
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourcesSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Paths or globs relative to the workdir, uploaded after the container exits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<String>,
    /// S3 objects placed in the workspace before the container starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<InputSpec>,
    /// Containers that run beside the job, on its localhost.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceSpec>,
    /// A git commit checked out into the workspace before the container starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceSpec>,
    /// Exit codes that mean "try again", and how often.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// How long the job is expected to take: after a rebalance recommendation,
    /// `admit-if-fits` takes it only if it would end before the horizon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_secs: Option<u64>,
    /// Keyed trees restored before it starts and saved after it succeeds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caches: Vec<crate::job::caches::CacheSpec>,
    /// An image built from a Dockerfile in the workspace after the command
    /// succeeds (or as the whole job, without one), and pushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_build: Option<crate::job::build::ImageBuildSpec>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

/// A job that passed every rule, with the profile's defaults filled in.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    pub image: ImageRef,
    pub command: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub secrets: Vec<String>,
    pub profile: String,
    pub timeout: Duration,
    pub resources: Resources,
    pub workdir: String,
    pub network: String,
    pub artifacts: Vec<Pattern>,
    /// The profile's caps on them.
    pub artifact_caps: Caps,
    pub inputs: Vec<Input>,
    /// The most the inputs may unpack to, together (the profile's `inputs_max_mb`).
    pub inputs_max_bytes: u64,
    /// The most output it may print (the profile's `max_log_mb`).
    pub max_log_bytes: u64,
    /// Its service containers, started before it and ready when it starts.
    pub services: Vec<Service>,
    /// The commit checked out into its workspace, before its inputs.
    pub source: Option<Source>,
    /// Its exit codes that mean "try again" (`max` already capped).
    pub retry: Option<RetrySpec>,
    /// `expected_secs`.
    pub expected: Option<Duration>,
    /// Its `caches`, with what its profile lets it do with them.
    pub caches: crate::job::caches::JobCaches,
    /// Its `image_build`, checked as far as the message goes.
    pub image_build: Option<crate::job::build::ImageBuild>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resources {
    pub memory_mb: u64,
    pub cpus: f64,
    pub pids: u64,
}

/// Why a job was refused: every broken rule, each naming its field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The job's id, when the message is a job by the schema and its id is valid:
    /// only then may its result be recorded under that id.
    pub id: Option<String>,
    pub problems: Vec<Problem>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub rule: String,
}

impl fmt::Display for Rejection {
    /// Every problem, escaped and bounded to [`MAX_REASON_BYTES`]: this text is
    /// recorded, logged, printed and put on the dead-letter copy.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut all = String::new();
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                all.push_str("; ");
            }
            all.push_str(&p.field);
            all.push_str(": ");
            all.push_str(&p.rule);
        }
        f.write_str(&crate::rules::bounded_text(&all, MAX_REASON_BYTES))
    }
}

impl std::error::Error for Rejection {}

/// The longest rejection reason stored or passed on: the input it echoes may be
/// any size (a 200 KB key), and SQS caps a dead-letter copy's attributes.
pub const MAX_REASON_BYTES: usize = 1024;
/// The most secrets a job (or one of its services) may name: a pool has tens.
pub const MAX_SECRETS: usize = 64;

impl Rejection {
    fn one(id: Option<String>, field: &str, rule: impl Into<String>) -> Self {
        Rejection {
            id,
            problems: vec![Problem {
                field: field.to_owned(),
                rule: rule.into(),
            }],
        }
    }
}

// === impl Job ===

impl Job {
    /// Parses a message body and validates it against the pool's config.
    pub fn parse(body: &[u8], config: &Config) -> Result<Job, Rejection> {
        let value = strict::parse(body).map_err(|malformed| {
            let rule = match malformed {
                strict::Malformed::Syntax(e) => format!("not valid JSON: {e}"),
                strict::Malformed::DuplicateKey(key) => {
                    format!("the key {key} is named twice; which one is meant is not clear")
                }
            };
            Rejection::one(None, "body", rule)
        })?;
        if !value.is_object() {
            return Err(Rejection::one(None, "body", "must be a JSON object"));
        }
        if let Some((field, rule)) = strict::misshapen(&value) {
            return Err(Rejection::one(None, &field, rule));
        }
        if let Some(version) = value.get("version").and_then(|v| v.as_u64())
            && version != u64::from(VERSION)
        {
            return Err(Rejection::one(
                None,
                "version",
                format!("unsupported version {version}; this agent speaks version {VERSION}"),
            ));
        }
        // Only a message that is a job by the schema may speak for the id it names:
        // a malformed one recorded under that id would squat it, and the real job
        // sent after would be taken for done. It is recorded under its SQS message id.
        let spec: JobSpec = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { "body".to_owned() } else { path };
            Rejection::one(None, &field, e.into_inner().to_string())
        })?;
        // A policy refusal of a well-formed job is its producer's answer: recorded
        // under the id, where they look.
        let id = Some(spec.id.clone()).filter(|id| valid_id(id));
        spec.validate(config)
            .map_err(|problems| Rejection { id, problems })
    }
}

impl JobSpec {
    /// Checks every rule and reports every problem, not just the first, in a fixed
    /// order: rejections are compared and read by people, so keep it.
    pub fn validate(self, config: &Config) -> Result<Job, Vec<Problem>> {
        let mut problems = Problems::default();
        self.check_identity(&mut problems);
        let image = ImageRef::parse(&self.image, config.images.policy())
            .map_err(|rule| problems.push("image", rule))
            .ok();
        self.check_command(&mut problems);
        self.check_env(&mut problems);

        let profile_name = self.profile.clone().unwrap_or_else(|| "default".to_owned());
        // An unknown profile is one problem; the fields that depend on it are still
        // checked, against the built-in defaults, so every other problem is reported too.
        let default_profile = Profile::default();
        let profile =
            check_profile(config, &profile_name, &mut problems).unwrap_or(&default_profile);
        let named = NamedProfile {
            name: &profile_name,
            profile,
        };
        self.check_secrets(&named, &mut problems);
        let timeout = self.timeout(&named, &mut problems);
        let retry = self.retry(&named, &mut problems);
        let expected = self.expected(timeout, &mut problems);
        let resources = self.resources(&named, &mut problems);
        let workdir = self.workdir(config, &mut problems);
        let artifacts = self.artifacts(&mut problems);
        let inputs = self.inputs(&named, &mut problems);
        let source = self.source(&named, &mut problems);
        let caches = crate::job::caches::check(&self.caches, &workdir, profile, &profile_name)
            .unwrap_or_else(|broken| {
                broken
                    .iter()
                    .for_each(|(field, rule)| problems.push(field, rule));
                Default::default()
            });
        let services =
            services::check(&self.services, &self.secrets, config, &named, &mut problems);
        let image_build = self.image_build.as_ref().and_then(|spec| {
            crate::job::build::check(spec, config, profile, &profile_name)
                .map_err(|broken| {
                    broken
                        .iter()
                        .for_each(|(field, rule)| problems.push(field, rule))
                })
                .ok()
        });

        match image {
            Some(image) if problems.0.is_empty() => Ok(Job {
                id: self.id,
                image,
                command: self.command,
                env: self.env,
                secrets: self.secrets,
                profile: profile_name,
                timeout,
                resources,
                workdir,
                network: profile.network.clone(),
                artifacts,
                artifact_caps: Caps {
                    max_files: profile.artifacts_max_files,
                    max_bytes: profile.artifacts_max_mb.saturating_mul(1_000_000),
                },
                inputs,
                inputs_max_bytes: profile.inputs_max_mb.saturating_mul(1_000_000),
                max_log_bytes: profile.max_log_mb.saturating_mul(1_000_000),
                services,
                source,
                retry,
                expected,
                caches,
                image_build,
            }),
            _ => Err(problems.0),
        }
    }

    /// The schema version and the id.
    fn check_identity(&self, problems: &mut Problems) {
        if self.version != VERSION {
            problems.push("version", format!("must be {VERSION}"));
        }
        if !valid_id(&self.id) {
            problems.push(
                "id",
                format!(
                    "{:?} does not match ^[A-Za-z0-9][A-Za-z0-9._-]{{0,127}}$",
                    truncate(&self.id, 64)
                ),
            );
        }
    }

    fn check_command(&self, problems: &mut Problems) {
        let Some(command) = &self.command else {
            return;
        };
        if command.is_empty() {
            problems.push(
                "command",
                "must not be empty; leave it out to use the image's CMD",
            );
        }
        if command.iter().any(|arg| arg.contains('\0')) {
            problems.push("command", "an argument contains a NUL byte");
        }
    }

    /// Each variable's name (well-formed, not one of deckhand's own) and value.
    fn check_env(&self, problems: &mut Problems) {
        check_env_map(&self.env, "env", problems);
    }

    /// At most 64 patterns, each relative to the workdir and inside it.
    fn artifacts(&self, problems: &mut Problems) -> Vec<Pattern> {
        if self.artifacts.len() > MAX_PATTERNS {
            problems.push(
                "artifacts",
                format!("{} patterns; at most {MAX_PATTERNS}", self.artifacts.len()),
            );
            return Vec::new();
        }
        self.artifacts
            .iter()
            .enumerate()
            .filter_map(|(i, text)| {
                Pattern::parse(text)
                    .map_err(|rule| problems.push(&format!("artifacts[{i}]"), rule))
                    .ok()
            })
            .collect()
    }

    /// Each secret once, at most [`MAX_SECRETS`], and only those the profile
    /// allows.
    fn check_secrets(&self, named: &NamedProfile<'_>, problems: &mut Problems) {
        if self.secrets.len() > MAX_SECRETS {
            problems.push(
                "secrets",
                format!("{} names; at most {MAX_SECRETS}", self.secrets.len()),
            );
            return;
        }
        let mut seen = std::collections::HashSet::new();
        for secret in &self.secrets {
            let field = format!("secrets.{}", truncate(secret, 64));
            if !seen.insert(secret) {
                problems.push(&field, "listed twice");
            } else if !named.profile.secrets.contains(secret) {
                problems.push(&field, format!("not allowed by profile {:?}", named.name));
            }
        }
    }

    /// The job's timeout, or the profile's when it asks for none or for one out of
    /// bounds (then reported).
    fn timeout(&self, named: &NamedProfile<'_>, problems: &mut Problems) -> Duration {
        let profile = named.profile;
        match self.timeout_secs {
            None => profile.timeout,
            Some(secs) if !(1..=MAX_JOB_TIMEOUT_SECS).contains(&secs) => {
                problems.push(
                    "timeout_secs",
                    format!("{secs} is out of range (1 to {MAX_JOB_TIMEOUT_SECS}): SQS hides a message for at most 12 hours"),
                );
                profile.timeout
            }
            Some(secs) if secs > profile.max_timeout.as_secs() => {
                problems.push(
                    "timeout_secs",
                    named.above_cap(secs, profile.max_timeout.as_secs()),
                );
                profile.timeout
            }
            Some(secs) => Duration::from_secs(secs),
        }
    }

    /// Memory, CPUs and processes: what the job asks, the profile's value for what
    /// it leaves out, each between its floor and the profile's value.
    fn resources(&self, named: &NamedProfile<'_>, problems: &mut Problems) -> Resources {
        let caps = ResourceCaps::job(named.profile);
        check_limits(self.resources.as_ref(), &caps, "resources", named, problems)
    }

    /// The working directory: an absolute container path, outside the cache mount.
    fn workdir(&self, config: &Config, problems: &mut Problems) -> String {
        let workdir = self
            .workdir
            .clone()
            .unwrap_or_else(|| "/workspace".to_owned());
        if let Err(rule) = check_container_path(&workdir) {
            problems.push("workdir", rule);
        } else if (config.cache.volume.is_some() || config.cache.source.is_some())
            && is_under(&workdir, &config.cache.mount)
        {
            problems.push(
                "workdir",
                format!(
                    "{workdir:?} is inside the cache mount {}",
                    config.cache.mount
                ),
            );
        }
        workdir
    }
}

/// Each variable's name (well-formed, not one of deckhand's own) and value; the
/// problems name `prefix.NAME`.
fn check_env_map(env: &BTreeMap<String, String>, prefix: &str, problems: &mut Problems) {
    for (name, value) in env {
        let field = format!("{prefix}.{}", truncate(name, 64));
        if !valid_env_name(name) {
            problems.push(&field, "a name must match ^[A-Za-z_][A-Za-z0-9_]*$");
        } else if let Some(prefix) = reserved_env_prefix(name) {
            problems.push(
                &field,
                format!("names starting {prefix} are reserved for deckhand"),
            );
        }
        if value.contains('\0') {
            problems.push(&field, "the value contains a NUL byte");
        }
        if name.len() > MAX_ENV_NAME_BYTES {
            problems.push(
                &field,
                format!("a name is at most {MAX_ENV_NAME_BYTES} bytes"),
            );
        } else if name.len() + 1 + value.len() > MAX_ENV_ENTRY_BYTES {
            problems.push(
                &field,
                format!(
                    "NAME=value is at most {MAX_ENV_ENTRY_BYTES} bytes, the kernel's limit for one"
                ),
            );
        }
    }
}

/// The profile the job runs under, or a problem listing the pool's profiles.
fn check_profile<'a>(
    config: &'a Config,
    name: &str,
    problems: &mut Problems,
) -> Option<&'a Profile> {
    let profile = config.profile(name);
    if profile.is_none() {
        problems.push(
            "profile",
            format!(
                "unknown profile {name:?}; this pool has: {}",
                config
                    .profiles
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    profile
}

/// The problems found so far, in the order they were found.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, field: &str, rule: impl Into<String>) {
        self.0.push(Problem {
            field: field.to_owned(),
            rule: rule.into(),
        });
    }
}

/// The profile a job runs under, with the name problems call it by.
struct NamedProfile<'a> {
    name: &'a str,
    profile: &'a Profile,
}

impl NamedProfile<'_> {
    fn above_cap(&self, asked: impl fmt::Display, cap: impl fmt::Display) -> String {
        self.above(asked, "cap", cap)
    }

    /// `asked` is above the profile's `key` (its value `cap`).
    fn above(&self, asked: impl fmt::Display, key: &str, cap: impl fmt::Display) -> String {
        format!("{asked} is above profile {:?}'s {key} of {cap}", self.name)
    }
}

mod bundle;
mod limits;
mod retry;
mod services;
mod strict;
mod workspace;

#[cfg(test)]
mod docs_tests;
#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;
