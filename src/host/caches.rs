//! Jobs' keyed caches on this host and in S3. The host tier keeps each cache
//! unpacked under `agent.work_dir/caches/tier/<scope>/<key>/tree`, the least
//! recently used going first past `caches.host_max_mb`; the S3 tier
//! ([`store`]) keeps one zstd tar per key. Whatever comes from S3 is hostile
//! input: hashed, bounded, and unpacked with the inputs' rules
//! ([`archive`](crate::host::archive)) before a job sees it. A lock per key
//! makes two slots restoring one key download it once.

pub mod copy;
pub mod pack;
pub mod readout;
pub mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::host::archive::{Limits, Unpack};
pub use store::Store;

/// Why a cache could not be restored or saved: a miss or a skipped save with
/// this reason, never a failed job.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{operation} {object}: {error}")]
    S3 {
        operation: &'static str,
        object: String,
        error: String,
    },
    #[error("{object} is corrupt: {why}; not used")]
    Corrupt { object: String, why: String },
    #[error("{object} is {bytes} bytes, over cache_max_mb ({max_bytes} bytes); not used")]
    TooBig {
        object: String,
        bytes: u64,
        max_bytes: u64,
    },
    #[error("{object}: {why}; not used")]
    Refused { object: String, why: String },
    #[error(
        "the host tier {path} is held by another deckhand process on this host (an agent, or another exec)"
    )]
    Busy { path: PathBuf },
    #[error("{operation} {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One cache in the host tier.
#[derive(Debug, Clone, Copy)]
struct Entry {
    bytes: u64,
    /// When it was saved or fetched: the newest match of a prefix wins.
    saved_ms: u64,
    /// When a job last used it: the least recent goes first.
    used_ms: u64,
    /// Jobs reading it now: never evicted under them.
    readers: u32,
}

/// A folder under the tiers' `tmp` and its packed sibling, removed when
/// dropped: a fetch or a save cut short leaves nothing behind.
pub struct Staging {
    pub dir: PathBuf,
}

impl Staging {
    pub fn packed(&self) -> PathBuf {
        self.dir.with_extension("tar.zst")
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Gone already once moved into the tier.
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(self.packed());
    }
}

/// A cache's scope and key.
type Id = (String, String);

/// Both tiers, shared by every slot.
pub struct Caches {
    root: PathBuf,
    max_bytes: u64,
    free_floor_bytes: u64,
    store: Option<Store>,
    index: Mutex<HashMap<Id, Entry>>,
    locks: Mutex<HashMap<Id, Arc<tokio::sync::Mutex<()>>>>,
    /// `root/lock`, held (`flock`) while these tiers are open: the index, the
    /// readers and the staging folder are this process's alone, so a second
    /// process (`deckhand exec` beside the agent) must not open the same tier.
    _held: nix::fcntl::Flock<std::fs::File>,
}

