//! How the end of a job's container is learned: its wait, ridden through
//! Docker's outages, and whether the OOM killer ended it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::Runner;
use crate::docker::{self, outage_backoff};

impl Runner {
    /// Whether the kernel's OOM killer ended the container. dockerd sets
    /// `State.OOMKilled` only if containerd's OOM event reached it before the exit
    /// event; under load on cgroup v1 it can come after (seen in the test suite),
    /// and then only Docker's `oom` event tells, which a busy dockerd may log
    /// seconds later. So a SIGKILLed job is asked about both ways for up to 5 s
    /// before it is taken for a plain `kill -9`.
    pub(super) async fn oom_killed(
        &self,
        container: &str,
        code: i64,
        started: i64,
    ) -> Result<bool, docker::DockerError> {
        const SIGKILLED: i64 = 128 + 9;
        let mut asked = 0;
        loop {
            let exit = self.docker.exit_state(container).await?;
            if exit.oom_killed || code != SIGKILLED {
                return Ok(exit.oom_killed);
            }
            if self.docker.oom_event(container, started).await? {
                return Ok(true);
            }
            if asked == 25 {
                return Ok(false);
            }
            asked += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits for the container to exit, riding out a Docker that stops answering:
    /// the container runs on without us (a dockerd restart with `live-restore`, a
    /// dropped socket), so losing the connection is no reason to give the job up.
    /// The job's timeout and the drain still apply around it.
    pub(super) async fn wait_through_outages(
        &self,
        container: &str,
        outages: &AtomicU32,
    ) -> Result<i64, docker::DockerError> {
        let mut backoff = outage_backoff();
        loop {
            match self.docker.wait(container).await {
                Err(error) if error.is_unreachable() => {
                    outages.fetch_add(1, Ordering::SeqCst);
                    let delay = backoff.next_delay();
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "Lost Docker while the job runs; waiting for it to answer again.");
                    tokio::time::sleep(delay).await;
                }
                waited => {
                    if backoff.reset() {
                        tracing::info!("Docker answers again; the job's container is still there.");
                    }
                    return waited;
                }
            }
        }
    }
}
