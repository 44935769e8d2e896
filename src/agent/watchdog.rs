//! The disk watchdog. The free-space check before each receive keeps the agent
//! from taking a job onto a full disk, but a running job can still fill it (its
//! writable layer, its workspace) and fail every job beside it. So while jobs
//! run, the free space is looked at every [`WATCH_PERIOD`]; once it falls under
//! `disk.min_free_mb`, the running job using the most disk is stopped, status
//! `failed` with a reason naming the limit, and the others run on. One job at a
//! time: the next is chosen only once the first is gone and its space is back.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Mutex;
use std::time::Duration;

use crate::agent::Agent;
use crate::docker::{LABEL_AGENT, LABEL_ATTEMPT, LABEL_JOB_ID, LABEL_WORKSPACE, ManagedContainer};
use crate::host::disk::used_bytes;
use crate::job::cancel::Cancel;

/// Two `statvfs` calls a period while jobs run; the sizes are counted only when
/// the space is low.
const WATCH_PERIOD: Duration = Duration::from_secs(2);

/// The jobs running now, by id and attempt, and how to stop each.
#[derive(Default)]
pub(crate) struct Watched {
    jobs: Mutex<HashMap<(String, u32), Cancel>>,
}

/// A running job under watch, until dropped.
pub(crate) struct Held<'a> {
    watched: &'a Watched,
    key: (String, u32),
}

impl Watched {
    /// Watches the job's attempt until the returned value is dropped.
    pub fn hold(&self, job_id: &str, attempt: u32, cancel: &Cancel) -> Held<'_> {
        let key = (job_id.to_owned(), attempt);
        self.lock().insert(key.clone(), cancel.clone());
        Held { watched: self, key }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u32), Cancel>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cancel_of(&self, key: &(String, u32)) -> Option<Cancel> {
        self.lock().get(key).cloned()
    }

    fn holds(&self, key: &(String, u32)) -> bool {
        self.lock().contains_key(key)
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.watched.lock().remove(&self.key);
    }
}

/// A running job's container and what it takes on disk.
struct Usage {
    key: (String, u32),
    container: String,
    bytes: u64,
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
            if free_mb >= disk.min_free_mb() {
                continue;
            }
            let Some((biggest, running)) = self.biggest_job().await else {
                continue;
            };
            let Some(cancel) = self.watched.cancel_of(&biggest.key) else {
                continue;
            };
            let used_mb = biggest.bytes / 1_000_000;
            tracing::warn!(
                job_id = %biggest.key.0,
                container = %biggest.container,
                used_mb,
                free_mb,
                min_free_mb = disk.min_free_mb(),
                "Disk space is low while jobs run; stopping the job using the most."
            );
            cancel.over_limit(format!(
                "stopped: {path} had {free_mb} MB free, below disk.min_free_mb = {}, and this job used the most disk of the {running} running ({used_mb} MB)",
                disk.min_free_mb()
            ));
            self.metrics.stopped_for_disk();
            stopping = Some(biggest.key);
        }
    }

    /// The watched job using the most disk (its writable layer and its
    /// workspace), and how many were measured.
    async fn biggest_job(&self) -> Option<(Usage, usize)> {
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
        let mut usages = Vec::new();
        for container in containers {
            let Some(key) = watched_key(&container) else {
                continue;
            };
            if !self.watched.holds(&key) {
                continue;
            }
            let workspace = self.workspace_bytes(&container).await;
            usages.push(Usage {
                key,
                bytes: container.written_bytes.unwrap_or(0) + workspace,
                container: container.name,
            });
        }
        let running = usages.len();
        let biggest = usages.into_iter().max_by_key(|u| u.bytes)?;
        Some((biggest, running))
    }

    /// What the job's workspace volume holds; 0 when it cannot be read.
    async fn workspace_bytes(&self, container: &ManagedContainer) -> u64 {
        let Some(volume) = container.labels.get(LABEL_WORKSPACE) else {
            return 0;
        };
        let Ok(Some(folder)) = self.docker.volume_mountpoint(volume).await else {
            return 0;
        };
        tokio::task::spawn_blocking(move || used_bytes(&folder))
            .await
            .unwrap_or(0)
    }
}

fn watched_key(container: &ManagedContainer) -> Option<(String, u32)> {
    let id = container.labels.get(LABEL_JOB_ID)?;
    let attempt = container.labels.get(LABEL_ATTEMPT)?.parse().ok()?;
    Some((id.clone(), attempt))
}