/// A cache in the host tier held for reading: not evicted while held.
pub struct Lease {
    caches: Arc<Caches>,
    id: Id,
    pub tree: PathBuf,
    pub bytes: u64,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(entry) = self.caches.index().get_mut(&self.id) {
            entry.readers = entry.readers.saturating_sub(1);
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Caches {
    /// The tiers under `root`; what an earlier run left there is kept (its
    /// half-made files are not).
    pub fn open(root: &Path, max_bytes: u64, store: Option<Store>) -> Result<Caches, CacheError> {
        let io = |operation| {
            move |source| CacheError::Io {
                operation,
                path: root.to_owned(),
                source,
            }
        };
        std::fs::create_dir_all(root).map_err(io("make"))?;
        let lock = std::fs::File::create(root.join("lock")).map_err(io("open the lock of"))?;
        let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| match errno {
                nix::errno::Errno::EWOULDBLOCK => CacheError::Busy {
                    path: root.to_owned(),
                },
                other => CacheError::Io {
                    operation: "lock",
                    path: root.to_owned(),
                    source: other.into(),
                },
            })?;
        let _ = std::fs::remove_dir_all(root.join("tmp"));
        std::fs::create_dir_all(root.join("tmp")).map_err(io("make"))?;
        std::fs::create_dir_all(root.join("tier")).map_err(io("make"))?;
        let mut index = HashMap::new();
        for scope in std::fs::read_dir(root.join("tier")).map_err(io("read"))? {
            let scope = scope.map_err(io("read"))?;
            for key in std::fs::read_dir(scope.path()).map_err(io("read"))? {
                let key = key.map_err(io("read"))?;
                let meta = std::fs::read_to_string(key.path().join("meta"));
                let parsed = meta.ok().and_then(|m| {
                    let (bytes, saved) = m.trim().split_once(' ')?;
                    Some((bytes.parse().ok()?, saved.parse().ok()?))
                });
                let id = (
                    scope.file_name().to_string_lossy().into_owned(),
                    key.file_name().to_string_lossy().into_owned(),
                );
                match parsed {
                    Some((bytes, saved_ms)) => {
                        let used_ms = key
                            .metadata()
                            .ok()
                            .and_then(|m| m.modified().ok())
                            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                            .map_or(saved_ms, |d| d.as_millis() as u64);
                        index.insert(
                            id,
                            Entry {
                                bytes,
                                saved_ms,
                                used_ms,
                                readers: 0,
                            },
                        );
                    }
                    // Cut short by a crash: not a cache.
                    None => drop(std::fs::remove_dir_all(key.path())),
                }
            }
        }
        Ok(Caches {
            root: root.to_owned(),
            max_bytes,
            free_floor_bytes: 0,
            store,
            index: Mutex::new(index),
            locks: Mutex::default(),
            _held: held,
        })
    }

    /// The tiers `config` describes (under `agent.work_dir/caches`; S3's only
    /// with `s3`); `None`, with the reason logged, when the host tier cannot be
    /// opened: jobs then run cold rather than not at all.
    pub fn for_config(
        config: &crate::config::Config,
        s3: Option<&aws_sdk_s3::Client>,
    ) -> Option<Arc<Caches>> {
        let settings = &config.caches;
        let store = settings
            .bucket
            .clone()
            .zip(s3)
            .map(|(bucket, s3)| Store::new(s3.clone(), bucket, settings.prefix.clone()));
        let root = config.agent.work_dir.join("caches");
        let max_bytes = settings.host_max_mb.saturating_mul(1_000_000);
        let floor = config.disk.gc_free_mb.saturating_mul(1_000_000);
        match Caches::open(&root, max_bytes, store) {
            Ok(caches) => Some(Arc::new(caches.with_free_floor(floor))),
            Err(error) => {
                tracing::error!(%error, "Could not open the host's cache tier; jobs run without caches.");
                None
            }
        }
    }

    fn index(&self) -> std::sync::MutexGuard<'_, HashMap<Id, Entry>> {
        // A panic while holding it leaves a plain map: still usable.
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    /// The host tier's size now.
    pub fn host_bytes(&self) -> u64 {
        self.index().values().map(|e| e.bytes).sum()
    }

    /// A fresh folder for staging, under the tiers' root (so a rename moves it in).
    pub fn staging(&self) -> Staging {
        Staging {
            dir: self.root.join("tmp").join(crate::rules::random_hex(8)),
        }
    }

    /// The lock of one key: held while it is fetched or saved.
    pub async fn lock(&self, scope: &str, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let id = (scope.to_owned(), key.to_owned());
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(id).or_default().clone()
        };
        lock.lock_owned().await
    }

    fn dir(&self, scope: &str, key: &str) -> PathBuf {
        self.root.join("tier").join(scope).join(key)
    }

