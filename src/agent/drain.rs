//! The drain: once the agent stops receiving, what happens to its running jobs and
//! when. [`plan`] is the whole policy, a pure function of the stop reason, the
//! latest spot notice, `[drain]` and the clock; [`wait_for_jobs`] carries it out
//! against the job tasks; [`Agent::drain`] adds the long poll the drain cut short.
//!
//! | stop reason | running jobs |
//! | --- | --- |
//! | SIGTERM, idle, Auto Scaling, rebalance under `drain` | finish, or are stopped after `drain.stop_timeout_secs` |
//! | rebalance under `stop-intake`, or `admit-if-fits` at its horizon | finish |
//! | spot notice, `release` (and any hibernate) | stopped at once |
//! | spot notice, `finish-if-possible` | finish, or are stopped `stop_grace_secs` before the interruption time minus `safety_margin_secs` |
//! | a second signal | killed at once |
//!
//! A spot notice that comes after another reason tightens the deadline; nothing
//! loosens it. Stopped jobs end `interrupted` and their messages go back at once.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use crate::agent::Agent;
use crate::agent::fate::{Fate, Requeue, Settlement};
use crate::aws::imds::{SpotAction, SpotNotice};
use crate::aws::sqs::{Received, SqsError};
use crate::config::{DrainConfig, RebalancePolicy, SpotPolicy};
use crate::host::forwarder::Forwarder;
use crate::host::stop::{Preemption, Stop, StopReason};
use crate::host::systemd;

/// The longest the drain spends on what earlier cleanups left.
const LAST_SWEEP: Duration = Duration::from_secs(10);

/// A long poll the drain interrupted, kept to finish: SQS may already have handed
/// it a message, which would stay hidden for its visibility timeout if dropped.
pub type InFlight<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Vec<Received>, SqsError>> + Send + 'a>,
>;

/// What happens to the jobs running when the drain began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobsPlan {
    /// They may run to their end.
    Finish,
    /// They are stopped at `at` (SIGTERM, the grace period, SIGKILL) and handed back.
    StopAt { at: Instant, why: StopReason },
}

/// A spot notice placed on the monotonic clock the drain waits on, once, when it
/// was seen: the wall clock may be stepped, the deadline must not move.
#[derive(Debug, Clone, PartialEq)]
pub struct SpotDeadline {
    pub notice: SpotNotice,
    /// When the agent saw the notice.
    pub seen: Instant,
    /// When EC2 interrupts the instance.
    pub interruption: Instant,
}

impl SpotDeadline {
    pub fn new(notice: SpotNotice, now: Instant, now_utc: DateTime<Utc>) -> Self {
        let until_interruption = (notice.time - now_utc).to_std().unwrap_or_default();
        SpotDeadline {
            notice,
            seen: now,
            interruption: now + until_interruption,
        }
    }
}

/// The drain's policy: what happens to the jobs running when it began at
/// `began`, given why it began and the latest spot notice.
pub fn plan(
    reason: &StopReason,
    spot: Option<&SpotDeadline>,
    drain: &DrainConfig,
    began: Instant,
) -> JobsPlan {
    let by_timeout = match reason {
        StopReason::Rebalance {
            policy: RebalancePolicy::StopIntake | RebalancePolicy::AdmitIfFits,
        } => None,
        // The notice sets the deadline.
        StopReason::Spot { .. } => None,
        _ => Some((began + drain.stop_timeout, reason.clone())),
    };
    let by_notice = spot.map(|spot| {
        let why = StopReason::Spot {
            action: spot.notice.action,
            time: spot.notice.time,
        };
        (spot_stop_at(spot, drain), why)
    });
    let earliest = match (by_timeout, by_notice) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    };
    match earliest {
        Some((at, why)) => JobsPlan::StopAt { at, why },
        None => JobsPlan::Finish,
    }
}

/// When a spot notice stops running jobs: at once under `release` or for a
/// hibernation (which gives no two-minute warning); otherwise early enough for
/// SIGTERM, the grace period and the hand-back to land before the interruption
/// time minus the safety margin.
fn spot_stop_at(spot: &SpotDeadline, drain: &DrainConfig) -> Instant {
    if spot.notice.action == SpotAction::Hibernate || drain.on_spot == SpotPolicy::Release {
        return spot.seen;
    }
    let deadline = spot
        .interruption
        .checked_sub(drain.safety_margin)
        .unwrap_or(spot.seen);
    deadline
        .checked_sub(drain.stop_grace)
        .unwrap_or(spot.seen)
        .max(spot.seen)
}

