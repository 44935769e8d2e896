//! Claims: `claim.json` says which agent process runs a job now, until when. Every
//! change is a conditional write, so two agents racing for one claim cannot both
//! win: a new claim is put with `If-None-Match: *`; a stale one is taken over, and
//! ours renewed or released, with `If-Match` on the ETag last seen.
//!
//! A claim names the agent's process (`run`, random per start) as well as the
//! instance: a host whose message reappeared while it still runs the job (a failed
//! heartbeat) finds its own live claim and defers, instead of running the job a
//! second time; a host restarted after a crash finds its earlier process's claim
//! and takes it over.

use serde::{Deserialize, Serialize};

use super::{Condition, MAX_SMALL_RECORD_BYTES, ResultStore, StoreError};

/// Who runs a job now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    pub instance_id: String,
    pub attempt: u32,
    /// Unix seconds after which the claim is stale (its holder died).
    pub expires_at: i64,
    /// The agent process holding it: random per start. Empty in claims written
    /// before it existed, which are then another process's.
    #[serde(default)]
    pub run: String,
}

impl Claim {
    fn is_live(&self) -> bool {
        self.expires_at > chrono::Utc::now().timestamp()
    }

    fn same_process(&self, other: &Claim) -> bool {
        self.instance_id == other.instance_id && self.run == other.run
    }
}

/// The answer to "may I run this job?".
#[derive(Debug, PartialEq)]
pub enum ClaimOutcome {
    Acquired,
    HeldBy(Claim),
}

/// What a renewal found.
#[derive(Debug, PartialEq)]
pub enum Renewal {
    Renewed,
    /// Another run took the claim over (ours had expired): the run-once guard on
    /// the result still keeps one result.
    Lost,
}

const CLAIM: &str = "claim.json";
const JSON: &str = "application/json";

impl ResultStore {
    /// Claims `id` for this process, unless a live claim of another process holds
    /// it, or this very process already does (it is running the job).
    pub async fn claim(&self, id: &str, claim: &Claim) -> Result<ClaimOutcome, StoreError> {
        let key = self.key(id, CLAIM);
        let body = serde_json::to_vec(claim).expect("a claim always serialises");
        // Twice at most: a claim deleted between our put and our read is gone, so
        // the second put-if-absent settles it.
        for _ in 0..2 {
            if let Some(etag) = self
                .put_if(&key, body.clone(), JSON, Condition::Absent)
                .await?
            {
                self.hold(id, etag);
                return Ok(ClaimOutcome::Acquired);
            }
            let Some((held, etag)) = self
                .get_json_tagged::<Claim>(&key, MAX_SMALL_RECORD_BYTES)
                .await?
            else {
                continue;
            };
            if held.is_live() && (held.instance_id != claim.instance_id || held.same_process(claim))
            {
                return Ok(ClaimOutcome::HeldBy(held));
            }
            // Stale, or our instance's from before a restart: taken over only if
            // nobody changed it since we read it.
            return match self
                .put_if(&key, body, JSON, Condition::Match(&etag))
                .await?
            {
                Some(etag) => {
                    self.hold(id, etag);
                    Ok(ClaimOutcome::Acquired)
                }
                None => {
                    let winner = self.get_json::<Claim>(&key, MAX_SMALL_RECORD_BYTES).await?;
                    Ok(ClaimOutcome::HeldBy(winner.unwrap_or(held)))
                }
            };
        }
        // Put-if-absent refused twice, and twice nothing was there to read.
        let winner = self.get_json::<Claim>(&key, MAX_SMALL_RECORD_BYTES).await?;
        Ok(winner.map_or(ClaimOutcome::Acquired, ClaimOutcome::HeldBy))
    }

    /// Who runs the job now, if anyone.
    pub async fn current_claim(&self, id: &str) -> Result<Option<Claim>, StoreError> {
        self.get_json(&self.key(id, CLAIM), MAX_SMALL_RECORD_BYTES)
            .await
    }

    /// Extends a claim this process holds, unless another run took it over.
    pub async fn renew(&self, id: &str, claim: &Claim) -> Result<Renewal, StoreError> {
        let Some(etag) = self.held_etag(id) else {
            return Ok(Renewal::Lost);
        };
        let body = serde_json::to_vec(claim).expect("a claim always serialises");
        let key = self.key(id, CLAIM);
        match self
            .put_if(&key, body, JSON, Condition::Match(&etag))
            .await?
        {
            Some(etag) => {
                self.hold(id, etag);
                Ok(Renewal::Renewed)
            }
            None => {
                self.forget(id);
                Ok(Renewal::Lost)
            }
        }
    }

    /// Removes this process's claim on `id`; one another run took over stays.
    /// After a restart (nothing held in memory), removes the claim of an earlier
    /// process of `owner`'s instance.
    pub async fn release(&self, id: &str, owner: &Claim) -> Result<(), StoreError> {
        let key = self.key(id, CLAIM);
        let etag = match self.forget(id) {
            Some(etag) => etag,
            None => match self
                .get_json_tagged::<Claim>(&key, MAX_SMALL_RECORD_BYTES)
                .await?
            {
                Some((held, etag)) if held.instance_id == owner.instance_id => etag,
                _ => return Ok(()),
            },
        };
        match self
            .s3
            .delete_object()
            .bucket(&self.bucket)
            .key(&key)
            .if_match(etag)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // Taken over or already gone: not ours to remove.
            Err(e)
                if super::is_precondition_failed(&e)
                    || e.raw_response().is_some_and(|r| r.status().as_u16() == 404) =>
            {
                Ok(())
            }
            Err(e) => Err(self.error("delete", &key, e)),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, String>> {
        // Single inserts and removes: consistent whatever a panicking holder did.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn hold(&self, id: &str, etag: String) {
        self.held().insert(id.to_owned(), etag);
    }

    fn held_etag(&self, id: &str) -> Option<String> {
        self.held().get(id).cloned()
    }

    fn forget(&self, id: &str) -> Option<String> {
        self.held().remove(id)
    }
}
