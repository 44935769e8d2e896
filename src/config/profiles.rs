//! `[profiles.NAME]`: the pool's "task definitions", each the defaults and the
//! caps of what a job may ask for.

use std::collections::BTreeMap;
use std::time::Duration;

use toml::{Table, Value};

use super::reader::{Reader, Section};

/// A job's memory limit when it asks for none, and its cap.
pub const DEFAULT_MEMORY_MB: u64 = 2048;
/// CPU quota when a job asks for none, and its cap.
pub const DEFAULT_CPUS: f64 = 1.0;
/// Process limit, and its cap: stops fork bombs.
pub const DEFAULT_PIDS: u64 = 1024;
/// A job's timeout when it names none.
pub const DEFAULT_TIMEOUT_SECS: u64 = 3600;
/// The longest timeout any job may have: SQS hides a message for at most 12
/// hours from its receive, and the pull, the stop and the record need time too.
/// Past that the message would reappear mid-run and the job run twice.
pub const MAX_JOB_TIMEOUT_SECS: u64 = 41_400;
/// The longest timeout a job may ask for.
pub const DEFAULT_MAX_TIMEOUT_SECS: u64 = MAX_JOB_TIMEOUT_SECS;
/// Time kept for recording a result before SQS's limit.
const RECORD_SECS: u64 = 300;
/// Docker's default network mode.
pub const DEFAULT_NETWORK: &str = "bridge";
/// The most a job's artifacts may weigh, all together.
pub const DEFAULT_ARTIFACTS_MAX_MB: u64 = 1024;
/// The most files a job may upload as artifacts.
pub const DEFAULT_ARTIFACTS_MAX_FILES: u64 = 1000;
/// The most a job's inputs may unpack to, all together.
pub const DEFAULT_INPUTS_MAX_MB: u64 = 2048;
/// The most output a job may print before it is stopped.
pub const DEFAULT_MAX_LOG_MB: u64 = 256;
/// Service containers a job may run beside it.
pub const DEFAULT_MAX_SERVICES: u64 = 4;
/// Each service's memory and CPU caps, and its values when it names none.
pub const DEFAULT_SERVICES_MEMORY_MB: u64 = 1024;
pub const DEFAULT_SERVICES_CPUS: f64 = 1.0;
/// The image builder's storage (its layers, the bases, the image), in MB.
pub const DEFAULT_IMAGE_BUILD_MAX_MB: u64 = 4096;

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
    /// The most a job's artifacts may weigh, all together, in MB (10^6 bytes).
    pub artifacts_max_mb: u64,
    /// The most files a job may upload as artifacts.
    pub artifacts_max_files: u64,
    /// The buckets a job's `inputs` may come from.
    pub input_buckets: Vec<String>,
    /// The most a job's inputs may unpack to, all together, in MB.
    pub inputs_max_mb: u64,
    /// The most output a job may print, in MB; past it the job is stopped and
    /// `failed`.
    pub max_log_mb: u64,
    /// The most service containers a job may name; 0: none.
    pub max_services: u64,
    /// Each service's memory and CPU cap, and default.
    pub services_memory_mb: u64,
    pub services_cpus: f64,
    /// Overrides `admission.webhook_url`: `Some("")` turns admission off.
    pub admission_webhook_url: Option<String>,
    /// Overrides `admission.fail`.
    pub admission_fail: Option<super::AdmissionFail>,
    /// The remotes a job's `source` may come from, their credentials, its size.
    pub git: super::ProfileGit,
    /// The budgets of a job's attempts, by cause.
    pub retries: super::Retries,
    /// Changes `[admission.ecr]`, or turns it off.
    pub admission_ecr: super::EcrOverride,
    /// Its jobs' `caches`: paths, scopes, whether they save.
    pub caches: super::ProfileCaches,
    /// `host[:port]` of the registries a job's `image_build` may push to.
    pub push_registries: Vec<String>,
    /// The most an image build's storage may hold, in MB: a tmpfs of this size,
    /// charged to the builder's memory (which gets it on top of the job's).
    pub image_build_max_mb: u64,
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            memory_mb: DEFAULT_MEMORY_MB,
            cpus: DEFAULT_CPUS,
            pids: DEFAULT_PIDS,
            timeout: Duration::from_secs(DEFAULT_TIMEOUT_SECS),
            max_timeout: Duration::from_secs(DEFAULT_MAX_TIMEOUT_SECS),
            network: DEFAULT_NETWORK.to_owned(),
            secrets: Vec::new(),
            env_secrets: Vec::new(),
            role_arn: None,
            artifacts_max_mb: DEFAULT_ARTIFACTS_MAX_MB,
            artifacts_max_files: DEFAULT_ARTIFACTS_MAX_FILES,
            input_buckets: Vec::new(),
            inputs_max_mb: DEFAULT_INPUTS_MAX_MB,
            max_log_mb: DEFAULT_MAX_LOG_MB,
            max_services: DEFAULT_MAX_SERVICES,
            services_memory_mb: DEFAULT_SERVICES_MEMORY_MB,
            services_cpus: DEFAULT_SERVICES_CPUS,
            admission_webhook_url: None,
            admission_fail: None,
            git: super::ProfileGit {
                source_max_mb: super::git::DEFAULT_SOURCE_MAX_MB,
                ..Default::default()
            },
            retries: super::Retries::default(),
            admission_ecr: super::EcrOverride::default(),
            caches: super::ProfileCaches::default(),
            push_registries: Vec::new(),
            image_build_max_mb: DEFAULT_IMAGE_BUILD_MAX_MB,
        }
    }
}

