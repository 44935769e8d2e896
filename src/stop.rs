//! Why the agent stops, and the one signal that tells everything to stop.
//!
//! Every trigger (a signal, and later a spot notice or idleness) goes through
//! [`Stop::begin`] with a [`StopReason`]; the first reason wins. A second trigger
//! while draining escalates to [`Stop::force`]: wait for nothing, stop what runs now.

use std::fmt;
use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// SIGTERM or SIGINT.
    Signal(&'static str),
    /// No job for `agent.idle_shutdown_secs`.
    Idle { after_secs: u64 },
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Signal(name) => write!(f, "{name} received"),
            StopReason::Idle { after_secs } => write!(f, "idle for {after_secs}s"),
        }
    }
}

/// Shared stop state: cheap to clone, one per process (tests make their own).
#[derive(Clone, Debug, Default)]
pub struct Stop {
    /// Cancelled when the drain begins: take no more work.
    draining: CancellationToken,
    /// Cancelled when waiting is over: stop running jobs now.
    forced: CancellationToken,
    reason: Arc<OnceLock<StopReason>>,
}

impl Stop {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the drain; a second call while draining forces it.
    pub fn begin(&self, reason: StopReason) {
        if self.reason.set(reason.clone()).is_err() {
            tracing::warn!(%reason, "Second stop request; stopping running jobs now.");
            self.force();
            return;
        }
        tracing::info!(%reason, "Draining.");
        self.draining.cancel();
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

/// Feeds SIGTERM and SIGINT into `stop` for as long as it is polled. It never
/// returns: callers race it against their work.
pub async fn watch_signals(stop: Stop) -> std::io::Result<std::convert::Infallible> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        stop.begin(StopReason::Signal(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_second_forces() {
        let stop = Stop::new();
        assert!(!stop.is_draining());
        stop.begin(StopReason::Signal("SIGTERM"));
        assert!(stop.is_draining());
        assert!(!stop.forced().is_cancelled());
        stop.begin(StopReason::Signal("SIGINT"));
        assert!(stop.forced().is_cancelled());
        assert_eq!(stop.reason(), Some(&StopReason::Signal("SIGTERM")));
    }
}