    /// The cache, if the host tier has it.
    pub fn host_exact(self: &Arc<Self>, scope: &str, key: &str) -> Option<Lease> {
        let id = (scope.to_owned(), key.to_owned());
        let mut index = self.index();
        let entry = index.get_mut(&id)?;
        entry.readers += 1;
        entry.used_ms = now_ms();
        let bytes = entry.bytes;
        drop(index);
        let dir = self.dir(scope, key);
        // For the next start's order.
        let _ = std::fs::File::open(&dir).and_then(|f| f.set_modified(SystemTime::now()));
        Some(Lease {
            caches: self.clone(),
            id,
            tree: dir.join("tree"),
            bytes,
        })
    }

    /// The newest cache in the host tier whose key starts with `prefix`.
    pub fn host_newest(self: &Arc<Self>, scope: &str, prefix: &str) -> Option<(String, Lease)> {
        let key = self
            .index()
            .iter()
            .filter(|((s, k), _)| s == scope && k.starts_with(prefix))
            .max_by_key(|(_, e)| e.saved_ms)
            .map(|((_, k), _)| k.clone())?;
        self.host_exact(scope, &key).map(|lease| (key, lease))
    }

    /// Moves the unpacked `tree` into the host tier as `scope/key`, then evicts
    /// past the cap; the lease on it.
    pub fn adopt(
        self: &Arc<Self>,
        scope: &str,
        key: &str,
        tree: &Path,
        bytes: u64,
    ) -> Result<Lease, CacheError> {
        let dir = self.dir(scope, key);
        let io = |operation| {
            let path = dir.clone();
            move |source| CacheError::Io {
                operation,
                path,
                source,
            }
        };
        let saved_ms = now_ms();
        // One there already may be read by a job now: it stays, and is the same
        // key (a key is saved once).
        if let Some(lease) = self.host_exact(scope, key) {
            let _ = std::fs::remove_dir_all(tree);
            return Ok(lease);
        }
        std::fs::create_dir_all(&dir).map_err(io("make"))?;
        std::fs::rename(tree, dir.join("tree")).map_err(io("move into"))?;
        std::fs::write(dir.join("meta"), format!("{bytes} {saved_ms}")).map_err(io("write"))?;
        self.index().insert(
            (scope.to_owned(), key.to_owned()),
            Entry {
                bytes,
                saved_ms,
                used_ms: saved_ms,
                readers: 0,
            },
        );
        let lease = self.host_exact(scope, key).expect("just inserted");
        self.evict();
        Ok(lease)
    }

    /// Keeps this much free on the tier's disk (`disk.gc_free_mb`): below it
    /// caches go before a job's images or its room do.
    pub fn with_free_floor(mut self, bytes: u64) -> Self {
        self.free_floor_bytes = bytes;
        self
    }

    /// Removes the least recently used caches no job reads until the tier fits
    /// its cap and its disk has `free_floor_bytes` free.
    pub fn evict(&self) {
        loop {
            let victim = {
                let mut index = self.index();
                let total: u64 = index.values().map(|e| e.bytes).sum();
                let short = crate::host::disk::free_bytes(&self.root)
                    .is_ok_and(|free| free < self.free_floor_bytes);
                if total <= self.max_bytes && !short {
                    return;
                }
                let Some(id) = index
                    .iter()
                    .filter(|(_, e)| e.readers == 0)
                    .min_by_key(|(_, e)| e.used_ms)
                    .map(|(id, _)| id.clone())
                else {
                    return;
                };
                index.remove(&id);
                id
            };
            let dir = self.dir(&victim.0, &victim.1);
            // Renamed first, so a crash mid-removal leaves no half cache.
            let gone = self.staging();
            let removed =
                std::fs::rename(&dir, &gone.dir).and_then(|()| std::fs::remove_dir_all(&gone.dir));
            tracing::info!(
                scope = %victim.0,
                key = %victim.1,
                removed = removed.is_ok(),
                "Cache evicted from the host tier."
            );
        }
    }

