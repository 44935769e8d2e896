//! Where results go: S3 is the record (and the run-once guard), the results queue and
//! the webhook are notifications.
//!
//! Layout under `s3://<bucket>/<prefix><id>/`:
//! - `result.json` and `log.txt`: the terminal result, written once. The result is
//!   put with `If-None-Match: *`, so when two agents finish the same job only the
//!   first result stands;
//! - `attempt-<n>/result.json` and `attempt-<n>/log.txt`: an `interrupted` or
//!   `error` attempt, kept for the record;
//! - `claim.json`: which agent is running the job now, until when. A duplicate
//!   delivery finds it and waits instead of running the job a second time
//!   (`claims.rs`);
//! - `cancel.json`: a request to cancel the job, from `deckhand cancel`
//!   (`cancel.rs`);
//! - `artifacts/<path>`: the files a job's `artifacts` matched (`artifacts.rs`);
//! - `live/attempt-<n>/<seq>.txt`: a running attempt's output so far, in chunks,
//!   until its log is recorded (`live.rs`).

use std::time::Duration;

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use hmac::{Hmac, Mac};
use sha2::Sha256;

mod artifacts;
mod cancel;
mod claims;
mod live;

pub use cancel::{CancelAnswer, CancelRequest};
pub use claims::{Claim, ClaimOutcome, Renewal};

use crate::aws::sqs::Queue;
use crate::backoff::{Backoff, Budget};
use crate::job::log::LogBody;
use crate::job::result::JobResult;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{operation} s3://{bucket}/{key}: {}", DisplayErrorContext(&**source))]
    S3 {
        operation: &'static str,
        bucket: String,
        key: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("s3://{bucket}/{key}: a conditional put failed, yet no result is there")]
    Vanished { bucket: String, key: String },
    #[error("s3://{bucket}/{key} is larger than the {max_bytes} bytes such a record may have")]
    TooLarge {
        bucket: String,
        key: String,
        max_bytes: u64,
    },
    #[error("s3://{bucket}/{key} is not a valid record: {source}")]
    Corrupt {
        bucket: String,
        key: String,
        source: serde_json::Error,
    },
}

/// How long a log with no result beside it is given for its result to land
/// before it is taken for an orphan and replaced.
const ORPHAN_PATIENCE: Duration = Duration::from_secs(3);

/// The most a result read back may hold: a result lists at most a few
/// thousand artifacts; more is not one of ours.
pub const MAX_RESULT_BYTES: u64 = 16 << 20;
/// The most a small record (a claim, a cancel request) may hold.
pub const MAX_SMALL_RECORD_BYTES: u64 = 64 << 10;
/// The most of a whole log read back at once (`deckhand logs`).
pub const MAX_LOG_READ_BYTES: u64 = 1 << 30;

/// The S3 record of results and claims.
#[derive(Clone, Debug)]
pub struct ResultStore {
    s3: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    /// The ETag of each claim this process holds, for conditional renewals and
    /// releases: a claim another run has taken over is never overwritten.
    held: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>,
}

/// What recording a terminal result found.
#[derive(Debug, PartialEq)]
pub enum Recorded {
    /// Ours is the result.
    Stored,
    /// Another run's result was there first; ours was not written.
    Duplicate(Box<JobResult>),
}

impl ResultStore {
    pub fn new(
        s3: aws_sdk_s3::Client,
        bucket: impl Into<String>,
        prefix: impl Into<String>,
    ) -> Self {
        ResultStore {
            s3,
            bucket: bucket.into(),
            prefix: prefix.into(),
            held: Default::default(),
        }
    }

    fn key(&self, id: &str, name: &str) -> String {
        format!("{}{id}/{name}", self.prefix)
    }

    fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    /// Where a result and its log go: the job's own (`attempt: None`) or those
    /// of an attempt that did not finish it.
    fn record_keys(&self, id: &str, attempt: Option<u32>) -> (String, String) {
        let dir = attempt.map(|n| format!("attempt-{n}/")).unwrap_or_default();
        (
            self.key(id, &format!("{dir}result.json")),
            self.key(id, &format!("{dir}log.txt")),
        )
    }

