//! What becomes of an SQS message: the tables of docs/interface.md ("Outcomes and
//! the SQS message", "Before a job runs") as pure functions, and [`Agent::settle`],
//! the one place that carries a fate out.
//!
//! The rule under all of it: a message is deleted only once its result is in S3;
//! every other path hands it back, at once or after a delay, or leaves it to SQS's
//! visibility timeout.

use std::time::Duration;

use crate::agent::Agent;
use crate::aws::sqs::Received;
use crate::job::result::Status;

/// How long a duplicate delivery of a job another agent is running stays hidden.
pub const DEFER_VISIBILITY: Duration = Duration::from_secs(30);
/// How long the agent keeps trying to record a terminal result before it leaves the
/// message to SQS (the job will run again: at least once, never lost).
pub const RECORD_TERMINAL_DEADLINE: Duration = Duration::from_secs(300);
/// The record of an interrupted attempt: the message went back already, and the
/// host is going away.
const RECORD_INTERRUPTED_DEADLINE: Duration = Duration::from_secs(10);
/// The record of an attempt the host could not run.
const RECORD_ERROR_DEADLINE: Duration = Duration::from_secs(30);

/// What happens to a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Its result is recorded: it is done.
    Delete,
    /// Receivable again after this long (zero: at once).
    HandBack(Duration),
    /// Nothing: SQS makes it receivable when its visibility timeout ends (or it
    /// was handed back already).
    Leave,
}

/// A fate and whether this agent's claim on the job is removed with it. The claim
/// goes first, so the next host does not find it held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settlement {
    pub fate: Fate,
    pub release_claim: bool,
}

/// What reading the record before a job runs found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// `result.json` is there: SQS delivered the job again (its delete failed,
    /// or its agent was killed between the write and the delete).
    Finished,
    /// No result.
    Absent,
    /// No result, and the one who sent the job asked to cancel it.
    CancelRequested,
    /// S3 could not be read.
    Unreadable,
}

/// What asking for the job's claim found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimLookup {
    /// Ours now (none was there, it had expired, or it was already ours).
    Acquired,
    /// Another agent's, not expired.
    HeldByOther,
    /// S3 could not be read or written.
    Unreadable,
}

/// Before a job runs: run it, record it cancelled without running it, or settle
/// its message without running it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Run,
    /// Its result is `cancelled`; the message goes as a terminal status's does.
    Cancel,
    Skip(Settlement),
}

/// The "Before a job runs" table. `retry` is [`retry_visibility`] for this delivery.
pub fn before_run(result: Lookup, claim: ClaimLookup, retry: Duration) -> Admission {
    let release_claim = claim == ClaimLookup::Acquired;
    let skip = |fate| {
        Admission::Skip(Settlement {
            fate,
            release_claim,
        })
    };
    match (result, claim) {
        (Lookup::Absent, ClaimLookup::Acquired) => Admission::Run,
        // Recorded under the claim, so a duplicate delivery cannot race it.
        (Lookup::CancelRequested, ClaimLookup::Acquired) => Admission::Cancel,
        // deckhand runs a job once.
        (Lookup::Finished, _) => skip(Fate::Delete),
        // The holder runs it, and sees the cancel request too.
        (Lookup::Absent | Lookup::CancelRequested, ClaimLookup::HeldByOther) => {
            skip(Fate::HandBack(DEFER_VISIBILITY))
        }
        (Lookup::Unreadable, _)
        | (Lookup::Absent | Lookup::CancelRequested, ClaimLookup::Unreadable) => {
            skip(Fate::HandBack(retry))
        }
    }
}

