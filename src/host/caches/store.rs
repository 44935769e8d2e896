//! The S3 tier: one zstd tar per scope and key at
//! `s3://BUCKET/PREFIX<scope>/<key>.tar.zst`, its SHA-256 in the object's
//! metadata, written only if absent so the first save of a key wins.

use std::path::Path;

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::CacheError;

/// The metadata key holding the object's hex SHA-256.
const SHA256_META: &str = "sha256";
const SUFFIX: &str = ".tar.zst";
/// A packed cache this big or bigger goes up in parts of [`PART_BYTES`]: one
/// PUT of gigabytes restarts from nothing when it fails.
pub const MULTIPART_FROM_BYTES: u64 = 64 * 1024 * 1024;
const PART_BYTES: u64 = 32 * 1024 * 1024;
/// Parts sent at once: one stream of a few hundred megabytes leaves the link
/// idle between a part's last byte and its answer (and S3 takes parts in
/// parallel); four hold no more than four file handles and their buffers.
const PARTS_IN_FLIGHT: usize = 4;

#[derive(Clone)]
pub struct Store {
    s3: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

fn s3_error<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static, R>(
    operation: &'static str,
    object: String,
) -> impl FnOnce(SdkError<E, R>) -> CacheError
where
    R: std::fmt::Debug + Send + Sync + 'static,
{
    move |e| CacheError::S3 {
        operation,
        object,
        error: brief(&e),
    }
}

/// S3's code and message, or what failed on the way: a reason, not a dump of
/// the response.
fn brief<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static, R>(
    e: &SdkError<E, R>,
) -> String
where
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match e {
        SdkError::ServiceError(service) => format!(
            "{}: {}",
            service.err().code().unwrap_or("an error"),
            service.err().message().unwrap_or("no message")
        ),
        other => crate::rules::truncate(&DisplayErrorContext(other).to_string(), 300),
    }
}

/// A 404 that means the key is not there (not a bucket that is not).
fn is_absent<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>, status: Option<u16>) -> bool {
    let code = match e {
        SdkError::ServiceError(service) => service.err().code(),
        _ => None,
    };
    status == Some(404) && code != Some("NoSuchBucket")
}

impl Store {
    pub fn new(s3: aws_sdk_s3::Client, bucket: String, prefix: String) -> Store {
        Store { s3, bucket, prefix }
    }

    fn key(&self, scope: &str, key: &str) -> String {
        format!("{}{scope}/{key}{SUFFIX}", self.prefix)
    }

