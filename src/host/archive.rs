//! Archives unpacked into a folder the agent owns (the code/library cache, a
//! job's inputs): gzip, zstd or plain tar by magic bytes, streamed through our
//! own reader ([`reader`]: every metadata entry capped before it is read, every
//! size the one the data really has), within limits of size and entries, and
//! refusing whatever would not stay a plain tree inside the folder: an entry or
//! link leading out, an entry through a symlink (a chain of links is how a tree
//! leads out one harmless step at a time), a device file or a FIFO.

pub mod reader;

use std::cell::Cell;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use tokio_util::io::SyncIoBridge;
use tokio_util::sync::CancellationToken;

use reader::{Header, Kind, TarError, TarReader};

/// What an archive unpacked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unpacked {
    /// Entries, metadata entries included.
    pub entries: u64,
    /// The size of its files.
    pub bytes: u64,
}

/// Why an archive was not unpacked. All but `Io` and `Stopped` are the
/// archive's own fault, which no retry changes.
#[derive(Debug)]
pub enum Unpack {
    /// An entry or link leading outside the folder, or through a symlink.
    Escape(String),
    /// A device file or FIFO.
    Special(String),
    /// Past a limit: a decompression bomb, or more than the disk can take.
    Limit(String),
    /// Not a tar stream we read: a bad header, a cut-off entry, a bad gzip or
    /// zstd frame, an entry type we do not unpack.
    Malformed(String),
    /// Cancelled, or the caller stopped waiting.
    Stopped,
    /// Our side: reading the source or writing the folder.
    Io(io::Error),
}

/// How much an archive may unpack to.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub bytes: u64,
    pub entries: u64,
    /// What sets `bytes`, for the refusal.
    pub bytes_rule: &'static str,
}

impl Limits {
    /// What the disk under `dir` can take now, less room for the jobs running
    /// beside. Unknown free space is no reason to refuse: the size cap is for
    /// bombs.
    pub fn for_disk_of(dir: &Path) -> Limits {
        Limits {
            bytes: crate::host::disk::free_bytes(dir)
                .unwrap_or(u64::MAX)
                .saturating_sub(KEEP_FREE_BYTES),
            entries: MAX_ENTRIES,
            bytes_rule: "the room the disk has",
        }
    }

    /// At most `bytes`, which `rule` sets, if that is less.
    pub fn capped(self, bytes: u64, rule: &'static str) -> Limits {
        if bytes < self.bytes {
            Limits {
                bytes,
                bytes_rule: rule,
                ..self
            }
        } else {
            self
        }
    }
}

/// The most entries an archive may hold: a real code/library cache has far
/// fewer; a bomb of empty files has far more.
pub const MAX_ENTRIES: u64 = 2_000_000;
/// Room kept free below the volume while unpacking, so running jobs beside it
/// keep their disk.
const KEEP_FREE_BYTES: u64 = 2_000_000_000;
/// An entry's name as a refusal quotes it: escaped, and no longer than this.
const MAX_QUOTED_NAME_BYTES: usize = 200;

impl From<io::Error> for Unpack {
    fn from(e: io::Error) -> Self {
        Unpack::Io(e)
    }
}

/// Unpacks `body` into `dir` on a blocking thread, within `limits`. Dropping
/// the future (a cancel, a drain) stops the thread at its next chunk.
pub async fn unpack_stream(
    body: impl tokio::io::AsyncRead + Send + Unpin + 'static,
    dir: PathBuf,
    limits: Limits,
) -> Result<Unpacked, Unpack> {
    let stop = CancellationToken::new();
    let _stops_the_thread_when_dropped = stop.clone().drop_guard();
    let reader = SyncIoBridge::new(body);
    tokio::task::spawn_blocking(move || unpack(reader, &dir, limits, &stop))
        .await
        .unwrap_or_else(|e| Err(Unpack::Io(io::Error::other(e.to_string()))))
}

