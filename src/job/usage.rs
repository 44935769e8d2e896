//! A running container's use of CPU and memory: its cgroup sampled while it runs
//! (Docker removes the cgroup at its exit), for the result's `usage` and for the
//! live metrics.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::docker::Docker;
use crate::host::cgroups::{Cgroup, Sample};

/// Removes `container`'s own cgroup parent, if it has one, once the container
/// is gone; a failure is logged, not returned (an empty directory is all that
/// stays).
pub fn release_cgroup(docker: &Docker, container: &str) {
    let Some(path) = docker.own_cgroup(container) else {
        return;
    };
    if let Err(error) = Cgroup::remove(&path) {
        tracing::warn!(%error, path, "Could not remove the container's cgroup parent.");
    }
}

/// The gaps between samples: close at first, so a job of a second is measured
/// too, then a second apart.
const FIRST_GAPS_MS: [u64; 4] = [100, 100, 200, 400];
const GAP: Duration = Duration::from_secs(1);

/// The latest sample of a running container, shared with whoever shows it live.
#[derive(Clone, Default)]
pub struct LiveUsage(Arc<Mutex<Option<Sample>>>);

impl LiveUsage {
    pub fn get(&self) -> Option<Sample> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set(&self, sample: Sample) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(sample);
    }
}

/// Samples `container`'s cgroup until `exited` fires or the cgroup is gone, and
/// returns what it used: read from its own cgroup parent once it has exited,
/// when it has one (`Docker::own_cgroup`), so a container shorter than the first
/// sample is measured too; else the last sample. `None` when neither could be
/// read. `limit_bytes`: its memory limit, which the parent does not carry.
pub async fn meter(
    docker: &Docker,
    container: &str,
    exited: &CancellationToken,
    live: &LiveUsage,
    limit_bytes: Option<u64>,
) -> Option<Sample> {
    let sampled = sample_while_running(docker, container, exited, live).await;
    let parent = docker
        .own_cgroup(container)
        .and_then(|path| Cgroup::at(&path))
        .and_then(|parent| parent.sample());
    let Some(total) = parent else {
        return sampled;
    };
    let total = Sample {
        memory_limit_bytes: limit_bytes.or(total.memory_limit_bytes),
        ..total.after(sampled)
    };
    Some(Sample {
        cpu_seconds: total
            .cpu_seconds
            .max(sampled.map_or(0.0, |s| s.cpu_seconds)),
        ..total
    })
}

async fn sample_while_running(
    docker: &Docker,
    container: &str,
    exited: &CancellationToken,
    live: &LiveUsage,
) -> Option<Sample> {
    let pid = match docker.pid(container).await {
        Ok(Some(pid)) => pid,
        Ok(None) => return None,
        Err(error) => {
            tracing::debug!(%error, "Cannot find the container's process to meter it.");
            return None;
        }
    };
    let Some(cgroup) = Cgroup::of_process(pid) else {
        tracing::debug!(pid, "The container's process has no readable cgroup.");
        return None;
    };
    let mut last: Option<Sample> = None;
    let gaps = FIRST_GAPS_MS
        .into_iter()
        .map(Duration::from_millis)
        .chain(std::iter::repeat(GAP));
    for gap in gaps {
        let Some(sample) = cgroup.sample() else { break };
        let sample = sample.after(last);
        live.set(sample);
        last = Some(sample);
        tokio::select! {
            () = tokio::time::sleep(gap) => {}
            () = exited.cancelled() => break,
        }
    }
    last
}
