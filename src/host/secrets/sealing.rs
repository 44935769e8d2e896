//! Sealing, the operator's side (`deckhand seal`): a secrets file read into memory,
//! sealed under a fresh data key, and uploaded as a bundle.

use std::collections::BTreeMap;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use aws_sdk_kms::error::DisplayErrorContext;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_s3::primitives::ByteStream;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use zeroize::Zeroizing;

use crate::rules::S3Location;

use super::{ALGORITHM, BUNDLE_VERSION, Bundle, SecretsError, associated_data, valid_name};

/// Reads a secrets file: TOML of `name = "value"` or `name = { file = "PATH" }`
/// (a file's whole content, relative paths from the secrets file's folder).
pub fn read_input(path: &Path) -> Result<BTreeMap<String, Zeroizing<String>>, SecretsError> {
    let input_error = |reason: String| SecretsError::Input {
        path: path.to_owned(),
        reason,
    };
    let text =
        Zeroizing::new(std::fs::read_to_string(path).map_err(|e| input_error(e.to_string()))?);
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| input_error(format!("not valid TOML: {}", e.message())))?;
    let mut secrets = BTreeMap::new();
    for (name, value) in table {
        if !valid_name(&name) {
            return Err(input_error(format!(
                "{name:?}: a secret name must match ^[A-Za-z0-9][A-Za-z0-9._-]{{0,127}}$"
            )));
        }
        let value = match value {
            toml::Value::String(s) => Zeroizing::new(s),
            toml::Value::Table(t) => match t.get("file").and_then(|f| f.as_str()) {
                Some(file) if t.len() == 1 => {
                    let file = path.parent().unwrap_or(Path::new(".")).join(file);
                    Zeroizing::new(std::fs::read_to_string(&file).map_err(|e| {
                        input_error(format!("{name}: read {}: {e}", file.display()))
                    })?)
                }
                _ => {
                    return Err(input_error(format!(
                        "{name}: expected a string or {{ file = \"PATH\" }}"
                    )));
                }
            },
            _ => {
                return Err(input_error(format!(
                    "{name}: expected a string or {{ file = \"PATH\" }}"
                )));
            }
        };
        secrets.insert(name, value);
    }
    Ok(secrets)
}

/// Seals `secrets` under a fresh data key from `kms_key_id` and uploads the bundle
/// with SSE-KMS.
pub async fn seal(
    kms: &aws_sdk_kms::Client,
    s3: &aws_sdk_s3::Client,
    kms_key_id: &str,
    context: &BTreeMap<String, String>,
    secrets: &BTreeMap<String, Zeroizing<String>>,
    out: &S3Location,
) -> Result<(), SecretsError> {
    let (plain_key, encrypted_key) = generate_data_key(kms, kms_key_id, context).await?;
    let plaintext = Zeroizing::new(
        serde_json::to_vec(
            &secrets
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect::<BTreeMap<_, _>>(),
        )
        .expect("strings serialise"),
    );
    let cipher =
        Aes256Gcm::new_from_slice(&plain_key).map_err(|_| SecretsError::GenerateDataKey {
            key_id: kms_key_id.to_owned(),
            message: format!("expected a 32-byte data key, got {} bytes", plain_key.len()),
        })?;
    let nonce_bytes: [u8; 12] = rand_nonce();
    let ciphertext = cipher
        .encrypt(
            Nonce::from_slice(&nonce_bytes),
            Payload {
                msg: &plaintext,
                aad: &associated_data(context),
            },
        )
        .expect("AES-GCM encryption of an in-memory buffer cannot fail");
    let bundle = Bundle {
        version: BUNDLE_VERSION,
        algorithm: ALGORITHM.to_owned(),
        kms_key_id: kms_key_id.to_owned(),
        encryption_context: context.clone(),
        encrypted_data_key: B64.encode(encrypted_key),
        nonce: B64.encode(nonce_bytes),
        ciphertext: B64.encode(ciphertext),
    };
    upload(s3, kms_key_id, &bundle, out).await
}

/// A fresh data key for one bundle: in plain (zeroed when dropped) to seal with,
/// and encrypted by KMS under `context` to travel in the bundle.
async fn generate_data_key(
    kms: &aws_sdk_kms::Client,
    kms_key_id: &str,
    context: &BTreeMap<String, String>,
) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), SecretsError> {
    let generated = kms
        .generate_data_key()
        .key_id(kms_key_id)
        .key_spec(aws_sdk_kms::types::DataKeySpec::Aes256)
        .set_encryption_context(Some(context.clone().into_iter().collect()))
        .send()
        .await
        .map_err(|e| SecretsError::GenerateDataKey {
            key_id: kms_key_id.to_owned(),
            message: DisplayErrorContext(&e).to_string(),
        })?;
    let plain_key = Zeroizing::new(
        generated
            .plaintext
            .map(Blob::into_inner)
            .unwrap_or_default(),
    );
    let encrypted_key = generated
        .ciphertext_blob
        .map(Blob::into_inner)
        .unwrap_or_default();
    Ok((plain_key, encrypted_key))
}

/// Stores the bundle, encrypted at rest under the same KMS key.
async fn upload(
    s3: &aws_sdk_s3::Client,
    kms_key_id: &str,
    bundle: &Bundle,
    out: &S3Location,
) -> Result<(), SecretsError> {
    s3.put_object()
        .bucket(&out.bucket)
        .key(&out.key)
        .content_type("application/json")
        .server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::AwsKms)
        .ssekms_key_id(kms_key_id)
        .body(ByteStream::from(
            serde_json::to_vec_pretty(bundle).expect("a bundle serialises"),
        ))
        .send()
        .await
        .map_err(|e| SecretsError::Upload {
            bucket: out.bucket.clone(),
            key: out.key.clone(),
            message: aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
        })?;
    Ok(())
}

/// A nonce from the OS's generator. A data key seals one bundle only, so even a
/// repeated nonce would not repeat a (key, nonce) pair; random costs nothing.
fn rand_nonce() -> [u8; 12] {
    use aes_gcm::aead::{AeadCore, OsRng};
    Aes256Gcm::generate_nonce(&mut OsRng).into()
}
