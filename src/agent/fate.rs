//! What becomes of an SQS message: the tables of docs/interface.md ("Outcomes and
//! the SQS message", "Before a job runs") as pure functions, and [`Agent::settle`],
//! the one place that carries a fate out.
//!
//! The rule under all of it: a message is deleted only once its result is in S3;
//! every other path hands it back, at once or after a delay, or leaves it to SQS's
//! visibility timeout.

use std::time::Duration;

use crate::agent::Agent;
use crate::aws::sqs::{MAX_ATTRIBUTES, Received, text_attribute};
use crate::config::Retries;
use crate::job::attempts::{ATTRIBUTE, Cause, History};
use crate::job::result::Status;
use crate::job::spec::RetrySpec;

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
    /// Receivable again after this long (zero: at once), by changing its
    /// visibility: the next delivery counts against the queue's redrive.
    HandBack(Duration),
    /// A fresh copy sent, carrying the job's history, then the original deleted:
    /// the next attempt costs the queue's redrive nothing.
    Requeue(Requeue),
    /// Nothing: SQS makes it receivable when its visibility timeout ends (or it
    /// was handed back already).
    Leave,
}

/// A copy of the message sent back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requeue {
    pub cause: Cause,
    /// Receivable after this long (SQS's `DelaySeconds`, at most 15 minutes).
    pub delay: Duration,
    /// To `queue.escalation_url` instead of the job queue.
    pub escalate: bool,
}

impl Requeue {
    /// An interrupted job's copy, at once.
    pub fn interruption(escalate: bool) -> Requeue {
        Requeue {
            cause: Cause::Interruption,
            delay: Duration::ZERO,
            escalate,
        }
    }

    /// A message that never started here goes back as it came, at once.
    pub const DECLINED: Requeue = Requeue {
        cause: Cause::Declined,
        delay: Duration::ZERO,
        escalate: false,
    };
}

/// A budget of the profile's that ran out: the job ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// `max_interruptions`.
    Interruptions { spent: u32, max: u32 },
    /// `max_host_errors`.
    HostErrors { spent: u32, max: u32 },
}

impl Budget {
    /// The result's `budget`.
    pub fn as_str(self) -> &'static str {
        match self {
            Budget::Interruptions { .. } => "interruptions",
            Budget::HostErrors { .. } => "host_errors",
        }
    }

    /// The result's reason.
    pub fn describe(self) -> String {
        match self {
            Budget::Interruptions { spent, max } => format!(
                "interrupted {spent} times, past the profile's max_interruptions ({max}); not run again"
            ),
            Budget::HostErrors { spent, max } => format!(
                "the hosts could not run it {spent} times, past the profile's max_host_errors ({max}); not run again"
            ),
        }
    }
}

/// The budget this copy's history has spent, if one is.
pub fn spent(history: &History, retries: &Retries) -> Option<Budget> {
    if history.interruptions > retries.max_interruptions {
        return Some(Budget::Interruptions {
            spent: history.interruptions,
            max: retries.max_interruptions,
        });
    }
    (history.host_errors > retries.max_host_errors).then_some(Budget::HostErrors {
        spent: history.host_errors,
        max: retries.max_host_errors,
    })
}

/// Whether an attempt that ended `failed` with `exit_code` is retried: its code
/// is one the job listed, and retries are left (the job's `retry.max`, capped by
/// the profile's `max_retries`).
pub fn retries_exit(
    retry: Option<&RetrySpec>,
    cap: u32,
    history: &History,
    status: Status,
    exit_code: Option<i64>,
) -> bool {
    let (Some(retry), Some(code)) = (retry, exit_code) else {
        return false;
    };
    status == Status::Failed
        && retry.exit_codes.contains(&code)
        && history.retries < retry.max.min(cap)
}

/// Whether an interrupted job's next copy goes to the escalation queue: after
/// the profile's `escalate_after_interruptions` (this one included), when the
/// pool has one.
pub fn escalates(history: &History, retries: &Retries, has_queue: bool) -> bool {
    let after = retries.escalate_after_interruptions;
    has_queue && after > 0 && history.interruptions.saturating_add(1) >= after
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

/// Before a job runs: run it, record it cancelled or its budget spent without
/// running it, or settle its message without running it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Run,
    /// Its result is `cancelled`; the message goes as a terminal status's does.
    Cancel,
    /// Its result is `failed`, naming the budget; as a terminal status's.
    Spent(Budget),
    Skip(Settlement),
}

