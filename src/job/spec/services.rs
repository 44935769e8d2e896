//! A job's service containers (`services`): a database, a cache or a fake API
//! beside it, on its localhost, as GitLab's `services:` or an ECS task's other
//! containers. Each is checked here against the same image policy as the job and
//! the profile's service caps.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    MAX_SECRETS, NamedProfile, Problems, ResourceCaps, Resources, ResourcesSpec, check_env_map,
    check_limits,
};
use crate::config::Config;
use crate::image::ImageRef;

/// How long a service may take to be ready when the job says nothing.
pub const DEFAULT_READY_TIMEOUT_SECS: u64 = 60;
/// The longest a job may let a service take to be ready.
pub const MAX_READY_TIMEOUT_SECS: u64 = 600;

/// The wire form of one service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Of the job's own secrets, the ones this service gets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<ReadySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_timeout_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourcesSpec>,
}

/// When a service is ready: a TCP port accepts a connection, or a command run
/// in it exits 0. Exactly one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
}

/// A service that passed every rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    pub image: ImageRef,
    pub command: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    /// Secrets it gets as files (and as variables where the profile says so).
    pub secrets: Vec<String>,
    /// `None`: ready once started.
    pub ready: Option<Ready>,
    pub ready_timeout: Duration,
    pub memory_mb: u64,
    pub cpus: f64,
    pub pids: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ready {
    Tcp(u16),
    Command(Vec<String>),
}

/// `^[a-z][a-z0-9-]{0,30}$`: a host name the job can use, and a label value.
pub fn valid_service_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && name.len() <= 31
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Every service checked; the ones that passed.
pub(super) fn check(
    specs: &[ServiceSpec],
    job_secrets: &[String],
    config: &Config,
    named: &NamedProfile<'_>,
    problems: &mut Problems,
) -> Vec<Service> {
    let profile = named.profile;
    if specs.len() as u64 > profile.max_services {
        problems.push(
            "services",
            format!(
                "{} services; profile {:?} allows at most {}",
                specs.len(),
                named.name,
                profile.max_services
            ),
        );
        return Vec::new();
    }
    specs
        .iter()
        .enumerate()
        .filter_map(|(i, spec)| {
            let field = |name: &str| format!("services[{i}].{name}");
            if !valid_service_name(&spec.name) {
                problems.push(&field("name"), "must match ^[a-z][a-z0-9-]{0,30}$");
            } else if specs[..i].iter().any(|s| s.name == spec.name) {
                problems.push(&field("name"), format!("{:?} is named twice", spec.name));
            }
            let mut seen = std::collections::HashSet::new();
            if spec.secrets.len() > MAX_SECRETS {
                problems.push(
                    &field("secrets"),
                    format!("{} names; at most {MAX_SECRETS}", spec.secrets.len()),
                );
            }
            for secret in spec.secrets.iter().take(MAX_SECRETS) {
                let at = field(&format!("secrets.{}", crate::rules::truncate(secret, 64)));
                if !seen.insert(secret) {
                    problems.push(&at, "listed twice");
                } else if !job_secrets.iter().take(MAX_SECRETS).any(|s| s == secret) {
                    problems.push(
                        &at,
                        "not one of the job's secrets: a service gets only secrets its job names",
                    );
                }
            }
            check_one(spec, &field, config, named, problems)
        })
        .collect()
}

/// One service's rules after its name; the service, if they held.
fn check_one(
    spec: &ServiceSpec,
    field: &dyn Fn(&str) -> String,
    config: &Config,
    named: &NamedProfile<'_>,
    problems: &mut Problems,
) -> Option<Service> {
    let image = ImageRef::parse(&spec.image, config.images.policy())
        .map_err(|rule| problems.push(&field("image"), rule))
        .ok();
    if let Some(command) = &spec.command {
        if command.is_empty() {
            problems.push(
                &field("command"),
                "must not be empty; leave it out to use the image's CMD",
            );
        } else if command.iter().any(|a| a.contains('\0')) {
            problems.push(&field("command"), "an argument contains a NUL byte");
        }
    }
    check_env_map(&spec.env, &field("env"), problems);
    let ready = check_ready(spec.ready.as_ref(), &field("ready"), problems);
    let ready_timeout = match spec.ready_timeout_secs {
        None => DEFAULT_READY_TIMEOUT_SECS,
        Some(secs) if (1..=MAX_READY_TIMEOUT_SECS).contains(&secs) => secs,
        Some(secs) => {
            problems.push(
                &field("ready_timeout_secs"),
                format!("{secs} is out of range (1 to {MAX_READY_TIMEOUT_SECS})"),
            );
            DEFAULT_READY_TIMEOUT_SECS
        }
    };
    let caps = ResourceCaps::service(named.profile);
    let Resources {
        memory_mb,
        cpus,
        pids,
    } = check_limits(
        spec.resources.as_ref(),
        &caps,
        &field("resources"),
        named,
        problems,
    );
    let (image, ready) = (image?, ready.ok()?);
    Some(Service {
        name: spec.name.clone(),
        image,
        command: spec.command.clone(),
        env: spec.env.clone(),
        secrets: spec.secrets.clone(),
        ready,
        ready_timeout: Duration::from_secs(ready_timeout),
        memory_mb,
        cpus,
        pids,
    })
}

fn check_ready(
    spec: Option<&ReadySpec>,
    field: &str,
    problems: &mut Problems,
) -> Result<Option<Ready>, ()> {
    let Some(spec) = spec else { return Ok(None) };
    match (spec.tcp, &spec.command) {
        (Some(port), None) => match u16::try_from(port) {
            Ok(port) if port >= 1 => Ok(Some(Ready::Tcp(port))),
            _ => {
                problems.push(
                    &format!("{field}.tcp"),
                    format!("{port} is not a port (1 to 65535)"),
                );
                Err(())
            }
        },
        (None, Some(command)) if command.is_empty() => {
            problems.push(&format!("{field}.command"), "must not be empty");
            Err(())
        }
        (None, Some(command)) if command.iter().any(|a| a.contains('\0')) => {
            problems.push(
                &format!("{field}.command"),
                "an argument contains a NUL byte",
            );
            Err(())
        }
        (None, Some(command)) => Ok(Some(Ready::Command(command.clone()))),
        _ => {
            problems.push(field, "must name exactly one of tcp or command");
            Err(())
        }
    }
}
