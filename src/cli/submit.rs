//! `deckhand submit JOB.json`: validate a job with the pool's own rules (a bad job
//! never reaches the queue), enqueue it, and optionally wait for its result.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::aws::sqs::{Queue, SqsError};
use crate::cli::logs::{Follower, LogsError};
use crate::config::Config;
use crate::job::result::JobResult;
use crate::job::{Job, Rejection};
use crate::record::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("read job file {path}: {source}")]
    ReadJob {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("job rejected: {0}")]
    Rejected(Rejection),
    #[error("no queue: pass --queue URL or set queue.url")]
    NoQueue,
    #[error("--wait needs results.bucket: results are read from S3")]
    NoBucket,
    #[error(transparent)]
    Send(#[from] SqsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no result for {id} after {secs}s")]
    WaitTimedOut { id: String, secs: u64 },
    #[error(transparent)]
    Follow(#[from] LogsError),
}

/// How `submit` waits for the result.
#[derive(Debug, Clone, Copy)]
pub struct Wait {
    pub timeout: Duration,
    /// Print the job's log to stdout as it runs.
    pub follow: bool,
}

/// Enqueues the job in `path`; with `wait`, returns its terminal result.
pub async fn submit(
    config: Arc<Config>,
    path: &Path,
    queue_url: Option<String>,
    wait: Option<Wait>,
) -> Result<Option<JobResult>, SubmitError> {
    let body = tokio::fs::read(path)
        .await
        .map_err(|source| SubmitError::ReadJob {
            path: path.to_owned(),
            source,
        })?;
    let job = Job::parse(&body, &config).map_err(SubmitError::Rejected)?;
    let queue_url = queue_url
        .or_else(|| config.queue.url.clone())
        .ok_or(SubmitError::NoQueue)?;
    if wait.is_some() && config.results.bucket.is_none() {
        return Err(SubmitError::NoBucket);
    }
    let sdk = crate::aws::sdk_config(&config.aws).await;
    let queue = Queue::new(crate::aws::sqs_client(&sdk), queue_url);
    // The body goes as it was written: the agent validates the same bytes.
    let body = String::from_utf8_lossy(&body);
    let message_id = queue.send(&body, &[]).await?;
    tracing::info!(job_id = %job.id, sqs_message_id = %message_id, "Job submitted.");
    let Some(Wait { timeout, follow }) = wait else {
        return Ok(None);
    };
    let store = super::results_store(&config, &sdk).expect("checked above");
    let give_up = tokio::time::Instant::now() + timeout;
    if follow {
        let mut follower = Follower::new(&store, &job.id, None, std::io::stdout());
        return match follower.follow(Some((give_up, timeout))).await {
            Ok(result) => Ok(Some(result)),
            Err(LogsError::WaitTimedOut { id, secs }) => {
                Err(SubmitError::WaitTimedOut { id, secs })
            }
            Err(error) => Err(error.into()),
        };
    }
    loop {
        if let Some(result) = store.terminal(&job.id).await? {
            return Ok(Some(result));
        }
        if tokio::time::Instant::now() >= give_up {
            return Err(SubmitError::WaitTimedOut {
                id: job.id,
                secs: timeout.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
