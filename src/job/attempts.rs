//! A job's attempts across the copies of its message. An interrupted job (or one
//! the host could not run, or one whose exit code asks for a retry) is not handed
//! back by changing its message's visibility, which would spend the queue's redrive
//! budget: a fresh copy is sent, carrying this history as the message attribute
//! [`ATTRIBUTE`], and the original is deleted. So deckhand counts attempts,
//! interruptions, host errors and retries itself, each against a budget of its own
//! (the profile's `max_interruptions`, `max_host_errors`, `max_retries`), and the
//! queue's `maxReceiveCount` is left for what deckhand cannot see: a host that died
//! without a word.
//!
//! The attribute is on the message, so a producer can write it: it is read within
//! a bound and every field checked, and one that breaks a rule rejects the job,
//! naming the rule.

use serde::{Deserialize, Serialize};

use crate::job::status::Status;
use crate::rules::bounded_text;

/// The message attribute that carries the history.
pub const ATTRIBUTE: &str = "deckhand_attempts";
/// The longest attribute read. At [`MAX_LISTED`] entries of at most a few hundred
/// bytes each, deckhand's own never comes near it.
pub const MAX_ATTRIBUTE_BYTES: usize = 64 * 1024;
/// The most attempts listed: past it the oldest leave the list (the counts keep
/// counting them).
pub const MAX_LISTED: usize = 64;
/// The longest reason kept per attempt.
pub const MAX_REASON_BYTES: usize = 512;
/// The longest instance id, zone, lifecycle or timestamp.
const MAX_NAME_BYTES: usize = 64;

/// One attempt that ended, as the result's `attempts` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attempt {
    pub attempt: u32,
    pub instance_id: String,
    /// `null` off EC2.
    pub availability_zone: Option<String>,
    /// `spot` or `on-demand` (the instance metadata's `instance-life-cycle`);
    /// `null` off EC2.
    pub lifecycle: Option<String>,
    pub status: Status,
    pub reason: Option<String>,
    pub started_at: String,
    /// The seconds of work the attempt did that did not become the result.
    pub seconds_lost: u64,
}

/// What the copies of a job's message have been through so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct History {
    /// Attempts made before this copy was sent: this copy's first receive is
    /// attempt `before + 1`.
    pub before: u32,
    pub interruptions: u32,
    pub host_errors: u32,
    /// Retries asked for by the job's exit code (`retry`).
    pub retries: u32,
    /// The attempts that ended, oldest first, the last [`MAX_LISTED`].
    #[serde(default)]
    pub attempts: Vec<Attempt>,
}

/// Why a copy of the message is sent back to a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The host went (a spot notice, Auto Scaling, a rebalance, SIGTERM).
    Interruption,
    /// The host could not run the job (a pull, Docker, S3).
    HostError,
    /// The job's exit code asked for it (`retry.exit_codes`).
    Retry,
    /// Never started here: received while draining, or it would not fit before
    /// the rebalance horizon. Nothing is counted.
    Declined,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Interruption => "interruption",
            Cause::HostError => "host_error",
            Cause::Retry => "retry",
            Cause::Declined => "declined",
        }
    }
}

/// A history attribute that breaks a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("message attribute {ATTRIBUTE}: {rule}")]
pub struct HistoryError {
    pub rule: String,
}

impl History {
    /// The history a message carries; none is a job's first copy.
    pub fn read(attribute: Option<&str>) -> Result<History, HistoryError> {
        let Some(text) = attribute else {
            return Ok(History::default());
        };
        let fail = |rule: String| HistoryError { rule };
        if text.len() > MAX_ATTRIBUTE_BYTES {
            return Err(fail(format!(
                "{} bytes; at most {MAX_ATTRIBUTE_BYTES}",
                text.len()
            )));
        }
        let history: History =
            serde_json::from_str(text).map_err(|e| fail(format!("not deckhand's history: {e}")))?;
        if history.attempts.len() > MAX_LISTED {
            return Err(fail(format!(
                "{} attempts listed; at most {MAX_LISTED}",
                history.attempts.len()
            )));
        }
        for (i, attempt) in history.attempts.iter().enumerate() {
            attempt
                .check()
                .map_err(|rule| fail(format!("attempts[{i}].{rule}")))?;
        }
        Ok(history)
    }

    /// The attempt number of this copy's `receive_count`th delivery.
    pub fn attempt(&self, receive_count: u32) -> u32 {
        self.before.saturating_add(receive_count.max(1))
    }

    /// The history the next copy carries: `ended` (this delivery's attempt, as
    /// `attempt`) listed and counted by `cause`.
    pub fn next(&self, cause: Cause, attempt: u32, ended: Option<Attempt>) -> History {
        let mut next = self.clone();
        if cause == Cause::Declined {
            return next;
        }
        next.before = attempt.max(self.before);
        match cause {
            Cause::Interruption => next.interruptions = next.interruptions.saturating_add(1),
            Cause::HostError => next.host_errors = next.host_errors.saturating_add(1),
            Cause::Retry => next.retries = next.retries.saturating_add(1),
            Cause::Declined => {}
        }
        if let Some(ended) = ended {
            next.attempts.push(ended);
            let over = next.attempts.len().saturating_sub(MAX_LISTED);
            next.attempts.drain(..over);
        }
        next
    }

    /// The attribute's value.
    pub fn to_attribute(&self) -> String {
        serde_json::to_string(self).expect("a history serialises")
    }
}

impl Attempt {
    /// A rule this entry breaks, naming its field.
    fn check(&self) -> Result<(), String> {
        let plain = |field: &str, text: &str, max: usize| {
            if text.is_empty() || bounded_text(text, max) != text {
                Err(format!(
                    "{field}: must be 1 to {max} bytes of printable text"
                ))
            } else {
                Ok(())
            }
        };
        plain("instance_id", &self.instance_id, MAX_NAME_BYTES)?;
        plain("started_at", &self.started_at, MAX_NAME_BYTES)?;
        if let Some(zone) = &self.availability_zone {
            plain("availability_zone", zone, MAX_NAME_BYTES)?;
        }
        if let Some(lifecycle) = &self.lifecycle {
            plain("lifecycle", lifecycle, MAX_NAME_BYTES)?;
        }
        if let Some(reason) = &self.reason {
            plain("reason", reason, MAX_REASON_BYTES)?;
        }
        Ok(())
    }

    /// The reason as an entry keeps it: bounded, escaped.
    pub fn reason(reason: Option<&str>) -> Option<String> {
        reason.map(|r| bounded_text(r, MAX_REASON_BYTES))
    }
}

#[cfg(test)]
mod tests;
