//! A streaming tar reader that trusts nothing in the archive. The `tar` crate
//! reads GNU long-name and PAX metadata entries whole into memory, with no cap,
//! and its header size is not the size a PAX `size` record gives, so an archive
//! of a few KB could make the agent hold gigabytes or count a 3 GB file as 0.
//! Here every metadata entry is checked against [`MAX_METADATA_BYTES`] before a
//! byte of it is read, the size of each entry is the one its data really has
//! (PAX `size` included), and the caller sees one [`Header`] per entry with the
//! path and link target the metadata gave it.
//!
//! Formats: ustar, GNU (base-256 sizes, `L`/`K` long names) and PAX (`x` local
//! records; `g` global records are counted and skipped). GNU sparse files and
//! multi-volume entries are refused: nothing deckhand reads writes them.

use std::io::{self, Read};
use std::path::PathBuf;

/// The largest metadata entry (a long name, a long link, a PAX header) read.
/// A real one is a path of a few hundred bytes; Linux's own limit is 4 KiB.
pub const MAX_METADATA_BYTES: u64 = 64 * 1024;
/// The most metadata entries before one real entry: a real archive has one or
/// two; a stream of them would be read for as long as it lasts.
pub const MAX_METADATA_IN_A_ROW: u32 = 8;

const BLOCK: usize = 512;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    HardLink,
    CharDevice,
    BlockDevice,
    Fifo,
    /// A GNU sparse file, a volume label, anything else: never unpacked.
    Other(u8),
}

/// One entry, with what its metadata entries said of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub path: PathBuf,
    pub link: Option<PathBuf>,
    pub kind: Kind,
    pub mode: u32,
    /// The bytes of data that follow: the PAX `size` where one was given.
    pub size: u64,
    /// Seconds since the epoch (PAX `mtime`, whole seconds, where given).
    pub mtime: u64,
}