    /// Fetches `scope/key` from S3 into the host tier, unpacked with the
    /// inputs' rules within `max_bytes` as it downloads (no file of the packed
    /// object); kept only once the whole object matched its SHA-256. `None`:
    /// S3 does not have it.
    pub async fn fetch(
        self: &Arc<Self>,
        scope: &str,
        key: &str,
        max_bytes: u64,
    ) -> Result<Option<Lease>, CacheError> {
        let Some(store) = &self.store else {
            return Ok(None);
        };
        let object = store.url(scope, key);
        let staging = self.staging();
        tokio::fs::create_dir_all(&staging.dir)
            .await
            .map_err(|source| CacheError::Io {
                operation: "make",
                path: staging.dir.clone(),
                source,
            })?;
        let limits = Limits::for_disk_of(&self.root).capped(max_bytes, "cache_max_mb");
        let (reader, writer) = tokio::io::duplex(4 << 20);
        let unpacking = crate::host::archive::unpack_stream(reader, staging.dir.clone(), limits);
        let (got, unpacked) = tokio::join!(store.get(scope, key, writer, max_bytes), unpacking);
        // The download's verdict first: a cut or corrupt object explains why
        // its unpacking failed, and a refused one is dropped with the staging.
        if got?.is_none() {
            return Ok(None);
        }
        let refused = |why: String| CacheError::Refused {
            object: object.clone(),
            why,
        };
        let unpacked = match unpacked {
            Ok(unpacked) => unpacked,
            Err(Unpack::Escape(entry)) => {
                return Err(refused(format!(
                    "the entry {entry} leads outside its folder"
                )));
            }
            Err(Unpack::Special(entry)) => {
                return Err(refused(format!(
                    "the entry {entry} is a device file or FIFO"
                )));
            }
            Err(Unpack::Limit(limit)) => return Err(refused(limit)),
            Err(Unpack::Malformed(what)) => {
                return Err(CacheError::Corrupt { object, why: what });
            }
            Err(Unpack::Stopped) => return Err(refused("unpacking it was stopped".to_owned())),
            Err(Unpack::Io(source)) => {
                return Err(CacheError::Io {
                    operation: "unpack into",
                    path: staging.dir.clone(),
                    source,
                });
            }
        };
        self.adopt(scope, key, &staging.dir, unpacked.bytes)
            .map(Some)
    }

    /// Packs `tree` and puts it in S3 as `scope/key` unless it is there; the
    /// packed size, or `None` when another save won. The tree then joins the
    /// host tier.
    pub async fn save(
        self: &Arc<Self>,
        scope: &str,
        key: &str,
        tree: PathBuf,
        bytes: u64,
    ) -> Result<Option<u64>, CacheError> {
        let mut packed_bytes = Some(0);
        if let Some(store) = &self.store {
            let packed = tree.with_extension("tar.zst");
            let (from, to) = (tree.clone(), packed.clone());
            let clock = tokio::time::Instant::now();
            let pack = tokio::task::spawn_blocking(move || pack::pack_tree(&from, &to))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
            let pack_ms = clock.elapsed().as_millis() as u64;
            let put = match pack {
                Ok((size, sha256)) => store
                    .put(scope, key, &packed, &sha256)
                    .await
                    .map(|won| won.then_some(size)),
                Err(source) => Err(CacheError::Io {
                    operation: "pack",
                    path: tree.clone(),
                    source,
                }),
            };
            let _ = tokio::fs::remove_file(&packed).await;
            // Each step's share, for the bench's account of where a save goes.
            tracing::info!(
                scope,
                key,
                pack_ms,
                upload_ms = (clock.elapsed().as_millis() as u64).saturating_sub(pack_ms),
                "Cache packed and uploaded."
            );
            packed_bytes = put?;
        }
        self.adopt(scope, key, &tree, bytes)?;
        Ok(packed_bytes)
    }
}

#[cfg(test)]
mod tests;
