//! A cache's paths out of an exited job's workspace volume, through the
//! volume's folder on this host, into the staging folder a save packs: the
//! way back of [`super::copy`]. Docker's archive export (the way for every
//! other path) tars the tree in the engine, sends it through the API socket and
//! the agent untars it: 2.7 s for 500 MB in 20,000 files here, where a copy is
//! one `copy_file_range` per file.
//!
//! The tree is the job's own and hostile: it is read with the rules of
//! [`crate::host::archive`] (the inputs'), as Docker's export of it would be
//! unpacked. No symlink is followed: one leading out of the path is refused,
//! others are copied as links; a device file, FIFO or socket is refused; every
//! byte and entry counts against the limits. Safe to walk only because nothing
//! runs in the volume any more: the job's container has exited and no other
//! container mounts it (an image build's builder, which mounts it read-only, has
//! ended too). Even so, a file is opened with `O_NOFOLLOW | O_NONBLOCK` and
//! checked to be a regular file after it is open.

use std::fs;
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path};

use crate::host::archive::{Limits, Unpack, Unpacked, link_leads_out, make_room, quoted};

/// Whether `volume/inside` can be read out here: every component before the
/// last is a real folder (a link on the way resolves only in the container's
/// view, which Docker's export gives), and the last exists.
pub fn readable(volume: &Path, inside: &Path) -> bool {
    let mut at = volume.to_path_buf();
    let mut parts = inside.components().peekable();
    while let Some(part) = parts.next() {
        let Component::Normal(name) = part else {
            return false;
        };
        at.push(name);
        match fs::symlink_metadata(&at) {
            Ok(meta) if parts.peek().is_none() || meta.is_dir() => {}
            _ => return false,
        }
    }
    true
}

/// Copies `volume/inside` (a [`readable`] path) to `staging/parent/<its last
/// name>`, keeping modes and modification times, links as links, within
/// `limits`. What is in `staging` already (an earlier path's tree) is kept;
/// a way through one of its links is refused, as the unpacker refuses it.
pub fn read_path(
    volume: &Path,
    inside: &Path,
    (staging, parent): (&Path, &Path),
    limits: Limits,
) -> Result<Unpacked, Unpack> {
    let Some(name) = inside.file_name() else {
        return Err(Unpack::Escape(quoted(inside)));
    };
    // The agent's own folder, made on the first path read into it.
    fs::create_dir_all(staging)?;
    let mut into = staging.to_path_buf();
    for part in parent.components() {
        let Component::Normal(part) = part else {
            return Err(Unpack::Escape(quoted(parent)));
        };
        into.push(part);
        match fs::symlink_metadata(&into) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(Unpack::Escape(quoted(parent))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(&into)?,
            Err(e) => return Err(e.into()),
        }
    }
    let mut walk = Walk {
        limits,
        done: Unpacked {
            entries: 0,
            bytes: 0,
        },
    };
    walk.entry(&volume.join(inside), &into.join(name), Path::new(name), 0)?;
    Ok(walk.done)
}

struct Walk {
    limits: Limits,
    done: Unpacked,
}

impl Walk {
    /// `src` to `dst`, where `name` is the entry's path as an archive of the
    /// cache path would name it and `depth` the folders above it in that.
    fn entry(&mut self, src: &Path, dst: &Path, name: &Path, depth: usize) -> Result<(), Unpack> {
        self.done.entries += 1;
        if self.done.entries > self.limits.entries {
            return Err(Unpack::Limit(format!(
                "more than {} entries",
                self.limits.entries
            )));
        }
        let meta = fs::symlink_metadata(src)?;
        let kind = meta.file_type();
        // Set-id and sticky bits dropped, as the unpacker drops them.
        let mode = meta.permissions().mode() & 0o777;
        if kind.is_dir() {
            match fs::symlink_metadata(dst) {
                // An earlier path's folder (`/a` saved before `/a/b`).
                Ok(there) if there.is_dir() => {}
                Ok(_) => {
                    make_room(dst, name)?;
                    fs::create_dir(dst)?;
                }
                Err(_) => fs::create_dir(dst)?,
            }
            let mut children: Vec<_> = fs::read_dir(src)?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<io::Result<_>>()?;
            children.sort();
            for child in children {
                self.entry(
                    &src.join(&child),
                    &dst.join(&child),
                    &name.join(&child),
                    depth + 1,
                )?;
            }
            // The agent reads and packs it; its own mode goes with the tar.
            fs::set_permissions(dst, fs::Permissions::from_mode(mode | 0o700))?;
            fs::File::open(dst)?.set_modified(meta.modified()?)?;
        } else if kind.is_symlink() {
            let target = fs::read_link(src)?;
            if link_leads_out(&target, depth) {
                return Err(Unpack::Escape(quoted(name)));
            }
            make_room(dst, name)?;
            std::os::unix::fs::symlink(target, dst)?;
        } else if kind.is_file() {
            self.file(src, dst, name, mode, &meta)?;
        } else {
            // A device file would give the next job a device; a FIFO can hang a reader.
            return Err(Unpack::Special(quoted(name)));
        }
        Ok(())
    }

