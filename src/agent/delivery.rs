//! One message's delivery, from receipt to its fate: parse and check the job (or
//! reject it), look for an earlier result and take the claim, run the job with
//! heartbeats, record its result, and settle the message as [`fate`] decides.
//!
//! [`fate`]: crate::agent::fate

use std::time::Duration;

use tokio::time::Instant;

use crate::agent::Agent;
use crate::agent::artifacts::Upload;
use crate::agent::fate::{self, Admission, ClaimLookup, Fate, Lookup};
use crate::agent::slots::Slot;
use crate::aws::sqs::Received;
use crate::backoff::Backoff;
use crate::host::stop::Preemption;
use crate::job::cancel::Cancel;
use crate::job::live::LiveTail;
use crate::job::log::LogBody;
use crate::job::result::{JobResult, Status};
use crate::job::runner::{Controls, Finished};
use crate::job::usage::LiveUsage;
use crate::job::{Job, Rejection};
use crate::record::{CancelRequest, Claim, ClaimOutcome, Recorded, StoreError};

/// On a job's container: the SQS receipt handle of its message, so that an agent
/// restarted after a crash can hand the message back at once.
pub const LABEL_RECEIPT: &str = "deckhand.receipt";
/// Artifacts read but not yet uploaded, at most: the staging disk stays bounded.
const ARTIFACTS_QUEUED: usize = 8;
/// The longest pause between attempts to record a result.
const MAX_RECORD_BACKOFF: Duration = Duration::from_secs(30);

/// A job run to its end.
struct Attempted {
    finished: Finished,
    /// The drain handed the message back while it ran.
    handed_back: bool,
    /// Live chunks uploaded (`None`: the live log is off).
    chunks: Option<u32>,
    /// The artifacts uploaded while they were read, and how each upload went.
    uploads: Vec<Upload>,
}

/// What recording a result came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recording {
    /// Ours is the result.
    Ours,
    /// Another run's result was there first and stands.
    Theirs,
    /// Not recorded before the deadline.
    Failed,
}

impl Agent {
    /// One message, from receipt to its fate on the queue. `slot` is held until
    /// the job's container is gone.
    pub(super) async fn deliver(&self, message: Received, slot: Slot, preemption: &Preemption) {
        let job = Job::parse(message.body.as_bytes(), &self.config)
            .and_then(|job| job.check_bundle(&self.secrets).map(|()| job));
        match job {
            Ok(job) => {
                tracing::Span::current().record("job_id", job.id.as_str());
                self.run_job(message, job, slot, preemption).await;
            }
            Err(rejection) => self.reject(message, rejection).await,
        }
    }

    async fn reject(&self, message: Received, rejection: Rejection) {
        let id = rejection
            .id
            .clone()
            .unwrap_or_else(|| message.message_id.clone());
        tracing::Span::current().record("job_id", id.as_str());
        // The reason echoes the message; a secret in it stays masked in the record
        // and the dead-letter copy's attribute too.
        let reason = self.masker.mask(&rejection.to_string()).into_owned();
        tracing::warn!(%reason, "Job rejected.");
        self.metrics.job_finished(Status::Rejected, Duration::ZERO);
        let mut result =
            JobResult::rejected(id, reason.clone(), message.receive_count, &self.instance_id);
        let deadline = fate::record_deadline(Status::Rejected);
        let recording = self.record_until(&mut result, None, deadline).await;
        let recorded = recording != Recording::Failed;
        let dead_lettered = match (&self.dead_letter, recorded) {
            (Some(dlq), true) => {
                let attributes = [
                    ("deckhand_reason", reason.as_str()),
                    ("deckhand_message_id", message.message_id.as_str()),
                ];
                let sent = dlq.send(&message.body, &attributes).await;
                if let Err(error) = &sent {
                    // Recorded but not dead-lettered: left, so the next delivery
                    // tries the copy again.
                    tracing::warn!(%error, "Could not copy the rejected job to the dead-letter queue.");
                }
                sent.is_ok()
            }
            (None, _) | (_, false) => true,
        };
        let fate = fate::after_reject(recorded, dead_lettered);
        // Another run's result stands: announcing ours would contradict it.
        if fate == Fate::Delete && recording == Recording::Ours {
            self.notifier.notify(&result).await;
        }
        let settlement = fate::Settlement {
            fate,
            release_claim: false,
        };
        self.settle(&message, &result.id, settlement).await;
    }

