//! Trees to tar streams and back: a cache tree packed as the zstd tar that goes
//! to S3 (hashed as it is written), and the parts of a tree a job names packed
//! as the plain tar that goes into its container, owned by its user.

use std::fs;
use std::io::{self, Write};
use std::path::{Component, Path};

use sha2::{Digest, Sha256};

/// zstd's level for a cache: fast to pack, most of the ratio.
const ZSTD_LEVEL: i32 = 3;

/// A writer that hashes and counts what goes through it.
pub struct Hashing<W> {
    pub inner: W,
    pub hash: Sha256,
    pub bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Packs everything under `tree` (links kept as links, never followed) into a
/// zstd tar at `out`; its size and hex SHA-256.
pub fn pack_tree(tree: &Path, out: &Path) -> io::Result<(u64, String)> {
    let file = fs::File::create(out)?;
    let hashing = Hashing {
        inner: io::BufWriter::new(file),
        hash: Sha256::new(),
        bytes: 0,
    };
    let encoder = zstd::stream::write::Encoder::new(hashing, ZSTD_LEVEL)?;
    let mut builder = tar::Builder::new(encoder);
    builder.follow_symlinks(false);
    for entry in fs::read_dir(tree)? {
        let entry = entry?;
        builder.append_dir_all(entry.file_name(), entry.path())?;
    }
    let mut hashing = builder.into_inner()?.finish()?;
    hashing.flush()?;
    Ok((hashing.bytes, hex::encode(hashing.hash.finalize())))
}

/// Writes a plain tar of the container `paths` found in `tree` (where a tree
/// keeps `/a/b` as `a/b`), named from the container's root and owned by
/// `uid:gid`; the bytes of their files. A path missing from the tree, or
/// reached through a link in it, is left out.
pub fn tar_paths(
    tree: &Path,
    paths: &[String],
    (uid, gid): (u32, u32),
    out: impl Write,
) -> io::Result<u64> {
    let mut builder = tar::Builder::new(out);
    let mut bytes = 0;
    for path in paths {
        let relative = path.trim_start_matches('/');
        if !plain_below(tree, Path::new(relative)) {
            continue;
        }
        add(
            &mut builder,
            tree,
            Path::new(relative),
            (uid, gid),
            &mut bytes,
        )?;
    }
    builder.into_inner()?.flush()?;
    Ok(bytes)
}

/// Whether `tree/relative` exists and no component on the way is a link.
pub(super) fn plain_below(tree: &Path, relative: &Path) -> bool {
    let mut at = tree.to_path_buf();
    for component in relative.components() {
        let Component::Normal(name) = component else {
            return false;
        };
        at.push(name);
        match fs::symlink_metadata(&at) {
            Ok(meta) if !meta.file_type().is_symlink() => {}
            _ => return false,
        }
    }
    true
}

fn add<W: Write>(
    builder: &mut tar::Builder<W>,
    tree: &Path,
    name: &Path,
    owner: (u32, u32),
    bytes: &mut u64,
) -> io::Result<()> {
    let path = tree.join(name);
    let meta = fs::symlink_metadata(&path)?;
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
    header.set_uid(u64::from(owner.0));
    header.set_gid(u64::from(owner.1));
    let kind = meta.file_type();
    if kind.is_symlink() {
        header.set_size(0);
        builder.append_link(&mut header, name, fs::read_link(&path)?)?;
    } else if kind.is_dir() {
        header.set_size(0);
        builder.append_data(&mut header, name, io::empty())?;
        let mut children: Vec<_> = fs::read_dir(&path)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        children.sort();
        for child in children {
            add(builder, tree, &name.join(child), owner, bytes)?;
        }
    } else if kind.is_file() {
        *bytes += meta.len();
        builder.append_data(&mut header, name, fs::File::open(&path)?)?;
    }
    // Nothing else is in a tree the unpacker made.
    Ok(())
}
