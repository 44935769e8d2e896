//! A job's cancel: set once, by whoever stops the job before its end for a reason
//! of its own (the agent's poll of `cancel.json`, the disk watchdog), and seen by
//! the runner, which stops the container.

use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;

/// Why a job was stopped before its end, besides the drain and its timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Halt {
    /// Someone asked (`deckhand cancel`): status `cancelled`.
    Requested(String),
    /// The host stopped it to protect the jobs beside it (the disk ran low): status
    /// `failed`, so the producer sees the job broke a limit.
    OverLimit(String),
}

impl Halt {
    pub fn reason(&self) -> &str {
        match self {
            Halt::Requested(reason) | Halt::OverLimit(reason) => reason,
        }
    }
}

/// Whether, and why, a job was cancelled. Cheap to clone; all clones are one.
#[derive(Clone, Default)]
pub struct Cancel {
    token: CancellationToken,
    halt: Arc<OnceLock<Halt>>,
}

impl Cancel {
    /// A cancel that is never requested (`deckhand exec`).
    pub fn never() -> Self {
        Cancel::default()
    }

    /// Cancels the job on a request; the first reason stands.
    pub fn request(&self, reason: String) {
        self.halt(Halt::Requested(reason));
    }

    /// Stops the job for breaking a host limit; the first reason stands.
    pub fn over_limit(&self, reason: String) {
        self.halt(Halt::OverLimit(reason));
    }

    fn halt(&self, halt: Halt) {
        let _ = self.halt.set(halt);
        self.token.cancel();
    }

    /// Completes once the job is to stop.
    pub async fn requested(&self) {
        self.token.cancelled().await
    }

    /// Why, once it is to stop.
    pub fn halt_for(&self) -> Option<&Halt> {
        self.halt.get()
    }

    /// The reason, once it is to stop.
    pub fn reason(&self) -> Option<&str> {
        self.halt.get().map(Halt::reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_reason_stands() {
        let cancel = Cancel::never();
        assert_eq!(cancel.reason(), None);
        let seen = cancel.clone();
        cancel.request("cancelled: first".into());
        cancel.over_limit("disk: second".into());
        seen.requested().await;
        assert_eq!(
            seen.halt_for(),
            Some(&Halt::Requested("cancelled: first".into()))
        );
    }
}
