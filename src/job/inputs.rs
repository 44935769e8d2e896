//! Sources in: a job's `inputs` are S3 objects placed in its workspace before its
//! container starts — archives (tar, gzip, zstd) unpacked under the cache's rules
//! (no entry or link out, no device file or FIFO, within the profile's
//! `inputs_max_mb` and the disk's room), or single files as they are. How a pool
//! without network access to the forge gets its checkout.

use std::path::{Component, Path, PathBuf};

use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectError;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::host::archive::{Limits, Unpack, unpack_stream};
use crate::rules::{S3Location, workdir_segments};

/// The most inputs a job may name.
pub const MAX_INPUTS: usize = 16;

/// The wire form of one input.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// `s3://BUCKET/KEY`.
    pub source: String,
    /// Where, relative to the workdir: the folder an archive unpacks into, or the
    /// file itself. Default: the workdir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Unpack the object (default), or place it as one file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extract: Option<bool>,
}

/// An input that passed every rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub source: S3Location,
    /// Relative to the workdir, `/`-separated, normalised; empty for the workdir.
    pub path: String,
    pub extract: bool,
}

impl InputSpec {
    /// The input, or each broken rule with the name of its field within the input
    /// (`source`, `path`).
    pub fn check(
        &self,
        input_buckets: &[String],
        profile: &str,
    ) -> Result<Input, Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        let source = S3Location::parse(&self.source);
        match &source {
            None => problems.push(("source", "must be s3://BUCKET/KEY".to_owned())),
            Some(s) if !input_buckets.contains(&s.bucket) => problems.push((
                "source",
                format!(
                    "bucket {:?} is not in profile {profile:?}'s input_buckets",
                    s.bucket
                ),
            )),
            Some(_) => {}
        }
        let extract = self.extract.unwrap_or(true);
        let path = match relative_path(self.path.as_deref().unwrap_or("")) {
            Ok(path) if path.is_empty() && !extract => {
                problems.push((
                    "path",
                    "names the file to write when extract is false".to_owned(),
                ));
                path
            }
            Ok(path) => path,
            Err(rule) => {
                problems.push(("path", rule));
                String::new()
            }
        };
        match source {
            Some(source) if problems.is_empty() => Ok(Input {
                source,
                path,
                extract,
            }),
            _ => Err(problems),
        }
    }
}

/// `path` normalised, or the rule it breaks: relative to the workdir and inside it.
fn relative_path(path: &str) -> Result<String, String> {
    workdir_segments(path, "inputs go").map(|segments| segments.join("/"))
}

/// Why the inputs could not be placed.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("input {object}: no such object")]
    Missing { object: S3Location },
    #[error("input {object}: access denied")]
    Forbidden { object: S3Location },
    #[error("input {object}: {}", DisplayErrorContext(&**error))]
    Get {
        object: S3Location,
        error: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("input {object}: the entry {entry} leads outside its folder; refusing it")]
    Escape { object: S3Location, entry: String },
    #[error("input {object}: the entry {entry} is a device file or FIFO; refusing it")]
    Special { object: S3Location, entry: String },
    #[error("input {object}: {limit}; refusing it")]
    Limit { object: S3Location, limit: String },
    #[error("input {object}: not a tar archive we read: {what}; refusing it")]
    Malformed { object: S3Location, what: String },
    #[error("input {object}: placing it was stopped")]
    Stopped { object: S3Location },
    #[error("input {object}: {path:?} passes through a symlink an earlier input made; refusing it")]
    ThroughLink { object: S3Location, path: String },
    #[error("input {object}: write into the workspace: {error}")]
    Write {
        object: S3Location,
        error: std::io::Error,
    },
}

impl InputError {
    /// The producer's mistake (a missing or forbidden object, an archive that
    /// breaks the rules): the job fails, and no retry would change it.
    pub fn is_job_fault(&self) -> bool {
        !matches!(
            self,
            InputError::Get { .. } | InputError::Write { .. } | InputError::Stopped { .. }
        )
    }
}

/// Places every input under `root` (the workspace volume's folder on the host),
/// together within `max_bytes` (which `rule` sets) and the disk's room; the bytes
/// placed.
pub async fn place(
    s3: &aws_sdk_s3::Client,
    inputs: &[Input],
    root: &Path,
    max_bytes: u64,
    rule: &'static str,
) -> Result<u64, InputError> {
    let mut placed = 0;
    for input in inputs {
        let limits = Limits::for_disk_of(root).capped(max_bytes.saturating_sub(placed), rule);
        placed += place_one(s3, input, root, limits).await?;
    }
    Ok(placed)
}

