//! The pool's secrets: sealed by an operator with `deckhand seal`, stored in S3, and
//! opened by each host at boot with KMS. Nothing secret is baked into an image,
//! written to persistent disk, or logged.
//!
//! A bundle is envelope-encrypted: a fresh KMS data key (GenerateDataKey, AES-256)
//! encrypts the secrets with AES-256-GCM; the data key travels encrypted beside
//! them. KMS releases the data key only to a caller allowed `kms:Decrypt` with the
//! same encryption context (`pool = NAME`), so a bundle sealed for one pool opens
//! nowhere else. The context is also the cipher's associated data, so editing it in
//! the bundle breaks the seal. The format is in `docs/secrets.md`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_kms::primitives::Blob;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::backoff::{Backoff, Budget, retry};
use crate::config::SecretsConfig;
use crate::docker::RegistryAuth;
use crate::mask::Masker;
use crate::rules::S3Location;

mod sealing;

pub use sealing::{read_input, seal};

pub const BUNDLE_VERSION: u32 = 1;
const ALGORITHM: &str = "AES-256-GCM";

/// The sealed bundle as stored in S3.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    pub version: u32,
    pub algorithm: String,
    /// The KMS key the data key came from (informational: the encrypted data key
    /// names its key itself).
    pub kms_key_id: String,
    pub encryption_context: BTreeMap<String, String>,
    /// base64 of KMS's CiphertextBlob for the data key.
    pub encrypted_data_key: String,
    /// base64 of the 12-byte GCM nonce.
    pub nonce: String,
    /// base64 of the AES-256-GCM ciphertext (with tag) of a JSON object of name to
    /// value.
    pub ciphertext: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("fetch the secret bundle s3://{bucket}/{key}: {}", aws_sdk_s3::error::DisplayErrorContext(&**source))]
    Fetch {
        bucket: String,
        key: String,
        source: Box<dyn std::error::Error + Send + Sync>,
        permanent: bool,
    },
    #[error("the secret bundle s3://{bucket}/{key} is not a bundle: {reason}")]
    Malformed {
        bucket: String,
        key: String,
        reason: String,
    },
    #[error(
        "KMS refused the bundle's data key ({code}): {message}; check the KMS key, the instance role's kms:Decrypt grant and secrets.context"
    )]
    Decrypt {
        code: String,
        message: String,
        permanent: bool,
    },
    #[error(
        "the secret bundle s3://{bucket}/{key} fails its integrity check: it was altered after sealing, or secrets.context does not match the one it was sealed with"
    )]
    Tampered { bucket: String, key: String },
    #[error("KMS GenerateDataKey with {key_id}: {message}")]
    GenerateDataKey { key_id: String, message: String },
    #[error("upload the bundle to s3://{bucket}/{key}: {message}")]
    Upload {
        bucket: String,
        key: String,
        message: String,
    },
    #[error("secrets file {path}: {reason}")]
    Input { path: PathBuf, reason: String },
    #[error("no secret bundle after {secs}s of retries; last error: {last}")]
    TimedOut { secs: u64, last: Box<SecretsError> },
}

/// Why a registry's credentials cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum RegistryAuthError {
    #[error(
        "images.registry_auth names secret {secret:?} for {registry}, which is not in the bundle"
    )]
    Missing { secret: String, registry: String },
    #[error("secret {secret:?} for {registry} is not user:password")]
    NotUserPassword { secret: String, registry: String },
}

impl SecretsError {
    /// A failure that retrying cannot fix: the operator must act (exit 78).
    pub fn is_permanent(&self) -> bool {
        match self {
            SecretsError::Fetch { permanent, .. } | SecretsError::Decrypt { permanent, .. } => {
                *permanent
            }
            SecretsError::TimedOut { .. } => false,
            _ => true,
        }
    }
}

/// A secret's value: zeroed when dropped, never printed.
pub struct SecretValue(Zeroizing<String>);

impl SecretValue {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(***)")
    }
}

