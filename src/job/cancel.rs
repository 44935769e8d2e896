//! A job's cancel: set once, by whoever learns of the request (the agent's poll
//! of `cancel.json`), and seen by the runner, which stops the container.

use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;

/// Whether, and why, a job was cancelled. Cheap to clone; all clones are one.
#[derive(Clone, Default)]
pub struct Cancel {
    token: CancellationToken,
    reason: Arc<OnceLock<String>>,
}

impl Cancel {
    /// A cancel that is never requested (`deckhand exec`).
    pub fn never() -> Self {
        Cancel::default()
    }

    /// Cancels the job; the first reason stands.
    pub fn request(&self, reason: String) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    /// Completes once a cancel is requested.
    pub async fn requested(&self) {
        self.token.cancelled().await
    }

    /// The reason, once requested.
    pub fn reason(&self) -> Option<&str> {
        self.reason.get().map(String::as_str)
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
        cancel.request("cancelled: second".into());
        seen.requested().await;
        assert_eq!(seen.reason(), Some("cancelled: first"));
    }
}