    async fn run_job(&self, message: Received, job: Job, slot: Slot, preemption: &Preemption) {
        let attempt = message.receive_count;
        let retry = fate::retry_visibility(attempt, self.config.queue.visibility_timeout);
        let (admission, cancel_request) = self.admit(&job, attempt, retry).await;
        let mut chunks = None;
        let (mut result, log, handed_back) = match admission {
            Admission::Skip(settlement) => {
                self.settle(&message, &job.id, settlement).await;
                return;
            }
            Admission::Cancel => {
                drop(slot);
                let reason =
                    cancel_request.map_or_else(|| "cancelled".to_owned(), |r| r.describe());
                tracing::info!(%reason, "Job cancelled before it started; not running it.");
                let result =
                    JobResult::cancelled(job.id.clone(), reason, attempt, &self.instance_id);
                (result, None, false)
            }
            Admission::Run => {
                let attempted = self.run_attempt(&message, &job, slot, preemption).await;
                chunks = attempted.chunks;
                let Finished {
                    mut result,
                    log,
                    artifacts,
                } = attempted.finished;
                if let Some(collected) = artifacts {
                    self.list_artifacts(&mut result, collected, attempted.uploads);
                }
                (result, Some(log), attempted.handed_back)
            }
        };
        let status = result.status;
        self.metrics
            .job_finished(status, Duration::from_millis(result.duration_ms));
        if let Some(admitted) = &result.admission {
            self.metrics.admitted(admitted);
        }
        if let Some(job_usage) = result.usage.as_ref().and_then(|u| u.job.as_ref()) {
            self.metrics.job_used(&job.profile, job_usage);
        }
        let deadline = fate::record_deadline(status);
        if !fate::records_first(status) {
            let settlement = fate::after_run(status, false, handed_back, retry);
            self.settle(&message, &job.id, settlement).await;
            let recording = self.record_until(&mut result, log.as_ref(), deadline).await;
            self.clean_live(&job.id, attempt, chunks, recording).await;
            return;
        }
        let record = self.record_until(&mut result, log.as_ref(), deadline);
        let recording = if handed_back || !status.is_terminal() {
            // No heartbeat after a hand-back: it would hide the message again.
            record.await
        } else {
            tokio::select! {
                recording = record => recording,
                never = self.heartbeat(&message, &job.id) => match never {},
            }
        };
        let recorded = recording != Recording::Failed;
        let settlement = fate::after_run(status, recorded, handed_back, retry);
        self.clean_live(&job.id, attempt, chunks, recording).await;
        // Another run's result stands: announcing ours would contradict it.
        if settlement.fate == Fate::Delete && recording == Recording::Ours {
            // Independent of each other: the result is recorded.
            tokio::join!(
                self.notifier.notify(&result),
                self.settle(&message, &job.id, settlement)
            );
        } else {
            self.settle(&message, &job.id, settlement).await;
        }
    }