/// Decodes (gzip, zstd or plain, by magic bytes) and unpacks a tar stream into
/// `dir`, within `limits`, checking `stop` between entries and chunks.
pub fn unpack(
    reader: impl Read,
    dir: &Path,
    limits: Limits,
    stop: &CancellationToken,
) -> Result<Unpacked, Unpack> {
    // An error of the source (S3, the network) is ours to retry; one the
    // decoder or the tar reader raises is the archive's.
    let failed = Rc::new(Cell::new(false));
    let source = Source {
        inner: reader,
        failed: failed.clone(),
    };
    let mut reader = io::BufReader::with_capacity(1 << 20, source);
    let magic = {
        let buf = io::BufRead::fill_buf(&mut reader)?;
        buf.get(..4).map(<[u8]>::to_vec).unwrap_or_default()
    };
    let decoded: Box<dyn Read> = match magic.as_slice() {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::GzDecoder::new(reader)),
        [0x28, 0xb5, 0x2f, 0xfd] => Box::new(zstd::stream::read::Decoder::with_buffer(reader)?),
        _ => Box::new(reader),
    };
    let mut unpacker = Unpacker {
        archive: TarReader::new(decoded),
        dir,
        limits,
        stop,
        done: Unpacked {
            entries: 0,
            bytes: 0,
        },
    };
    unpacker.all().map_err(|error| match error {
        Unpack::Io(e) if !failed.get() && e.kind() != io::ErrorKind::StorageFull => {
            Unpack::Malformed(e.to_string())
        }
        other => other,
    })
}

/// The source stream, noting whether it was the one that failed.
struct Source<R> {
    inner: R,
    failed: Rc<Cell<bool>>,
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|_| self.failed.set(true))
    }
}

struct Unpacker<'a, R> {
    archive: TarReader<R>,
    dir: &'a Path,
    limits: Limits,
    stop: &'a CancellationToken,
    done: Unpacked,
}

impl<R: Read> Unpacker<'_, R> {
    fn all(&mut self) -> Result<Unpacked, Unpack> {
        let mut real = 0;
        while let Some(header) = self.next()? {
            if self.stop.is_cancelled() {
                return Err(Unpack::Stopped);
            }
            real += 1;
            self.done.entries = real + self.archive.metadata_entries;
            self.check_limits(&header)?;
            self.entry(&header)?;
        }
        Ok(self.done)
    }

    fn next(&mut self) -> Result<Option<Header>, Unpack> {
        match self.archive.next_header() {
            Ok(header) => Ok(header),
            Err(TarError::Io(e)) => Err(Unpack::Io(e)),
            Err(TarError::MetadataTooLarge { size }) => Err(Unpack::Limit(format!(
                "a metadata entry (long name or PAX header) of {size} bytes, over the {} byte cap",
                reader::MAX_METADATA_BYTES
            ))),
            Err(other) => Err(Unpack::Malformed(other.to_string())),
        }
    }

    fn check_limits(&mut self, header: &Header) -> Result<(), Unpack> {
        self.done.bytes = self.done.bytes.saturating_add(header.size);
        if self.done.entries > self.limits.entries {
            return Err(Unpack::Limit(format!(
                "more than {} entries",
                self.limits.entries
            )));
        }
        if self.done.bytes > self.limits.bytes {
            return Err(Unpack::Limit(format!(
                "more than {} MB unpacked, {}",
                self.limits.bytes / 1_000_000,
                self.limits.bytes_rule
            )));
        }
        Ok(())
    }

    fn entry(&mut self, header: &Header) -> Result<(), Unpack> {
        let names = entry_names(&header.path)?;
        let Some((last, parents)) = names.split_last() else {
            // `.` or `./`: the folder itself.
            return Ok(());
        };
        let parent = self.parents(parents, &header.path)?;
        let target = parent.join(last);
        let mode = header.mode & 0o777;
        match header.kind {
            Kind::Dir => {
                match fs::symlink_metadata(&target) {
                    Ok(meta) if meta.is_dir() => return Ok(()),
                    Ok(_) => fs::remove_file(&target)?,
                    Err(_) => {}
                }
                fs::create_dir(&target)?;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode | 0o700))?;
            }
            Kind::File => {
                make_room(&target, &header.path)?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .open(&target)?;
                self.copy(&mut file, header.size)?;
                // Build tools compare times: a cache restored with new ones rebuilds.
                file.set_modified(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(header.mtime),
                )?;
            }
            Kind::Symlink => {
                let link = header
                    .link
                    .as_deref()
                    .ok_or_else(|| malformed("a symlink with no target"))?;
                if link_leads_out(link, parents.len()) {
                    return Err(Unpack::Escape(quoted(&header.path)));
                }
                make_room(&target, &header.path)?;
                std::os::unix::fs::symlink(link, &target)?;
            }
            Kind::HardLink => {
                let link = header
                    .link
                    .as_deref()
                    .ok_or_else(|| malformed("a hard link with no target"))?;
                let source = self.hard_link_source(link, &header.path)?;
                make_room(&target, &header.path)?;
                fs::hard_link(source, &target)?;
            }
            Kind::CharDevice | Kind::BlockDevice | Kind::Fifo => {
                // A device file would give the job a device; a FIFO can hang a reader.
                return Err(Unpack::Special(quoted(&header.path)));
            }
            Kind::Other(flag) => {
                return Err(Unpack::Malformed(format!(
                    "the entry {} is of type {:?}, which is not unpacked",
                    quoted(&header.path),
                    char::from(flag)
                )));
            }
        }
        Ok(())
    }

    /// The entry's folder, made where missing, refusing a way through a symlink
    /// or a file.
    fn parents(&self, names: &[&std::ffi::OsStr], path: &Path) -> Result<PathBuf, Unpack> {
        let mut at = self.dir.to_path_buf();
        for name in names {
            at.push(name);
            match fs::symlink_metadata(&at) {
                Ok(meta) if meta.is_dir() => {}
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(Unpack::Escape(quoted(path)));
                }
                Ok(_) => {
                    return Err(Unpack::Malformed(format!(
                        "the entry {} is under a file",
                        quoted(path)
                    )));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&at)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(at)
    }

    /// A hard link's target: named from the archive's root, a regular file
    /// already unpacked, reached through folders only.
    fn hard_link_source(&self, link: &Path, path: &Path) -> Result<PathBuf, Unpack> {
        let names = entry_names(link).map_err(|_| Unpack::Escape(quoted(path)))?;
        let mut at = self.dir.to_path_buf();
        for (i, name) in names.iter().enumerate() {
            at.push(name);
            let meta = fs::symlink_metadata(&at).map_err(|_| {
                malformed(&format!(
                    "the hard link {} names no earlier file",
                    quoted(path)
                ))
            })?;
            let last = i + 1 == names.len();
            if meta.file_type().is_symlink()
                || (last && !meta.is_file())
                || (!last && !meta.is_dir())
            {
                return Err(Unpack::Escape(quoted(path)));
            }
        }
        if names.is_empty() {
            return Err(Unpack::Escape(quoted(path)));
        }
        Ok(at)
    }

    /// Copies the entry's data into `file`, stopping when asked.
    fn copy(&mut self, file: &mut fs::File, size: u64) -> Result<(), Unpack> {
        let mut buf = vec![0; 256 * 1024];
        let mut left = size;
        while left > 0 {
            if self.stop.is_cancelled() {
                return Err(Unpack::Stopped);
            }
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = self.archive.read(&mut buf[..want])?;
            file.write_all(&buf[..n])?;
            left -= n as u64;
        }
        Ok(())
    }
}

