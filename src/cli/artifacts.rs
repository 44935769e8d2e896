//! `deckhand artifacts ID --out DIR`: download the artifacts a job's result lists,
//! each checked against its SHA-256, into `DIR/<path>`.

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::cli::RecordError;
use crate::config::Config;
use crate::job::artifacts::Artifact;
use crate::record::StoreError;
use crate::rules::bounded_text;

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
    #[error("artifact path {path:?} leads outside --out or into .git; not written")]
    UnsafePath { path: String },
    #[error("{path} exists; artifacts never overwrite")]
    Exists { path: PathBuf },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Downloads every artifact of job `id` into `out`; those written. A job wrote
/// the names and the bytes, so: each file is streamed (never whole in memory),
/// no more than its listed size is read, nothing already in `out` is
/// overwritten, no link already in `out` is followed, and nothing goes into a
/// `.git` folder (whose config and hooks run code).
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
        let names = safe_names(&artifact.path)?;
        let shown = bounded_text(&artifact.path, 512);
        let body =
            store
                .artifact(id, &artifact.path)
                .await?
                .ok_or_else(|| ArtifactsError::Missing {
                    path: shown.clone(),
                })?;
        let folder = folder_within(out, &names[..names.len() - 1], &shown)?;
        let target = folder.join(names[names.len() - 1]);
        let temp = folder.join(format!(".deckhand-{}.part", std::process::id()));
        let written = write_checked(body, &temp, artifact, &shown).await;
        let placed = written.and_then(|()| {
            // A hard link never replaces what is there, file or link.
            std::fs::hard_link(&temp, &target).map_err(|source| match source.kind() {
                std::io::ErrorKind::AlreadyExists => ArtifactsError::Exists {
                    path: target.clone(),
                },
                _ => ArtifactsError::Write {
                    path: target.clone(),
                    source,
                },
            })
        });
        let _ = std::fs::remove_file(&temp);
        placed?;
    }
    Ok(artifacts)
}

/// Streams `body` into a new file `temp`, reading at most the listed size, and
/// checks size and SHA-256 against the listing.
async fn write_checked(
    body: impl tokio::io::AsyncRead + Unpin,
    temp: &Path,
    artifact: &Artifact,
    shown: &str,
) -> Result<(), ArtifactsError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let write = |source| ArtifactsError::Write {
        path: temp.to_owned(),
        source,
    };
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(temp)
        .await
        .map_err(write)?;
    // One byte past the listed size tells an object that grew.
    let mut body = body.take(artifact.bytes + 1);
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 256 * 1024];
    let mut bytes = 0u64;
    loop {
        let n = body.read(&mut buf).await.map_err(write)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).await.map_err(write)?;
        bytes += n as u64;
    }
    file.flush().await.map_err(write)?;
    let found = hex::encode(hasher.finalize());
    if bytes != artifact.bytes || found != artifact.sha256 {
        return Err(ArtifactsError::Mismatch {
            path: shown.to_owned(),
            found: format!("{found} ({bytes} bytes)"),
            listed: format!("{} ({} bytes)", artifact.sha256, artifact.bytes),
        });
    }
    Ok(())
}

/// The names of a listed path (from S3: anyone with write access may have
/// written it), refusing one that would lead elsewhere or into `.git`.
fn safe_names(path: &str) -> Result<Vec<&OsStr>, ArtifactsError> {
    let unsafe_path = || ArtifactsError::UnsafePath {
        path: bounded_text(path, 512),
    };
    let mut names = Vec::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(name) if name.eq_ignore_ascii_case(".git") => {
                return Err(unsafe_path());
            }
            Component::Normal(name) => names.push(name),
            Component::CurDir => {}
            _ => return Err(unsafe_path()),
        }
    }
    if names.is_empty() {
        return Err(unsafe_path());
    }
    Ok(names)
}

/// `out/names…`, made where missing, refusing a way through a link or a file.
fn folder_within(out: &Path, names: &[&OsStr], shown: &str) -> Result<PathBuf, ArtifactsError> {
    let mut at = out.to_path_buf();
    std::fs::create_dir_all(&at).map_err(|source| ArtifactsError::Write {
        path: at.clone(),
        source,
    })?;
    for name in names {
        at.push(name);
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(ArtifactsError::UnsafePath {
                    path: format!("{shown} (passes through a link or a file in --out)"),
                });
            }
            Err(_) => std::fs::create_dir(&at).map_err(|source| ArtifactsError::Write {
                path: at.clone(),
                source,
            })?,
        }
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_path_cannot_leave_the_folder_or_enter_git() {
        assert_eq!(safe_names("dist/app").unwrap(), ["dist", "app"]);
        for bad in [
            "../etc/passwd",
            "/etc/passwd",
            "",
            ".git/config",
            "a/.GIT/hooks/x",
            "a/../b",
        ] {
            assert!(safe_names(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_link_in_the_destination_is_never_followed() {
        let out = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), out.path().join("dist")).unwrap();
        let names = safe_names("dist/app").unwrap();
        assert!(matches!(
            folder_within(out.path(), &names[..1], "dist/app"),
            Err(ArtifactsError::UnsafePath { .. })
        ));
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    }
}
