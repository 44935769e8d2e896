//! `drain.on_rebalance = "admit-if-fits"`: after a rebalance recommendation the
//! host takes only the jobs expected to end before the horizon, and sends the rest
//! back for other hosts. A job is expected to take its `expected_secs`, else its
//! profile's recent 90th percentile as this agent has seen it; a job with neither
//! is not taken.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use crate::agent::Agent;
use crate::agent::fate::{Fate, Requeue, Settlement};
use crate::aws::sqs::Received;
use crate::job::Job;

/// The durations kept per profile: enough for a percentile, and recent.
const KEPT: usize = 50;

/// Recent durations of jobs that ran to their end, by profile (the profiles are
/// the config's, so the map is bounded).
#[derive(Default)]
pub struct Durations {
    by_profile: Mutex<BTreeMap<String, VecDeque<Duration>>>,
}

impl Durations {
    /// A job of `profile` ran for `took`.
    pub fn record(&self, profile: &str, took: Duration) {
        let mut all = self.by_profile.lock().unwrap_or_else(|e| e.into_inner());
        let recent = all.entry(profile.to_owned()).or_default();
        if recent.len() == KEPT {
            recent.pop_front();
        }
        recent.push_back(took);
    }

    /// The 90th percentile of the profile's recent durations; `None` before
    /// its first job.
    pub fn p90(&self, profile: &str) -> Option<Duration> {
        let all = self.by_profile.lock().unwrap_or_else(|e| e.into_inner());
        let mut recent: Vec<Duration> = all.get(profile)?.iter().copied().collect();
        recent.sort_unstable();
        // The nearest rank: the smallest value at or above 90% of them.
        let rank = (recent.len() * 9).div_ceil(10).max(1);
        recent.get(rank - 1).copied()
    }
}

impl Agent {
    /// Whether the job in `message` is expected to end before `horizon`. A
    /// message that is no job is left to the delivery, which rejects it.
    pub(super) fn fits(&self, message: &Received, horizon: Instant) -> bool {
        let Ok(job) = Job::parse(message.body.as_bytes(), &self.config) else {
            return true;
        };
        let expected = job.expected.or_else(|| self.durations.p90(&job.profile));
        let left = horizon.saturating_duration_since(Instant::now());
        let fits = expected.is_some_and(|expected| expected <= left);
        if !fits {
            tracing::info!(
                job_id = %job.id,
                expected_secs = expected.map(|e| e.as_secs()),
                left_secs = left.as_secs(),
                "Job would not end before the rebalance horizon; sending it back for another host."
            );
        }
        fits
    }

    /// Sends a message back as it came: it never started here.
    pub(super) async fn decline(&self, message: Received) {
        let span = tracing::info_span!("job", sqs_message_id = %message.message_id);
        let settlement = Settlement {
            fate: Fate::Requeue(Requeue::DECLINED),
            release_claim: false,
        };
        self.settle(&message, "", settlement, None)
            .instrument(span)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_p90_of_recent_durations() {
        let durations = Durations::default();
        assert_eq!(durations.p90("default"), None);
        durations.record("default", Duration::from_secs(7));
        assert_eq!(durations.p90("default"), Some(Duration::from_secs(7)));
        for secs in 1..=10 {
            durations.record("big", Duration::from_secs(secs));
        }
        assert_eq!(durations.p90("big"), Some(Duration::from_secs(9)));
        // Only the last 50 count.
        for _ in 0..KEPT {
            durations.record("big", Duration::from_secs(1));
        }
        assert_eq!(durations.p90("big"), Some(Duration::from_secs(1)));
    }
}
