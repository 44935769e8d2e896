//! What became of a job's attempt.

use serde::{Deserialize, Serialize};

/// What became of a job; decides the fate of its SQS message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Exit code 0. Message deleted.
    Succeeded,
    /// Non-zero exit, or killed for memory. Message deleted.
    Failed,
    /// Still running at `timeout_secs`. Message deleted.
    TimedOut,
    /// Refused before it ran (schema, policy). Message dead-lettered and deleted.
    Rejected,
    /// Stopped, or never started, on a cancel request (`deckhand cancel`). Message
    /// deleted.
    Cancelled,
    /// The host drained before it finished. Message released for another host.
    Interrupted,
    /// The host could not run it (pull failed, Docker error). Message left to SQS.
    Error,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Succeeded,
        Status::Failed,
        Status::TimedOut,
        Status::Rejected,
        Status::Cancelled,
        Status::Interrupted,
        Status::Error,
    ];

    /// A terminal result means the job is done for good: it is never run again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Succeeded
                | Status::Failed
                | Status::TimedOut
                | Status::Rejected
                | Status::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::TimedOut => "timed_out",
            Status::Rejected => "rejected",
            Status::Cancelled => "cancelled",
            Status::Interrupted => "interrupted",
            Status::Error => "error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_wire_names() {
        for status in Status::ALL {
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
        }
    }

    #[test]
    fn only_finished_outcomes_are_terminal() {
        assert!(Status::Succeeded.is_terminal());
        assert!(Status::Rejected.is_terminal());
        assert!(Status::Cancelled.is_terminal());
        assert!(!Status::Interrupted.is_terminal());
        assert!(!Status::Error.is_terminal());
    }
}
