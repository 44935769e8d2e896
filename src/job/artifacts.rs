//! Artifacts out: after a job's container exits, the files its `artifacts`
//! patterns match are read through the Docker API, from the container's own view
//! of its filesystem (so a symlink can never reach a host file: it is not
//! followed at all), and staged on the agent's disk for upload, within the
//! profile's caps. Everything here is the job's to shape (names, sizes, how
//! much lies beside an artifact), so the matcher runs in linear time, the bytes
//! read from Docker are bounded as well as those kept, and the caller can stop
//! the reading at any chunk.

use std::collections::BTreeSet;
use std::path::PathBuf;

use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::io::{StreamReader, SyncIoBridge};
use tokio_util::sync::CancellationToken;

use crate::docker::{Docker, DockerError};
use crate::rules::workdir_segments;

mod scan;
use scan::{Scan, ScanError};

/// The most patterns a job may name.
pub const MAX_PATTERNS: usize = 64;
/// The most wildcards (`*`, `?`, `**`) one pattern may hold.
pub const MAX_WILDCARDS: usize = 16;
/// What may be read from Docker for the artifacts, as a multiple of what may
/// be kept (`artifacts_max_mb`), and at least [`MIN_READ_BYTES`]: the archive of
/// a folder carries every file beside the artifacts, and a sparse file of
/// terabytes costs Docker nothing to name.
const READ_FACTOR: u64 = 4;
const MIN_READ_BYTES: u64 = 1_000_000_000;
/// The most left-out files a result lists by name; the rest are counted.
const MAX_LISTED_LEFT_OUT: usize = 100;

/// A path or glob relative to the job's workdir: `*` and `?` match within one
/// path segment, `**` any number of segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    segments: Vec<String>,
}

impl Pattern {
    /// The pattern, or the rule it breaks.
    pub fn parse(text: &str) -> Result<Pattern, String> {
        if text.is_empty() {
            return Err("must not be empty".to_owned());
        }
        let segments: Vec<String> = workdir_segments(text, "artifacts come from")?
            .into_iter()
            .map(str::to_owned)
            .collect();
        if segments.is_empty() {
            return Err("names no file".to_owned());
        }
        let wildcards: usize = segments
            .iter()
            .map(|s| {
                if s == "**" {
                    1
                } else {
                    s.matches(['*', '?']).count()
                }
            })
            .sum();
        if wildcards > MAX_WILDCARDS {
            return Err(format!(
                "has {wildcards} wildcards; at most {MAX_WILDCARDS}"
            ));
        }
        Ok(Pattern {
            text: text.to_owned(),
            segments,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The folder every match is under: the segments before the first wildcard
    /// (all of them for a plain path).
    fn base(&self) -> String {
        self.segments
            .iter()
            .take_while(|s| !is_glob(s))
            .cloned()
            .collect::<Vec<_>>()
            .join("/")
    }

    /// Whether `path` (relative to the workdir, `/`-separated) matches.
    pub fn matches(&self, path: &str) -> bool {
        let names: Vec<&str> = path.split('/').collect();
        match_segments(&self.segments, &names)
    }
}

fn is_glob(segment: &str) -> bool {
    segment.contains(['*', '?'])
}

/// Segments against names: `**` any run of names, every other segment one
/// name. Greedy with a return to the last `**` only, as [`match_segment`] does
/// for `*`: at most (patterns × names) segment matches, never exponential.
fn match_segments(pattern: &[String], names: &[&str]) -> bool {
    wildcard(
        pattern,
        names,
        |p| p == "**",
        |p, name| match_segment(p.as_bytes(), name.as_bytes()),
    )
}

/// `*` any run of bytes, `?` one; everything else itself.
fn match_segment(pattern: &[u8], name: &[u8]) -> bool {
    wildcard(pattern, name, |&p| p == b'*', |&p, &c| p == b'?' || p == c)
}

/// The classic linear wildcard walk: on a mismatch, go back to the last star
/// and let it take one more unit. Correct because a later star can take
/// whatever an earlier one would have, so only the last one need be retried.
fn wildcard<P, T>(
    pattern: &[P],
    text: &[T],
    is_star: impl Fn(&P) -> bool,
    unit: impl Fn(&P, &T) -> bool,
) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        #[cfg(test)]
        tests::STEPS.with(|steps| steps.set(steps.get() + 1));
        if p < pattern.len() && !is_star(&pattern[p]) && unit(&pattern[p], &text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && is_star(&pattern[p]) {
            star = Some((p, t));
            p += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(is_star)
}

/// What a profile lets a job upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub max_files: u64,
    pub max_bytes: u64,
}

impl Caps {
    /// The most that may be read from Docker for these caps, across folders.
    fn read_bound(self) -> u64 {
        self.max_bytes
            .saturating_mul(READ_FACTOR)
            .max(MIN_READ_BYTES)
    }
}

/// An uploaded artifact, as the result lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// Relative to the workdir; also its key under `<prefix><id>/artifacts/`.
    pub path: String,
    pub bytes: u64,
    /// Hex SHA-256 of its content.
    pub sha256: String,
}

/// A matched file that was not uploaded, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeftOut {
    pub path: String,
    pub reason: String,
}

/// A file read out of the container, on the agent's disk until uploaded.
#[derive(Debug)]
pub struct Staged {
    pub artifact: Artifact,
    pub file: PathBuf,
}

/// Where each staged file goes as soon as it is on disk, so uploads overlap the
/// reading; a file the receiver does not take stays in [`Collected::staged`].
pub type Sink = tokio::sync::mpsc::Sender<Staged>;

/// What the patterns found. The staged files are removed when it is dropped.
#[derive(Debug, Default)]
pub struct Collected {
    /// Files staged and not handed to a sink.
    pub staged: Vec<Staged>,
    /// Files and bytes staged in all, sink or not.
    pub files: u64,
    pub bytes: u64,
    /// Patterns that matched no file.
    pub unmatched: Vec<String>,
    /// The first files left out, by name.
    left_out: Vec<LeftOut>,
    /// How many more were left out past those.
    left_out_unlisted: u64,
    /// Reading was stopped (the job's deadline, a cancel, the drain) before
    /// every folder was read.
    pub stopped: bool,
    dir: Option<PathBuf>,
}

impl Collected {
    /// Nothing yet; what is staged goes under `dir`, removed with the value.
    fn staged_in(dir: PathBuf) -> Self {
        let mut collected = Collected::default();
        collected.dir = Some(dir);
        collected
    }

