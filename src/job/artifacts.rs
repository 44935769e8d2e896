//! Artifacts out: after a job's container exits, the files its `artifacts`
//! patterns match are read through the Docker API, from the container's own view
//! of its filesystem (so a symlink can never reach a host file: it is not
//! followed at all), and staged on the agent's disk for upload, within the
//! profile's caps. Everything here is the job's to shape (names, sizes, how
//! much lies beside an artifact), so the matcher runs in linear time, the bytes
//! read from Docker are bounded as well as those kept, and the caller can stop
//! the reading at any chunk.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::io::{StreamReader, SyncIoBridge};
use tokio_util::sync::CancellationToken;

use crate::docker::{Docker, DockerError};
use crate::host::archive::reader::{Kind, TarError, TarReader};
use crate::rules::workdir_segments;

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
        read_left: caps
            .max_bytes
            .saturating_mul(READ_FACTOR)
            .max(MIN_READ_BYTES),
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

/// The patterns' reading, across the folders they start from: each folder's
/// archive is read entry by entry on a blocking thread.
struct Scan {
    sink: Option<Sink>,
    patterns: Vec<Pattern>,
    caps: Caps,
    dir: PathBuf,
    /// Which patterns have matched a file.
    matched: Vec<bool>,
    /// Bytes that may still be read from Docker, across the folders.
    read_left: u64,
    stop: CancellationToken,
    collected: Collected,
}

/// Why a folder's reading ended early.
enum ScanError {
    Stopped,
    /// The bytes read from Docker reached their bound: this many in all.
    ReadBound(u64),
    Tar(TarError),
}

impl From<TarError> for ScanError {
    fn from(error: TarError) -> Self {
        ScanError::Tar(error)
    }
}

impl From<std::io::Error> for ScanError {
    fn from(error: std::io::Error) -> Self {
        ScanError::Tar(TarError::Io(error))
    }
}

/// Docker's stream, counted against the read bound and checked for a stop.
struct Bounded<'a, R> {
    inner: R,
    left: &'a mut u64,
    read: u64,
    stop: &'a CancellationToken,
}

/// Marks the errors [`Bounded`] raises, to tell them from Docker's own.
#[derive(Debug)]
enum Bound {
    Stopped,
    Reached,
}

impl std::fmt::Display for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Bound::Stopped => "stopped",
            Bound::Reached => "the read bound is reached",
        })
    }
}

impl std::error::Error for Bound {}

impl<R: Read> Read for Bounded<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.stop.is_cancelled() {
            return Err(std::io::Error::other(Bound::Stopped));
        }
        if *self.left == 0 {
            return Err(std::io::Error::other(Bound::Reached));
        }
        let want = buf
            .len()
            .min(usize::try_from(*self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        *self.left -= n as u64;
        self.read += n as u64;
        Ok(n)
    }
}

/// What an error out of [`Bounded`] (through the tar reader) was.
fn scan_error(error: TarError, total_read: u64) -> ScanError {
    let bound = match &error {
        TarError::Io(e) => e.get_ref().and_then(|inner| inner.downcast_ref::<Bound>()),
        _ => None,
    };
    match bound {
        Some(Bound::Stopped) => ScanError::Stopped,
        Some(Bound::Reached) => ScanError::ReadBound(total_read),
        None => ScanError::Tar(error),
    }
}

impl Scan {
    /// The entries of the archive of folder `base` (relative to the workdir).
    fn entries(&mut self, base: &str, reader: impl Read) -> Result<(), ScanError> {
        let limit = self
            .caps
            .max_bytes
            .saturating_mul(READ_FACTOR)
            .max(MIN_READ_BYTES);
        let mut left = self.read_left;
        let stop = self.stop.clone();
        let bounded = Bounded {
            inner: reader,
            left: &mut left,
            read: 0,
            stop: &stop,
        };
        let mut archive = TarReader::new(bounded);
        let read = self.each(base, &mut archive);
        drop(archive);
        self.read_left = left;
        read.map_err(|error| match error {
            ScanError::Tar(error) => scan_error(error, limit - left),
            other => other,
        })
    }

    fn each<R: Read>(&mut self, base: &str, archive: &mut TarReader<R>) -> Result<(), ScanError> {
        while let Some(header) = archive.next_header()? {
            let Some(path) = relative(base, &header.path) else {
                continue;
            };
            if header.kind == Kind::Dir || !self.matches(&path) {
                continue;
            }
            if header.kind != Kind::File {
                let what = if header.kind == Kind::Symlink {
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
            // The size the data really has: Docker writes 8 GiB and more as PAX.
            let bytes = header.size;
            if let Some(reason) = self.over_cap(bytes) {
                self.collected.leave_out(&path, reason);
                continue;
            }
            let file = self.dir.join(self.collected.files.to_string());
            let sha256 = stage(archive, &file)?;
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
    use proptest::prelude::*;

    thread_local! {
        /// Steps of the wildcard walk, at both levels, on this thread.
        pub static STEPS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    /// The old recursive matcher, exponential but plainly right: the oracle.
    fn oracle(pattern: &[u8], name: &[u8]) -> bool {
        match pattern.split_first() {
            None => name.is_empty(),
            Some((b'*', rest)) => (0..=name.len()).any(|skip| oracle(rest, &name[skip..])),
            Some((b'?', rest)) => !name.is_empty() && oracle(rest, &name[1..]),
            Some((c, rest)) => name.first() == Some(c) && oracle(rest, &name[1..]),
        }
    }

    /// Runs `f`, returning its value and the walk's steps.
    fn counted<T>(f: impl FnOnce() -> T) -> (T, u64) {
        STEPS.with(|steps| steps.set(0));
        let value = f();
        (value, STEPS.with(std::cell::Cell::get))
    }

    #[test]
    fn the_backtracking_bomb_is_linear() {
        // The case: it ran for more than 90 s under the old matcher.
        let name = format!("{}.txt", "a".repeat(200));
        let bomb = pattern("*a*a*a*a*a*a*a*a*a*a*a*a*b");
        let (matched, steps) = counted(|| bomb.matches(&name));
        assert!(!matched);
        // At most (pattern + 1) x (name + 1) steps.
        assert!(steps <= 27 * 205, "{steps} steps");
        let deep = format!("{}x", "d/".repeat(300));
        let bomb = pattern("**/**/**/**/**/**/**/**/d/**/**/**/**/**/**/y");
        let (matched, steps) = counted(|| bomb.matches(&deep));
        assert!(!matched);
        assert!(steps <= 17 * 302 * 4, "{steps} steps");
    }

    #[test]
    fn too_many_wildcards_are_refused() {
        let many = "*a".repeat(MAX_WILDCARDS + 1);
        assert!(Pattern::parse(&many).unwrap_err().contains("wildcards"));
        assert!(Pattern::parse(&"*a".repeat(MAX_WILDCARDS)).is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The linear walk agrees with the recursive one, in at most
        /// (pattern + 1) x (name + 1) steps.
        #[test]
        fn matches_as_the_oracle_does_in_linear_steps(
            pattern in "[ab*?]{0,12}",
            name in "[ab]{0,40}",
        ) {
            let (matched, steps) = counted(|| match_segment(pattern.as_bytes(), name.as_bytes()));
            prop_assert_eq!(matched, oracle(pattern.as_bytes(), name.as_bytes()));
            prop_assert!(steps <= ((pattern.len() + 1) * (name.len() + 1)) as u64);
        }
    }

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
