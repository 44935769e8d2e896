//! `deckhand artifacts ID --out DIR`: download the artifacts a job's result lists,
//! each checked against its SHA-256, into `DIR/<path>`.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::aws::results::StoreError;
use crate::cli::RecordError;
use crate::config::Config;
use crate::job::artifacts::Artifact;

#[derive(Debug, thiserror::Error)]
pub enum ArtifactsError {
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("no result for {id}: it has not finished, or the id is unknown")]
    NoResult { id: String },
    #[error("artifact {path:?} is listed but not in S3")]
    Missing { path: String },
    #[error("artifact {path:?}: its SHA-256 is {found}, the result says {listed}")]
    Mismatch {
        path: String,
        found: String,
        listed: String,
    },
    #[error("artifact path {path:?} leads outside --out")]
    UnsafePath { path: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Downloads every artifact of job `id` into `out`; those written.
pub async fn download(
    config: Arc<Config>,
    id: &str,
    out: &Path,
) -> Result<Vec<Artifact>, ArtifactsError> {
    let why = "they are read from S3";
    let store = super::job_record(&config, id, "artifacts", why).await?;
    let result = store
        .terminal(id)
        .await?
        .ok_or_else(|| ArtifactsError::NoResult { id: id.to_owned() })?;
    let artifacts = result.artifacts.unwrap_or_default();
    for artifact in &artifacts {
        let target = within(out, &artifact.path)?;
        let bytes =
            store
                .artifact(id, &artifact.path)
                .await?
                .ok_or_else(|| ArtifactsError::Missing {
                    path: artifact.path.clone(),
                })?;
        let found = hex::encode(Sha256::digest(&bytes));
        if found != artifact.sha256 {
            return Err(ArtifactsError::Mismatch {
                path: artifact.path.clone(),
                found,
                listed: artifact.sha256.clone(),
            });
        }
        let write = |target: &Path| {
            if let Some(dir) = target.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(target, &bytes)
        };
        write(&target).map_err(|source| ArtifactsError::Write {
            path: target.clone(),
            source,
        })?;
    }
    Ok(artifacts)
}

/// `out/path`, refusing a path (from S3: anyone with write access may have
/// written it) that would lead elsewhere.
fn within(out: &Path, path: &str) -> Result<PathBuf, ArtifactsError> {
    let relative = Path::new(path);
    let safe = !path.is_empty()
        && relative
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !safe {
        return Err(ArtifactsError::UnsafePath {
            path: path.to_owned(),
        });
    }
    Ok(out.join(relative))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_path_cannot_leave_the_folder() {
        let out = Path::new("/tmp/out");
        assert_eq!(
            within(out, "dist/app").unwrap(),
            Path::new("/tmp/out/dist/app")
        );
        assert!(within(out, "../etc/passwd").is_err());
        assert!(within(out, "/etc/passwd").is_err());
        assert!(within(out, "").is_err());
    }
}