/// The "Before a job runs" table. `retry` is [`retry_visibility`] for this
/// delivery; `spent`, the budget its history has spent, if any.
pub fn before_run(
    result: Lookup,
    claim: ClaimLookup,
    retry: Duration,
    spent: Option<Budget>,
) -> Admission {
    let release_claim = claim == ClaimLookup::Acquired;
    let skip = |fate| {
        Admission::Skip(Settlement {
            fate,
            release_claim,
        })
    };
    match (result, claim) {
        (Lookup::Absent, ClaimLookup::Acquired) => match spent {
            Some(budget) => Admission::Spent(budget),
            None => Admission::Run,
        },
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

/// How an attempt ended, as its message's fate depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    pub status: Status,
    /// Its result is in S3 (only asked of terminal statuses).
    pub recorded: bool,
    /// The drain gave the message back while the job still ran, and released
    /// the claim then.
    pub handed_back: bool,
    /// `failed` with an exit code the job asked to retry, retries left.
    pub retried: bool,
    /// An interruption's copy goes to the escalation queue.
    pub escalate: bool,
}

/// The "Outcomes and the SQS message" table, for a job that ran (or began to).
/// `retry` is [`retry_visibility`] for this delivery.
pub fn after_run(ended: Ended, retry: Duration) -> Settlement {
    let Ended {
        status,
        recorded,
        handed_back,
        retried,
        escalate,
    } = ended;
    let release_claim = !handed_back;
    let fate = match status {
        // Even after an early hand-back: a redelivery would find the result anyway.
        _ if status.is_terminal() && !retried && recorded => Fate::Delete,
        // Not recorded: SQS brings it back after its visibility timeout, and the
        // job runs again.
        _ if status.is_terminal() && !retried => Fate::Leave,
        _ if handed_back => Fate::Leave,
        // Its record is the attempt's, not the job's: the copy goes either way.
        _ if retried => Fate::Requeue(Requeue {
            cause: Cause::Retry,
            delay: Duration::ZERO,
            escalate: false,
        }),
        Status::Interrupted => Fate::Requeue(Requeue::interruption(escalate)),
        _ => Fate::Requeue(Requeue {
            cause: Cause::HostError,
            delay: retry,
            escalate: false,
        }),
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
pub fn preempted(escalate: bool) -> Settlement {
    Settlement {
        fate: Fate::Requeue(Requeue::interruption(escalate)),
        release_claim: true,
    }
}

/// Whether a result is announced (results queue, webhook) once recorded: a
/// result that ends the job, when it is ours (another run's that stands would be
/// contradicted), and an interruption, at its hand-back.
pub fn announces(status: Status, is_final: bool, ours: bool) -> bool {
    (is_final && ours) || status == Status::Interrupted
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
    /// `job_id` names the claim, if there is one to release; `next` is the history
    /// a requeued copy carries (`None`: the one the message came with).
    pub(super) async fn settle(
        &self,
        message: &Received,
        job_id: &str,
        settlement: Settlement,
        next: Option<&History>,
    ) {
        if settlement.release_claim
            && let Err(error) = self.store.release(job_id, &self.claim(0)).await
        {
            tracing::warn!(%error, "Could not release the job's claim; it expires by itself.");
        }
        match settlement.fate {
            Fate::Delete => self.delete(message).await,
            Fate::HandBack(visibility) => self.hand_back(message, visibility).await,
            Fate::Requeue(requeue) => self.requeue(message, requeue, next).await,
            Fate::Leave => {}
        }
    }

    async fn delete(&self, message: &Received) {
        if let Err(error) = self.queue.delete(message).await {
            // The result is recorded, so a redelivery is recognised as a duplicate.
            tracing::warn!(%error, "Could not delete the message; a redelivery will be skipped.");
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

    /// Sends a fresh copy (the body and the producer's attributes as they came,
    /// with `next` as the history), then deletes the original. A crash between
    /// the two leaves two copies, never none: the claim keeps the job run-once.
    /// A copy that cannot be sent falls back to a hand-back, which costs a
    /// receive but loses nothing.
    async fn requeue(&self, message: &Received, requeue: Requeue, next: Option<&History>) {
        let queue = self.requeue_queue(requeue);
        let mut attributes: Vec<_> = message
            .attributes
            .iter()
            .filter(|(name, _)| next.is_none() || name != ATTRIBUTE)
            .cloned()
            .collect();
        if let Some(next) = next {
            attributes.push((ATTRIBUTE.to_owned(), text_attribute(&next.to_attribute())));
        }
        let fallback = requeue.delay.min(self.config.queue.visibility_timeout);
        if attributes.len() > MAX_ATTRIBUTES {
            tracing::warn!(
                attributes = attributes.len(),
                "The message carries too many attributes for a copy with the job's history; handing it back instead."
            );
            return self.hand_back(message, fallback).await;
        }
        match queue
            .send_delayed(&message.body, &attributes, requeue.delay)
            .await
        {
            Ok(copy) => {
                self.metrics.requeued(requeue.cause);
                tracing::info!(
                    cause = requeue.cause.as_str(),
                    queue = queue.url(),
                    copy_message_id = %copy,
                    delay_secs = requeue.delay.as_secs(),
                    "Job sent back to the queue as a fresh copy."
                );
                if let Err(error) = self.queue.delete(message).await {
                    tracing::warn!(%error, "Could not delete the original after sending its copy; a duplicate delivery will find the job claimed or done.");
                }
            }
            Err(error) => {
                tracing::warn!(%error, "Could not send the job's copy; handing the message back instead.");
                self.hand_back(message, fallback).await;
            }
        }
    }

    /// The queue a requeued copy goes to: the escalation queue when asked and
    /// the pool has one, else the job queue.
    fn requeue_queue(&self, requeue: Requeue) -> &crate::aws::sqs::Queue {
        match (&self.escalation, requeue.escalate) {
            (Some(escalation), true) => escalation,
            _ => &self.queue,
        }
    }

    /// What an attempt's result says of its copy sent back by `requeue`.
    pub(super) fn requeued(&self, requeue: Requeue) -> crate::job::result::Requeued {
        crate::job::result::Requeued {
            queue: self.requeue_queue(requeue).url().to_owned(),
            cause: requeue.cause.as_str().to_owned(),
            escalated: requeue.escalate && self.escalation.is_some(),
            delay_secs: requeue.delay.as_secs(),
        }
    }
}

#[cfg(test)]
mod tests;