/// The opened bundle, in memory only.
#[derive(Debug, Default)]
pub struct Secrets {
    values: BTreeMap<String, SecretValue>,
}

/// Secrets from names and values: tests, and placeholders where no bundle is
/// opened (`deckhand forwarder-config`).
impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Secrets {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        Secrets {
            values: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), SecretValue(Zeroizing::new(v.into()))))
                .collect(),
        }
    }
}

impl Secrets {
    pub fn get(&self, name: &str) -> Option<&SecretValue> {
        self.values.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// A masker for every value in the bundle: a job's log is masked against all
    /// of the pool's secrets, not only its own.
    pub fn masker(&self) -> Masker {
        Masker::new(self.values.values().map(SecretValue::expose))
    }

    fn from_plaintext(plaintext: &[u8]) -> Result<Secrets, String> {
        let map: BTreeMap<String, String> = serde_json::from_slice(plaintext)
            .map_err(|_| "the sealed content is not a JSON object of strings".to_owned())?;
        Ok(Secrets {
            values: map
                .into_iter()
                .map(|(k, v)| (k, SecretValue(Zeroizing::new(v))))
                .collect(),
        })
    }

    /// `user:password` for `registry`, from the secret `images.registry_auth`
    /// (`auth`) names for it; `None` for a registry that needs none.
    pub fn registry_auth(
        &self,
        auth: &BTreeMap<String, String>,
        registry: &str,
    ) -> Result<Option<RegistryAuth>, RegistryAuthError> {
        let Some(secret) = auth.get(registry) else {
            return Ok(None);
        };
        let missing = || RegistryAuthError::Missing {
            secret: secret.clone(),
            registry: registry.to_owned(),
        };
        let value = self.get(secret).ok_or_else(missing)?;
        let (username, password) = value.expose().trim_end().split_once(':').ok_or_else(|| {
            RegistryAuthError::NotUserPassword {
                secret: secret.clone(),
                registry: registry.to_owned(),
            }
        })?;
        Ok(Some(RegistryAuth {
            username: username.to_owned(),
            password: password.to_owned(),
        }))
    }
}

/// Makes `dir` ready for job secret files: created 0700 and on tmpfs (secrets must
/// never reach a disk). With `clear_leftovers` (the agent at boot, when no job of
/// its runs), it also removes what a crashed agent left behind; `exec` must not,
/// since an agent may be running jobs beside it.
pub fn prepare_dir(dir: &Path, clear_leftovers: bool) -> Result<(), SecretsDirError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(SecretsDirError::Create)?;
    let fs = nix::sys::statfs::statfs(dir).map_err(SecretsDirError::Statfs)?;
    if fs.filesystem_type() != nix::sys::statfs::TMPFS_MAGIC {
        return Err(SecretsDirError::NotTmpfs);
    }
    if !clear_leftovers {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)
        .map_err(SecretsDirError::Create)?
        .flatten()
    {
        let path = entry.path();
        if path.is_dir() {
            // Job directories are 0500: writable again before they can be emptied.
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700));
            std::fs::remove_dir_all(&path).map_err(|source| SecretsDirError::RemoveLeftover {
                path: path.clone(),
                source,
            })?;
            tracing::warn!(dir = %path.display(), "Removed secrets a previous run left behind.");
        }
    }
    Ok(())
}

