//! The host's disk: watermarks and image garbage collection.
//!
//! A CI host fills its disk with images and their layers. Before each receive the
//! agent checks the free space of Docker's data root and of its own work dir.
//! Below `disk.gc_free_mb` it removes images it pulled or ran itself and no longer
//! uses, least recently used first, until the space is back; below
//! `disk.min_free_mb` it takes no job. Only images this agent ran are candidates
//! (their ids and last use are kept in `<work_dir>/images.json`, so a restart
//! keeps the history), never a warm image and never one a container still uses:
//! what the AMI or an operator put on the host is left alone.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::docker::{Docker, DockerError};

/// How stale the written record of an image's last use may get.
const SAVE_AFTER_SECS: i64 = 600;

/// Space below a watermark, and where.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{path}: {free_mb} MB free, below disk.min_free_mb = {min_free_mb}")]
pub struct LowDisk {
    pub path: PathBuf,
    pub free_mb: u64,
    pub min_free_mb: u64,
}

/// Too few inodes left on a filesystem: a job of many empty files fills it as
/// surely as one large file, and `df -h` never shows it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{path}: {free} of {total} inodes free, below {MIN_FREE_INODES_PERCENT} %")]
pub struct LowInodes {
    pub path: PathBuf,
    pub free: u64,
    pub total: u64,
}

/// Below this share of free inodes a filesystem counts as full, like one below
/// `disk.min_free_mb`.
pub const MIN_FREE_INODES_PERCENT: u64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("free space of {path}: {source}")]
    Statvfs { path: PathBuf, source: nix::Error },
    #[error(transparent)]
    Docker(#[from] DockerError),
}

/// What a check before a receive found.
pub struct Room {
    /// The least free space of the watched paths.
    pub free_mb: u64,
    /// Images removed to make room.
    pub removed: usize,
    /// Still below `min_free_mb`: no job may start.
    pub low: Option<LowDisk>,
}

pub struct Disk {
    docker: Docker,
    /// Docker's data root and the agent's work dir.
    paths: Vec<PathBuf>,
    min_free_mb: u64,
    gc_free_mb: u64,
    /// Image ids never collected: the warm images.
    keep: HashSet<String>,
    record: Mutex<Record>,
}

/// The images this agent ran: id → Unix seconds of the last job that used it.
struct Record {
    path: PathBuf,
    last_used: BTreeMap<String, i64>,
    /// When the file was last written (Unix seconds).
    saved_at: i64,
}

impl Disk {
    /// `work_dir` holds the record; `docker_root` is Docker's data root (`docker
    /// info`). `keep`: the warm images' ids.
    pub fn new(
        docker: Docker,
        docker_root: PathBuf,
        work_dir: &Path,
        min_free_mb: u64,
        gc_free_mb: u64,
        keep: HashSet<String>,
    ) -> Disk {
        // statvfs needs it, and the record lives there.
        if let Err(error) = std::fs::create_dir_all(work_dir) {
            tracing::warn!(%error, dir = %work_dir.display(), "Could not create the work dir.");
        }
        let path = work_dir.join("images.json");
        // A record that cannot be read only costs collection candidates.
        let last_used = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        Disk {
            docker,
            paths: vec![docker_root, work_dir.to_owned()],
            min_free_mb,
            gc_free_mb,
            keep,
            record: Mutex::new(Record {
                path,
                last_used,
                saved_at: 0,
            }),
        }
    }

    /// A job starts from `image_id`. The record is written for a new image, or
    /// when the file is `SAVE_AFTER_SECS` old: the order of collection needs no
    /// finer clock after a restart, and every job need not write a file.
    pub fn used(&self, image_id: &str) {
        let now = chrono::Utc::now().timestamp();
        let mut record = self.record.lock().unwrap_or_else(|e| e.into_inner());
        let new = record.last_used.insert(image_id.to_owned(), now).is_none();
        if new || now - record.saved_at >= SAVE_AFTER_SECS {
            record.save();
        }
    }

    /// No job starts below this much free space, and the watchdog stops a job.
    pub fn min_free_mb(&self) -> u64 {
        self.min_free_mb
    }

    /// The least free space of the watched paths, in MB, and which path.
    pub fn free_mb(&self) -> Result<(u64, &Path), DiskError> {
        let mut least: Option<(u64, &Path)> = None;
        for path in &self.paths {
            let free = free_bytes(path)? / 1_000_000;
            if least.is_none_or(|(least, _)| free < least) {
                least = Some((free, path));
            }
        }
        Ok(least.unwrap_or((u64::MAX, Path::new("/"))))
    }

    /// The watched filesystem with the fewest free inodes, if it is below
    /// [`MIN_FREE_INODES_PERCENT`]. Filesystems that report no inode count
    /// (btrfs) never are; one that cannot be read is no reason to stop.
    pub fn inodes_low(&self) -> Option<LowInodes> {
        self.paths.iter().find_map(|path| {
            let stat = nix::sys::statvfs::statvfs(path.as_path()).ok()?;
            let (free, total) = (stat.files_available() as u64, stat.files() as u64);
            (total > 0 && free * 100 < total * MIN_FREE_INODES_PERCENT).then(|| LowInodes {
                path: path.clone(),
                free,
                total,
            })
        })
    }

    /// Makes room if space is short, before a receive.
    pub async fn ensure_room(&self) -> Result<Room, DiskError> {
        let mut removed = 0;
        if self.free_mb()?.0 < self.gc_free_mb {
            removed = self.collect().await?;
        }
        let (free_mb, path) = self.free_mb()?;
        let low = (free_mb < self.min_free_mb).then(|| LowDisk {
            path: path.to_owned(),
            free_mb,
            min_free_mb: self.min_free_mb,
        });
        Ok(Room {
            free_mb,
            removed,
            low,
        })
    }