fn malformed(what: &str) -> Unpack {
    Unpack::Malformed(what.to_owned())
}

/// An entry's path as plain names (`.` dropped), or `Escape` for one that is
/// absolute or has `..` anywhere.
fn entry_names(path: &Path) -> Result<Vec<&std::ffi::OsStr>, Unpack> {
    let mut names = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => names.push(name),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(Unpack::Escape(quoted(path)));
            }
        }
    }
    Ok(names)
}

/// Whether a symlink in a folder `depth` below the root, pointing at `link`,
/// leads out. Only `..` steps first, then names: a `..` after a name would be
/// resolved through whatever that name is (another link), not as written.
pub(crate) fn link_leads_out(link: &Path, depth: usize) -> bool {
    let mut up = 0;
    let mut named = false;
    for component in link.components() {
        match component {
            Component::ParentDir if named => return true,
            Component::ParentDir => up += 1,
            Component::Normal(_) => named = true,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return true,
        }
    }
    up > depth
}

/// Clears the way for a new non-folder at `target`: an older file or link there
/// goes (unlinked, never followed); a folder stays, and refuses the entry.
pub(crate) fn make_room(target: &Path, path: &Path) -> Result<(), Unpack> {
    match fs::symlink_metadata(target) {
        Ok(meta) if meta.is_dir() => Err(Unpack::Malformed(format!(
            "the entry {} would replace a folder",
            quoted(path)
        ))),
        Ok(_) => Ok(fs::remove_file(target)?),
        Err(_) => Ok(()),
    }
}

/// A name from the archive as a refusal may quote it: escaped and bounded.
pub fn quoted(path: &Path) -> String {
    let text = path.to_string_lossy();
    format!(
        "\"{}\"",
        crate::rules::bounded_text(&text, MAX_QUOTED_NAME_BYTES)
    )
}

#[cfg(test)]
mod tests;
