//! One message's delivery, from receipt to its fate: parse and check the job (or
//! reject it), look for an earlier result and take the claim, run the job with
//! heartbeats, record its result, and settle the message as [`fate`] decides.
//!
//! [`fate`]: crate::agent::fate

use std::time::Duration;

use crate::agent::Agent;
use crate::agent::fate::{self, Admission, Ended, Fate};
use crate::agent::slots::Slot;
use crate::aws::sqs::Received;
use crate::host::stop::Preemption;
use crate::job::attempts::{ATTRIBUTE, Attempt, History};
use crate::job::log::LogBody;
use crate::job::result::{JobResult, Status};
use crate::job::runner::Finished;
use crate::job::spec::Problem;
use crate::job::{Job, Rejection};

mod attempt;
mod record;

pub use attempt::LABEL_RECEIPT;

/// The longest pause between attempts to record a result.
const MAX_RECORD_BACKOFF: Duration = Duration::from_secs(30);

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

/// One delivery of a job's message, with the history its copy carries.
pub(super) struct Delivery {
    message: Received,
    job: Job,
    history: History,
    /// deckhand's attempt number for this delivery.
    attempt: u32,
}

impl Agent {
    /// One message, from receipt to its fate on the queue. `slot` is held until
    /// the job's container is gone.
    pub(super) async fn deliver(&self, message: Received, slot: Slot, preemption: &Preemption) {
        let job = Job::parse(message.body.as_bytes(), &self.config)
            .and_then(|job| job.check_bundle(&self.secrets).map(|()| job))
            .and_then(|job| history(&message, &job).map(|history| (job, history)));
        match job {
            Ok((job, history)) => {
                tracing::Span::current().record("job_id", job.id.as_str());
                let attempt = history.attempt(message.receive_count);
                tracing::Span::current().record("attempt", attempt);
                let delivery = Delivery {
                    message,
                    job,
                    history,
                    attempt,
                };
                self.run_job(delivery, slot, preemption).await;
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
        if fate == Fate::Delete
            && fate::announces(Status::Rejected, true, recording == Recording::Ours)
        {
            self.notifier.notify(&result).await;
        }
        let settlement = fate::Settlement {
            fate,
            release_claim: false,
        };
        self.settle(&message, &result.id, settlement, None).await;
    }

    async fn run_job(&self, delivery: Delivery, slot: Slot, preemption: &Preemption) {
        let Delivery {
            message,
            job,
            history,
            attempt,
        } = &delivery;
        let retries = self.retries(job);
        // A lookup that failed: the message's own receive count paces the retry.
        let retry =
            fate::retry_visibility(message.receive_count, self.config.queue.visibility_timeout);
        let spent = fate::spent(history, &retries);
        let (admission, cancel_request) = self.admit(job, *attempt, retry, spent).await;
        let (mut result, log, chunks, handed_back, workspace) = match admission {
            Admission::Skip(settlement) => {
                return self.settle(message, &job.id, settlement, None).await;
            }
            Admission::Cancel => {
                drop(slot);
                let reason =
                    cancel_request.map_or_else(|| "cancelled".to_owned(), |r| r.describe());
                tracing::info!(%reason, "Job cancelled before it started; not running it.");
                let result =
                    JobResult::cancelled(job.id.clone(), reason, *attempt, &self.instance_id);
                (result, None, None, false, None)
            }
            Admission::Spent(budget) => {
                drop(slot);
                tracing::warn!(
                    budget = budget.as_str(),
                    "A budget of the job's is spent; ending it without running it."
                );
                let result = JobResult::spent(
                    job.id.clone(),
                    budget.describe(),
                    budget.as_str(),
                    *attempt,
                    &self.instance_id,
                );
                (result, None, None, false, None)
            }
            Admission::Run => {
                let attempted = self.run_attempt(&delivery, slot, preemption).await;
                let Finished {
                    mut result,
                    log,
                    artifacts,
                    workspace,
                } = attempted.finished;
                if let Some(collected) = artifacts {
                    self.list_artifacts(&mut result, collected, attempted.uploads);
                }
                let (chunks, handed_back) = (attempted.chunks, attempted.handed_back);
                (result, Some(log), chunks, handed_back, Some(workspace))
            }
        };
        result.receive_count = message.receive_count;
        result.attempts = history.attempts.clone();
        let ran = log.is_some();
        self.count(job, &result, ran);
        let ended = Ended {
            status: result.status,
            recorded: false,
            handed_back,
            retried: fate::retries_exit(
                job.retry.as_ref(),
                retries.max_retries,
                history,
                result.status,
                result.exit_code,
            ),
            escalate: fate::escalates(history, &retries, self.escalation.is_some()),
        };
        self.finish(&delivery, result, log.as_ref(), chunks, ended, ran)
            .await;
        // After the result: its removal is the attempt's last step, not the job's.
        if let Some(workspace) = workspace {
            self.runner.remove_workspace(workspace).await;
        }
    }

    /// Records the attempt and settles its message: a result that ends the job
    /// first, then the delete; one that does not, after its copy is on its way.
    async fn finish(
        &self,
        delivery: &Delivery,
        mut result: JobResult,
        log: Option<&LogBody>,
        chunks: Option<u32>,
        ended: Ended,
        ran: bool,
    ) {
        let Delivery { message, job, .. } = delivery;
        let host_errors = delivery.history.host_errors.saturating_add(1);
        let retry = fate::retry_visibility(host_errors, self.config.queue.visibility_timeout);
        let settlement = fate::after_run(ended, retry);
        if let Fate::Requeue(requeue) = settlement.fate {
            result.requeued = Some(self.requeued(requeue));
        } else if ended.handed_back && !result.status.is_terminal() {
            // The drain sent the copy while the job ran.
            result.requeued = Some(self.requeued(fate::Requeue::interruption(ended.escalate)));
        }
        let entry = ran.then(|| {
            let lost = !result.is_final();
            self.placement
                .entry(&result, if lost { result.duration_ms / 1000 } else { 0 })
        });
        if let Some(entry) = &entry {
            result.attempts.push(entry.clone());
        }
        let deadline = fate::record_deadline(result.status);
        if !result.is_final() {
            // Its copy goes first, so another host can start it while this one
            // records the attempt.
            let next = self.next_history(delivery, settlement.fate, entry);
            self.settle(message, &job.id, settlement, next.as_ref())
                .await;
            // Announced as the copy goes (before its log lands: no `log` yet).
            result.bound_reason();
            let announced = result.clone();
            let record = self.record_until(&mut result, log, deadline);
            let (recording, ()) = tokio::join!(record, async {
                if fate::announces(announced.status, false, false) {
                    self.notifier.notify(&announced).await;
                }
            });
            return self
                .clean_live(&job.id, delivery.attempt, chunks, recording)
                .await;
        }
        let record = self.record_until(&mut result, log, deadline);
        let recording = if ended.handed_back {
            // No heartbeat after a hand-back: it would hide the message again.
            record.await
        } else {
            tokio::select! {
                recording = record => recording,
                never = self.heartbeat(message, &job.id, delivery.attempt) => match never {},
            }
        };
        let ended = Ended {
            recorded: recording != Recording::Failed,
            ..ended
        };
        let settlement = fate::after_run(ended, retry);
        self.clean_live(&job.id, delivery.attempt, chunks, recording)
            .await;
        if fate::announces(result.status, true, recording == Recording::Ours)
            && settlement.fate == Fate::Delete
        {
            // Independent of each other: the result is recorded.
            tokio::join!(
                self.notifier.notify(&result),
                self.settle(message, &job.id, settlement, None)
            );
        } else {
            self.settle(message, &job.id, settlement, None).await;
        }
    }

    /// The history the job's next copy carries, when the fate sends one.
    fn next_history(
        &self,
        delivery: &Delivery,
        fate: Fate,
        entry: Option<Attempt>,
    ) -> Option<History> {
        let Fate::Requeue(requeue) = fate else {
            return None;
        };
        Some(
            delivery
                .history
                .next(requeue.cause, delivery.attempt, entry),
        )
    }

    /// The profile's budgets for the job's attempts.
    fn retries(&self, job: &Job) -> crate::config::Retries {
        self.config
            .profile(&job.profile)
            .map(|profile| profile.retries)
            .unwrap_or_default()
    }

    /// Counts an attempt that ended in the metrics, and its duration for the
    /// profile's estimate.
    fn count(&self, job: &Job, result: &JobResult, ran: bool) {
        let took = Duration::from_millis(result.duration_ms);
        self.metrics.job_finished(result.status, took);
        if ran && result.status.is_terminal() {
            self.durations.record(&job.profile, took);
        }
        if let Some(admitted) = &result.admission {
            self.metrics.admitted(admitted);
        }
        if let Some(job_usage) = result.usage.as_ref().and_then(|u| u.job.as_ref()) {
            self.metrics.job_used(&job.profile, job_usage);
        }
    }
}

/// The history the message carries; one that breaks a rule rejects the job.
fn history(message: &Received, job: &Job) -> Result<History, Rejection> {
    let attribute = message
        .attributes
        .iter()
        .find(|(name, _)| name == ATTRIBUTE)
        .map(|(_, value)| value.string_value().unwrap_or_default());
    History::read(attribute).map_err(|error| Rejection {
        id: Some(job.id.clone()),
        problems: vec![Problem {
            field: format!("message attribute {ATTRIBUTE}"),
            rule: error.rule,
        }],
    })
}
