//! The attempt itself: the job's container run to its end, with the heartbeat,
//! the watch for a cancel request, the live log, the artifacts' uploads, and the
//! drain's early hand-back.

use chrono::Utc;

use super::{Delivery, Recording};
use crate::agent::Agent;
use crate::agent::artifacts::Upload;
use crate::agent::fate;
use crate::agent::slots::Slot;
use crate::host::stop::Preemption;
use crate::job::attempts::{Attempt, Cause};
use crate::job::cancel::Cancel;
use crate::job::live::LiveTail;
use crate::job::runner::{Controls, Finished};
use crate::job::usage::LiveUsage;

/// On a job's container: the SQS receipt handle of its message, so that an agent
/// restarted after a crash can hand the message back at once.
pub const LABEL_RECEIPT: &str = "deckhand.receipt";
/// Artifacts read but not yet uploaded, at most: the staging disk stays bounded.
const ARTIFACTS_QUEUED: usize = 8;

/// A job run to its end.
pub(super) struct Attempted {
    pub finished: Finished,
    /// The drain handed the message back while it ran.
    pub handed_back: bool,
    /// Live chunks uploaded (`None`: the live log is off).
    pub chunks: Option<u32>,
    /// The artifacts uploaded while they were read, and how each upload went.
    pub uploads: Vec<Upload>,
}

impl Agent {
    /// Runs the job's container to its end, with heartbeats, the watch for a
    /// cancel request and the live log.
    pub(super) async fn run_attempt(
        &self,
        delivery: &Delivery,
        slot: Slot,
        preemption: &Preemption,
    ) -> Attempted {
        let Delivery {
            message,
            job,
            attempt,
            ..
        } = delivery;
        let attempt = *attempt;
        let started_at = Utc::now();
        let labels = [(LABEL_RECEIPT, message.receipt.as_str())];
        let cancel = Cancel::default();
        let live = self.config.results.log_flush.map(|_| LiveTail::default());
        let mut chunks = None;
        // Artifacts go up as they are read out of the container.
        let (sink, staged) = if job.artifacts.is_empty() {
            (None, None)
        } else {
            let (sink, staged) = tokio::sync::mpsc::channel(ARTIFACTS_QUEUED);
            (Some(sink), Some(staged))
        };
        let live_usage = LiveUsage::default();
        let running = self
            .metrics
            .running(&job.profile, slot.number, live_usage.clone());
        let watched = self.watched.hold(&job.id, attempt, &cancel);
        let controls = Controls {
            preemption,
            cancel: &cancel,
            live: live.clone(),
            artifacts: sink,
            usage: Some(live_usage),
        };
        let run = async {
            tokio::join!(
                self.runner.run(job, attempt, &labels, controls),
                self.upload_staged(&job.id, staged)
            )
        };
        tokio::pin!(run);
        let mut handed_back = false;
        let (finished, uploads) = tokio::select! {
            finished = &mut run => finished,
            never = self.heartbeat(message, &job.id, attempt) => match never {},
            never = self.watch_cancel(&job.id, &cancel) => match never {},
            never = self.stream_log(&job.id, attempt, live.as_ref(), &mut chunks) => match never {},
            () = preemption.stopping().cancelled() => {
                self.hand_back_early(delivery, preemption, started_at).await;
                handed_back = true;
                run.await
            }
        };
        drop(watched);
        drop(running);
        drop(slot);
        Attempted {
            finished,
            handed_back,
            chunks,
            uploads,
        }
    }

    /// The drain stops the job: its copy goes back now, while the container
    /// still has its grace period, carrying this attempt as interrupted.
    async fn hand_back_early(
        &self,
        delivery: &Delivery,
        preemption: &Preemption,
        started_at: chrono::DateTime<Utc>,
    ) {
        let retries = self.retries(&delivery.job);
        let escalate = fate::escalates(&delivery.history, &retries, self.escalation.is_some());
        let mut entry = self.placement.entry_now(delivery.attempt, started_at);
        // Worded as the attempt's own result words it.
        entry.reason = Attempt::reason(
            preemption
                .reason()
                .map(|why| format!("interrupted: {why}"))
                .as_deref(),
        );
        let next = delivery
            .history
            .next(Cause::Interruption, delivery.attempt, Some(entry));
        let settlement = fate::preempted(escalate);
        self.settle(&delivery.message, &delivery.job.id, settlement, Some(&next))
            .await;
    }

    /// Deletes an attempt's live chunks once its log is recorded (theirs or
    /// ours: either way the live view is over); kept when it was not, as the
    /// only copy of the output.
    pub(super) async fn clean_live(
        &self,
        id: &str,
        attempt: u32,
        chunks: Option<u32>,
        recording: Recording,
    ) {
        let Some(count) = chunks else { return };
        if recording == Recording::Failed {
            return;
        }
        if let Err(error) = self.store.delete_chunks(id, attempt, count).await {
            tracing::warn!(%error, "Could not delete the live log's chunks.");
        }
    }
}
