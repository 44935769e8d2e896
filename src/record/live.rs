//! The live log: while a job runs, its new output goes up as numbered chunks,
//! `live/attempt-<n>/<seq>.txt`, each carrying its offset in the whole log
//! (`x-amz-meta-offset`). Followers read them in order by number (no listing,
//! so no `s3:ListBucket`), and read the rest from `log.txt` once it lands; the
//! agent deletes the chunks then.

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
    /// which an upload cut short may have left). Deleting a missing key succeeds.
    pub async fn delete_chunks(
        &self,
        id: &str,
        attempt: u32,
        count: u32,
    ) -> Result<(), StoreError> {
        let deletes = (0..=count).map(|seq| {
            let key = self.chunk_key(id, attempt, seq);
            async move {
                self.s3
                    .delete_object()
                    .bucket(&self.bucket)
                    .key(&key)
                    .send()
                    .await
                    .map(drop)
                    .map_err(|e| self.error("delete", &key, e))
            }
        });
        let mut deleting = futures_util::stream::iter(deletes).buffer_unordered(DELETES_AT_ONCE);
        while let Some(deleted) = deleting.next().await {
            deleted?;
        }
        Ok(())
    }
}