/// Waits for every job task, stopping them when the plan says and killing them
/// when the stop is forced. The plan is made again whenever a spot notice comes.
pub async fn wait_for_jobs(
    mut jobs: JoinSet<()>,
    preemption: &Preemption,
    stop: &Stop,
    drain: &DrainConfig,
    began: Instant,
) {
    let reason = stop
        .reason()
        .cloned()
        .unwrap_or(StopReason::Signal("shutdown"));
    let mut notices = stop.spot_notices();
    let mut spot = None;
    loop {
        if let Some(notice) = notices.borrow_and_update().clone()
            && spot
                .as_ref()
                .is_none_or(|s: &SpotDeadline| s.notice != notice)
        {
            spot = Some(SpotDeadline::new(notice, Instant::now(), Utc::now()));
        }
        let planned = plan(&reason, spot.as_ref(), drain, began);
        let stop_at = match &planned {
            JobsPlan::StopAt { at, .. } if !preemption.is_stopping() => Some(*at),
            _ => None,
        };
        tokio::select! {
            done = jobs.join_next() => match done {
                Some(done) => reap(done),
                None => break,
            },
            () = sleep_until(stop_at) => {
                let JobsPlan::StopAt { why, .. } = planned else {
                    unreachable!("only armed with a plan to stop");
                };
                tracing::info!(
                    running = jobs.len(),
                    draining_ms = began.elapsed().as_millis() as u64,
                    "Stopping running jobs to hand them back."
                );
                preemption.stop(why);
            }
            // The sender lives in `stop`, which outlives the drain.
            _ = notices.changed() => {}
            _ = stop.forced().cancelled(), if !preemption.is_killing() => {
                tracing::info!(running = jobs.len(), "Forced; stopping running jobs now.");
                preemption.kill(reason.clone());
            }
        }
    }
}

impl Agent {
    /// Stops receiving for good: hands back what the interrupted long poll brings
    /// while the running jobs drain as [`plan`] says.
    pub(super) async fn drain(
        &self,
        jobs: JoinSet<()>,
        preemption: &Preemption,
        stop: &Stop,
        in_flight: Option<InFlight<'_>>,
    ) {
        let began = Instant::now();
        let reason = stop
            .reason()
            .cloned()
            .unwrap_or(StopReason::Signal("shutdown"));
        tracing::info!(
            running = jobs.len(),
            stop_timeout_secs = self.config.drain.stop_timeout.as_secs(),
            %reason,
            "Stopped receiving; waiting for running jobs."
        );
        systemd::stopping(&format!("draining: {reason}"));
        // A forced stop stops waiting for the long poll.
        let hand_back = async {
            let Some(receive) = in_flight else { return };
            let received = tokio::select! {
                received = receive => received,
                _ = stop.forced().cancelled() => return,
            };
            for message in received.unwrap_or_default() {
                let span = tracing::info_span!("job", sqs_message_id = %message.message_id);
                async {
                    tracing::info!("Received while draining; sending it back.");
                    // A copy as it came: never started here, it costs the
                    // queue's redrive nothing.
                    let settlement = Settlement {
                        fate: Fate::Requeue(Requeue::DECLINED),
                        release_claim: false,
                    };
                    self.settle(&message, "", settlement, None).await;
                }
                .instrument(span)
                .await;
            }
        };
        let jobs_done = wait_for_jobs(jobs, preemption, stop, &self.config.drain, began);
        tokio::join!(jobs_done, hand_back);
        tracing::info!(
            drain_ms = began.elapsed().as_millis() as u64,
            "Every job finished or handed back."
        );
        // A cleanup Docker put off (it was restarting) is swept by the receive
        // loop, which has stopped: once more before leaving, bounded, so the host
        // does not keep a dead job's container or workspace until the next start.
        if tokio::time::timeout(LAST_SWEEP, self.sweeper.sweep_leftovers())
            .await
            .is_err()
        {
            tracing::warn!(
                "Sweeping what earlier cleanups left took too long; the next start sweeps it."
            );
        }
    }
}

/// Before the instance may go (and before `on_exit` takes it away): waits, at
/// most `timeout`, for the log forwarder's queues to empty, since what they
/// hold is this host's last word on why it left, and says how long it waited
/// and whether they did. Nothing without a forwarder.
pub async fn flush_logs(forwarder: Option<&Forwarder>, timeout: Duration) {
    let Some(forwarder) = forwarder else { return };
    let flushed = forwarder.flush(timeout).await;
    let waited_ms = flushed.waited.as_millis() as u64;
    if flushed.emptied {
        tracing::info!(
            waited_ms,
            emptied = true,
            "The log forwarder's queue is empty."
        );
    } else {
        tracing::warn!(
            waited_ms,
            emptied = false,
            queued = flushed.queued,
            timeout_secs = timeout.as_secs(),
            "The log forwarder's queue did not empty in time; its lines wait on disk."
        );
    }
}

/// Sleeps until `at`; never returns without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Logs a job task that panicked. Its message was neither deleted nor released, so
/// it returns to the queue when its visibility timeout ends.
pub fn reap(done: Result<(), tokio::task::JoinError>) {
    if let Err(error) = done {
        tracing::error!(%error, "A job task failed; its message returns after its visibility timeout.");
    }
}

#[cfg(test)]
mod tests;
