//! Around the record of one delivery: the lookups and the claim before it runs,
//! and the result's write, retried until its deadline.

use std::time::Duration;

use tokio::time::Instant;

use super::{MAX_RECORD_BACKOFF, Recording};
use crate::agent::Agent;
use crate::agent::fate::{self, Admission, Budget, ClaimLookup, Lookup};
use crate::backoff::Backoff;
use crate::job::Job;
use crate::job::log::LogBody;
use crate::job::result::{JobResult, Status};
use crate::record::{CancelRequest, Claim, ClaimOutcome, Recorded, StoreError};

impl Agent {
    /// Looks for an earlier result and a cancel request, and takes the claim, all
    /// at once: they are independent round trips, and every millisecond here is
    /// paid by every job. The cancel request, if there is one.
    pub(super) async fn admit(
        &self,
        job: &Job,
        attempt: u32,
        retry: Duration,
        spent: Option<Budget>,
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
            fate::before_run(result, claim, retry, spent),
            cancel.ok().flatten(),
        )
    }

    pub(in crate::agent) fn claim(&self, attempt: u32) -> Claim {
        Claim {
            instance_id: self.instance_id.clone(),
            run: self.run.clone(),
            attempt,
            expires_at: chrono::Utc::now().timestamp()
                + self.config.queue.visibility_timeout.as_secs() as i64,
        }
    }

    /// Records `result`, retrying with backoff until `deadline`.
    pub(super) async fn record_until(
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
