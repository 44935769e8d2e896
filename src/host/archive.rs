//! Archives unpacked into a volume the agent owns (the code/library cache, a
//! job's inputs): gzip, zstd or plain tar by magic bytes, streamed, within limits
//! of size and entries, and refusing whatever would not stay a plain tree inside
//! the volume: an entry or link leading out, a device file or a FIFO.

use std::io::Read;
use std::path::{Component, Path};

/// What an archive unpacked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unpacked {
    pub entries: u64,
    /// The size of its files, as the archive gives them.
    pub bytes: u64,
}

/// Why an archive was not unpacked.
#[derive(Debug)]
pub enum Unpack {
    /// An entry or link leading outside the volume.
    Escape(String),
    /// A device file or FIFO.
    Special(String),
    /// Past a limit: a decompression bomb, or more than the disk can take.
    Limit(String),
    Io(std::io::Error),
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

impl From<std::io::Error> for Unpack {
    fn from(e: std::io::Error) -> Self {
        Unpack::Io(e)
    }
}

/// Decodes (gzip, zstd or plain, by magic bytes) and unpacks a tar stream into
/// `dir`, within `limits`. Refuses any entry or link that
/// leads outside `dir`, and device files and FIFOs.
pub fn unpack(reader: impl Read, dir: &Path, limits: Limits) -> Result<Unpacked, Unpack> {
    let mut reader = std::io::BufReader::with_capacity(1 << 20, reader);
    let magic = {
        let buf = std::io::BufRead::fill_buf(&mut reader)?;
        buf.get(..4).map(<[u8]>::to_vec).unwrap_or_default()
    };
    let decoded: Box<dyn Read> = match magic.as_slice() {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::GzDecoder::new(reader)),
        [0x28, 0xb5, 0x2f, 0xfd] => Box::new(zstd::stream::read::Decoder::with_buffer(reader)?),
        _ => Box::new(reader),
    };
    let mut archive = tar::Archive::new(decoded);
    archive.set_preserve_permissions(true);
    // No setuid, setgid or sticky bits: jobs run with no-new-privileges, and the
    // unit's RestrictSUIDSGID refuses to create such files anyway.
    archive.set_mask(0o7000);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(false);
    let (mut count, mut bytes) = (0, 0);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        count += 1;
        bytes += entry.header().size()?;
        if count > limits.entries {
            return Err(Unpack::Limit(format!(
                "more than {} entries",
                limits.entries
            )));
        }
        if bytes > limits.bytes {
            return Err(Unpack::Limit(format!(
                "more than {} MB unpacked, {}",
                limits.bytes / 1_000_000,
                limits.bytes_rule
            )));
        }
        if escapes(&path, None) || link_escapes(&entry, &path)? {
            return Err(Unpack::Escape(path.display().to_string()));
        }
        // A device file would give the job a device; a FIFO can hang a reader.
        let kind = entry.header().entry_type();
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            return Err(Unpack::Special(path.display().to_string()));
        }
        // unpack_in also refuses entries that would pass through a symlink or hard
        // link out of `dir`; it says so with `false`.
        if !entry.unpack_in(dir)? {
            return Err(Unpack::Escape(path.display().to_string()));
        }
    }
    Ok(Unpacked {
        entries: count,
        bytes,
    })
}

/// Whether `path` (relative to the volume; `from`: the directory a link's target
/// is relative to) leads outside the volume.
fn escapes(path: &Path, from: Option<&Path>) -> bool {
    let mut depth: i64 = from.map_or(0, |dir| dir.components().count() as i64);
    for component in path.components() {
        match component {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return true,
        }
        if depth < 0 {
            return true;
        }
    }
    false
}

/// Whether a symlink's or hard link's target leads outside the volume. A hard
/// link names its target from the archive's root; a symlink from its own folder.
fn link_escapes<R: Read>(entry: &tar::Entry<'_, R>, path: &Path) -> std::io::Result<bool> {
    let kind = entry.header().entry_type();
    if !(kind.is_symlink() || kind.is_hard_link()) {
        return Ok(false);
    }
    let Some(target) = entry.link_name()? else {
        return Ok(false);
    };
    let from = if kind.is_symlink() {
        path.parent()
    } else {
        None
    };
    Ok(escapes(&target, from))
}

#[cfg(test)]
mod tests;