    /// Runs the job's container to its end, with heartbeats, the watch for a
    /// cancel request and the live log.
    async fn run_attempt(
        &self,
        message: &Received,
        job: &Job,
        slot: Slot,
        preemption: &Preemption,
    ) -> Attempted {
        let attempt = message.receive_count;
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
            never = self.heartbeat(message, &job.id) => match never {},
            never = self.watch_cancel(&job.id, &cancel) => match never {},
            never = self.stream_log(&job.id, attempt, live.as_ref(), &mut chunks) => match never {},
            () = preemption.stopping().cancelled() => {
                self.settle(message, &job.id, fate::PREEMPTED).await;
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

    /// Deletes an attempt's live chunks once its log is recorded (theirs or
    /// ours: either way the live view is over); kept when it was not, as the
    /// only copy of the output.
    async fn clean_live(&self, id: &str, attempt: u32, chunks: Option<u32>, recording: Recording) {
        let Some(count) = chunks else { return };
        if recording == Recording::Failed {
            return;
        }
        if let Err(error) = self.store.delete_chunks(id, attempt, count).await {
            tracing::warn!(%error, "Could not delete the live log's chunks.");
        }
    }

    /// Looks for an earlier result and a cancel request, and takes the claim, all
    /// at once: they are independent round trips, and every millisecond here is
    /// paid by every job. The cancel request, if there is one.
    async fn admit(
        &self,
        job: &Job,
        attempt: u32,
        retry: Duration,
    ) -> (Admission, Option<CancelRequest>) {
        let claim = self.claim(attempt);
        let (terminal, cancel, claimed) = tokio::join!(
            self.store.terminal(&job.id),
            self.store.cancel_request(&job.id),
            self.store.claim(&job.id, &claim),
        );
        let result = match (&terminal, &cancel) {
            (Ok(Some(existing)), _) => {
                already_recorded(existing, None);
                Lookup::Finished
            }
            (Ok(None), Ok(None)) => Lookup::Absent,
            (Ok(None), Ok(Some(_))) => Lookup::CancelRequested,
            (Err(error), _) | (_, Err(error)) => {
                tracing::warn!(%error, "Cannot check for an earlier result; giving the message back.");
                Lookup::Unreadable
            }
        };
        let unfinished = matches!(result, Lookup::Absent | Lookup::CancelRequested);
        let claim = match &claimed {
            Ok(ClaimOutcome::Acquired) => ClaimLookup::Acquired,
            Ok(ClaimOutcome::HeldBy(holder)) => {
                if unfinished {
                    tracing::info!(
                        holder = %holder.instance_id,
                        "Another agent is running this job; deferring the duplicate."
                    );
                }
                ClaimLookup::HeldByOther
            }
            Err(error) => {
                if unfinished {
                    tracing::warn!(%error, "Cannot claim the job; giving the message back.");
                }
                ClaimLookup::Unreadable
            }
        };
        (
            fate::before_run(result, claim, retry),
            cancel.ok().flatten(),
        )
    }

    pub(super) fn claim(&self, attempt: u32) -> Claim {
        Claim {
            instance_id: self.instance_id.clone(),
            run: self.run.clone(),
            attempt,
            expires_at: chrono::Utc::now().timestamp()
                + self.config.queue.visibility_timeout.as_secs() as i64,
        }
    }

    /// Records `result`, retrying with backoff until `deadline`.
    async fn record_until(
        &self,
        result: &mut JobResult,
        log: Option<&LogBody>,
        deadline: Duration,
    ) -> Recording {
        let give_up = Instant::now() + deadline;
        let mut backoff = Backoff::new(Duration::from_millis(500), MAX_RECORD_BACKOFF);
        loop {
            let error: StoreError = match self.store.record(result, log).await {
                Ok(Recorded::Stored) => {
                    tracing::info!(
                        status = result.status.as_str(),
                        log = result.log.as_deref(),
                        "Result recorded."
                    );
                    return Recording::Ours;
                }
                Ok(Recorded::Duplicate(existing)) => {
                    // Only a job that ran has a log: then this run's result goes.
                    already_recorded(&existing, log.map(|_| result.status));
                    return Recording::Theirs;
                }
                Err(e) => e,
            };
            let delay = backoff.next_delay();
            if Instant::now() + delay > give_up {
                tracing::error!(%error, "Could not record the result; leaving the message to SQS.");
                return Recording::Failed;
            }
            tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "Could not record the result; retrying.");
            tokio::time::sleep(delay).await;
        }
    }
}

/// A delivery found its job's terminal result already in S3, written by an
/// earlier attempt (maybe this instance's, killed before it could log it) or by
/// another host: says whose it is, so that every job's story can be read from
/// the logs. `discarded`: the status of this delivery's own run, which did not
/// become the result. A job that ran again is a warning (the claim is there to
/// prevent it); a duplicate found before running is SQS's at-least-once.
fn already_recorded(existing: &JobResult, discarded: Option<Status>) {
    match discarded {
        Some(discarded) => tracing::warn!(
            recorded_status = existing.status.as_str(),
            recorded_by = %existing.instance_id,
            recorded_attempt = existing.attempt,
            discarded_status = discarded.as_str(),
            "Result already recorded."
        ),
        None => tracing::info!(
            recorded_status = existing.status.as_str(),
            recorded_by = %existing.instance_id,
            recorded_attempt = existing.attempt,
            "Result already recorded."
        ),
    }
}
