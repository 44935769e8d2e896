//! Whether the kernel's OOM killer ended a job's container.

use std::time::Duration;

use super::Runner;
use crate::docker;

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
}
