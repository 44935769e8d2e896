//! `retry` and `expected_secs`: what a job says about its own attempts.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{JobSpec, NamedProfile, Problems};

/// The most exit codes a job may list.
pub const MAX_EXIT_CODES: usize = 16;

/// `"retry": {"exit_codes": [75], "max": 2}`: an attempt that exits with one of
/// these codes is tried again, up to `max` times (capped by the profile's
/// `max_retries`), each retry a new attempt with its own record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    pub exit_codes: Vec<i64>,
    pub max: u32,
}

impl JobSpec {
    /// The retry rule, its `max` capped by the profile's `max_retries`.
    pub(super) fn retry(
        &self,
        named: &NamedProfile<'_>,
        problems: &mut Problems,
    ) -> Option<RetrySpec> {
        let retry = self.retry.as_ref()?;
        let codes = &retry.exit_codes;
        if codes.is_empty() || codes.len() > MAX_EXIT_CODES {
            problems.push(
                "retry.exit_codes",
                format!("{} codes; list 1 to {MAX_EXIT_CODES}", codes.len()),
            );
        }
        // 0 is success; a shell reports codes 1 to 255.
        if let Some(code) = codes.iter().find(|c| !(1..=255).contains(*c)) {
            problems.push(
                "retry.exit_codes",
                format!("{code} is not an exit code that fails (1 to 255)"),
            );
        }
        if retry.max == 0 {
            problems.push("retry.max", "must be at least 1; leave retry out for none");
        }
        let cap = named.profile.retries.max_retries;
        Some(RetrySpec {
            exit_codes: codes.clone(),
            max: retry.max.min(cap),
        })
    }

    /// `expected_secs`: 1 to the job's timeout.
    pub(super) fn expected(&self, timeout: Duration, problems: &mut Problems) -> Option<Duration> {
        let secs = self.expected_secs?;
        if secs == 0 || secs > timeout.as_secs() {
            problems.push(
                "expected_secs",
                format!(
                    "{secs} is out of range (1 to the job's timeout, {})",
                    timeout.as_secs()
                ),
            );
        }
        Some(Duration::from_secs(secs))
    }
}
