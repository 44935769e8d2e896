//! The "slave terminator": watches the instance metadata for the notices that mean
//! this host is going away, and turns each into a drain with the right deadline.
//!
//! - `spot/instance-action` (terminate, stop, hibernate): a drain whose running jobs
//!   are stopped per `drain.on_spot` (the plan is `agent::drain::plan`);
//! - `events/recommendations/rebalance`, per `drain.on_rebalance`;
//! - `autoscaling/target-lifecycle-state` = `Terminated`: drain as on SIGTERM.
//!
//! The watcher polls state, not events: a failed poll loses nothing, the next one
//! sees the same notice. It keeps polling through the drain, so a spot notice that
//! follows a SIGTERM still tightens the deadline.

use std::time::Duration;

use chrono::Utc;

use crate::aws::imds::{Imds, SpotNotice};
use crate::backoff::Backoff;
use crate::config::{Config, RebalancePolicy};
use crate::host::stop::{Stop, StopReason};

/// Asks, slowly and quietly, until the metadata service answers at all: off EC2
/// it never will, and a warning a minute would be noise.
async fn wait_for_service(imds: &Imds) {
    let mut backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(300));
    loop {
        tokio::time::sleep(backoff.next_delay()).await;
        match imds.identity().await {
            Err(error) if error.is_unreachable() => {
                tracing::debug!(%error, "Still no instance metadata service.");
            }
            _ => {
                tracing::info!("The instance metadata service answers now; watching for notices.");
                return;
            }
        }
    }
}

/// What the watcher has already acted on: each notice is acted on once.
#[derive(Default)]
struct Seen {
    spot: Option<SpotNotice>,
    rebalance: bool,
    terminated: bool,
}

/// Polls every `imds.poll_ms` until dropped.
/// `answered`: whether the service answered at boot; if not, the watch begins
/// once it does.
pub async fn watch(
    imds: Imds,
    answered: bool,
    config: &Config,
    stop: Stop,
) -> std::convert::Infallible {
    if !answered {
        wait_for_service(&imds).await;
    }
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
            RebalancePolicy::AdmitIfFits => {
                let horizon = config.drain.rebalance_horizon;
                tracing::info!(
                    horizon_secs = horizon.as_secs(),
                    "Taking only jobs expected to end within the horizon; draining at it."
                );
                stop.admit_until(tokio::time::Instant::now() + horizon);
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
    tracing::warn!(
        action = notice.action.as_str(),
        interruption_time = %crate::rules::timestamp(notice.time),
        in_ms = (notice.time - Utc::now()).num_milliseconds().max(0),
        policy = ?config.drain.on_spot,
        "Spot interruption notice."
    );
    // What it means for running jobs is the drain's plan (agent/drain.rs).
    stop.notice_spot(notice.clone());
}
