//! A job's artifacts on their way to S3: uploaded a few at a time as the runner
//! reads them out of the container, each tried up to 3 times, then listed in
//! the result. The job's status never changes for them.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc::Receiver;

use crate::agent::Agent;
use crate::backoff::{Backoff, Budget};
use crate::job::artifacts::{Collected, Staged};
use crate::job::result::JobResult;
use crate::record::StoreError;

/// Artifact uploads in flight at once, per job.
const UPLOADS_AT_ONCE: usize = 4;

/// One artifact's upload and how it went.
pub(super) type Upload = (Staged, Result<(), StoreError>);

impl Agent {
    /// Uploads each file that arrives on `staged` until the runner is done with
    /// them (the channel closes); nothing when the job names no artifacts.
    pub(super) async fn upload_staged(
        &self,
        id: &str,
        staged: Option<Receiver<Staged>>,
    ) -> Vec<Upload> {
        let Some(staged) = staged else {
            return Vec::new();
        };
        let arriving = futures_util::stream::unfold(staged, |mut staged| async move {
            staged.recv().await.map(|file| (file, staged))
        });
        arriving
            .map(|file| self.upload(id, file))
            .buffered(UPLOADS_AT_ONCE)
            .collect()
            .await
    }

    async fn upload(&self, id: &str, staged: Staged) -> Upload {
        let pace = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
        let artifact = &staged.artifact;
        let put = || {
            self.store
                .put_artifact(id, &artifact.path, &staged.file, &artifact.sha256)
        };
        let outcome = crate::backoff::retry(pace, Budget::Attempts(3), put, |_, _| true).await;
        (staged, outcome)
    }

    /// Lists the job's artifacts in its result: those uploaded while they were
    /// read (`uploads`); one that could not be uploaded is listed as left out.
    pub(super) fn list_artifacts(
        &self,
        result: &mut JobResult,
        mut collected: Collected,
        uploads: Vec<Upload>,
    ) {
        // Every file went to the uploads: the runner keeps one only when the
        // upload side is gone, which it never is before the runner is done.
        for kept in std::mem::take(&mut collected.staged) {
            collected.leave_out(&kept.artifact.path, "not uploaded".to_owned());
        }
        let mut uploaded = Vec::new();
        for (staged, outcome) in uploads {
            match outcome {
                Ok(()) => uploaded.push(staged.artifact),
                Err(error) => {
                    tracing::warn!(%error, path = %staged.artifact.path, "Could not upload an artifact.");
                    collected.leave_out(&staged.artifact.path, format!("upload failed: {error}"));
                }
            }
        }
        let left_out = collected.take_left_out();
        tracing::info!(
            uploaded = uploaded.len(),
            bytes = uploaded.iter().map(|a| a.bytes).sum::<u64>(),
            unmatched = collected.unmatched.len(),
            left_out = left_out.len(),
            "Artifacts uploaded."
        );
        result.artifacts = Some(uploaded);
        result.artifacts_unmatched = std::mem::take(&mut collected.unmatched);
        result.artifacts_left_out = left_out;
    }
}
