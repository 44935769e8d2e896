//! The commands other than `run` (which is [`crate::agent::run`]): `exec`, `submit`,
//! `cancel`, `logs`, `artifacts`, `check` and `seal`.

pub mod artifacts;
pub mod cancel;
pub mod check;
pub mod exec;
pub mod logs;
pub mod seal;
pub mod submit;

use crate::aws::results::ResultStore;
use crate::config::Config;

/// The pool's S3 record, as the commands that read or write it beside the
/// agent see it; `None` without `results.bucket`.
pub(crate) async fn results_store(config: &Config) -> Option<ResultStore> {
    let bucket = config.results.bucket.clone()?;
    let sdk = crate::aws::sdk_config(&config.aws).await;
    Some(ResultStore::new(
        crate::aws::s3_client(&sdk, &config.aws),
        bucket,
        config.results.prefix.clone(),
    ))
}
