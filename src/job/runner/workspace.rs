//! What crosses the workspace besides the job's own work: its source and its
//! inputs, placed before the container exists, and its artifacts, read out after it exits.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Controls, Runner};
use crate::job::Job;
use crate::job::artifacts::{self, Collected};
use crate::job::container::Names;
use crate::job::inputs;
use crate::job::outcome::{Outcome, RunError};
use crate::job::source::{self, SourceReport};

/// The least time artifacts get after the container exits, even past the
/// job's deadline: a job that ends at its timeout still has them read.
const MIN_COLLECT: Duration = Duration::from_secs(5);

impl Runner {
    /// The job's source, then its inputs (which may add to it).
    pub(super) async fn fill_workspace(
        &self,
        job: &Job,
        workspace: &str,
        user: Option<&str>,
    ) -> Result<Option<SourceReport>, RunError> {
        let source = self.place_source(job, workspace, user).await?;
        self.place_inputs(job, workspace).await?;
        Ok(source)
    }

    /// The job's `source`, checked out into its workspace volume (through the
    /// volume's folder on this host) and given to the image's user; before its
    /// inputs, which may add to it.
    async fn place_source(
        &self,
        job: &Job,
        workspace: &str,
        user: Option<&str>,
    ) -> Result<Option<SourceReport>, RunError> {
        let Some(source) = &job.source else {
            return Ok(None);
        };
        let mirrors = self.git.as_ref().ok_or(RunError::NoMirrors)?;
        let root = self.workspace_folder(workspace).await?;
        let owner = crate::job::container::container_ids(user);
        let report = source::place(mirrors, &self.secrets, source, &root, owner).await?;
        tracing::info!(
            repo = %report.repo,
            sha = %report.sha,
            mirror = %report.mirror,
            fetch_ms = report.fetch_ms,
            checkout_ms = report.checkout_ms,
            bytes = report.bytes,
            "Source checked out."
        );
        Ok(Some(report))
    }

    /// The workspace volume's folder on this host.
    pub(super) async fn workspace_folder(
        &self,
        workspace: &str,
    ) -> Result<std::path::PathBuf, RunError> {
        self.docker
            .volume_mountpoint(workspace)
            .await?
            .ok_or_else(|| RunError::NoWorkspaceFolder {
                volume: workspace.to_owned(),
            })
    }

    /// The job's inputs, in its workspace volume (through the volume's folder on
    /// this host: the container does not exist yet).
    async fn place_inputs(&self, job: &Job, workspace: &str) -> Result<(), RunError> {
        if job.inputs.is_empty() {
            return Ok(());
        }
        let s3 = self.inputs.as_ref().ok_or(RunError::NoInputStore)?;
        let root = self.workspace_folder(workspace).await?;
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
    /// Docker failure here leaves them out; the job's status stands. The
    /// reading keeps the job's clock: it stops at the job's deadline (or
    /// [`MIN_COLLECT`] after the exit, if that is later), at a cancel that came
    /// after the exit, and at the drain.
    pub(super) async fn artifacts(
        &self,
        job: &Job,
        names: &Names,
        outcome: &Outcome,
        controls: &Controls<'_>,
        started: Option<Instant>,
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
        let clock = Instant::now();
        let deadline = started
            .map(|at| at + job.timeout)
            .unwrap_or(clock)
            .max(clock + MIN_COLLECT);
        let collected = self
            .collect_in_time(job, names, controls, staging, deadline)
            .await;
        if let Ok(collected) = &collected {
            tracing::info!(
                files = collected.files,
                bytes = collected.bytes,
                elapsed_ms = clock.elapsed().as_millis() as u64,
                stopped = collected.stopped,
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

    /// The collection itself, stopped at `deadline`, at the drain, or at a
    /// cancel that comes after the exit; what was staged by then stands.
    async fn collect_in_time(
        &self,
        job: &Job,
        names: &Names,
        controls: &Controls<'_>,
        staging: std::path::PathBuf,
        deadline: Instant,
    ) -> Result<Collected, crate::docker::DockerError> {
        let request = artifacts::Request {
            container: &names.container,
            workdir: &job.workdir,
            patterns: &job.artifacts,
            caps: job.artifact_caps,
        };
        let stop = CancellationToken::new();
        let collecting = artifacts::collect(
            &self.docker,
            request,
            staging,
            controls.artifacts.clone(),
            &stop,
        );
        tokio::pin!(collecting);
        let was_cancelled = controls.cancel.reason().is_some();
        let mut done = None;
        let why = tokio::select! {
            collected = &mut collecting => {
                done = Some(collected);
                String::new()
            }
            () = tokio::time::sleep_until(deadline) => format!(
                "the job's deadline passed (timeout_secs = {})",
                job.timeout.as_secs()
            ),
            _ = controls.preemption.stopping().cancelled() => "the agent is draining".to_owned(),
            () = controls.cancel.requested(), if !was_cancelled => "the job was cancelled".to_owned(),
        };
        if let Some(collected) = done {
            return collected;
        }
        // The reading ends at its next chunk.
        stop.cancel();
        let mut collected = collecting.await;
        if let Ok(collected) = &mut collected {
            collected.leave_out(
                &job.workdir,
                format!("reading the artifacts stopped: {why}"),
            );
        }
        collected
    }
}
