//! The reading of one folder's archive out of the container: entry by entry on
//! a blocking thread, the bytes read from Docker counted against their bound
//! and checked for a stop at every chunk.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::{Artifact, Caps, Collected, Pattern, Sink, Staged};
use crate::host::archive::reader::{Kind, TarError, TarReader};

/// The patterns' reading, across the folders they start from: each folder's
/// archive is read entry by entry on a blocking thread.
pub(super) struct Scan {
    pub(super) sink: Option<Sink>,
    pub(super) patterns: Vec<Pattern>,
    pub(super) caps: Caps,
    pub(super) dir: PathBuf,
    /// Which patterns have matched a file.
    pub(super) matched: Vec<bool>,
    /// Bytes that may still be read from Docker, across the folders.
    pub(super) read_left: u64,
    pub(super) stop: CancellationToken,
    pub(super) collected: Collected,
}

/// Why a folder's reading ended early.
pub(super) enum ScanError {
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
    pub(super) fn entries(&mut self, base: &str, reader: impl Read) -> Result<(), ScanError> {
        let limit = self.caps.read_bound();
        let mut left = self.read_left;
        let stop = self.stop.clone();
        let bounded = Bounded {
            inner: reader,
            left: &mut left,
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
            if header.path.to_str().is_none() {
                let reason = "its name is not UTF-8, which no S3 key can carry".to_owned();
                self.collected.leave_out(&path, reason);
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
            // A name that is not UTF-8 still matches (as U+FFFD); it is then
            // left out, named, for no S3 key can carry it.
            Component::Normal(name) => names.push(name.to_string_lossy().into_owned()),
            Component::CurDir => {}
            _ => return None,
        }
    }
    if base.is_empty() {
        // The workdir itself was read: its own name comes first.
        if !names.is_empty() {
            names.remove(0);
        }
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