/// Every profile; `default` always, so its keys can be overridden from the
/// environment even when the file leaves it out.
pub(super) fn read(r: &mut Reader<'_>, root: &mut Table) -> BTreeMap<String, Profile> {
    let mut profiles = BTreeMap::new();
    let mut all = r.section(root, "profiles");
    all.table
        .entry("default")
        .or_insert_with(|| Value::Table(Table::new()));
    let names: Vec<String> = all.table.keys().cloned().collect();
    for name in names {
        if !valid_profile_name(&name) {
            r.issue(
                &format!("profiles.{name}"),
                "a profile name is 1 to 64 of [a-z0-9_-], starting with a letter or digit",
            );
        }
        let section = r.subsection(&mut all, &name);
        let profile = read_one(r, section);
        profiles.insert(name, profile);
    }
    profiles
}

fn read_one(r: &mut Reader<'_>, mut section: Section) -> Profile {
    let memory_mb = r.int(&mut section, "memory_mb", 6..=1 << 24, DEFAULT_MEMORY_MB);
    let cpus = r.float(&mut section, "cpus", 0.01..=512.0, DEFAULT_CPUS);
    let pids = r.int(&mut section, "pids", 1..=1 << 22, DEFAULT_PIDS);
    let timeout_secs = r.int(
        &mut section,
        "timeout_secs",
        1..=MAX_JOB_TIMEOUT_SECS,
        DEFAULT_TIMEOUT_SECS,
    );
    let max_timeout_secs = r.int(
        &mut section,
        "max_timeout_secs",
        1..=MAX_JOB_TIMEOUT_SECS,
        DEFAULT_MAX_TIMEOUT_SECS,
    );
    if timeout_secs > max_timeout_secs {
        r.issue(
            &section.key("timeout_secs"),
            &format!("{timeout_secs} is above max_timeout_secs ({max_timeout_secs})"),
        );
    }
    let network = network(r, &mut section);
    let secrets = r.strings(&mut section, "secrets");
    let env_secrets = r.strings(&mut section, "env_secrets");
    check_env_secrets(r, &section, &secrets, &env_secrets);
    let role_arn = role_arn(r, &mut section);
    let (artifacts_max_mb, artifacts_max_files) = read_artifacts(r, &mut section);
    let input_buckets = r.strings(&mut section, "input_buckets");
    let inputs_max_mb = r.int(
        &mut section,
        "inputs_max_mb",
        0..=1 << 30,
        DEFAULT_INPUTS_MAX_MB,
    );
    let max_log_mb = r.int(&mut section, "max_log_mb", 1..=1 << 20, DEFAULT_MAX_LOG_MB);
    let (max_services, services_memory_mb, services_cpus) = read_services(r, &mut section);
    let (admission_webhook_url, admission_fail) = super::admission::read_profile(r, &mut section);
    let retries = super::retries::read_profile(r, &mut section);
    let admission_ecr = super::admission_ecr::read_profile(r, &mut section);
    let git = super::git::read_profile(r, &mut section);
    let caches = super::caches::read_profile(r, &mut section);
    let (push_registries, image_build_max_mb) = read_image_build(r, &mut section);
    r.finish(section);
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
        artifacts_max_mb,
        artifacts_max_files,
        input_buckets,
        inputs_max_mb,
        max_log_mb,
        max_services,
        services_memory_mb,
        services_cpus,
        admission_webhook_url,
        admission_fail,
        git,
        retries,
        admission_ecr,
        caches,
        push_registries,
        image_build_max_mb,
    }
}