/// The "Outcomes and the SQS message" table, for a job that ran (or began to).
/// `recorded`: its result is in S3 (only asked of terminal statuses);
/// `handed_back`: the drain gave the message back while the job still ran, and
/// released the claim then.
pub fn after_run(status: Status, recorded: bool, handed_back: bool, retry: Duration) -> Settlement {
    let release_claim = !handed_back;
    let fate = match status {
        // Even after an early hand-back: a redelivery would find the result anyway.
        _ if status.is_terminal() && recorded => Fate::Delete,
        // Not recorded: SQS brings it back after its visibility timeout, and the
        // job runs again.
        _ if status.is_terminal() => Fate::Leave,
        _ if handed_back => Fate::Leave,
        Status::Interrupted => Fate::HandBack(Duration::ZERO),
        _ => Fate::HandBack(retry),
    };
    Settlement {
        fate,
        release_claim,
    }
}

/// A rejected job: deleted once its result is recorded and, with a dead-letter
/// queue, its copy is there; otherwise the next delivery tries again.
pub fn after_reject(recorded: bool, dead_lettered: bool) -> Fate {
    if recorded && dead_lettered {
        Fate::Delete
    } else {
        Fate::Leave
    }
}

/// The drain stops a running job: its message goes back at once, while the
/// container still has its grace period, since every second counts for the host
/// that takes the job over.
pub const PREEMPTED: Settlement = Settlement {
    fate: Fate::HandBack(Duration::ZERO),
    release_claim: true,
};

/// Whether an attempt's result is recorded before its fate is carried out. An
/// interrupted job's message goes back first, so another host can start it while
/// this one uploads the attempt.
pub fn records_first(status: Status) -> bool {
    status != Status::Interrupted
}

/// How long recording an attempt's result may take, retries included.
pub fn record_deadline(status: Status) -> Duration {
    match status {
        _ if status.is_terminal() => RECORD_TERMINAL_DEADLINE,
        Status::Interrupted => RECORD_INTERRUPTED_DEADLINE,
        _ => RECORD_ERROR_DEADLINE,
    }
}

/// Before a job that could not run is retried: doubling from 5 s with each
/// delivery, never beyond the visibility timeout.
pub fn retry_visibility(attempt: u32, visibility_timeout: Duration) -> Duration {
    let step = Duration::from_secs(5) * 2u32.saturating_pow(attempt.saturating_sub(1).min(10));
    step.min(visibility_timeout)
}

impl Agent {
    /// Carries out a settlement: the one place a message is deleted or handed back.
    /// `job_id` names the claim, if there is one to release.
    pub(super) async fn settle(&self, message: &Received, job_id: &str, settlement: Settlement) {
        if settlement.release_claim
            && let Err(error) = self.store.release(job_id, &self.claim(0)).await
        {
            tracing::warn!(%error, "Could not release the job's claim; it expires by itself.");
        }
        match settlement.fate {
            Fate::Delete => {
                if let Err(error) = self.queue.delete(message).await {
                    // The result is recorded, so a redelivery is recognised as a duplicate.
                    tracing::warn!(%error, "Could not delete the message; a redelivery will be skipped.");
                }
            }
            Fate::HandBack(visibility) => self.hand_back(message, visibility).await,
            Fate::Leave => {}
        }
    }