    /// The terminal result recorded for `id`, if any.
    pub async fn terminal(&self, id: &str) -> Result<Option<JobResult>, StoreError> {
        self.get_json(&self.record_keys(id, None).0, MAX_RESULT_BYTES)
            .await
    }

    /// The result of an attempt that did not finish the job (`interrupted`, `error`).
    pub async fn attempt_result(
        &self,
        id: &str,
        attempt: u32,
    ) -> Result<Option<JobResult>, StoreError> {
        self.get_json(&self.record_keys(id, Some(attempt)).0, MAX_RESULT_BYTES)
            .await
    }

    /// The whole log of the job (`attempt: None`) or of one attempt that did not
    /// finish it, once recorded.
    pub async fn log(&self, id: &str, attempt: Option<u32>) -> Result<Option<Vec<u8>>, StoreError> {
        let (_, key) = self.record_keys(id, attempt);
        Ok(self
            .get_bytes(&key, MAX_LOG_READ_BYTES)
            .await?
            .map(|(bytes, _)| bytes))
    }

    /// Records a finished attempt. A terminal result goes to `result.json` once; a
    /// second terminal result for the same id is refused and returned as a
    /// duplicate. Sets `result.log` to where the log was stored; `log` is `None`
    /// for a job that never started (rejected, cancelled first), which has none.
    pub async fn record(
        &self,
        result: &mut JobResult,
        log: Option<&LogBody>,
    ) -> Result<Recorded, StoreError> {
        result.bound_reason();
        let attempt = (!result.is_final()).then_some(result.attempt);
        let (key, log_key) = self.record_keys(&result.id, attempt);
        result.log = log.is_some().then(|| self.url(&log_key));
        // The log before the result, so that whoever sees the result can read its
        // log at once. A terminal log is written only where none is: a run whose
        // claim expired while another finished the job must not replace the
        // winner's log. One that is there with no result beside it is another
        // run's between its two writes, or an orphan (a run killed between them,
        // our own earlier try): its result gets a moment to land, then ours
        // replaces it.
        if let Some(log) = log {
            let terminal = result.is_final();
            if !self.put_log(&log_key, log, terminal).await? {
                if let Some(existing) = self.landed_result(result).await? {
                    return Ok(Recorded::Duplicate(Box::new(existing)));
                }
                self.put_log(&log_key, log, false).await?;
            }
        }
        if !result.is_final() {
            self.put(&key, to_json(result), "application/json", false)
                .await?;
            return Ok(Recorded::Stored);
        }
        if !self
            .put(&key, to_json(result), "application/json", true)
            .await?
        {
            // Lost a race with another run after the check above (claims make
            // this rare); the result that landed first stands.
            let existing: JobResult =
                self.get_json(&key, MAX_RESULT_BYTES)
                    .await?
                    .ok_or_else(|| StoreError::Vanished {
                        bucket: self.bucket.clone(),
                        key: key.clone(),
                    })?;
            if !is_same_run(&existing, result) {
                return Ok(Recorded::Duplicate(Box::new(existing)));
            }
        }
        Ok(Recorded::Stored)
    }

