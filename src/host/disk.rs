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

/// The bytes the files under `dir` take on disk (allocated blocks, so a sparse
/// file counts what it holds). Symlinks are not followed; what cannot be read
/// counts nothing. Blocking: a big tree takes a while.
pub fn used_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            total += meta.blocks() * 512;
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    total
}