    fn file(
        &mut self,
        src: &Path,
        dst: &Path,
        name: &Path,
        mode: u32,
        meta: &fs::Metadata,
    ) -> Result<(), Unpack> {
        let mut from = fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(src)?;
        let opened = from.metadata()?;
        if !opened.is_file() {
            return Err(Unpack::Special(quoted(name)));
        }
        // Counted before a byte is copied: a sparse file of a terabyte is its size.
        let bytes = self.done.bytes.saturating_add(opened.len());
        if bytes > self.limits.bytes {
            return Err(Unpack::Limit(format!(
                "more than {} bytes ({})",
                self.limits.bytes, self.limits.bytes_rule
            )));
        }
        make_room(dst, name)?;
        let mut to = super::copy::new_file(dst)?;
        // File to file: the kernel's copy_file_range, no user-space buffer.
        let copied = io::copy(&mut io::Read::take(&mut from, opened.len()), &mut to)?;
        self.done.bytes += copied;
        to.set_permissions(fs::Permissions::from_mode(mode))?;
        to.set_modified(meta.modified()?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::host::archive::MAX_ENTRIES;

    fn limits(bytes: u64) -> Limits {
        Limits {
            bytes,
            entries: MAX_ENTRIES,
            bytes_rule: "cache_max_mb",
        }
    }

    /// A volume holding `work/deps` with a file, a folder and an inner link.
    fn volume() -> tempfile::TempDir {
        let volume = tempfile::tempdir().unwrap();
        let deps = volume.path().join("deps");
        fs::create_dir_all(deps.join("lib")).unwrap();
        fs::write(deps.join("lib/a.rlib"), "0123456789").unwrap();
        fs::set_permissions(deps.join("lib/a.rlib"), fs::Permissions::from_mode(0o4755)).unwrap();
        symlink("lib/a.rlib", deps.join("current")).unwrap();
        volume
    }

    fn read(volume: &Path, staging: &Path, max_bytes: u64) -> Result<Unpacked, Unpack> {
        read_path(
            volume,
            Path::new("deps"),
            (staging, Path::new("work")),
            limits(max_bytes),
        )
    }

    #[test]
    fn a_tree_is_read_out_whole_with_links_as_links_and_no_set_id_bit() {
        let (volume, root) = (volume(), tempfile::tempdir().unwrap());
        // The staging folder is made by the first path read into it.
        let staging = root.path().join("staging");
        let read = read(volume.path(), &staging, 1 << 20).unwrap();
        assert_eq!((read.entries, read.bytes), (4, 10));
        let out = staging.join("work/deps");
        assert_eq!(
            fs::read_to_string(out.join("lib/a.rlib")).unwrap(),
            "0123456789"
        );
        let mode = fs::metadata(out.join("lib/a.rlib"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755);
        assert_eq!(
            fs::read_link(out.join("current")).unwrap(),
            Path::new("lib/a.rlib")
        );
    }

    #[test]
    fn a_link_out_of_the_path_is_refused_and_never_followed() {
        let (volume, staging) = (volume(), tempfile::tempdir().unwrap());
        let deps = volume.path().join("deps");
        symlink("../../../etc/shadow", deps.join("lib/shadow")).unwrap();
        let refused = read(volume.path(), staging.path(), 1 << 20);
        assert!(
            matches!(&refused, Err(Unpack::Escape(e)) if e == "\"deps/lib/shadow\""),
            "{refused:?}"
        );
        for absolute in ["/etc", "/"] {
            let (volume, staging) = (self::volume(), tempfile::tempdir().unwrap());
            symlink(absolute, volume.path().join("deps/root")).unwrap();
            let refused = read(volume.path(), staging.path(), 1 << 20);
            assert!(
                matches!(refused, Err(Unpack::Escape(_))),
                "{absolute}: {refused:?}"
            );
        }
    }

    #[test]
    fn a_fifo_is_refused_without_hanging_and_a_socket_too() {
        let (volume, staging) = (volume(), tempfile::tempdir().unwrap());
        let fifo = volume.path().join("deps/lib/pipe");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let refused = read(volume.path(), staging.path(), 1 << 20);
        assert!(matches!(refused, Err(Unpack::Special(_))), "{refused:?}");

        let (volume, staging) = (self::volume(), tempfile::tempdir().unwrap());
        let _socket = std::os::unix::net::UnixListener::bind(volume.path().join("deps/s")).unwrap();
        let refused = read(volume.path(), staging.path(), 1 << 20);
        assert!(matches!(refused, Err(Unpack::Special(_))), "{refused:?}");
    }

    #[test]
    fn bytes_and_entries_are_counted_before_they_are_copied() {
        let (volume, staging) = (volume(), tempfile::tempdir().unwrap());
        // A sparse terabyte is a terabyte.
        let sparse = fs::File::create(volume.path().join("deps/sparse")).unwrap();
        sparse.set_len(1 << 40).unwrap();
        let refused = read(volume.path(), staging.path(), 1 << 30);
        assert!(
            matches!(&refused, Err(Unpack::Limit(l)) if l.contains("cache_max_mb")),
            "{refused:?}"
        );
        assert!(!staging.path().join("work/deps/sparse").exists());

        let (volume, staging) = (self::volume(), tempfile::tempdir().unwrap());
        let few = Limits {
            entries: 3,
            ..limits(1 << 20)
        };
        let refused = read_path(
            volume.path(),
            Path::new("deps"),
            (staging.path(), Path::new("work")),
            few,
        );
        assert!(
            matches!(&refused, Err(Unpack::Limit(l)) if l.contains("3 entries")),
            "{refused:?}"
        );
    }

    #[test]
    fn only_a_path_reached_through_folders_is_readable_here() {
        let volume = volume();
        assert!(readable(volume.path(), Path::new("deps/lib")));
        // The last component may be a link: it is read as a link.
        assert!(readable(volume.path(), Path::new("deps/current")));
        assert!(!readable(volume.path(), Path::new("deps/missing")));
        assert!(!readable(volume.path(), Path::new("deps/lib/a.rlib/x")));
        symlink("/", volume.path().join("up")).unwrap();
        assert!(
            !readable(volume.path(), Path::new("up/etc")),
            "a link on the way is Docker's to resolve"
        );
        assert!(!readable(volume.path(), Path::new("deps/../deps")));
    }

    #[test]
    fn an_earlier_paths_tree_is_kept_and_never_gone_through_by_a_link() {
        let (volume, staging) = (volume(), tempfile::tempdir().unwrap());
        read(volume.path(), staging.path(), 1 << 20).unwrap();
        // `/work/deps/lib` after `/work/deps`: the folder stays, its files are written again.
        let again = read_path(
            volume.path(),
            Path::new("deps/lib"),
            (staging.path(), Path::new("work/deps")),
            limits(1 << 20),
        );
        assert_eq!(again.unwrap().bytes, 10);
        // `/work/deps/current/x`: `current` is a link in staging now.
        fs::create_dir(volume.path().join("x")).unwrap();
        let refused = read_path(
            volume.path(),
            Path::new("x"),
            (staging.path(), Path::new("work/deps/current")),
            limits(1 << 20),
        );
        assert!(matches!(refused, Err(Unpack::Escape(_))), "{refused:?}");
    }
}