    /// Another run's terminal result for `ours`'s job, waited for up to
    /// [`ORPHAN_PATIENCE`]: a log without its result is most often a run
    /// between its two writes (a drained host's job ending as another host
    /// starts it), rarely one that died there.
    async fn landed_result(&self, ours: &JobResult) -> Result<Option<JobResult>, StoreError> {
        let give_up = tokio::time::Instant::now() + ORPHAN_PATIENCE;
        loop {
            match self.terminal(&ours.id).await? {
                Some(existing) if is_same_run(&existing, ours) => return Ok(None),
                Some(existing) => return Ok(Some(existing)),
                None if tokio::time::Instant::now() >= give_up => return Ok(None),
                None => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    /// Uploads a log from memory or, streamed, from its spool file; with
    /// `only_if_absent`, `false` when one is there already.
    async fn put_log(
        &self,
        key: &str,
        log: &LogBody,
        only_if_absent: bool,
    ) -> Result<bool, StoreError> {
        let body = match log {
            LogBody::Memory(text) => ByteStream::from(text.clone()),
            LogBody::Spooled { path, .. } => {
                self.file_body(key, path, "read the log spool for").await?
            }
        };
        let request = self
            .s3
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("text/plain; charset=utf-8")
            .body(body);
        let request = if only_if_absent {
            request.if_none_match("*")
        } else {
            request
        };
        match request.send().await {
            Ok(_) => Ok(true),
            Err(e) if only_if_absent && is_precondition_failed(&e) => Ok(false),
            Err(e) => Err(self.error("put", key, e)),
        }
    }

    /// A local file as the body of the object at `key`, streamed; `reading`
    /// names what the file is, for the error.
    async fn file_body(
        &self,
        key: &str,
        path: &std::path::Path,
        reading: &'static str,
    ) -> Result<ByteStream, StoreError> {
        ByteStream::from_path(path)
            .await
            .map_err(|e| StoreError::S3 {
                operation: reading,
                bucket: self.bucket.clone(),
                key: key.to_owned(),
                source: e.into(),
            })
    }

    /// Puts an object; with `only_if_absent`, returns false instead of overwriting.
    async fn put(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
        only_if_absent: bool,
    ) -> Result<bool, StoreError> {
        let condition = if only_if_absent {
            Condition::Absent
        } else {
            Condition::None
        };
        let put = self.put_if(key, body, content_type, condition).await?;
        Ok(put.is_some())
    }

    /// Puts an object if `condition` holds: its new ETag, or `None` when S3 refused
    /// for the condition.
    async fn put_if(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
        condition: Condition<'_>,
    ) -> Result<Option<String>, StoreError> {
        let request = self
            .s3
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body));
        let request = match condition {
            Condition::None => request,
            Condition::Absent => request.if_none_match("*"),
            Condition::Match(etag) => request.if_match(etag),
        };
        match request.send().await {
            Ok(output) => Ok(Some(output.e_tag.unwrap_or_default())),
            Err(e) if condition != Condition::None && is_precondition_failed(&e) => Ok(None),
            Err(e) => Err(self.error("put", key, e)),
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        max_bytes: u64,
    ) -> Result<Option<T>, StoreError> {
        Ok(self
            .get_json_tagged(key, max_bytes)
            .await?
            .map(|(value, _)| value))
    }

    /// An object as JSON, with its ETag for a conditional write after.
    async fn get_json_tagged<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        max_bytes: u64,
    ) -> Result<Option<(T, String)>, StoreError> {
        let Some(object) = self.get_object(key, max_bytes).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&object.bytes)
            .map(|value| Some((value, object.etag)))
            .map_err(|source| StoreError::Corrupt {
                bucket: self.bucket.clone(),
                key: key.to_owned(),
                source,
            })
    }

    /// An object's bytes and its user metadata.
    async fn get_bytes(
        &self,
        key: &str,
        max_bytes: u64,
    ) -> Result<Option<(Vec<u8>, Option<std::collections::HashMap<String, String>>)>, StoreError>
    {
        Ok(self
            .get_object(key, max_bytes)
            .await?
            .map(|object| (object.bytes, object.metadata)))
    }

    /// An object of at most `max_bytes`: anyone who can write to the bucket
    /// can write any of these keys, and what is read here is held in memory.
    async fn get_object(&self, key: &str, max_bytes: u64) -> Result<Option<Object>, StoreError> {
        let output = match self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(output) => output,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(self.error("get", key, e)),
        };
        let etag = output.e_tag.clone().unwrap_or_default();
        let metadata = output.metadata.clone();
        let too_large = || StoreError::TooLarge {
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            max_bytes,
        };
        if output.content_length.unwrap_or(0) as u64 > max_bytes {
            return Err(too_large());
        }
        let mut bytes = Vec::new();
        // One byte more than allowed tells a length that lied.
        tokio::io::AsyncReadExt::read_to_end(
            &mut tokio::io::AsyncReadExt::take(output.body.into_async_read(), max_bytes + 1),
            &mut bytes,
        )
        .await
        .map_err(|e| StoreError::S3 {
            operation: "read",
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            source: e.into(),
        })?;
        if bytes.len() as u64 > max_bytes {
            return Err(too_large());
        }
        Ok(Some(Object {
            bytes,
            etag,
            metadata,
        }))
    }

    fn error<E, R>(&self, operation: &'static str, key: &str, e: SdkError<E, R>) -> StoreError
    where
        E: std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        StoreError::S3 {
            operation,
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            source: e.into(),
        }
    }
}