/// `push_registries` (each a `host[:port]`, lower-cased) and
/// `image_build_max_mb`.
fn read_image_build(r: &mut Reader<'_>, section: &mut Section) -> (Vec<String>, u64) {
    let key = section.key("push_registries");
    let registries = r.strings(section, "push_registries");
    for registry in &registries {
        if !crate::rules::valid_registry_host(registry) {
            r.issue(&key, &format!("{registry:?} is not a registry host[:port]"));
        }
    }
    let max_mb = r.int(
        section,
        "image_build_max_mb",
        16..=1 << 20,
        DEFAULT_IMAGE_BUILD_MAX_MB,
    );
    (
        registries.iter().map(|r| r.to_ascii_lowercase()).collect(),
        max_mb,
    )
}

/// `artifacts_max_mb` and `artifacts_max_files`.
fn read_artifacts(r: &mut Reader<'_>, section: &mut Section) -> (u64, u64) {
    let mb = r.int(
        section,
        "artifacts_max_mb",
        0..=1 << 30,
        DEFAULT_ARTIFACTS_MAX_MB,
    );
    let files = r.int(
        section,
        "artifacts_max_files",
        0..=1_000_000,
        DEFAULT_ARTIFACTS_MAX_FILES,
    );
    (mb, files)
}

/// `role_arn`, if it is an IAM role's.
fn role_arn(r: &mut Reader<'_>, section: &mut Section) -> Option<String> {
    let role_arn = r.opt_string(section, "role_arn");
    if let Some(arn) = &role_arn
        && !valid_role_arn(arn)
    {
        r.issue(
            &section.key("role_arn"),
            &format!("{arn:?} must be an IAM role ARN, arn:aws:iam::<account>:role/<name>"),
        );
    }
    role_arn
}

/// `max_services`, `services_memory_mb` and `services_cpus`.
fn read_services(r: &mut Reader<'_>, section: &mut Section) -> (u64, u64, f64) {
    let max_services = r.int(section, "max_services", 0..=16, DEFAULT_MAX_SERVICES);
    let services_memory_mb = r.int(
        section,
        "services_memory_mb",
        6..=1 << 24,
        DEFAULT_SERVICES_MEMORY_MB,
    );
    let services_cpus = r.float(
        section,
        "services_cpus",
        0.01..=512.0,
        DEFAULT_SERVICES_CPUS,
    );
    (max_services, services_memory_mb, services_cpus)
}

/// Every profile's longest job, with the longest pull, the stop's grace and the
/// record, ends within SQS's 12 hours from the receive: else its message would
/// reappear mid-run and the job run twice.
pub(super) fn check_fits_the_queue(
    r: &mut Reader<'_>,
    profiles: &BTreeMap<String, Profile>,
    pull_timeout: Duration,
    stop_grace: Duration,
) {
    let around = pull_timeout.as_secs() + stop_grace.as_secs() + RECORD_SECS;
    for (name, profile) in profiles {
        let max = profile.max_timeout.as_secs();
        if max + around > super::queue::MAX_VISIBILITY_SECS {
            r.issue(
                &format!("profiles.{name}.max_timeout_secs"),
                &format!(
                    "{max} s, with images.pull_timeout_secs, drain.stop_grace_secs and {RECORD_SECS} s to record ({around} s), passes SQS's {} s visibility limit: lower one",
                    super::queue::MAX_VISIBILITY_SECS
                ),
            );
        }
    }
}

/// Each env secret is one of the profile's secrets, and its variable is not one
/// deckhand sets itself.
fn check_env_secrets(
    r: &mut Reader<'_>,
    section: &Section,
    secrets: &[String],
    env_secrets: &[String],
) {
    let key = section.key("env_secrets");
    for name in env_secrets {
        let env = crate::rules::secret_env_name(name);
        if crate::rules::reserved_env_prefix(&env).is_some() || env == "CI" {
            r.issue(
                &key,
                &format!("{name:?} would be the variable {env}, which deckhand sets itself"),
            );
        }
        if !secrets.contains(name) {
            r.issue(&key, &format!("{name:?} is not in this profile's secrets"));
        }
    }
}

fn network(r: &mut Reader<'_>, section: &mut Section) -> String {
    let Some(network) = r.opt_string(section, "network") else {
        return DEFAULT_NETWORK.to_owned();
    };
    let key = section.key("network");
    if network == "host" {
        r.issue(
            &key,
            "\"host\" is not allowed: it would share the host's network and its instance metadata",
        );
    } else if network.starts_with("container:") {
        r.issue(&key, "joining another container's network is not allowed");
    } else if !valid_docker_name(&network) {
        r.issue(
            &key,
            "must be \"bridge\", \"none\" or the name of a Docker network",
        );
    }
    network
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
fn valid_docker_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}
