//! The disk watchdog. The free-space check before each receive keeps the agent
//! from taking a job onto a full disk, but a running job can still fill it (its
//! writable layer, its workspace, its services' layers) and fail every job
//! beside it. So while jobs run, the free space and the free inodes are looked
//! at every [`WATCH_PERIOD`]; once either falls under its floor
//! (`disk.min_free_mb`, [`MIN_FREE_INODES_PERCENT`]), the running job using the
//! most of it, counting its services with it (a job cannot hide by spreading
//! its writes), is stopped, status `failed` with a reason naming the limit, and
//! the others run on. One job at a time: the next is chosen only once the first
//! is gone and its space is back.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use crate::agent::Agent;
use crate::docker::{
    LABEL_AGENT, LABEL_ATTEMPT, LABEL_JOB_ID, LABEL_ROLE, LABEL_WORKSPACE, ManagedContainer,
};
use crate::host::disk::{MIN_FREE_INODES_PERCENT, Used, used};
use crate::job::build;

/// Two `statvfs` calls a period while jobs run; the sizes are counted only when
/// the space is low.
const WATCH_PERIOD: Duration = Duration::from_secs(2);

/// A running job (its container and its services') and what it takes on disk.
struct Usage {
    key: (String, u32),
    containers: usize,
    used: Used,
}

/// What ran short: space or inodes.
#[derive(Clone, Copy, PartialEq)]
enum Short {
    Space,
    Inodes,
}

impl Agent {
    /// Never returns; dropping it is safe at any await.
    pub(super) async fn watch_disk(&self) -> Infallible {
        let Some(disk) = self.disk.as_deref().filter(|d| d.min_free_mb() > 0) else {
            return std::future::pending().await;
        };
        // The job last stopped, while it is still running down.
        let mut stopping: Option<(String, u32)> = None;
        let mut failing = false;
        loop {
            tokio::time::sleep(WATCH_PERIOD).await;
            if stopping.as_ref().is_some_and(|key| self.watched.holds(key)) {
                continue;
            }
            stopping = None;
            if self.watched.is_empty() {
                continue;
            }
            let (free_mb, path) = match disk.free_mb() {
                Ok((free_mb, path)) => (free_mb, path.display().to_string()),
                Err(error) => {
                    if !failing {
                        tracing::warn!(%error, "Cannot check the free disk space while jobs run.");
                    }
                    failing = true;
                    continue;
                }
            };
            failing = false;
            let (short, why) = if free_mb < disk.min_free_mb() {
                (
                    Short::Space,
                    format!(
                        "{path} had {free_mb} MB free, below disk.min_free_mb = {}",
                        disk.min_free_mb()
                    ),
                )
            } else if let Some(low) = disk.inodes_low() {
                (Short::Inodes, low.to_string())
            } else {
                continue;
            };
            let Some((biggest, running)) = self.biggest_job(short).await else {
                continue;
            };
            let Some(cancel) = self.watched.cancel_of(&biggest.key) else {
                continue;
            };
            let (used_mb, files) = (biggest.used.bytes / 1_000_000, biggest.used.entries);
            tracing::warn!(
                job_id = %biggest.key.0,
                containers = biggest.containers,
                used_mb,
                files,
                free_mb,
                min_free_mb = disk.min_free_mb(),
                min_free_inodes_percent = MIN_FREE_INODES_PERCENT,
                "Disk space or inodes are low while jobs run; stopping the job using the most."
            );
            let most = match short {
                Short::Space => format!("the most disk of the {running} running ({used_mb} MB)"),
                Short::Inodes => format!("the most files of the {running} running ({files})"),
            };
            cancel.over_limit(format!("stopped: {why}, and this job used {most}"));
            self.metrics.stopped_for_disk();
            stopping = Some(biggest.key);
        }
    }

    /// The watched job using the most of what is `short` (its containers'
    /// writable layers and its workspace), and how many were measured.
    async fn biggest_job(&self, short: Short) -> Option<(Usage, usize)> {
        let containers = match self
            .docker
            .list_managed_sized(&[(LABEL_AGENT, self.instance_id.as_str())])
            .await
        {
            Ok(containers) => containers,
            Err(error) => {
                tracing::warn!(%error, "Cannot measure the running jobs' disk use.");
                return None;
            }
        };
        // A job's services carry its id and attempt: they count with it.
        let mut usages: HashMap<(String, u32), Usage> = HashMap::new();
        for container in containers {
            let Some(key) = watched_key(&container) else {
                continue;
            };
            if !self.watched.holds(&key) {
                continue;
            }
            let mut workspace = self.workspace_used(&container).await;
            let staged = self.staging_used(&container).await;
            workspace.bytes += staged.bytes;
            workspace.entries += staged.entries;
            let usage = usages.entry(key.clone()).or_insert_with(|| Usage {
                key,
                containers: 0,
                used: Used::default(),
            });
            usage.containers += 1;
            // A writable layer's files are not counted: Docker reports only
            // its size. The workspace is where a job makes files by the million.
            usage.used.bytes += container.written_bytes.unwrap_or(0) + workspace.bytes;
            usage.used.entries += workspace.entries;
        }
        let running = usages.len();
        let biggest = usages.into_values().max_by_key(|u| match short {
            Short::Space => u.used.bytes,
            Short::Inodes => u.used.entries,
        })?;
        Some((biggest, running))
    }

    /// What the job's workspace volume holds; nothing when it cannot be read.
    async fn workspace_used(&self, container: &ManagedContainer) -> Used {
        let Some(volume) = container.labels.get(LABEL_WORKSPACE) else {
            return Used::default();
        };
        let Ok(Some(folder)) = self.docker.volume_mountpoint(volume).await else {
            return Used::default();
        };
        tokio::task::spawn_blocking(move || used(&folder))
            .await
            .unwrap_or_default()
    }
}

impl Agent {
    /// What an image builder wrote to its staging folder on the host (the
    /// image archive goes there, outside its storage's tmpfs); nothing for
    /// any other container.
    async fn staging_used(&self, container: &ManagedContainer) -> Used {
        let is_builder = container.labels.get(LABEL_ROLE).map(String::as_str) == Some("builder");
        let Some(job_container) = build::builder_of(&container.name).filter(|_| is_builder) else {
            return Used::default();
        };
        let folder = build::staging_dir(&self.config.agent.work_dir, job_container);
        tokio::task::spawn_blocking(move || used(&folder))
            .await
            .unwrap_or_default()
    }
}

fn watched_key(container: &ManagedContainer) -> Option<(String, u32)> {
    let id = container.labels.get(LABEL_JOB_ID)?;
    let attempt = container.labels.get(LABEL_ATTEMPT)?.parse().ok()?;
    Some((id.clone(), attempt))
}
