//! `deckhand seal`: encrypt a secrets file with a fresh KMS data key and upload the
//! bundle to S3. It runs on an operator's machine, not on the host.

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::Config;
use crate::host::secrets::SecretsError;
use crate::rules::S3Location;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("--context {0:?}: expected KEY=VALUE")]
    Context(String),
    #[error("--out {0:?}: expected s3://BUCKET/KEY")]
    Out(String),
    #[error(transparent)]
    ReadInput(SecretsError),
    #[error(transparent)]
    Seal(SecretsError),
}

/// Seals `input` under `kms_key` with the encryption `context` (`KEY=VALUE` pairs)
/// and uploads it to `out` (`s3://BUCKET/KEY`).
pub async fn seal(
    config: &Config,
    kms_key: &str,
    context: &[String],
    input: &Path,
    out: &str,
) -> Result<(), SealError> {
    let mut pairs = BTreeMap::new();
    for pair in context {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| SealError::Context(pair.clone()))?;
        pairs.insert(k.to_owned(), v.to_owned());
    }
    let out = S3Location::parse(out).ok_or_else(|| SealError::Out(out.to_owned()))?;
    let secrets = crate::host::secrets::read_input(input).map_err(SealError::ReadInput)?;
    let sdk = crate::aws::sdk_config(&config.aws).await;
    crate::host::secrets::seal(
        &crate::aws::kms_client(&sdk),
        &crate::aws::s3_client(&sdk, &config.aws),
        kms_key,
        &pairs,
        &secrets,
        &out,
    )
    .await
    .map_err(SealError::Seal)
}