/// Why the directory for job secret files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretsDirError {
    #[error("{0}")]
    Create(#[source] std::io::Error),
    #[error("statfs: {0}")]
    Statfs(#[source] nix::errno::Errno),
    #[error("not on tmpfs: secrets must never reach a disk")]
    NotTmpfs,
    #[error("remove leftover {}: {source}", path.display())]
    RemoveLeftover {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The rule for secret names: like job ids, so they are safe file names.
pub fn valid_name(name: &str) -> bool {
    crate::rules::valid_id(name)
}

fn associated_data(context: &BTreeMap<String, String>) -> Vec<u8> {
    let mut aad = format!("deckhand-bundle-v{BUNDLE_VERSION}\n").into_bytes();
    aad.extend(serde_json::to_vec(context).expect("a map of strings serialises"));
    aad
}

// === opening ===

/// Fetches and opens the pool's bundle, retrying transient failures with backoff
/// for `secrets.boot_timeout_secs`; permanent failures return at once.
pub async fn load(
    config: &SecretsConfig,
    s3: &aws_sdk_s3::Client,
    kms: &aws_sdk_kms::Client,
) -> Result<Option<Secrets>, SecretsError> {
    let Some(location) = &config.bundle else {
        return Ok(None);
    };
    let pace = Backoff::new(Duration::from_millis(500), Duration::from_secs(15));
    let budget = Budget::Until(tokio::time::Instant::now() + config.boot_timeout);
    let opened = retry(
        pace,
        budget,
        || open(location, config, s3, kms),
        |error, delay| {
            let again = !error.is_permanent();
            if again {
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "Could not load the secret bundle; retrying.");
            }
            again
        },
    )
    .await;
    match opened {
        Ok(secrets) => Ok(Some(secrets)),
        Err(error) if error.is_permanent() => Err(error),
        Err(error) => Err(SecretsError::TimedOut {
            secs: config.boot_timeout.as_secs(),
            last: Box::new(error),
        }),
    }
}

async fn open(
    location: &S3Location,
    config: &SecretsConfig,
    s3: &aws_sdk_s3::Client,
    kms: &aws_sdk_kms::Client,
) -> Result<Secrets, SecretsError> {
    let body = fetch(location, s3).await?;
    let sealed = Sealed::parse(&body, location)?;
    let data_key = decrypt_data_key(config, kms, sealed.encrypted_key).await?;
    let cipher = Aes256Gcm::new_from_slice(&data_key)
        .map_err(|_| malformed(location, "the data key is not 32 bytes"))?;
    let plaintext = Zeroizing::new(
        cipher
            .decrypt(
                Nonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: &associated_data(&config.context),
                },
            )
            .map_err(|_| SecretsError::Tampered {
                bucket: location.bucket.clone(),
                key: location.key.clone(),
            })?,
    );
    let secrets =
        Secrets::from_plaintext(&plaintext).map_err(|reason| malformed(location, &reason))?;
    for name in secrets.names() {
        if !valid_name(name) {
            return Err(malformed(
                location,
                &format!("secret name {name:?} is not valid"),
            ));
        }
    }
    Ok(secrets)
}

/// The bundle's bytes. Missing or forbidden is permanent: no retry brings it.
async fn fetch(location: &S3Location, s3: &aws_sdk_s3::Client) -> Result<Bytes, SecretsError> {
    let fetch_error = |source, permanent: bool| SecretsError::Fetch {
        bucket: location.bucket.clone(),
        key: location.key.clone(),
        source,
        permanent,
    };
    let object = s3
        .get_object()
        .bucket(&location.bucket)
        .key(&location.key)
        .send()
        .await
        .map_err(|e| {
            let status = e.raw_response().map(|r| r.status().as_u16());
            let code = e.code().unwrap_or_default().to_owned();
            let permanent = matches!(code.as_str(), "NoSuchKey" | "NoSuchBucket" | "AccessDenied")
                || matches!(status, Some(403 | 404));
            fetch_error(e.into(), permanent)
        })?;
    let body = object
        .body
        .collect()
        .await
        .map_err(|e| fetch_error(e.into(), false))?;
    Ok(body.into_bytes())
}

/// A bundle's binary fields, decoded and checked for shape.
struct Sealed {
    encrypted_key: Vec<u8>,
    nonce: Vec<u8>,
    ciphertext: Vec<u8>,
}

impl Sealed {
    fn parse(body: &[u8], location: &S3Location) -> Result<Sealed, SecretsError> {
        let bundle: Bundle =
            serde_json::from_slice(body).map_err(|e| malformed(location, &e.to_string()))?;
        if bundle.version != BUNDLE_VERSION || bundle.algorithm != ALGORITHM {
            return Err(malformed(
                location,
                &format!(
                    "version {} / {} is not version {BUNDLE_VERSION} / {ALGORITHM}",
                    bundle.version, bundle.algorithm
                ),
            ));
        }
        let decode = |field: &str, text: &str| {
            B64.decode(text)
                .map_err(|_| malformed(location, &format!("{field} is not base64")))
        };
        let sealed = Sealed {
            encrypted_key: decode("encrypted_data_key", &bundle.encrypted_data_key)?,
            nonce: decode("nonce", &bundle.nonce)?,
            ciphertext: decode("ciphertext", &bundle.ciphertext)?,
        };
        if sealed.nonce.len() != 12 {
            return Err(malformed(location, "nonce is not 12 bytes"));
        }
        Ok(sealed)
    }
}

/// The data key in plain, from KMS. Refusals are permanent, except KMS's own
/// outages and throttling; transport failures are not.
async fn decrypt_data_key(
    config: &SecretsConfig,
    kms: &aws_sdk_kms::Client,
    encrypted_key: Vec<u8>,
) -> Result<Zeroizing<Vec<u8>>, SecretsError> {
    // The configured context, not the bundle's: a bundle cannot choose the pool it
    // opens in.
    let decrypted = kms
        .decrypt()
        .ciphertext_blob(Blob::new(encrypted_key))
        .set_key_id(config.kms_key_id.clone())
        .set_encryption_context(Some(config.context.clone().into_iter().collect()))
        .send()
        .await
        .map_err(|e| {
            let code = e.code().unwrap_or("Unknown").to_owned();
            SecretsError::Decrypt {
                permanent: e.as_service_error().is_some()
                    && !matches!(
                        code.as_str(),
                        "KMSInternalException"
                            | "DependencyTimeoutException"
                            | "ThrottlingException"
                    ),
                // A service error's code says it all; the full chain (with the raw
                // response) is only for transport failures.
                message: match (e.message(), e.as_service_error()) {
                    (Some(message), _) => message.to_owned(),
                    (None, Some(_)) => "no details".to_owned(),
                    (None, None) => DisplayErrorContext(&e).to_string(),
                },
                code,
            }
        })?;
    Ok(Zeroizing::new(
        decrypted
            .plaintext
            .map(Blob::into_inner)
            .unwrap_or_default(),
    ))
}

fn malformed(location: &S3Location, reason: &str) -> SecretsError {
    SecretsError::Malformed {
        bucket: location.bucket.clone(),
        key: location.key.clone(),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_never_print() {
        let secrets = Secrets::from_plaintext(br#"{"a": "hunter22"}"#).unwrap();
        assert_eq!(
            format!("{secrets:?}"),
            r#"Secrets { values: {"a": SecretValue(***)} }"#
        );
        assert_eq!(secrets.get("a").unwrap().expose(), "hunter22");
    }

    #[test]
    fn reads_strings_and_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key.pem"), "line one\nline two\n").unwrap();
        let input = dir.path().join("secrets.toml");
        std::fs::write(&input, "token = \"abc123\"\nkey = { file = \"key.pem\" }\n").unwrap();
        let secrets = read_input(&input).unwrap();
        assert_eq!(secrets["token"].as_str(), "abc123");
        assert_eq!(secrets["key"].as_str(), "line one\nline two\n");

        std::fs::write(&input, "\"bad name\" = \"x\"\n").unwrap();
        let err = read_input(&input).unwrap_err().to_string();
        assert!(err.contains("a secret name must match"), "{err}");
    }

    #[test]
    fn the_context_is_bound_into_the_seal() {
        let a = associated_data(&BTreeMap::from([("pool".to_owned(), "ci".to_owned())]));
        let b = associated_data(&BTreeMap::from([("pool".to_owned(), "prod".to_owned())]));
        assert_ne!(a, b);
    }
}