/// Why an archive could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("a metadata entry of {size} bytes, over the {MAX_METADATA_BYTES} byte cap")]
    MetadataTooLarge { size: u64 },
    #[error("a malformed header: {0}")]
    Malformed(&'static str),
    #[error("the archive ends inside an entry")]
    Truncated,
    #[error("more than {MAX_METADATA_IN_A_ROW} metadata entries before a real one")]
    MetadataRun,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Metadata that applies to the next real entry.
#[derive(Default)]
struct Pending {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    mtime: Option<u64>,
}

/// Reads entries one by one: [`TarReader::next_header`], then the entry's data through
/// [`Read`] (what is not read is skipped by the next call).
pub struct TarReader<R> {
    inner: R,
    /// Data bytes of the current entry not yet read, then its padding.
    remaining: u64,
    padding: u64,
    /// Metadata entries read in all, and their bytes, for the caller's limits.
    pub metadata_entries: u64,
    pub metadata_bytes: u64,
    ended: bool,
}

impl<R: Read> TarReader<R> {
    pub fn new(inner: R) -> Self {
        TarReader {
            inner,
            remaining: 0,
            padding: 0,
            metadata_entries: 0,
            metadata_bytes: 0,
            ended: false,
        }
    }

    /// The next entry's header, `None` at the end of the archive.
    pub fn next_header(&mut self) -> Result<Option<Header>, TarError> {
        let mut pending = Pending::default();
        let mut in_a_row = 0;
        loop {
            // The last entry's data (or a metadata entry's padding) not read.
            self.skip_rest()?;
            if self.ended {
                return Ok(None);
            }
            let mut block = [0u8; BLOCK];
            if !self.read_block(&mut block)? {
                return Ok(None);
            }
            if block.iter().all(|&b| b == 0) {
                // One zero block ends it; the second and any padding are not read.
                self.ended = true;
                return Ok(None);
            }
            verify_checksum(&block)?;
            let flag = block[156];
            let metadata = matches!(flag, b'L' | b'K' | b'x' | b'g');
            // A PAX size is the next real entry's, not another record's.
            let size = match pending.size {
                Some(size) if !metadata => size,
                _ => size_of(&block)?,
            };
            self.remaining = size;
            self.padding = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
            match flag {
                b'L' | b'K' | b'x' | b'g' => {
                    if size > MAX_METADATA_BYTES {
                        return Err(TarError::MetadataTooLarge { size });
                    }
                    in_a_row += 1;
                    if in_a_row > MAX_METADATA_IN_A_ROW {
                        return Err(TarError::MetadataRun);
                    }
                    self.metadata_entries += 1;
                    self.metadata_bytes += size;
                    if flag == b'g' {
                        // Global records (a comment, a charset) change nothing we use.
                        continue;
                    }
                    let mut data = Vec::with_capacity(size as usize);
                    self.read_to_end(&mut data)?;
                    match flag {
                        b'L' => pending.path = Some(until_nul(&data).to_vec()),
                        b'K' => pending.link = Some(until_nul(&data).to_vec()),
                        _ => pax(&data, &mut pending)?,
                    }
                }
                _ => return Ok(Some(header(&block, flag, size, pending)?)),
            }
        }
    }

    /// Skips what is left of the current entry's data and its padding.
    fn skip_rest(&mut self) -> Result<(), TarError> {
        let rest = self.remaining + self.padding;
        if rest > 0 {
            let skipped = io::copy(&mut (&mut self.inner).take(rest), &mut io::sink())?;
            if skipped < rest {
                return Err(TarError::Truncated);
            }
        }
        self.remaining = 0;
        self.padding = 0;
        Ok(())
    }

    /// A whole block; `false` at a clean end of the stream (no block begun).
    fn read_block(&mut self, block: &mut [u8; BLOCK]) -> Result<bool, TarError> {
        let mut filled = 0;
        while filled < BLOCK {
            match self.inner.read(&mut block[filled..]) {
                Ok(0) if filled == 0 => return Ok(false),
                Ok(0) => return Err(TarError::Truncated),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }
}

impl<R: Read> Read for TarReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends inside an entry",
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

fn until_nul(bytes: &[u8]) -> &[u8] {
    bytes.split(|&b| b == 0).next().unwrap_or_default()
}

/// PAX records, `LEN key=value\n` each: `path`, `linkpath` and `size` are used.
fn pax(mut data: &[u8], pending: &mut Pending) -> Result<(), TarError> {
    const BAD: TarError = TarError::Malformed("a PAX record");
    while !data.is_empty() && data[0] != 0 {
        let space = data.iter().position(|&b| b == b' ').ok_or(BAD)?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(BAD)?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(BAD);
        }
        let record = &data[space + 1..len - 1];
        let equals = record.iter().position(|&b| b == b'=').ok_or(BAD)?;
        let (key, value) = (&record[..equals], &record[equals + 1..]);
        match key {
            b"path" => pending.path = Some(value.to_vec()),
            b"linkpath" => pending.link = Some(value.to_vec()),
            b"size" => {
                let size = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or(TarError::Malformed("a PAX size"))?;
                pending.size = Some(size);
            }
            b"mtime" => {
                // `1700000000.25`: the whole seconds; a time before 1970 is 0.
                let whole = value.split(|&b| b == b'.').next().unwrap_or_default();
                pending.mtime = std::str::from_utf8(whole)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .map(|t| t.max(0) as u64);
            }
            key if key.starts_with(b"GNU.sparse.") => {
                return Err(TarError::Malformed("a GNU sparse file (PAX)"));
            }
            _ => {}
        }
        data = &data[len..];
    }
    Ok(())
}

fn header(block: &[u8; BLOCK], flag: u8, size: u64, pending: Pending) -> Result<Header, TarError> {
    let kind = match flag {
        b'0' | 0 | b'7' => Kind::File,
        b'1' => Kind::HardLink,
        b'2' => Kind::Symlink,
        b'3' => Kind::CharDevice,
        b'4' => Kind::BlockDevice,
        b'5' => Kind::Dir,
        b'6' => Kind::Fifo,
        other => Kind::Other(other),
    };
    let path = match pending.path {
        Some(path) => path,
        None => {
            let name = until_nul(&block[0..100]);
            // ustar (not GNU, whose bytes there mean something else) may split a
            // long path into a prefix and a name.
            let prefix = until_nul(&block[345..500]);
            if &block[257..263] == b"ustar\0" && !prefix.is_empty() {
                [prefix, b"/", name].concat()
            } else {
                name.to_vec()
            }
        }
    };
    if path.is_empty() {
        return Err(TarError::Malformed("an entry with no name"));
    }
    let link = pending
        .link
        .or_else(|| Some(until_nul(&block[157..257]).to_vec()))
        .filter(|link| !link.is_empty());
    let mode = octal(&block[100..108]).unwrap_or(0o644) as u32 & 0o7777;
    let mtime = pending
        .mtime
        .unwrap_or_else(|| number(&block[136..148]).unwrap_or(0));
    Ok(Header {
        path: os_path(path),
        link: link.map(os_path),
        kind,
        mode,
        size,
        mtime,
    })
}

fn os_path(bytes: Vec<u8>) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(bytes))
}

/// The size field: octal, or GNU's base-256 for 8 GiB and more.
fn size_of(block: &[u8; BLOCK]) -> Result<u64, TarError> {
    number(&block[124..136]).ok_or(TarError::Malformed("the size"))
}

/// A numeric field: octal, or GNU's base-256 (high bit set) for large values;
/// `None` for a negative or unreadable one.
fn number(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 == 0 {
        return octal(field);
    }
    if field[0] & 0x40 != 0 {
        return None;
    }
    let mut value: u64 = u64::from(field[0] & 0x3f);
    for &b in &field[1..] {
        value = value.checked_mul(256)?.checked_add(u64::from(b))?;
    }
    Some(value)
}

/// An octal field, spaces and NULs around it allowed.
fn octal(field: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c| c == ' ' || c == '\0');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

fn verify_checksum(block: &[u8; BLOCK]) -> Result<(), TarError> {
    let stored = octal(&block[148..156]).ok_or(TarError::Malformed("the checksum"))?;
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    if stored == unsigned || i64::try_from(stored) == Ok(signed) {
        Ok(())
    } else {
        Err(TarError::Malformed("the checksum does not match"))
    }
}

#[cfg(test)]
#[path = "reader_tests.rs"]
pub(crate) mod tests;