/// An object read whole.
struct Object {
    bytes: Vec<u8>,
    etag: String,
    metadata: Option<std::collections::HashMap<String, String>>,
}

/// When a put may replace what is there.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Condition<'a> {
    None,
    /// Only if nothing is there (`If-None-Match: *`).
    Absent,
    /// Only if what is there has this ETag (`If-Match`).
    Match(&'a str),
}

/// Our own earlier try at the same record (a retry after a failed put).
fn is_same_run(a: &JobResult, b: &JobResult) -> bool {
    a.instance_id == b.instance_id && a.attempt == b.attempt && a.started_at == b.started_at
}

fn is_precondition_failed<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    match e {
        SdkError::ServiceError(service) => {
            service.err().code() == Some("PreconditionFailed")
                || service.err().code() == Some("ConditionalRequestConflict")
        }
        _ => false,
    }
}

fn to_json(result: &JobResult) -> Vec<u8> {
    serde_json::to_vec(result).expect("a result always serialises")
}

/// Where results are announced besides S3.
#[derive(Clone)]
pub struct Notifier {
    queue: Option<Queue>,
    webhook: Option<Webhook>,
}

#[derive(Clone)]
struct Webhook {
    client: reqwest::Client,
    url: String,
    key: Vec<u8>,
}

/// Tries per notification; the result is already recorded, so this is a courtesy
/// with a bound, not a reason to hold the message.
const NOTIFY_ATTEMPTS: u32 = 3;

impl Notifier {
    pub fn new(queue: Option<Queue>, webhook: Option<(String, String)>) -> Self {
        let webhook = webhook.map(|(url, key)| Webhook {
            client: crate::tls::reqwest_builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("a client with a timeout always builds"),
            url,
            key: key.into_bytes(),
        });
        Notifier { queue, webhook }
    }

    /// Sends the result to the results queue and the webhook, where configured, each
    /// with bounded retries; failures are logged, not returned.
    pub async fn notify(&self, result: &JobResult) {
        let body = String::from_utf8(to_json(result)).expect("JSON is UTF-8");
        if let Some(queue) = &self.queue {
            let sent = retry(NOTIFY_ATTEMPTS, || queue.send(&body, &[])).await;
            if let Err(error) = sent {
                tracing::warn!(%error, "Could not send the result to the results queue.");
            }
        }
        if let Some(webhook) = &self.webhook {
            let posted = retry(NOTIFY_ATTEMPTS, || webhook.post(&body)).await;
            if let Err(error) = posted {
                tracing::warn!(%error, url = %webhook.url, "Could not POST the result to the webhook.");
            }
        }
    }
}

impl Webhook {
    async fn post(&self, body: &str) -> Result<(), WebhookError> {
        let response = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header(
                "x-deckhand-signature",
                signature(&self.key, body.as_bytes()),
            )
            .body(body.to_owned())
            .send()
            .await
            .map_err(WebhookError::Send)?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(WebhookError::Status(status))
        }
    }
}

/// Why a result did not reach the webhook (the URL is in the log line's fields).
#[derive(Debug, thiserror::Error)]
enum WebhookError {
    #[error("{0}")]
    Send(#[source] reqwest::Error),
    #[error("answered {0}")]
    Status(reqwest::StatusCode),
}

/// `sha256=<hex HMAC-SHA256 of the body>`, as GitHub signs its webhooks.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Up to `attempts` tries of any failure, with the agent's usual backoff (from
/// 500 ms, jittered) between them.
async fn retry<T, E, F, Fut>(attempts: u32, call: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let pace = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    crate::backoff::retry(pace, Budget::Attempts(attempts), call, |_, _| true).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_vector() {
        // RFC 4231 test case 2.
        let sig = signature(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
