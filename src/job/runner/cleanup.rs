//! An attempt's end on the host: its secrets and containers removed before its
//! result, its workspace volume after ([`Workspace`]), each removal retried
//! while Docker does not answer and left to the sweep when it cannot finish.

use std::time::Duration;

use tokio::time::Instant;

use super::Runner;
use crate::docker::{self, outage_backoff};
use crate::job::Job;
use crate::job::container::{self, Names};
use crate::job::sweep::Sweeper;
use crate::job::usage;

/// How long cleanup retries while Docker does not answer. What is still left
/// then is removed by the agent's sweep once Docker answers, or at its next start.
const CLEANUP_PATIENCE: Duration = Duration::from_secs(30);

/// An ended attempt's workspace volume, still on the host. Removing a
/// workspace of 20,000 files takes seconds that the result need not wait
/// for: the caller removes it after recording the result, before it takes
/// its next message from this delivery's task (so a drain still waits for it).
#[must_use = "the workspace volume stays on the host until removed"]
pub struct Workspace {
    container: String,
    volume: String,
    /// Its container is gone, so the volume is no longer in use.
    freed: bool,
    /// Until [`Runner::remove_workspace`]: one dropped without it (a panic, a
    /// path that forgot it) is left to the sweep, never to the disk for good.
    sweeper: Option<Sweeper>,
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if let Some(sweeper) = self.sweeper.take() {
            sweeper.left_behind();
            sweeper.ended(&self.container, &self.volume);
        }
    }
}

impl Runner {
    /// Runs a removal until it succeeds, fails for a reason other than Docker's
    /// absence, or `give_up` passes; whether it succeeded.
    async fn patiently<F, Fut>(&self, give_up: Instant, what: &str, mut remove: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), docker::DockerError>>,
    {
        let mut backoff = outage_backoff();
        loop {
            match remove().await {
                Ok(()) => return true,
                Err(error) if error.is_unreachable() && Instant::now() < give_up => {
                    tracing::warn!(%error, "Could not remove the job's {what} yet; Docker does not answer.");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(error) => {
                    tracing::warn!(%error, "Could not remove the job's {what}; removing it once Docker answers.");
                    return false;
                }
            }
        }
    }

    /// Removes the workspace volume of an ended attempt (and marks what it
    /// could not remove for the sweep), retrying for `CLEANUP_PATIENCE` while
    /// Docker does not answer. Never cancelled, as [`Runner::clean_up`].
    pub async fn remove_workspace(&self, mut workspace: Workspace) {
        workspace.sweeper = None;
        let Workspace {
            ref container,
            ref volume,
            freed,
            ..
        } = workspace;
        let give_up = Instant::now() + CLEANUP_PATIENCE;
        // The volume is in use until the container is gone.
        let removed = freed
            && self
                .patiently(give_up, "workspace volume", || {
                    self.docker.remove_volume(volume)
                })
                .await;
        if !removed {
            self.sweeper.left_behind();
        }
        self.sweeper.ended(container, volume);
    }

    /// Removes the secrets and the containers, retrying for `CLEANUP_PATIENCE`
    /// while Docker does not answer; the workspace volume, for
    /// [`Runner::remove_workspace`]. Never cancelled: a second signal must not
    /// leave them behind.
    pub(super) async fn clean_up(&self, job: &Job, names: &Names) -> Workspace {
        let service_secrets = job.services.iter().map(|s| names.service_secrets(&s.name));
        for dir in std::iter::once(names.secrets.clone()).chain(service_secrets) {
            if dir.exists()
                && let Err(error) = container::remove_secrets_dir(&dir)
            {
                tracing::error!(%error, dir = %dir.display(), "Could not remove the job's secrets.");
            }
        }
        let give_up = Instant::now() + CLEANUP_PATIENCE;
        // The job, then its services, then the sandbox whose network they share.
        let mut containers = vec![names.container.clone()];
        if !job.services.is_empty() {
            containers.extend(job.services.iter().map(|s| names.service(&s.name)));
            containers.push(names.sandbox.clone());
        }
        let mut removed = true;
        for container in &containers {
            removed &= self
                .patiently(give_up, "container", || {
                    self.docker.remove_container(container)
                })
                .await;
            usage::release_cgroup(&self.docker, container);
            if container != &names.container {
                self.sweeper.release(container);
            }
        }
        if !removed {
            self.sweeper.left_behind();
        }
        Workspace {
            container: names.container.clone(),
            volume: names.workspace.clone(),
            freed: removed,
            sweeper: Some(self.sweeper.clone()),
        }
    }
}
