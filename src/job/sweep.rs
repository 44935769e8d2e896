//! This agent's job containers on the engine: which belong to running jobs, and the
//! one sweep that removes the rest with their workspaces. The agent sweeps at boot
//! (what a crashed run left: every container of this agent) and whenever Docker
//! answers after a job's cleanup could not finish (what no running job owns).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tracing::Instrument;

use crate::docker::{self, Docker, ManagedContainer};

/// Shared by the runner (which registers its containers) and the agent (which
/// sweeps); cheap to clone.
#[derive(Clone)]
pub struct Sweeper {
    docker: Docker,
    instance_id: String,
    /// The containers and workspaces of the jobs running now.
    active: Arc<Mutex<HashSet<String>>>,
    /// A cleanup left something behind: sweep once Docker answers.
    leftovers: Arc<AtomicBool>,
}

impl Sweeper {
    pub fn new(docker: Docker, instance_id: impl Into<String>) -> Self {
        Sweeper {
            docker,
            instance_id: instance_id.into(),
            active: Arc::default(),
            leftovers: Arc::default(),
        }
    }

    /// `container` and its `workspace` belong to a running job until
    /// [`Sweeper::ended`].
    pub fn started(&self, container: &str, workspace: &str) {
        let mut active = self.active_set();
        active.insert(container.to_owned());
        active.insert(workspace.to_owned());
    }

    /// One more container of a running job (a service, its sandbox), until
    /// [`Sweeper::release`].
    pub fn hold(&self, container: &str) {
        self.active_set().insert(container.to_owned());
    }

    pub fn release(&self, container: &str) {
        self.active_set().remove(container);
    }

    pub fn ended(&self, container: &str, workspace: &str) {
        let mut active = self.active_set();
        active.remove(container);
        active.remove(workspace);
    }

    /// A job's cleanup could not remove everything; the next sweep will.
    pub fn left_behind(&self) {
        self.leftovers.store(true, Ordering::SeqCst);
    }

    fn active_set(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // The set stays consistent whatever a panicking holder did: inserts and
        // removes are single operations.
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes what job cleanups left, if any did: this agent's containers that no
    /// running job owns, with their workspaces. Their jobs' messages met their fate
    /// already. Cheap when there is nothing to do.
    pub async fn sweep_leftovers(&self) {
        if !self.leftovers.swap(false, Ordering::SeqCst) {
            return;
        }
        let swept = match self.sweep_containers(Occasion::Leftovers).await {
            Ok(_) => self.sweep_volumes().await,
            Err(error) => Err(error),
        };
        if let Err(error) = swept {
            self.left_behind();
            tracing::warn!(%error, "Could not look for containers earlier jobs left.");
        }
    }

    /// At boot, before any job runs: removes every container and workspace of this
    /// agent and returns the containers found, removed or not, whose labels say
    /// which messages to hand back.
    pub async fn sweep_all(&self) -> Result<Vec<ManagedContainer>, docker::DockerError> {
        let found = self.sweep_containers(Occasion::Boot).await?;
        self.sweep_volumes().await?;
        Ok(found)
    }

    /// Workspaces no running job owns: their container never got created, or
    /// is gone while removing the volume failed.
    async fn sweep_volumes(&self) -> Result<(), docker::DockerError> {
        let volumes = self
            .docker
            .list_managed_volumes((docker::LABEL_AGENT, &self.instance_id))
            .await?;
        let active = self.active_set().clone();
        for volume in volumes.into_iter().filter(|v| !active.contains(v)) {
            if let Err(error) = self.docker.remove_volume(&volume).await {
                self.left_behind();
                tracing::warn!(%error, volume, "Could not remove an orphaned workspace.");
            }
        }
        Ok(())
    }

    async fn sweep_containers(
        &self,
        occasion: Occasion,
    ) -> Result<Vec<ManagedContainer>, docker::DockerError> {
        let found = self
            .docker
            .list_managed(&[(docker::LABEL_AGENT, &self.instance_id)])
            .await?;
        let active = self.active_set().clone();
        let found: Vec<_> = found
            .into_iter()
            .filter(|c| !active.contains(&c.name))
            .collect();
        for container in &found {
            let job_id = container
                .labels
                .get(docker::LABEL_JOB_ID)
                .map(String::as_str)
                .unwrap_or_default();
            let span = tracing::info_span!("job", job_id, container = %container.name);
            self.sweep_one(container, occasion).instrument(span).await;
        }
        Ok(found)
    }

    async fn sweep_one(&self, container: &ManagedContainer, occasion: Occasion) {
        if occasion == Occasion::Boot {
            tracing::warn!("Found a container left by an earlier run; removing it.");
        }
        match self.remove(container).await {
            Ok(()) if occasion == Occasion::Leftovers => {
                tracing::info!("Removed a container an earlier job's cleanup could not.");
            }
            Ok(()) => {}
            Err(error) => {
                self.left_behind();
                tracing::warn!(%error, "Could not remove a container no running job owns.");
            }
        }
    }

    async fn remove(&self, container: &ManagedContainer) -> Result<(), docker::DockerError> {
        self.docker.remove_container(&container.name).await?;
        crate::job::usage::release_cgroup(&self.docker, &container.name);
        match container.labels.get(docker::LABEL_WORKSPACE) {
            Some(volume) => self.docker.remove_volume(volume).await,
            None => Ok(()),
        }
    }
}

/// Why a sweep runs, which decides what it says: at boot every container found is
/// news (a crash); later only the removal of what a cleanup left is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Occasion {
    Boot,
    Leftovers,
}
