//! Boot's seed: each `git.seed` bundle read from S3 (within `git.seed_max_mb`)
//! into a file beside the mirrors, fetched into its repository's mirror, and
//! removed, so a fresh host's first job of that repository starts warm.

use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;

use super::{GitError, Mirrors};
use crate::config::Seed;
use crate::rules::S3Location;

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("git.seed {bundle}: {}", aws_sdk_s3::error::DisplayErrorContext(&**source))]
    Get {
        bundle: S3Location,
        source: Box<dyn std::error::Error + Send + Sync>,
        /// 403 or 404: the config or the bucket must change.
        permanent: bool,
    },
    #[error("git.seed {bundle}: over git.seed_max_mb = {max_mb}")]
    TooBig { bundle: S3Location, max_mb: u64 },
    #[error("git.seed {bundle}: writing {path}: {source}")]
    Write {
        bundle: S3Location,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("git.seed {bundle}: {source}")]
    Git {
        bundle: S3Location,
        source: GitError,
    },
}

impl SeedError {
    /// No retry of the boot would help: the bundle is missing, forbidden, too
    /// big, or not a bundle of git's.
    pub fn is_permanent(&self) -> bool {
        match self {
            SeedError::Get { permanent, .. } => *permanent,
            SeedError::TooBig { .. } => true,
            SeedError::Git { source, .. } => !matches!(
                source,
                GitError::Io { .. } | GitError::Spawn { .. } | GitError::TimedOut { .. }
            ),
            SeedError::Write { .. } => false,
        }
    }
}

/// Seeds every mirror `seeds` names; how many were made (a mirror already on
/// the host is kept as it is).
pub async fn seed_all(
    mirrors: &Mirrors,
    s3: &aws_sdk_s3::Client,
    seeds: &[Seed],
    max_mb: u64,
) -> Result<usize, SeedError> {
    let mut made = 0;
    for seed in seeds {
        if mirrors.is_warm(&seed.repo) {
            tracing::info!(repo = %seed.repo, "Mirror already on this host; not seeding it.");
            continue;
        }
        let path = mirrors
            .root()
            .join(format!("seed-{}.bundle", crate::rules::random_hex(8)));
        let downloaded = download(s3, &seed.bundle, &path, max_mb).await;
        let seeded = match downloaded {
            Ok(()) => mirrors
                .seed(&seed.repo, &path)
                .await
                .map_err(|source| SeedError::Git {
                    bundle: seed.bundle.clone(),
                    source,
                }),
            Err(error) => Err(error),
        };
        // The bundle was only a way in; the mirror holds it now.
        let _ = tokio::fs::remove_file(&path).await;
        if seeded? {
            made += 1;
            tracing::info!(repo = %seed.repo, bundle = %seed.bundle, "Mirror seeded.");
        }
    }
    Ok(made)
}

/// The object at `bundle` into the file `path`, no more than `max_mb`.
async fn download(
    s3: &aws_sdk_s3::Client,
    bundle: &S3Location,
    path: &Path,
    max_mb: u64,
) -> Result<(), SeedError> {
    let max_bytes = max_mb.saturating_mul(1_000_000);
    let object = s3
        .get_object()
        .bucket(&bundle.bucket)
        .key(&bundle.key)
        .send()
        .await
        .map_err(|e| {
            let status = e.raw_response().map(|r| r.status().as_u16());
            SeedError::Get {
                bundle: bundle.clone(),
                permanent: matches!(status, Some(403 | 404)),
                source: e.into(),
            }
        })?;
    let write = |source| SeedError::Write {
        bundle: bundle.clone(),
        path: path.to_owned(),
        source,
    };
    let mut file = tokio::fs::File::create(path).await.map_err(write)?;
    // One byte past the bound tells a bundle that is too big from one that fits.
    let mut body = tokio::io::AsyncReadExt::take(object.body.into_async_read(), max_bytes + 1);
    let copied = tokio::io::copy(&mut body, &mut file).await.map_err(write)?;
    file.flush().await.map_err(write)?;
    if copied > max_bytes {
        return Err(SeedError::TooBig {
            bundle: bundle.clone(),
            max_mb,
        });
    }
    Ok(())
}
