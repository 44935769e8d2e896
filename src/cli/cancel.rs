//! `deckhand cancel ID`: ask for a job to be cancelled, by a request beside its
//! result. The agent that holds the job (or the next one to receive it) reads the
//! request; this command only says what it knows now.

use std::sync::Arc;

use crate::cli::RecordError;
use crate::config::Config;
use crate::job::result::JobResult;
use crate::record::{CancelAnswer, CancelRequest, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What `deckhand cancel` found.
#[derive(Debug)]
pub enum CancelOutcome {
    /// The job has its result; nothing is left to cancel.
    AlreadyFinished(Box<JobResult>),
    /// The request is recorded; the job is cancelled when an agent next looks.
    Requested,
    /// An earlier request stands, with its reason.
    AlreadyRequested(CancelRequest),
}

impl std::fmt::Display for CancelOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CancelOutcome::AlreadyFinished(result) => {
                write!(f, "already finished: {}", result.status.as_str())
            }
            CancelOutcome::Requested => f.write_str("cancel requested"),
            CancelOutcome::AlreadyRequested(earlier) => {
                write!(f, "cancel requested (already, at {})", earlier.requested_at)
            }
        }
    }
}

pub async fn cancel(
    config: Arc<Config>,
    id: &str,
    reason: Option<String>,
) -> Result<CancelOutcome, CancelError> {
    let why = "the request is written beside the result in S3";
    let store = super::job_record(&config, id, "cancel", why).await?;
    if let Some(result) = store.terminal(id).await? {
        return Ok(CancelOutcome::AlreadyFinished(Box::new(result)));
    }
    let request = CancelRequest::new(reason);
    let answer = store.request_cancel(id, &request).await?;
    // The job may have finished between the two: say so rather than claim a
    // cancel that will never act.
    if let Some(result) = store.terminal(id).await? {
        return Ok(CancelOutcome::AlreadyFinished(Box::new(result)));
    }
    Ok(match answer {
        CancelAnswer::Requested => CancelOutcome::Requested,
        CancelAnswer::AlreadyRequested(earlier) => CancelOutcome::AlreadyRequested(earlier),
    })
}