async fn place_one(
    s3: &aws_sdk_s3::Client,
    input: &Input,
    root: &Path,
    limits: Limits,
) -> Result<u64, InputError> {
    let source = &input.source;
    let target = within(root, &input.path, source)?;
    let object = s3
        .get_object()
        .bucket(&source.bucket)
        .key(&source.key)
        .send()
        .await
        .map_err(|e| get_error(source, e))?;
    let write = |error| InputError::Write {
        object: source.clone(),
        error,
    };
    if !input.extract {
        let size = object.content_length.unwrap_or(0).max(0) as u64;
        if size > limits.bytes {
            return Err(InputError::Limit {
                object: source.clone(),
                limit: format!("{size} bytes, over {}", limits.bytes_rule),
            });
        }
        if let Some(dir) = target.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(write)?;
        }
        let mut file = tokio::fs::File::create(&target).await.map_err(write)?;
        // No more than the limit, whatever the length said.
        let mut body = object.body.into_async_read().take(limits.bytes);
        return tokio::io::copy(&mut body, &mut file).await.map_err(write);
    }
    tokio::fs::create_dir_all(&target).await.map_err(write)?;
    let unpacked = unpack_stream(object.body.into_async_read(), target, limits).await;
    let source = source.clone();
    match unpacked {
        Ok(unpacked) => Ok(unpacked.bytes),
        Err(Unpack::Escape(entry)) => Err(InputError::Escape {
            object: source,
            entry,
        }),
        Err(Unpack::Special(entry)) => Err(InputError::Special {
            object: source,
            entry,
        }),
        Err(Unpack::Limit(limit)) => Err(InputError::Limit {
            object: source,
            limit,
        }),
        Err(Unpack::Malformed(what)) => Err(InputError::Malformed {
            object: source,
            what,
        }),
        Err(Unpack::Stopped) => Err(InputError::Stopped { object: source }),
        // Reading S3 or writing our disk: the host's, retried.
        Err(Unpack::Io(error)) => Err(InputError::Write {
            object: source,
            error,
        }),
    }
}

/// `root/path`, refusing one that passes through a symlink (an earlier input
/// may have made one; it points inside the volume, but as seen from the host
/// that is not where it leads).
fn within(root: &Path, path: &str, source: &S3Location) -> Result<PathBuf, InputError> {
    let mut at = root.to_path_buf();
    for component in Path::new(path).components() {
        if let Component::Normal(name) = component {
            at.push(name);
            if at
                .symlink_metadata()
                .is_ok_and(|m| m.file_type().is_symlink())
            {
                return Err(InputError::ThroughLink {
                    object: source.clone(),
                    path: path.to_owned(),
                });
            }
        }
    }
    Ok(at)
}

fn get_error(source: &S3Location, e: SdkError<GetObjectError>) -> InputError {
    let status = e.raw_response().map(|r| r.status().as_u16());
    match status {
        Some(404) => InputError::Missing {
            object: source.clone(),
        },
        Some(403) => InputError::Forbidden {
            object: source.clone(),
        },
        _ => InputError::Get {
            object: source.clone(),
            error: e.into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(source: &str, path: Option<&str>, extract: Option<bool>) -> InputSpec {
        InputSpec {
            source: source.into(),
            path: path.map(Into::into),
            extract,
        }
    }

    #[test]
    fn each_rule_names_its_field() {
        let buckets = ["sources".to_owned()];
        let ok = spec("s3://sources/abc.tar.gz", Some("./src/"), None)
            .check(&buckets, "default")
            .unwrap();
        assert_eq!(ok.path, "src");
        assert!(ok.extract);
        let problems = spec("s3://elsewhere/x", Some("../up"), None)
            .check(&buckets, "default")
            .unwrap_err();
        assert_eq!(problems[0].0, "source");
        assert!(
            problems[0]
                .1
                .contains("not in profile \"default\"'s input_buckets")
        );
        assert_eq!(problems[1].0, "path");
        assert!(problems[1].1.contains(".."));
        let problems = spec("https://x/y", Some("/abs"), Some(false))
            .check(&buckets, "default")
            .unwrap_err();
        assert_eq!(
            problems[0],
            ("source", "must be s3://BUCKET/KEY".to_owned())
        );
        assert!(problems[1].1.contains("not absolute"));
        let problems = spec("s3://sources/f", None, Some(false))
            .check(&buckets, "default")
            .unwrap_err();
        assert!(problems[0].1.contains("names the file"));
    }
}
