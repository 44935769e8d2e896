//! Cancel requests: `cancel.json` beside a job's result says the one who sent the
//! job wants it stopped. `deckhand cancel` writes it once (`If-None-Match: *`: the
//! first request and its reason stand); the agent reads it before a job starts and,
//! every `results.cancel_poll_secs`, while it runs.

use serde::{Deserialize, Serialize};

use super::{Condition, MAX_SMALL_RECORD_BYTES, ResultStore, StoreError};
use crate::job::spec::MAX_REASON_BYTES;
use crate::rules::bounded_text;

/// A request to cancel a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelRequest {
    /// Why, in the requester's words; part of the result's reason.
    #[serde(default)]
    pub reason: Option<String>,
    /// When it was asked (RFC 3339, UTC).
    pub requested_at: String,
}

impl CancelRequest {
    pub fn new(reason: Option<String>) -> Self {
        CancelRequest {
            reason,
            requested_at: crate::rules::timestamp(chrono::Utc::now()),
        }
    }

    /// The result's reason: bounded and escaped, since anyone who can write to the
    /// bucket can write this.
    pub fn describe(&self) -> String {
        match &self.reason {
            Some(reason) => format!(
                "cancelled: {}",
                bounded_text(reason, MAX_REASON_BYTES - "cancelled: ".len())
            ),
            None => "cancelled".to_owned(),
        }
    }
}

/// What asking to cancel found.
#[derive(Debug, PartialEq)]
pub enum CancelAnswer {
    /// Ours is the request.
    Requested,
    /// An earlier request stands (ours was not written).
    AlreadyRequested(CancelRequest),
}

const CANCEL: &str = "cancel.json";

impl ResultStore {
    /// Records a cancel request for `id`, unless one is there already.
    pub async fn request_cancel(
        &self,
        id: &str,
        request: &CancelRequest,
    ) -> Result<CancelAnswer, StoreError> {
        let key = self.key(id, CANCEL);
        let body = serde_json::to_vec(request).expect("a cancel request always serialises");
        if self
            .put_if(&key, body, "application/json", Condition::Absent)
            .await?
            .is_some()
        {
            return Ok(CancelAnswer::Requested);
        }
        let existing = self
            .get_json::<CancelRequest>(&key, MAX_SMALL_RECORD_BYTES)
            .await?;
        Ok(CancelAnswer::AlreadyRequested(
            existing.unwrap_or_else(|| request.clone()),
        ))
    }

    /// The cancel request for `id`, if there is one. One that is not a cancel
    /// request (not JSON, too large) is still a request to cancel: whoever wrote
    /// it can write the bucket, and reading it again every poll would only cost.
    pub async fn cancel_request(&self, id: &str) -> Result<Option<CancelRequest>, StoreError> {
        match self
            .get_json(&self.key(id, CANCEL), MAX_SMALL_RECORD_BYTES)
            .await
        {
            Err(error @ (StoreError::Corrupt { .. } | StoreError::TooLarge { .. })) => {
                Ok(Some(CancelRequest {
                    reason: Some(format!("{CANCEL} could not be read: {error}")),
                    requested_at: crate::rules::timestamp(chrono::Utc::now()),
                }))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_is_bounded_and_escaped() {
        let request = CancelRequest {
            reason: Some(format!("{}\u{1b}[31m", "x".repeat(5000))),
            requested_at: "2026-12-03T00:00:00Z".into(),
        };
        let reason = request.describe();
        assert!(reason.len() <= MAX_REASON_BYTES, "{}", reason.len());
        assert!(reason.starts_with("cancelled: xxx"));
        assert!(!reason.contains('\u{1b}'));
        let plain = CancelRequest::new(None);
        assert_eq!(plain.describe(), "cancelled");
    }
}
