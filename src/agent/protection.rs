//! `autoscaling.protect_busy`: while any job runs, the instance's scale-in
//! protection is on, so its group never chooses a busy host to remove; when the
//! host is idle it is off again. A stream of short jobs must not become a stream
//! of API calls: at most one call per change of state, and at most one every
//! [`MIN_INTERVAL`], the state read again when the interval ends (a job that
//! came and went meanwhile costs nothing).

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::aws::autoscaling::Protection;

/// The least time between two calls.
pub const MIN_INTERVAL: Duration = Duration::from_secs(10);
/// How long the last call, protection off as the agent leaves, may take.
const LAST_CALL: Duration = Duration::from_secs(10);

/// Keeps the protection in step with `busy` until `done`, then turns it off if
/// it is on. Outside any group it does nothing (said once).
pub async fn keep(
    protection: &Protection,
    mut busy: watch::Receiver<usize>,
    done: CancellationToken,
) {
    let group = match protection.group().await {
        Ok(Some(group)) => group,
        Ok(None) => {
            tracing::warn!(
                "autoscaling.protect_busy: this instance is in no Auto Scaling group; nothing to protect."
            );
            return;
        }
        Err(error) => {
            tracing::warn!(%error, "autoscaling.protect_busy: cannot find this instance's group; scale-in protection stays as it is.");
            return;
        }
    };
    let mut protected = false;
    let mut last_call: Option<Instant> = None;
    loop {
        let wanted = *busy.borrow_and_update() > 0;
        if wanted != protected {
            if let Some(last) = last_call {
                tokio::select! {
                    () = tokio::time::sleep_until(last + MIN_INTERVAL) => {}
                    () = done.cancelled() => break,
                }
            }
            // Read again: within the interval it may have gone back.
            let wanted = *busy.borrow_and_update() > 0;
            if wanted != protected {
                last_call = Some(Instant::now());
                match protection.set(&group, wanted).await {
                    Ok(()) => {
                        protected = wanted;
                        tracing::info!(protected, %group, "Scale-in protection set.");
                    }
                    Err(error) => {
                        tracing::warn!(%error, "Could not set scale-in protection; trying again.")
                    }
                }
            }
            continue;
        }
        tokio::select! {
            changed = busy.changed() => if changed.is_err() { break },
            () = done.cancelled() => break,
        }
    }
    if protected {
        match tokio::time::timeout(LAST_CALL, protection.set(&group, false)).await {
            Ok(Ok(())) => tracing::info!(%group, "Scale-in protection off; leaving."),
            Ok(Err(error)) => {
                tracing::warn!(%error, "Could not turn scale-in protection off as the agent leaves.")
            }
            Err(_) => {
                tracing::warn!("Turning scale-in protection off took too long; leaving it on.")
            }
        }
    }
}
