//! Why the agent stops, the one signal that tells everything to stop, and the
//! preemption the drain hands its running jobs.
//!
//! Every trigger (a signal, a spot notice, a rebalance recommendation, an Auto
//! Scaling termination, idleness) goes through [`Stop::begin`] with a
//! [`StopReason`]; the first reason starts the drain. A spot notice is also kept
//! ([`Stop::notice_spot`]) even when it comes after the drain began, since its
//! deadline still binds the running jobs; the drain's plan
//! (`agent::drain::plan`) reads it. A second signal is the operator saying "now":
//! [`Stop::force`].

use std::fmt;
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::aws::imds::{SpotAction, SpotNotice};
use crate::config::RebalancePolicy;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// SIGTERM or SIGINT.
    Signal(&'static str),
    /// No job for `agent.idle_shutdown_secs`.
    Idle { after_secs: u64 },
    /// EC2 will interrupt this spot instance at `time`.
    Spot {
        action: SpotAction,
        time: DateTime<Utc>,
    },
    /// EC2 recommends moving work off this instance.
    Rebalance { policy: RebalancePolicy },
    /// Auto Scaling set the target lifecycle state to `Terminated`.
    AutoScaling,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Signal(name) => write!(f, "{name} received"),
            StopReason::Idle { after_secs } => write!(f, "idle for {after_secs}s"),
            StopReason::Spot { action, time } => write!(
                f,
                "spot interruption notice ({} at {})",
                action.as_str(),
                crate::rules::timestamp(*time)
            ),
            StopReason::Rebalance { .. } => write!(f, "rebalance recommendation"),
            StopReason::AutoScaling => write!(f, "Auto Scaling termination"),
        }
    }
}

/// Shared stop state: cheap to clone, one per process (tests make their own).
#[derive(Clone, Debug)]
pub struct Stop {
    /// Cancelled when the drain begins: take no more work.
    draining: CancellationToken,
    /// Cancelled when waiting is over: stop running jobs now.
    forced: CancellationToken,
    reason: Arc<OnceLock<StopReason>>,
    /// The latest spot interruption notice.
    spot: Arc<watch::Sender<Option<SpotNotice>>>,
    /// Under `drain.on_rebalance = "admit-if-fits"`, after a rebalance
    /// recommendation: jobs are taken only if expected to end by then.
    horizon: Arc<watch::Sender<Option<tokio::time::Instant>>>,
}

impl Default for Stop {
    fn default() -> Self {
        Stop {
            draining: CancellationToken::new(),
            forced: CancellationToken::new(),
            reason: Arc::default(),
            spot: Arc::new(watch::channel(None).0),
            horizon: Arc::new(watch::channel(None).0),
        }
    }
}

impl Stop {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the drain; false if it had already begun (the first reason stands).
    pub fn begin(&self, reason: StopReason) -> bool {
        if self.reason.set(reason.clone()).is_err() {
            return false;
        }
        tracing::info!(%reason, "Draining.");
        self.draining.cancel();
        true
    }

    /// A spot interruption notice: starts the drain if nothing else did, and is
    /// kept for the drain's plan either way.
    pub fn notice_spot(&self, notice: SpotNotice) {
        self.begin(StopReason::Spot {
            action: notice.action,
            time: notice.time,
        });
        self.spot.send_replace(Some(notice));
    }

    /// Watches the latest spot notice.
    pub fn spot_notices(&self) -> watch::Receiver<Option<SpotNotice>> {
        self.spot.subscribe()
    }

    /// Takes only jobs expected to end by `at` from now on (a rebalance
    /// recommendation under `admit-if-fits`); the earliest horizon stands.
    pub fn admit_until(&self, at: tokio::time::Instant) {
        self.horizon.send_if_modified(|horizon| match horizon {
            Some(earlier) if *earlier <= at => false,
            _ => {
                *horizon = Some(at);
                true
            }
        });
    }

    /// The time by which a job taken now must be expected to end, if any.
    pub fn horizon(&self) -> Option<tokio::time::Instant> {
        *self.horizon.borrow()
    }