    /// `s3://…` of a cache, for reasons.
    pub fn url(&self, scope: &str, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.key(scope, key))
    }

    /// Whether the cache is there.
    pub async fn exists(&self, scope: &str, key: &str) -> Result<bool, CacheError> {
        let object = self.key(scope, key);
        match self
            .s3
            .head_object()
            .bucket(&self.bucket)
            .key(&object)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_absent(&e, e.raw_response().map(|r| r.status().as_u16())) => Ok(false),
            Err(e) => Err(s3_error("head", self.url(scope, key))(e)),
        }
    }

    /// The newest cache in `scope` whose key starts with `prefix`.
    pub async fn newest(&self, scope: &str, prefix: &str) -> Result<Option<String>, CacheError> {
        let under = format!("{}{scope}/", self.prefix);
        let mut pages = self
            .s3
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(format!("{under}{prefix}"))
            .into_paginator()
            .send();
        let mut newest: Option<(aws_sdk_s3::primitives::DateTime, String)> = None;
        while let Some(page) = pages.next().await {
            let page = page.map_err(s3_error("list", format!("s3://{}/{under}", self.bucket)))?;
            for object in page.contents.unwrap_or_default() {
                let (Some(name), Some(at)) = (object.key, object.last_modified) else {
                    continue;
                };
                let Some(key) = name
                    .strip_prefix(&under)
                    .and_then(|rest| rest.strip_suffix(SUFFIX))
                else {
                    continue;
                };
                if crate::config::valid_cache_name(key)
                    && newest.as_ref().is_none_or(|(t, _)| at.secs() > t.secs())
                {
                    newest = Some((at, key.to_owned()));
                }
            }
        }
        Ok(newest.map(|(_, key)| key))
    }

    /// Streams the cache into `to` as it downloads, within `max_bytes`, and
    /// checks it against its SHA-256 once whole; `None`: not there. Read to its
    /// end even if `to` stops taking it (an unpacker done at the tar's end
    /// marker, or refusing it), so the hash covers every byte: the caller keeps
    /// what it unpacked only if this says the object is whole.
    pub async fn get(
        &self,
        scope: &str,
        key: &str,
        mut to: impl tokio::io::AsyncWrite + Unpin,
        max_bytes: u64,
    ) -> Result<Option<u64>, CacheError> {
        let url = self.url(scope, key);
        let object = match self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(scope, key))
            .send()
            .await
        {
            Ok(object) => object,
            Err(e) if is_absent(&e, e.raw_response().map(|r| r.status().as_u16())) => {
                return Ok(None);
            }
            Err(e) => return Err(s3_error("get", url)(e)),
        };
        let corrupt = |why: String| CacheError::Corrupt {
            object: url.clone(),
            why,
        };
        let expected = object
            .metadata
            .as_ref()
            .and_then(|m| m.get(SHA256_META))
            .cloned()
            .ok_or_else(|| corrupt("no sha256 in its metadata".to_owned()))?;
        let size = object.content_length.unwrap_or(0).max(0) as u64;
        if size > max_bytes {
            return Err(CacheError::TooBig {
                object: url,
                bytes: size,
                max_bytes,
            });
        }
        // No more than the bound, whatever the length said.
        let mut body = object.body.into_async_read().take(max_bytes + 1);
        let mut hash = Sha256::new();
        let mut buf = vec![0; 1 << 20];
        let mut bytes = 0;
        let mut taking = true;
        loop {
            let n = body
                .read(&mut buf)
                .await
                .map_err(|e| corrupt(e.to_string()))?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            // One that stopped taking has said why; the hash still needs the rest.
            taking = taking && to.write_all(&buf[..n]).await.is_ok();
            bytes += n as u64;
        }
        if taking {
            let _ = to.shutdown().await;
        }
        drop(to);
        if bytes > max_bytes {
            return Err(CacheError::TooBig {
                object: url,
                bytes,
                max_bytes,
            });
        }
        let actual = hex::encode(hash.finalize());
        if actual != expected {
            return Err(corrupt(format!(
                "its SHA-256 is {actual}, its metadata says {}",
                crate::rules::truncate(&expected, 64)
            )));
        }
        Ok(Some(bytes))
    }

    /// Uploads the packed cache at `from` unless one is there already: `false`
    /// when another save won. Past [`MULTIPART_FROM_BYTES`] in parts.
    pub async fn put(
        &self,
        scope: &str,
        key: &str,
        from: &Path,
        sha256: &str,
    ) -> Result<bool, CacheError> {
        let url = self.url(scope, key);
        let read_error = |e: &dyn std::fmt::Display| CacheError::Io {
            operation: "read the packed cache",
            path: from.to_owned(),
            source: std::io::Error::other(e.to_string()),
        };
        let size = tokio::fs::metadata(from)
            .await
            .map_err(|e| read_error(&e))?
            .len();
        if size >= MULTIPART_FROM_BYTES {
            return self.put_in_parts(scope, key, from, size, sha256).await;
        }
        let body = ByteStream::from_path(from)
            .await
            .map_err(|e| read_error(&e))?;
        let sent = self
            .s3
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(scope, key))
            .content_type("application/zstd")
            .metadata(SHA256_META, sha256)
            .if_none_match("*")
            .body(body)
            .send()
            .await;
        match sent {
            Ok(_) => Ok(true),
            Err(e) if lost_the_race(&e) => Ok(false),
            Err(e) => Err(s3_error("put", url)(e)),
        }
    }

    /// A multipart upload of `size` bytes from `from`, completed only if the
    /// key is absent; aborted on any failure (the lifecycle rule ends one a
    /// crash left).
    async fn put_in_parts(
        &self,
        scope: &str,
        key: &str,
        from: &Path,
        size: u64,
        sha256: &str,
    ) -> Result<bool, CacheError> {
        let url = self.url(scope, key);
        let object = self.key(scope, key);
        let created = self
            .s3
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&object)
            .content_type("application/zstd")
            .metadata(SHA256_META, sha256)
            .send()
            .await
            .map_err(s3_error("start the upload of", url.clone()))?;
        let upload_id = created.upload_id.unwrap_or_default();
        let uploaded = self.parts(&object, &upload_id, from, size, &url).await;
        if !matches!(uploaded, Ok(true)) {
            let _ = self
                .s3
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&object)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        uploaded
    }

    async fn parts(
        &self,
        object: &str,
        upload_id: &str,
        from: &Path,
        size: u64,
        url: &str,
    ) -> Result<bool, CacheError> {
        use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
        use futures_util::{StreamExt, TryStreamExt};
        let part_bytes = part_bytes(size);
        let count = size.div_ceil(part_bytes);
        // Each part read from the file as it goes out; the first failure ends
        // the others (dropped) and the caller aborts the upload.
        let mut parts: Vec<CompletedPart> = futures_util::stream::iter(0..count)
            .map(|index| {
                let offset = index * part_bytes;
                let length = part_bytes.min(size - offset);
                self.part(object, upload_id, from, (offset, length), index, url)
            })
            .buffer_unordered(PARTS_IN_FLIGHT)
            .try_collect()
            .await?;
        parts.sort_by_key(|part| part.part_number);
        let completed = self
            .s3
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(object)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .if_none_match("*")
            .send()
            .await;
        match completed {
            Ok(_) => Ok(true),
            Err(e) if lost_the_race(&e) => Ok(false),
            Err(e) => Err(s3_error("complete the upload of", url.to_owned())(e)),
        }
    }

    /// Part `index` (from 0), `length` bytes at `offset` of the file at `from`, uploaded.
    async fn part(
        &self,
        object: &str,
        upload_id: &str,
        from: &Path,
        (offset, length): (u64, u64),
        index: u64,
        url: &str,
    ) -> Result<aws_sdk_s3::types::CompletedPart, CacheError> {
        use aws_sdk_s3::primitives::Length;
        let body = ByteStream::read_from()
            .path(from)
            .offset(offset)
            .length(Length::Exact(length))
            .build()
            .await
            .map_err(|e| CacheError::Io {
                operation: "read the packed cache",
                path: from.to_owned(),
                source: std::io::Error::other(e.to_string()),
            })?;
        // S3 numbers parts from 1; at most 10,000 of them.
        let number = index as i32 + 1;
        let part = self
            .s3
            .upload_part()
            .bucket(&self.bucket)
            .key(object)
            .upload_id(upload_id)
            .part_number(number)
            .body(body)
            .send()
            .await
            .map_err(s3_error("upload a part of", url.to_owned()))?;
        Ok(aws_sdk_s3::types::CompletedPart::builder()
            .part_number(number)
            .set_e_tag(part.e_tag)
            .build())
    }
}

/// The size of each part of a `size`-byte upload: [`PART_BYTES`], or more for
/// an object that would need more than S3's 10,000 parts.
fn part_bytes(size: u64) -> u64 {
    PART_BYTES.max(size.div_ceil(10_000))
}

/// S3 refused the write for its condition: another save of the key won.
fn lost_the_race<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    matches!(
        e,
        SdkError::ServiceError(service)
            if matches!(
                service.err().code(),
                Some("PreconditionFailed" | "ConditionalRequestConflict")
            )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_stay_within_s3s_ten_thousand() {
        assert_eq!(part_bytes(MULTIPART_FROM_BYTES), PART_BYTES);
        assert_eq!(part_bytes(10_000 * PART_BYTES), PART_BYTES);
        let huge = 10_000 * PART_BYTES + 1;
        assert!(huge.div_ceil(part_bytes(huge)) <= 10_000);
        assert!(part_bytes(huge) > PART_BYTES);
    }
}