    /// Removes unused images this agent ran, least recently used first, until
    /// the free space is back above `gc_free_mb` or nothing is left to remove.
    /// Returns how many it removed.
    async fn collect(&self) -> Result<usize, DiskError> {
        let in_use = self.docker.container_images().await?;
        let candidates: Vec<(i64, String)> = {
            let record = self.record.lock().unwrap_or_else(|e| e.into_inner());
            let mut by_age: Vec<(i64, String)> = record
                .last_used
                .iter()
                .filter(|(id, _)| !self.keep.contains(*id) && !in_use.contains(*id))
                .map(|(id, at)| (*at, id.clone()))
                .collect();
            by_age.sort();
            by_age
        };
        let mut removed = 0;
        for (last_used, id) in candidates {
            let (free, _) = self.free_mb()?;
            if free >= self.gc_free_mb {
                break;
            }
            match self.docker.remove_image(&id).await {
                Ok(()) => {
                    tracing::info!(image = %id, last_used, free_mb = free, gc_free_mb = self.gc_free_mb, "Removed an unused image.");
                    self.forget(&id);
                    removed += 1;
                }
                Err(error) if error.is_not_found() => self.forget(&id),
                // In use since the list (a job started from it), or a child image:
                // it stays a candidate for next time.
                Err(error) => tracing::warn!(%error, "Could not remove an unused image."),
            }
        }
        Ok(removed)
    }

    fn forget(&self, id: &str) {
        let mut record = self.record.lock().unwrap_or_else(|e| e.into_inner());
        record.last_used.remove(id);
        record.save();
    }
}

impl Record {
    /// Written whole, then renamed, so a crash leaves the old record or the new.
    fn save(&mut self) {
        self.saved_at = chrono::Utc::now().timestamp();
        let tmp = self.path.with_extension("json.tmp");
        let written = serde_json::to_vec(&self.last_used)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(error) = written {
            tracing::warn!(%error, path = %self.path.display(), "Could not save the record of used images.");
        }
    }
}

/// The bytes an unprivileged writer may still use on `path`'s filesystem.
pub fn free_bytes(path: &Path) -> Result<u64, DiskError> {
    let stat = nix::sys::statvfs::statvfs(path).map_err(|source| DiskError::Statvfs {
        path: path.to_owned(),
        source,
    })?;
    Ok(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

/// What the files under a folder take: allocated bytes (a sparse file counts
/// what it holds) and entries (inodes).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    pub bytes: u64,
    pub entries: u64,
}

/// How deep the walk goes: each level holds one descriptor open.
const MAX_WALK_DEPTH: usize = 64;
/// How many entries it counts before it stops: enough to rank the biggest job.
const MAX_WALK_ENTRIES: u64 = 10_000_000;

/// What the files under `dir` take. The tree belongs to a running job, which
/// can change it under the walk (swap a folder for a link to `/`), so every
/// step is taken from the folder already open (`openat`, `fstatat`), never
/// through a link, never onto another filesystem, and within
/// [`MAX_WALK_DEPTH`] and [`MAX_WALK_ENTRIES`]. What cannot be read counts
/// nothing. Blocking: a big tree takes a while.
pub fn used(dir: &Path) -> Used {
    use nix::dir::Dir;
    use nix::fcntl::OFlag;
    use nix::sys::stat::{Mode, fstat};
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut used = Used::default();
    let Ok(root) = Dir::open(dir, flags, Mode::empty()) else {
        return used;
    };
    let Ok(stat) = fstat(&root) else {
        return used;
    };
    walk(root, stat.st_dev, 0, &mut used);
    used
}

fn walk(mut dir: nix::dir::Dir, device: nix::libc::dev_t, depth: usize, used: &mut Used) {
    use nix::dir::Dir;
    use nix::fcntl::{AtFlags, OFlag};
    use nix::sys::stat::{Mode, SFlag, fstatat};
    let names: Vec<std::ffi::CString> = dir
        .iter()
        .flatten()
        .map(|entry| entry.file_name().to_owned())
        .filter(|name| name.as_bytes() != b"." && name.as_bytes() != b"..")
        .collect();
    for name in names {
        if used.entries >= MAX_WALK_ENTRIES {
            return;
        }
        let Ok(stat) = fstatat(&dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) else {
            continue;
        };
        used.entries += 1;
        used.bytes += stat.st_blocks as u64 * 512;
        let is_dir = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
        if is_dir && stat.st_dev == device && depth < MAX_WALK_DEPTH {
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            // Swapped for a link since the stat: O_NOFOLLOW refuses it.
            if let Ok(child) = Dir::openat(&dir, name.as_c_str(), flags, Mode::empty()) {
                walk(child, device, depth + 1, used);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_walk_counts_files_and_never_follows_a_link() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/f"), vec![1u8; 100_000]).unwrap();
        std::fs::write(dir.path().join("g"), b"x").unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::write(elsewhere.path().join("big"), vec![1u8; 1_000_000]).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), dir.path().join("link")).unwrap();
        let used = used(dir.path());
        // a, a/b, a/b/f, g, link
        assert_eq!(used.entries, 5);
        assert!(used.bytes >= 100_000 && used.bytes < 1_000_000, "{used:?}");
        // A link as the root is not walked either.
        assert_eq!(super::used(&dir.path().join("link")), Used::default());
    }
}
