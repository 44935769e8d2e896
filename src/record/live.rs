//! The live log: while a job runs, its new output goes up as numbered chunks,
//! `live/attempt-<n>/<seq>.txt`, each carrying its offset in the whole log
//! (`x-amz-meta-offset`). Followers read them in order by number (no listing,
//! so no `s3:ListBucket`), and read the rest from `log.txt` once it lands; the
//! agent deletes the chunks then.
//!
//! Chunks go up only while someone follows: a follower keeps `live/follow.json`
//! fresh (`{"until": <Unix seconds>}`), and the agent, before an upload, reads it
//! (a GET costs a twelfth of a PUT) unless the mark it saw last is still fresh.

use aws_sdk_s3::primitives::ByteStream;
use futures_util::StreamExt;

use super::{ResultStore, StoreError};
use crate::job::live::Chunk;

/// The object metadata key carrying a chunk's offset in the whole log.
const OFFSET: &str = "offset";
/// The most a live chunk read back may hold: the agent writes at most 2 MiB.
const MAX_CHUNK_READ_BYTES: u64 = 16 << 20;
/// Deletes in flight at once when the chunks are cleaned up.
const DELETES_AT_ONCE: usize = 8;
/// The most a follow mark read back may hold: the follower writes a few bytes.
const MAX_MARK_BYTES: u64 = 1024;

/// A follower's mark: it follows until `until` (Unix seconds).
#[derive(serde::Serialize, serde::Deserialize)]
struct FollowMark {
    until: i64,
}

impl ResultStore {
    fn chunk_key(&self, id: &str, attempt: u32, seq: u32) -> String {
        self.key(id, &format!("live/attempt-{attempt}/{seq:06}.txt"))
    }

    /// Uploads chunk number `seq` of `attempt`'s live log.
    pub async fn put_chunk(
        &self,
        id: &str,
        attempt: u32,
        seq: u32,
        chunk: &Chunk,
    ) -> Result<(), StoreError> {
        let key = self.chunk_key(id, attempt, seq);
        self.s3
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_type("text/plain; charset=utf-8")
            .metadata(OFFSET, chunk.offset.to_string())
            .body(ByteStream::from(chunk.bytes.clone()))
            .send()
            .await
            .map(drop)
            .map_err(|e| self.error("put", &key, e))
    }

    fn follow_key(&self, id: &str) -> String {
        self.key(id, "live/follow.json")
    }

    /// Marks the job followed until `until` (Unix seconds).
    pub async fn mark_followed(&self, id: &str, until: i64) -> Result<(), StoreError> {
        let body = serde_json::to_vec(&FollowMark { until }).expect("a mark serialises");
        self.put(&self.follow_key(id), body, "application/json", false)
            .await
            .map(drop)
    }

    /// Until when someone follows the job (Unix seconds); `None` when no one
    /// marked it. A mark that is not one (over 1 KiB, not the JSON) is none:
    /// followers write it, and a broken one must not make the agent upload.
    pub async fn followed_until(&self, id: &str) -> Result<Option<i64>, StoreError> {
        let key = self.follow_key(id);
        let bytes = match self.get_bytes(&key, MAX_MARK_BYTES).await {
            Ok(Some((bytes, _))) => bytes,
            Ok(None) | Err(StoreError::TooLarge { .. }) => return Ok(None),
            Err(error) => return Err(error),
        };
        Ok(serde_json::from_slice::<FollowMark>(&bytes)
            .ok()
            .map(|mark| mark.until))
    }

    /// Chunk number `seq` of `attempt`'s live log, if it is there.
    pub async fn chunk(
        &self,
        id: &str,
        attempt: u32,
        seq: u32,
    ) -> Result<Option<Chunk>, StoreError> {
        let key = self.chunk_key(id, attempt, seq);
        let Some((bytes, metadata)) = self.get_bytes(&key, MAX_CHUNK_READ_BYTES).await? else {
            return Ok(None);
        };
        let offset = metadata
            .and_then(|m| m.get(OFFSET).and_then(|o| o.parse().ok()))
            .ok_or_else(|| StoreError::S3 {
                operation: "read the offset of",
                bucket: self.bucket.clone(),
                key: key.clone(),
                source: "the chunk has no x-amz-meta-offset".into(),
            })?;
        Ok(Some(Chunk { offset, bytes }))
    }

    /// Deletes the first `count` chunks of `attempt`'s live log (and the one after,
    /// which an upload cut short may have left), and the follow mark: the live
    /// view of the attempt is over. Deleting a missing key succeeds.
    pub async fn delete_chunks(
        &self,
        id: &str,
        attempt: u32,
        count: u32,
    ) -> Result<(), StoreError> {
        let keys = (0..=count)
            .map(|seq| self.chunk_key(id, attempt, seq))
            .chain(std::iter::once(self.follow_key(id)));
        let deletes = keys.map(|key| async move {
            self.s3
                .delete_object()
                .bucket(&self.bucket)
                .key(&key)
                .send()
                .await
                .map(drop)
                .map_err(|e| self.error("delete", &key, e))
        });
        let mut deleting = futures_util::stream::iter(deletes).buffer_unordered(DELETES_AT_ONCE);
        while let Some(deleted) = deleting.next().await {
            deleted?;
        }
        Ok(())
    }
}
