//! Artifacts out: after a job's container exits, the files its `artifacts`
//! patterns match are read through the Docker API, from the container's own view
//! of its filesystem (so a symlink can never reach a host file: it is not
//! followed at all), and staged on the agent's disk for upload, within the
//! profile's caps.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::docker::{Docker, DockerError};
use crate::rules::workdir_segments;

/// The most patterns a job may name.
pub const MAX_PATTERNS: usize = 64;
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

fn match_segments(pattern: &[String], names: &[&str]) -> bool {
    match pattern.split_first() {
        None => names.is_empty(),
        Some((first, rest)) if first == "**" => {
            (0..=names.len()).any(|skip| match_segments(rest, &names[skip..]))
        }
        Some((first, rest)) => match names.split_first() {
            Some((name, names)) => {
                match_segment(first.as_bytes(), name.as_bytes()) && match_segments(rest, names)
            }
            None => false,
        },
    }
}

/// `*` any run of characters, `?` one; everything else itself.
fn match_segment(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|skip| match_segment(rest, &name[skip..])),
        Some((b'?', rest)) => !name.is_empty() && match_segment(rest, &name[1..]),
        Some((c, rest)) => name.first() == Some(c) && match_segment(rest, &name[1..]),
    }
}

/// What a profile lets a job upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub max_files: u64,
    pub max_bytes: u64,
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

