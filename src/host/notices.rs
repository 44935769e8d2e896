//! The "slave terminator": watches the instance metadata for the notices that mean
//! this host is going away, and turns each into a drain with the right deadline.
//!
//! - `spot/instance-action` (terminate, stop, hibernate): the drain's deadline is the
//!   interruption time minus `drain.safety_margin_secs`. Running jobs are handed back
//!   at once (`drain.on_spot = "release"`, and always for hibernate, which gives no
//!   two-minute warning), or may finish if they can before the deadline
//!   (`finish-if-possible`);
//! - `events/recommendations/rebalance`, per `drain.on_rebalance`;
//! - `autoscaling/target-lifecycle-state` = `Terminated`: drain as on SIGTERM.
//!
//! The watcher polls state, not events: a failed poll loses nothing, the next one
//! sees the same notice. It keeps polling through the drain, so a spot notice that
//! follows a SIGTERM still tightens the deadline.

use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;

use crate::aws::imds::{Imds, SpotAction, SpotNotice};
use crate::backoff::Backoff;
use crate::config::{Config, RebalancePolicy, SpotPolicy};
use crate::host::stop::{Stop, StopReason};

/// What the watcher has already acted on: each notice is acted on once.
#[derive(Default)]
struct Seen {
    spot: Option<SpotNotice>,
    rebalance: bool,
    terminated: bool,
}

/// Polls every `imds.poll_ms` until dropped.
pub async fn watch(imds: Imds, config: &Config, stop: Stop) -> std::convert::Infallible {
    let poll = config.imds.poll;
    let mut seen = Seen::default();
    let mut backoff = Backoff::new(poll.max(Duration::from_secs(1)), Duration::from_secs(30));
    let mut failing = false;
    loop {
        match poll_once(&imds, config, &stop, &mut seen).await {
            Ok(()) => {
                if failing {
                    backoff.reset();
                    failing = false;
                    tracing::info!("The instance metadata service answers again.");
                }
                tokio::time::sleep(poll).await;
            }
            Err(error) => {
                // Once per backoff step, not once per poll.
                failing = true;
                let delay = backoff.next_delay().max(poll);
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "Cannot read the instance metadata; jobs go on.");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

async fn poll_once(
    imds: &Imds,
    config: &Config,
    stop: &Stop,
    seen: &mut Seen,
) -> Result<(), crate::aws::imds::ImdsError> {
    if let Some(notice) = imds.spot_notice().await?
        && seen.spot.as_ref() != Some(&notice)
    {
        on_spot(&notice, config, stop);
        seen.spot = Some(notice);
    }
    if !seen.rebalance
        && let Some(noticed) = imds.rebalance_notice().await?
    {
        seen.rebalance = true;
        let policy = config.drain.on_rebalance;
        tracing::warn!(notice_time = %crate::rules::timestamp(noticed), ?policy, "Rebalance recommendation.");
        match policy {
            RebalancePolicy::Ignore => {}
            RebalancePolicy::StopIntake | RebalancePolicy::Drain => {
                stop.begin(StopReason::Rebalance { policy });
            }
        }
    }
    if !seen.terminated && imds.lifecycle_state().await?.as_deref() == Some("Terminated") {
        seen.terminated = true;
        tracing::warn!("Auto Scaling is terminating this instance.");
        stop.begin(StopReason::AutoScaling);
    }
    Ok(())
}

fn on_spot(notice: &SpotNotice, config: &Config, stop: &Stop) {
    let drain = &config.drain;
    let reason = StopReason::Spot {
        action: notice.action,
        time: notice.time,
    };
    // The deadline as a point on the monotonic clock the drain waits on.
    let until_interruption = (notice.time - Utc::now()).to_std().unwrap_or_default();
    let deadline = Instant::now() + until_interruption.saturating_sub(drain.safety_margin);
    let release_now =
        notice.action == SpotAction::Hibernate || drain.on_spot == SpotPolicy::Release;
    // Jobs that may finish are stopped early enough for SIGTERM, the grace period
    // and the hand-back to land before the deadline.
    let preempt_at = if release_now {
        Instant::now()
    } else {
        deadline
            .checked_sub(drain.stop_grace)
            .unwrap_or_else(Instant::now)
            .max(Instant::now())
    };
    tracing::warn!(
        action = notice.action.as_str(),
        interruption_time = %crate::rules::timestamp(notice.time),
        deadline_in_ms = deadline.saturating_duration_since(Instant::now()).as_millis() as u64,
        preempt_in_ms = preempt_at.saturating_duration_since(Instant::now()).as_millis() as u64,
        policy = if release_now { "release" } else { "finish-if-possible" },
        "Spot interruption notice."
    );
    stop.begin(reason.clone());
    stop.preempt_by(preempt_at, reason);
}
