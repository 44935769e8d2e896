//! Artifacts: `artifacts/<path>` under the job's prefix, one object per file,
//! uploaded streamed from the agent's staging file; the result lists each with its
//! size and SHA-256, which `deckhand artifacts` checks on the way down.

use std::path::Path;

use base64::Engine;

use super::{ResultStore, StoreError};

impl ResultStore {
    fn artifact_key(&self, id: &str, path: &str) -> String {
        self.key(id, &format!("artifacts/{path}"))
    }

    /// Uploads the staged `file` as artifact `path` of job `id`, whose SHA-256
    /// (hex) is `sha256`: S3 checks the bytes against it, so the payload need not
    /// be hashed again for the signature (one pass over the file, not two).
    pub async fn put_artifact(
        &self,
        id: &str,
        path: &str,
        file: &Path,
        sha256: &str,
    ) -> Result<(), StoreError> {
        let key = self.artifact_key(id, path);
        let body = self
            .file_body(&key, file, "read the staged artifact for")
            .await?;
        self.s3
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .checksum_sha256(base64_of_hex(sha256))
            .body(body)
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map(drop)
            .map_err(|e| self.error("put", &key, e))
    }

    /// Artifact `path` of job `id` as a stream; `None` when it is not there.
    pub async fn artifact(
        &self,
        id: &str,
        path: &str,
    ) -> Result<Option<impl tokio::io::AsyncRead + Unpin + use<>>, StoreError> {
        let key = self.artifact_key(id, path);
        match self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
        {
            Ok(output) => Ok(Some(output.body.into_async_read())),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(self.error("get", &key, e)),
        }
    }
}

/// S3's form of a SHA-256: base64 of the digest, from our hex.
fn base64_of_hex(hex: &str) -> String {
    let digest = hex::decode(hex).unwrap_or_default();
    base64::engine::general_purpose::STANDARD.encode(digest)
}
