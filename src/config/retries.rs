//! A profile's budgets for the attempts of one job, each cause its own: the
//! host going away, the host failing, the job asking to be retried.

use super::reader::{Reader, Section};

/// Interruptions a job may take before it ends `failed` with `budget =
/// "interruptions"`: a long job in a volatile spot market is reclaimed often.
pub const DEFAULT_MAX_INTERRUPTIONS: u64 = 10;
/// Attempts the hosts could not run (a pull, Docker) before the job ends.
pub const DEFAULT_MAX_HOST_ERRORS: u64 = 3;
/// Retries a job's `retry.max` may ask for.
pub const DEFAULT_MAX_RETRIES: u64 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retries {
    pub max_interruptions: u32,
    pub max_host_errors: u32,
    /// The cap of a job's `retry.max`.
    pub max_retries: u32,
    /// After this many interruptions the job goes to `queue.escalation_url`
    /// instead of back; 0: never.
    pub escalate_after_interruptions: u32,
}

impl Default for Retries {
    fn default() -> Self {
        Retries {
            max_interruptions: DEFAULT_MAX_INTERRUPTIONS as u32,
            max_host_errors: DEFAULT_MAX_HOST_ERRORS as u32,
            max_retries: DEFAULT_MAX_RETRIES as u32,
            escalate_after_interruptions: 0,
        }
    }
}

pub(super) fn read_profile(r: &mut Reader<'_>, section: &mut Section) -> Retries {
    let mut count =
        |key: &str, max: u64, default: u64| r.int(section, key, 0..=max, default) as u32;
    Retries {
        max_interruptions: count("max_interruptions", 1000, DEFAULT_MAX_INTERRUPTIONS),
        max_host_errors: count("max_host_errors", 100, DEFAULT_MAX_HOST_ERRORS),
        max_retries: count("max_retries", 10, DEFAULT_MAX_RETRIES),
        escalate_after_interruptions: count("escalate_after_interruptions", 1000, 0),
    }
}