    /// Notes a file left out; past the listing bound, only counted.
    pub fn leave_out(&mut self, path: &str, reason: String) {
        if self.left_out.len() < MAX_LISTED_LEFT_OUT {
            self.left_out.push(LeftOut {
                path: path.to_owned(),
                reason,
            });
        } else {
            self.left_out_unlisted += 1;
        }
    }

    /// The files left out, as the result lists them: by name, then one entry
    /// counting the rest.
    pub fn take_left_out(&mut self) -> Vec<LeftOut> {
        let mut left_out = std::mem::take(&mut self.left_out);
        let unlisted = std::mem::take(&mut self.left_out_unlisted);
        if unlisted > 0 {
            left_out.push(LeftOut {
                path: "…".to_owned(),
                reason: format!("and {unlisted} more"),
            });
        }
        left_out
    }
}

impl Drop for Collected {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            // Best effort: the staged files are the job's own outputs, no secret.
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// What to read: the files `patterns` match in `container`, whose workdir is
/// `workdir`, within `caps`.
pub struct Request<'a> {
    pub container: &'a str,
    pub workdir: &'a str,
    pub patterns: &'a [Pattern],
    pub caps: Caps,
}

/// Reads what `request` names into `dir` until `stop` is cancelled (then what
/// was staged stands and [`Collected::stopped`] says so). Each folder is read
/// once, however many patterns share it.
pub async fn collect(
    docker: &Docker,
    request: Request<'_>,
    dir: PathBuf,
    sink: Option<Sink>,
    stop: &CancellationToken,
) -> Result<Collected, DockerError> {
    let Request {
        container,
        workdir,
        patterns,
        caps,
    } = request;
    let mut scan = Scan {
        sink,
        patterns: patterns.to_vec(),
        caps,
        matched: vec![false; patterns.len()],
        read_left: caps.read_bound(),
        stop: stop.clone(),
        collected: Collected::staged_in(dir.clone()),
        dir,
    };
    for base in bases(patterns) {
        if stop.is_cancelled() {
            scan.collected.stopped = true;
            break;
        }
        let path = if base.is_empty() {
            workdir.to_owned()
        } else {
            format!("{}/{base}", workdir.trim_end_matches('/'))
        };
        let tar = tokio::select! {
            tar = docker.download(container, &path) => tar?,
            () = stop.cancelled() => continue,
        };
        let Some(tar) = tar else { continue };
        let reader = SyncIoBridge::new(StreamReader::new(tar.map_err(std::io::Error::other)));
        let reading = tokio::task::spawn_blocking(move || {
            let read = scan.entries(&base, reader);
            (scan, read)
        });
        let read;
        (scan, read) = reading.await.expect("the artifact scan does not panic");
        match read {
            Ok(()) => {}
            Err(ScanError::Stopped) => scan.collected.stopped = true,
            Err(ScanError::ReadBound(bytes)) => {
                scan.collected.leave_out(
                    &path,
                    format!(
                        "reading stopped after {} MB from the container: the bound is {READ_FACTOR} x artifacts_max_mb, at least {} MB",
                        bytes / 1_000_000,
                        MIN_READ_BYTES / 1_000_000
                    ),
                );
                break;
            }
            Err(ScanError::Tar(error)) => scan
                .collected
                .leave_out(&path, format!("could not be read: {error}")),
        }
    }
    let mut collected = std::mem::take(&mut scan.collected);
    collected.unmatched = patterns
        .iter()
        .zip(&scan.matched)
        .filter(|(_, m)| !**m)
        .map(|(p, _)| p.as_str().to_owned())
        .collect();
    Ok(collected)
}

/// The folders to read: each pattern's base, less those inside another.
fn bases(patterns: &[Pattern]) -> Vec<String> {
    let all: BTreeSet<String> = patterns.iter().map(Pattern::base).collect();
    all.iter()
        .filter(|base| {
            !all.iter().any(|other| {
                other != *base && (other.is_empty() || base.starts_with(&format!("{other}/")))
            })
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests;
