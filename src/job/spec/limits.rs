//! A container's memory, CPUs and processes: what a job (or a service) asks,
//! checked against its profile's caps.

use super::{MIN_CPUS, NamedProfile, Problems, Resources, ResourcesSpec};

/// A profile's most memory, CPUs and processes for a container, and the keys
/// that set each, for a problem to name.
pub(super) struct ResourceCaps {
    limits: Resources,
    keys: [&'static str; 3],
}

impl ResourceCaps {
    /// The job's own container: the profile's `memory_mb`, `cpus` and `pids`,
    /// each called its `cap` in a problem.
    pub(super) fn job(profile: &crate::config::Profile) -> ResourceCaps {
        ResourceCaps {
            limits: Resources {
                memory_mb: profile.memory_mb,
                cpus: profile.cpus,
                pids: profile.pids,
            },
            keys: ["cap", "cap", "cap"],
        }
    }

    /// Each of a job's services: `services_memory_mb`, `services_cpus`, and
    /// the job's `pids`.
    pub(super) fn service(profile: &crate::config::Profile) -> ResourceCaps {
        ResourceCaps {
            limits: Resources {
                memory_mb: profile.services_memory_mb,
                cpus: profile.services_cpus,
                pids: profile.pids,
            },
            keys: ["services_memory_mb", "services_cpus", "cap"],
        }
    }
}

/// Memory, CPUs and processes: what was asked, the caps for what it leaves out.
/// Each has a floor of its own (Docker's) and its cap, which a problem calls by
/// its key; only one problem per field. `prefix` is where the fields sit
/// (`resources`, `services[0].resources`).
pub(super) fn check_limits(
    asked: Option<&ResourcesSpec>,
    caps: &ResourceCaps,
    prefix: &str,
    named: &NamedProfile<'_>,
    problems: &mut Problems,
) -> Resources {
    let ResourceCaps { limits: caps, keys } = caps;
    let asked = asked.cloned().unwrap_or_default();
    let resources = Resources {
        memory_mb: asked.memory_mb.unwrap_or(caps.memory_mb),
        cpus: asked.cpus.unwrap_or(caps.cpus),
        pids: asked.pids.unwrap_or(caps.pids),
    };
    let (memory_mb, cpus, pids) = (resources.memory_mb, resources.cpus, resources.pids);
    let mut limit = |field: &str, below_floor: Option<String>, above_cap: Option<String>| {
        if let Some(rule) = below_floor.or(above_cap) {
            problems.push(&format!("{prefix}.{field}"), rule);
        }
    };
    limit(
        "memory_mb",
        (memory_mb < 6).then(|| format!("{memory_mb} is below Docker's minimum of 6")),
        (memory_mb > caps.memory_mb).then(|| named.above(memory_mb, keys[0], caps.memory_mb)),
    );
    limit(
        "cpus",
        // Docker turns less than a hundredth of a CPU into NanoCpus 0: no limit.
        (!(cpus >= MIN_CPUS && cpus.is_finite()))
            .then(|| format!("{cpus} is below Docker's minimum of {MIN_CPUS}")),
        (cpus > caps.cpus).then(|| named.above(cpus, keys[1], caps.cpus)),
    );
    limit(
        "pids",
        (pids == 0).then(|| "must be at least 1".to_owned()),
        (pids > caps.pids).then(|| named.above(pids, keys[2], caps.pids)),
    );
    resources
}
