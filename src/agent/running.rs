//! What goes on around a running job, each a loop that never returns and is safe
//! to drop at any await: the heartbeat, the watch for a cancel request, and the
//! live log's uploads.

use std::convert::Infallible;

use crate::agent::Agent;
use crate::aws::sqs::Received;
use crate::job::cancel::Cancel;
use crate::job::live::LiveTail;
use crate::record::Renewal;

impl Agent {
    /// Keeps the message hidden and the claim alive while the job runs. Never
    /// returns; dropping it is safe (each beat is a whole request or none).
    pub(super) async fn heartbeat(
        &self,
        message: &Received,
        job_id: &str,
        attempt: u32,
    ) -> Infallible {
        let visibility = self.config.queue.visibility_timeout;
        // A third of the timeout: two beats may fail before the message reappears.
        let period = visibility / 3;
        loop {
            tokio::time::sleep(period).await;
            if let Err(error) = self
                .queue
                .set_visibility(&message.message_id, &message.receipt, visibility)
                .await
            {
                tracing::warn!(%error, "Heartbeat failed; the message may reappear.");
            }
            match self.store.renew(job_id, &self.claim(attempt)).await {
                Ok(Renewal::Renewed) => {}
                Ok(Renewal::Lost) => tracing::warn!(
                    "Another run took over this job's claim; the first result recorded stands."
                ),
                Err(error) => tracing::warn!(%error, "Could not renew the job's claim."),
            }
        }
    }

    /// Looks for the job's cancel request every `results.cancel_poll_secs` and
    /// cancels it once one is there: one S3 GET per period per running job. Never
    /// returns; dropping it is safe.
    pub(super) async fn watch_cancel(&self, job_id: &str, cancel: &Cancel) -> Infallible {
        let Some(period) = self.config.results.cancel_poll else {
            return std::future::pending().await;
        };
        let mut failing = false;
        loop {
            tokio::time::sleep(period).await;
            match self.store.cancel_request(job_id).await {
                Ok(Some(request)) => {
                    cancel.request(request.describe());
                    return std::future::pending().await;
                }
                Ok(None) => failing = false,
                // Once per spell of failures: every period would flood the log.
                Err(error) if !failing => {
                    failing = true;
                    tracing::warn!(%error, "Cannot look for a cancel request; the job runs on.");
                }
                Err(_) => {}
            }
        }
    }

    /// Uploads the job's new output as the next live chunk every
    /// `results.log_flush_secs`, when there is some and someone follows the job
    /// (see `record/live.rs`); `chunks` counts those uploaded. A failed upload
    /// goes again with the next; output no one followed stays in the bounded
    /// tail, so a follower who comes sees its last part at once.
    pub(super) async fn stream_log(
        &self,
        job_id: &str,
        attempt: u32,
        live: Option<&LiveTail>,
        chunks: &mut Option<u32>,
    ) -> Infallible {
        let (Some(period), Some(live)) = (self.config.results.log_flush, live) else {
            return std::future::pending().await;
        };
        let mut failing = false;
        // The latest follow mark seen: no need to look again before it ends.
        let mut followed_until = 0;
        loop {
            tokio::time::sleep(period).await;
            if !live.has_pending() {
                continue;
            }
            let now = chrono::Utc::now().timestamp();
            if followed_until <= now {
                match self.store.followed_until(job_id).await {
                    Ok(until) => followed_until = until.unwrap_or(0),
                    // Uploads would likely fail too; the whole log still lands.
                    Err(_) => continue,
                }
                if followed_until <= now {
                    continue;
                }
            }
            let Some(chunk) = live.take() else { continue };
            let seq = chunks.unwrap_or(0);
            match self.store.put_chunk(job_id, attempt, seq, &chunk).await {
                Ok(()) => {
                    *chunks = Some(seq + 1);
                    failing = false;
                }
                Err(error) => {
                    live.put_back(chunk);
                    // Once per spell of failures: every period would flood the log.
                    if !failing {
                        tracing::warn!(%error, "Cannot upload the live log; the whole log is still recorded at the end.");
                    }
                    failing = true;
                }
            }
        }
    }
}