    /// Stops running jobs without waiting for them any longer.
    pub fn force(&self) {
        self.draining.cancel();
        self.forced.cancel();
    }

    pub fn reason(&self) -> Option<&StopReason> {
        self.reason.get()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Resolves when the drain begins.
    pub fn draining(&self) -> &CancellationToken {
        &self.draining
    }

    /// Resolves when running jobs must stop.
    pub fn forced(&self) -> &CancellationToken {
        &self.forced
    }
}

/// What running jobs are told: stop (SIGTERM, `drain.stop_grace_secs`, SIGKILL)
/// or be killed at once, and why. The drain decides when; the runner obeys.
#[derive(Clone, Debug, Default)]
pub struct Preemption {
    stopping: CancellationToken,
    killing: CancellationToken,
    reason: Arc<OnceLock<StopReason>>,
}

impl Preemption {
    pub fn new() -> Self {
        Self::default()
    }

    /// Follows the process's own stop, for `exec`, which has no drain: its job is
    /// stopped at the first signal and killed at the second.
    pub fn of(stop: &Stop) -> Self {
        Preemption {
            stopping: stop.draining.clone(),
            killing: stop.forced.clone(),
            reason: Arc::clone(&stop.reason),
        }
    }

    /// Running jobs stop now, with their grace period. The first reason stands.
    pub fn stop(&self, reason: StopReason) {
        let _first = self.reason.set(reason);
        self.stopping.cancel();
    }

    /// Running jobs are killed now.
    pub fn kill(&self, reason: StopReason) {
        self.stop(reason);
        self.killing.cancel();
    }

    pub fn reason(&self) -> Option<&StopReason> {
        self.reason.get()
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.is_cancelled()
    }

    pub fn is_killing(&self) -> bool {
        self.killing.is_cancelled()
    }

    /// Resolves when running jobs must stop.
    pub fn stopping(&self) -> &CancellationToken {
        &self.stopping
    }

    /// Resolves when running jobs must die without their grace period.
    pub fn killing(&self) -> &CancellationToken {
        &self.killing
    }
}

/// Feeds SIGTERM and SIGINT into `stop` for as long as it is polled: the first
/// drains, the second forces. It never returns: callers race it against their work.
pub async fn watch_signals(stop: Stop) -> std::io::Result<std::convert::Infallible> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        if !stop.begin(StopReason::Signal(name)) {
            tracing::warn!(
                signal = name,
                "Second stop request; stopping running jobs now."
            );
            stop.force();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let stop = Stop::new();
        assert!(!stop.is_draining());
        assert!(stop.begin(StopReason::Signal("SIGTERM")));
        assert!(stop.is_draining());
        assert!(!stop.begin(StopReason::AutoScaling));
        assert!(!stop.forced().is_cancelled());
        assert_eq!(stop.reason(), Some(&StopReason::Signal("SIGTERM")));
        stop.force();
        assert!(stop.forced().is_cancelled());
    }

    #[test]
    fn a_spot_notice_after_a_signal_is_kept() {
        let stop = Stop::new();
        let notices = stop.spot_notices();
        stop.begin(StopReason::Signal("SIGTERM"));
        let notice = SpotNotice {
            action: SpotAction::Terminate,
            time: Utc::now(),
        };
        stop.notice_spot(notice.clone());
        assert_eq!(stop.reason(), Some(&StopReason::Signal("SIGTERM")));
        assert_eq!(*notices.borrow(), Some(notice));
    }

    #[test]
    fn exec_preemption_follows_the_process_stop() {
        let stop = Stop::new();
        let preemption = Preemption::of(&stop);
        assert!(!preemption.is_stopping());
        stop.begin(StopReason::Signal("SIGINT"));
        assert!(preemption.is_stopping() && !preemption.is_killing());
        assert_eq!(preemption.reason(), Some(&StopReason::Signal("SIGINT")));
        stop.force();
        assert!(preemption.is_killing());
    }
}