/// Reads the files `patterns` match in `container` (whose workdir is `workdir`)
/// into `dir`, within `caps`. Each folder is read once, however many patterns
/// share it.
pub async fn collect(
    docker: &Docker,
    container: &str,
    workdir: &str,
    patterns: &[Pattern],
    caps: Caps,
    dir: PathBuf,
    sink: Option<Sink>,
) -> Result<Collected, DockerError> {
    let mut scan = Scan {
        sink,
        patterns: patterns.to_vec(),
        caps,
        matched: vec![false; patterns.len()],
        seen: BTreeSet::new(),
        collected: Collected::staged_in(dir.clone()),
        dir,
    };
    for base in bases(patterns) {
        let path = if base.is_empty() {
            workdir.to_owned()
        } else {
            format!("{}/{base}", workdir.trim_end_matches('/'))
        };
        let Some(tar) = docker.download(container, &path).await? else {
            continue;
        };
        let reader = SyncIoBridge::new(StreamReader::new(tar.map_err(std::io::Error::other)));
        let reading = tokio::task::spawn_blocking(move || {
            let read = scan.entries(&base, reader);
            (scan, read)
        });
        let read;
        (scan, read) = reading.await.expect("the artifact scan does not panic");
        if let Err(error) = read {
            scan.collected
                .leave_out(&path, format!("could not be read: {error}"));
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

/// The patterns' reading, across the folders they start from: each folder's
/// archive is read entry by entry on a blocking thread.
struct Scan {
    sink: Option<Sink>,
    patterns: Vec<Pattern>,
    caps: Caps,
    dir: PathBuf,
    /// Which patterns have matched a file.
    matched: Vec<bool>,
    /// Paths already taken (folders' archives may overlap).
    seen: BTreeSet<String>,
    collected: Collected,
}

impl Scan {
    /// The entries of the archive of folder `base` (relative to the workdir).
    fn entries(&mut self, base: &str, reader: impl Read) -> std::io::Result<()> {
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let Some(path) = relative(base, &entry.path()?) else {
                continue;
            };
            let kind = entry.header().entry_type();
            if kind.is_dir() || !self.matches(&path) || !self.seen.insert(path.clone()) {
                continue;
            }
            if !kind.is_file() {
                let what = if kind.is_symlink() {
                    "a symlink"
                } else {
                    "not a regular file"
                };
                self.collected.leave_out(
                    &path,
                    format!("{what}: only regular files are uploaded, links are not followed"),
                );
                continue;
            }
            let bytes = entry.header().size()?;
            if let Some(reason) = self.over_cap(bytes) {
                self.collected.leave_out(&path, reason);
                continue;
            }
            let file = self.dir.join(self.collected.files.to_string());
            let sha256 = stage(&mut entry, &file)?;
            self.collected.files += 1;
            self.collected.bytes += bytes;
            let staged = Staged {
                artifact: Artifact {
                    path,
                    bytes,
                    sha256,
                },
                file,
            };
            // Waits while the uploads are behind: the staging disk stays bounded.
            let kept = match &self.sink {
                Some(sink) => sink.blocking_send(staged).err().map(|unsent| unsent.0),
                None => Some(staged),
            };
            self.collected.staged.extend(kept);
        }
        Ok(())
    }

    fn matches(&mut self, path: &str) -> bool {
        let mut any = false;
        for (pattern, matched) in self.patterns.iter().zip(self.matched.iter_mut()) {
            if pattern.matches(path) {
                *matched = true;
                any = true;
            }
        }
        any
    }

    fn over_cap(&self, bytes: u64) -> Option<String> {
        if self.collected.files >= self.caps.max_files {
            return Some(format!(
                "artifacts_max_files = {} reached",
                self.caps.max_files
            ));
        }
        (self.collected.bytes + bytes > self.caps.max_bytes).then(|| {
            format!(
                "artifacts_max_mb = {} reached",
                self.caps.max_bytes / 1_000_000
            )
        })
    }
}

/// The entry's path relative to the workdir. Docker names entries from the
/// folder asked for (`release/x` for `target/release`).
fn relative(base: &str, entry: &Path) -> Option<String> {
    let mut names = Vec::new();
    for component in entry.components() {
        match component {
            Component::Normal(name) => names.push(name.to_str()?.to_owned()),
            Component::CurDir => {}
            _ => return None,
        }
    }
    if base.is_empty() {
        // The workdir itself was read: its own name comes first.
        names.remove(0);
    } else if let Some((parent, _)) = base.rsplit_once('/') {
        names.insert(0, parent.to_owned());
    }
    (!names.is_empty()).then(|| names.join("/"))
}

/// Copies a file's content to `file`; its hex SHA-256.
fn stage(content: &mut impl Read, file: &Path) -> std::io::Result<String> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(file)?);
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 256 * 1024];
    loop {
        let n = content.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
    }
    out.flush()?;
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(text: &str) -> Pattern {
        Pattern::parse(text).unwrap()
    }

    #[test]
    fn globs_match_within_a_segment_and_double_stars_across() {
        assert!(pattern("out.txt").matches("out.txt"));
        assert!(!pattern("out.txt").matches("sub/out.txt"));
        assert!(pattern("target/*.tar.gz").matches("target/app.tar.gz"));
        assert!(!pattern("target/*.tar.gz").matches("target/x/app.tar.gz"));
        assert!(pattern("**/*.xml").matches("report.xml"));
        assert!(pattern("**/*.xml").matches("a/b/c/report.xml"));
        assert!(pattern("logs/**").matches("logs/a/b.txt"));
        assert!(pattern("file-?.log").matches("file-1.log"));
        assert!(!pattern("file-?.log").matches("file-10.log"));
        assert!(pattern("./dist/app").matches("dist/app"));
    }

    #[test]
    fn patterns_stay_inside_the_workdir() {
        assert!(
            Pattern::parse("/etc/passwd")
                .unwrap_err()
                .contains("relative")
        );
        assert!(Pattern::parse("../x").unwrap_err().contains(".."));
        assert!(Pattern::parse("a/../../x").unwrap_err().contains(".."));
        assert!(Pattern::parse("").is_err());
        assert!(Pattern::parse(".").is_err());
    }

    #[test]
    fn each_folder_is_read_once() {
        let patterns = [
            pattern("target/release/*.bin"),
            pattern("target/*.txt"),
            pattern("out/a"),
        ];
        assert_eq!(bases(&patterns), ["out/a", "target"]);
        let patterns = [pattern("**/*.xml"), pattern("target/*.txt")];
        assert_eq!(bases(&patterns), [""]);
    }

    #[test]
    fn left_out_files_are_listed_then_counted() {
        let mut collected = Collected::default();
        for n in 0..103 {
            collected.leave_out(&format!("f{n}"), "cap".into());
        }
        let left_out = collected.take_left_out();
        assert_eq!(left_out.len(), 101);
        assert_eq!(left_out[100].reason, "and 3 more");
    }
}
