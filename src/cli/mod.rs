//! The commands other than `run` (which is [`crate::agent::run`]): `exec`, `submit`,
//! `cancel`, `logs`, `artifacts`, `check`, `seal` and `forwarder-config`.

pub mod artifacts;
pub mod cancel;
pub mod check;
pub mod exec;
pub mod forwarder;
pub mod logs;
pub mod seal;
pub mod submit;

use aws_config::SdkConfig;

use crate::config::Config;
use crate::record::ResultStore;

/// Why a command cannot reach a job's record.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("job id {id:?}: must be 1-128 of [A-Za-z0-9._-], starting with a letter or digit")]
    InvalidId { id: String },
    #[error("{command} needs results.bucket: {why}")]
    NoBucket {
        command: &'static str,
        why: &'static str,
    },
}

/// The S3 record of job `id`, for `command`, which needs it because `why`.
pub(crate) async fn job_record(
    config: &Config,
    id: &str,
    command: &'static str,
    why: &'static str,
) -> Result<ResultStore, RecordError> {
    if !crate::rules::valid_id(id) {
        return Err(RecordError::InvalidId { id: id.to_owned() });
    }
    let no_bucket = RecordError::NoBucket { command, why };
    if config.results.bucket.is_none() {
        return Err(no_bucket);
    }
    let sdk = crate::aws::sdk_config(&config.aws).await;
    results_store(config, &sdk).ok_or(no_bucket)
}

/// The pool's S3 record, as the commands that read or write it beside the
/// agent see it; `None` without `results.bucket`.
pub(crate) fn results_store(config: &Config, sdk: &SdkConfig) -> Option<ResultStore> {
    let bucket = config.results.bucket.clone()?;
    Some(ResultStore::new(
        crate::aws::s3_client(sdk, &config.aws),
        bucket,
        config.results.prefix.clone(),
    ))
}
