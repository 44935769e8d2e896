//! What crosses the workspace besides the job's own work: its inputs, placed
//! before the container exists, and its artifacts, read out after it exits.

use tokio::time::Instant;

use super::Runner;
use crate::job::Job;
use crate::job::artifacts::{self, Collected, Sink};
use crate::job::container::Names;
use crate::job::inputs;
use crate::job::outcome::{Outcome, RunError};

impl Runner {
    /// The job's inputs, in its workspace volume (through the volume's folder on
    /// this host: the container does not exist yet).
    pub(super) async fn place_inputs(&self, job: &Job, workspace: &str) -> Result<(), RunError> {
        if job.inputs.is_empty() {
            return Ok(());
        }
        let s3 = self.inputs.as_ref().ok_or(RunError::NoInputStore)?;
        let root = self
            .docker
            .volume_mountpoint(workspace)
            .await?
            .ok_or_else(|| RunError::NoWorkspaceFolder {
                volume: workspace.to_owned(),
            })?;
        let started = Instant::now();
        let bytes = inputs::place(
            s3,
            &job.inputs,
            &root,
            job.inputs_max_bytes,
            "inputs_max_mb",
        )
        .await?;
        tracing::info!(
            inputs = job.inputs.len(),
            bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Inputs placed."
        );
        Ok(())
    }

    /// The files the job's `artifacts` patterns match, read from its exited
    /// container (succeeded, failed, timed out or cancelled while it ran). A
    /// Docker failure here leaves them out; the job's status stands.
    pub(super) async fn artifacts(
        &self,
        job: &Job,
        names: &Names,
        outcome: &Outcome,
        sink: Option<Sink>,
    ) -> Option<Collected> {
        let ran = matches!(
            outcome,
            Outcome::Exited { .. }
                | Outcome::TimedOut { .. }
                | Outcome::Cancelled { code: Some(_) }
        );
        if job.artifacts.is_empty() || !ran {
            return None;
        }
        let staging = self
            .config
            .agent
            .work_dir
            .join("artifacts")
            .join(&names.container);
        let started = Instant::now();
        let collected = artifacts::collect(
            &self.docker,
            &names.container,
            &job.workdir,
            &job.artifacts,
            job.artifact_caps,
            staging,
            sink,
        )
        .await;
        if let Ok(collected) = &collected {
            tracing::info!(
                files = collected.files,
                bytes = collected.bytes,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "Artifacts read."
            );
        }
        Some(collected.unwrap_or_else(|error| {
            tracing::warn!(%error, "Could not read the job's artifacts.");
            let mut collected = Collected::default();
            collected.leave_out(&job.workdir, format!("could not be read: {error}"));
            collected
        }))
    }
}
