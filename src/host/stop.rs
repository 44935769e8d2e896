//! Why the agent stops, and the one signal that tells everything to stop.
//!
//! Every trigger (a signal, a spot notice, a rebalance recommendation, an Auto
//! Scaling termination, idleness) goes through [`Stop::begin`] with a
//! [`StopReason`]; the first reason starts the drain. Triggers that carry a deadline
//! (a spot notice) also set the instant by which running jobs must be stopped,
//! through [`Stop::preempt_by`]; a later, earlier deadline tightens it. A second
//! signal is the operator saying "now": [`Stop::force`].

use std::fmt;
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::aws::imds::SpotAction;
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
    /// When running jobs must be stopped, and why, if a trigger set a deadline.
    preempt: Arc<watch::Sender<Option<(Instant, StopReason)>>>,
}

impl Default for Stop {
    fn default() -> Self {
        Stop {
            draining: CancellationToken::new(),
            forced: CancellationToken::new(),
            reason: Arc::default(),
            preempt: Arc::new(watch::channel(None).0),
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

    /// Running jobs must be stopped by `at`; an earlier deadline already set stands.
    pub fn preempt_by(&self, at: Instant, reason: StopReason) {
        self.preempt.send_if_modified(|current| match current {
            Some((existing, _)) if *existing <= at => false,
            _ => {
                *current = Some((at, reason));
                true
            }
        });
    }

    /// Watches the preemption deadline.
    pub fn preemption(&self) -> watch::Receiver<Option<(Instant, StopReason)>> {
        self.preempt.subscribe()
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
    use std::time::Duration;

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

    #[tokio::test(start_paused = true)]
    async fn preemption_only_tightens() {
        let stop = Stop::new();
        let rx = stop.preemption();
        let now = Instant::now();
        stop.preempt_by(now + Duration::from_secs(60), StopReason::AutoScaling);
        stop.preempt_by(now + Duration::from_secs(90), StopReason::Signal("SIGTERM"));
        assert_eq!(
            rx.borrow().as_ref().unwrap().0,
            now + Duration::from_secs(60)
        );
        stop.preempt_by(
            now + Duration::from_secs(5),
            StopReason::Rebalance {
                policy: RebalancePolicy::Drain,
            },
        );
        let (at, reason) = rx.borrow().clone().unwrap();
        assert_eq!(at, now + Duration::from_secs(5));
        assert_eq!(
            reason,
            StopReason::Rebalance {
                policy: RebalancePolicy::Drain
            }
        );
    }
}
