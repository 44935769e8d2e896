//! `[secrets]`: the pool's sealed bundle.

use std::collections::BTreeMap;
use std::time::Duration;

use toml::Table;

use super::reader::Reader;
use super::results::ResultsConfig;
use crate::rules::S3Location;

/// How long bootstrap retries transient failures before it exits 69.
pub const DEFAULT_BOOT_TIMEOUT_SECS: u64 = 120;

/// The pool's sealed secret bundle (see `deckhand seal`).
#[derive(Debug, Clone, Default)]
pub struct SecretsConfig {
    /// `None`: this pool has no secrets.
    pub bundle: Option<S3Location>,
    /// The KMS encryption context the bundle was sealed with.
    pub context: BTreeMap<String, String>,
    /// The only KMS key the agent will decrypt with: a bundle sealed under any
    /// other key is refused (IncorrectKeyException in AWS; AccessDenied in moto),
    /// even where the role could use that key.
    pub kms_key_id: Option<String>,
    /// How long bootstrap retries transient failures before giving up.
    pub boot_timeout: Duration,
}

impl SecretsConfig {
    /// `results`: its webhook secret must come from a bundle.
    pub(super) fn read(r: &mut Reader<'_>, root: &mut Table, results: &ResultsConfig) -> Self {
        let mut section = r.section(root, "secrets");
        let bucket = r.opt_string(&mut section, "bucket");
        let key = r.opt_string(&mut section, "key");
        let bundle = match (bucket, key) {
            (Some(bucket), Some(key)) => Some(S3Location { bucket, key }),
            (None, None) => None,
            (Some(_), None) => {
                r.issue("secrets.key", "required when secrets.bucket is set");
                None
            }
            (None, Some(_)) => {
                r.issue("secrets.bucket", "required when secrets.key is set");
                None
            }
        };
        let secrets = SecretsConfig {
            bundle,
            context: r.string_table(&mut section, "context"),
            kms_key_id: r.opt_string(&mut section, "kms_key_id"),
            boot_timeout: Duration::from_secs(r.int(
                &mut section,
                "boot_timeout_secs",
                1..=3600,
                DEFAULT_BOOT_TIMEOUT_SECS,
            )),
        };
        if secrets.bundle.is_some() && secrets.context.is_empty() {
            r.issue(
                "secrets.context",
                "required with a bundle: the KMS encryption context binds the bundle to this pool (e.g. { pool = \"ci\" })",
            );
        }
        if results.webhook_secret.is_some() && secrets.bundle.is_none() {
            r.issue(
                "results.webhook_secret",
                "names a secret, and this pool has no secret bundle ([secrets] bucket and key)",
            );
        }
        r.finish(section);
        secrets
    }
}