    async fn hand_back(&self, message: &Received, visibility: Duration) {
        match self
            .queue
            .set_visibility(&message.message_id, &message.receipt, visibility)
            .await
        {
            Ok(()) => {
                self.metrics.handed_back();
                tracing::info!(
                    visibility_secs = visibility.as_secs(),
                    "Message handed back to the queue."
                );
            }
            Err(error) => tracing::warn!(
                %error,
                "Could not hand the message back; it returns when its visibility timeout ends."
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETRY: Duration = Duration::from_secs(20);

    fn settled(fate: Fate, release_claim: bool) -> Settlement {
        Settlement {
            fate,
            release_claim,
        }
    }

    #[test]
    fn before_a_job_runs_row_by_row() {
        use ClaimLookup as C;
        use Lookup as L;
        // No result and the claim is ours: run it.
        assert_eq!(before_run(L::Absent, C::Acquired, RETRY), Admission::Run);
        // A cancel request and the claim is ours: recorded cancelled, never run.
        assert_eq!(
            before_run(L::CancelRequested, C::Acquired, RETRY),
            Admission::Cancel
        );
        // ... and another agent's claim: it runs the job and sees the request.
        assert_eq!(
            before_run(L::CancelRequested, C::HeldByOther, RETRY),
            Admission::Skip(settled(Fate::HandBack(DEFER_VISIBILITY), false))
        );
        // result.json already there: deleted without running; a claim we just
        // took is given up.
        assert_eq!(
            before_run(L::Finished, C::Acquired, RETRY),
            Admission::Skip(settled(Fate::Delete, true))
        );
        assert_eq!(
            before_run(L::Finished, C::HeldByOther, RETRY),
            Admission::Skip(settled(Fate::Delete, false))
        );
        // Another agent's claim, not expired: hidden for 30 s.
        assert_eq!(
            before_run(L::Absent, C::HeldByOther, RETRY),
            Admission::Skip(settled(Fate::HandBack(DEFER_VISIBILITY), false))
        );
        // S3 cannot be read: given back with the retry delay.
        assert_eq!(
            before_run(L::Unreadable, C::Acquired, RETRY),
            Admission::Skip(settled(Fate::HandBack(RETRY), true))
        );
        assert_eq!(
            before_run(L::Unreadable, C::Unreadable, RETRY),
            Admission::Skip(settled(Fate::HandBack(RETRY), false))
        );
        assert_eq!(
            before_run(L::Absent, C::Unreadable, RETRY),
            Admission::Skip(settled(Fate::HandBack(RETRY), false))
        );
    }

    #[test]
    fn outcomes_row_by_row() {
        // succeeded, failed, timed_out, cancelled: deleted once recorded.
        for status in [
            Status::Succeeded,
            Status::Failed,
            Status::TimedOut,
            Status::Cancelled,
        ] {
            assert_eq!(
                after_run(status, true, false, RETRY),
                settled(Fate::Delete, true)
            );
            // Recorded after the drain handed it back: deleted, claim already gone.
            assert_eq!(
                after_run(status, true, true, RETRY),
                settled(Fate::Delete, false)
            );
            // Not recorded within the deadline: left to SQS, to run again.
            assert_eq!(
                after_run(status, false, false, RETRY),
                settled(Fate::Leave, true)
            );
        }
        // interrupted: released at once, unless the drain did already.
        assert_eq!(
            after_run(Status::Interrupted, false, false, RETRY),
            settled(Fate::HandBack(Duration::ZERO), true)
        );
        assert_eq!(
            after_run(Status::Interrupted, false, true, RETRY),
            settled(Fate::Leave, false)
        );
        // error: hidden for the retry delay, then redelivered.
        assert_eq!(
            after_run(Status::Error, false, false, RETRY),
            settled(Fate::HandBack(RETRY), true)
        );
        assert_eq!(
            after_run(Status::Error, false, true, RETRY),
            settled(Fate::Leave, false)
        );
    }

    #[test]
    fn rejected_is_deleted_only_once_recorded_and_dead_lettered() {
        assert_eq!(after_reject(true, true), Fate::Delete);
        assert_eq!(after_reject(true, false), Fate::Leave);
        assert_eq!(after_reject(false, true), Fate::Leave);
    }

    #[test]
    fn interrupted_goes_back_before_it_is_recorded() {
        assert!(!records_first(Status::Interrupted));
        assert!(records_first(Status::Error));
        assert!(records_first(Status::Succeeded));
        assert_eq!(record_deadline(Status::Failed), RECORD_TERMINAL_DEADLINE);
        assert!(record_deadline(Status::Interrupted) < record_deadline(Status::Error));
    }

    #[test]
    fn retry_delay_doubles_up_to_the_visibility_timeout() {
        let visibility = Duration::from_secs(60);
        let delays: Vec<u64> = (1..=6)
            .map(|n| retry_visibility(n, visibility).as_secs())
            .collect();
        assert_eq!(delays, [5, 10, 20, 40, 60, 60]);
        assert_eq!(retry_visibility(0, visibility).as_secs(), 5);
        assert_eq!(retry_visibility(u32::MAX, visibility), visibility);
    }
}
