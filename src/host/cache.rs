//! The code/library cache: an archive in S3 (`cache.source`, gzip or zstd tar),
//! extracted once into a Docker volume named after the object's ETag and mounted
//! read-only at `cache.mount` in every job.
//!
//! - A reboot with the same object finds its volume complete and downloads nothing.
//! - A new object version is extracted into a volume beside the old one, then
//!   swapped in for new jobs at once; the old volume is removed when the last job
//!   that mounted it ends (jobs hold an `Arc` of the volume they mounted).
//! - Extraction streams from S3 through the decoder into the volume: no archive is
//!   buffered whole, and an entry that would land outside the volume (`../`, an
//!   absolute path, a link out) fails the whole extraction.
//!
//! A volume is known complete by a marker in the agent's work dir, not inside the
//! volume, so jobs never see it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_s3::error::DisplayErrorContext;
use sha2::{Digest, Sha256};

use crate::backoff::{Backoff, Budget, retry};
use crate::docker::{Docker, DockerError, LABEL_MANAGED};
use crate::host::archive::{Limits, Unpack, Unpacked, unpack_stream};
use crate::rules::S3Location;

const LABEL_CACHE: &str = "deckhand.cache";
const LABEL_SOURCE: &str = "deckhand.cache.source";
const LABEL_ETAG: &str = "deckhand.cache.etag";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("look up the cache archive s3://{bucket}/{key}: {}", DisplayErrorContext(&**source))]
    Head {
        bucket: String,
        key: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("download the cache archive s3://{bucket}/{key}: {}", DisplayErrorContext(&**source))]
    Get {
        bucket: String,
        key: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(
        "the cache archive s3://{bucket}/{key} has an entry outside the volume: {entry}; refusing it"
    )]
    Escape {
        bucket: String,
        key: String,
        entry: String,
    },
    #[error("extract the cache archive s3://{bucket}/{key} into {dir}: {source}")]
    Extract {
        bucket: String,
        key: String,
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("write the cache's completion marker {path}: {source}")]
    Marker {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the cache archive s3://{bucket}/{key} has a device file or FIFO: {entry}; refusing it"
    )]
    Special {
        bucket: String,
        key: String,
        entry: String,
    },
    #[error("the cache archive s3://{bucket}/{key} unpacks to {limit}; refusing it")]
    Limit {
        bucket: String,
        key: String,
        limit: String,
    },
    #[error("the cache archive s3://{bucket}/{key} cannot be read ({what}); refusing it")]
    Malformed {
        bucket: String,
        key: String,
        what: String,
    },
    #[error("the cache volume {volume} has no mount point on this host")]
    NoMountpoint { volume: String },
}

impl CacheError {
    /// An archive that can never be extracted safely: retrying will not help.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            CacheError::Escape { .. }
                | CacheError::Special { .. }
                | CacheError::Limit { .. }
                | CacheError::Malformed { .. }
        )
    }
}

/// One extracted version of the cache.
#[derive(Debug)]
pub struct CacheVolume {
    name: String,
    etag: String,
}

impl CacheVolume {
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The cache as jobs see it: the current volume, swapped when a new version lands.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    docker: Docker,
    s3: aws_sdk_s3::Client,
    source: S3Location,
    markers: PathBuf,
    current: Mutex<Option<Arc<CacheVolume>>>,
    /// Replaced volumes, removed once no job holds them.
    retired: Mutex<Vec<Arc<CacheVolume>>>,
}

impl Cache {
    /// Makes the current version of the archive available, extracting it if this
    /// host does not have it yet, and removes volumes of older versions.
    pub async fn bootstrap(
        docker: Docker,
        s3: aws_sdk_s3::Client,
        source: S3Location,
        work_dir: &Path,
    ) -> Result<Cache, CacheError> {
        let cache = Cache {
            inner: Arc::new(Inner {
                docker,
                s3,
                source,
                markers: work_dir.join("cache"),
                current: Mutex::new(None),
                retired: Mutex::new(Vec::new()),
            }),
        };
        let pace = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        retry(pace, Budget::Attempts(5), || cache.refresh(), |error, delay| {
            let again = !error.is_permanent();
            if again {
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "Could not prepare the cache; retrying.");
            }
            again
        })
        .await?;
        cache.remove_stale_volumes().await;
        Ok(cache)
    }

    /// The volume new jobs mount; holding it keeps it from being removed.
    pub fn current(&self) -> Option<Arc<CacheVolume>> {
        lock(&self.inner.current).clone()
    }

    /// Checks S3 for a new version; extracts and swaps to it if there is one.
    /// True when the cache changed.
    pub async fn refresh(&self) -> Result<bool, CacheError> {
        let inner = &self.inner;
        let source = &inner.source;
        let head = inner
            .s3
            .head_object()
            .bucket(&source.bucket)
            .key(&source.key)
            .send()
            .await
            .map_err(|e| CacheError::Head {
                bucket: source.bucket.clone(),
                key: source.key.clone(),
                source: e.into(),
            })?;
        let etag = head.e_tag.unwrap_or_default();
        let version = head.version_id.unwrap_or_default();
        if lock(&inner.current)
            .as_ref()
            .is_some_and(|c| c.etag == etag)
        {
            return Ok(false);
        }
        let name = volume_name(source, &etag, &version);
        let marker = inner.markers.join(format!("{name}.complete"));
        if marker.exists() && inner.docker.volume_mountpoint(&name).await?.is_some() {
            tracing::info!(volume = %name, "Cache volume is current; nothing to download.");
        } else {
            self.extract(&name, &etag, head.content_length.unwrap_or(0))
                .await?;
            std::fs::create_dir_all(&inner.markers)
                .and_then(|()| std::fs::write(&marker, &etag))
                .map_err(|source| CacheError::Marker {
                    path: marker.clone(),
                    source,
                })?;
        }
        let new = Arc::new(CacheVolume { name, etag });
        let old = lock(&inner.current).replace(new.clone());
        if let Some(old) = old {
            tracing::info!(from = %old.name, to = %new.name, "Switched to a new cache version for new jobs.");
            lock(&inner.retired).push(old);
        }
        Ok(true)
    }

    /// Removes replaced volumes that no running job mounts any more.
    pub async fn collect_retired(&self) {
        let unused: Vec<Arc<CacheVolume>> = {
            let mut retired = lock(&self.inner.retired);
            let (unused, in_use) = retired.drain(..).partition(|v| Arc::strong_count(v) == 1);
            *retired = in_use;
            unused
        };
        for volume in unused {
            self.remove(&volume.name).await;
        }
    }

    /// Refreshes every `every`, and collects retired volumes, until dropped.
    pub async fn watch(&self, every: Duration) -> std::convert::Infallible {
        let collect_every = Duration::from_secs(1).min(every);
        let mut next_refresh = tokio::time::Instant::now() + every;
        loop {
            tokio::time::sleep(collect_every).await;
            self.collect_retired().await;
            if tokio::time::Instant::now() < next_refresh {
                continue;
            }
            next_refresh = tokio::time::Instant::now() + every;
            if let Err(error) = self.refresh().await {
                tracing::warn!(%error, "Could not refresh the cache; jobs keep the current one.");
            }
        }
    }

    async fn extract(&self, name: &str, etag: &str, size: i64) -> Result<(), CacheError> {
        let inner = &self.inner;
        let source = &inner.source;
        let started = tokio::time::Instant::now();
        // A volume without its marker is a crashed extraction: start over.
        if inner.docker.volume_mountpoint(name).await?.is_some() {
            inner.docker.remove_volume(name).await?;
        }
        let labels = [
            (LABEL_MANAGED.to_owned(), "true".to_owned()),
            (LABEL_CACHE.to_owned(), "true".to_owned()),
            (
                LABEL_SOURCE.to_owned(),
                format!("s3://{}/{}", source.bucket, source.key),
            ),
            (LABEL_ETAG.to_owned(), etag.trim_matches('"').to_owned()),
        ]
        .into_iter()
        .collect();
        inner.docker.create_volume(name, &labels).await?;
        let dir = inner.docker.volume_mountpoint(name).await?.ok_or_else(|| {
            CacheError::NoMountpoint {
                volume: name.to_owned(),
            }
        })?;
        tracing::info!(volume = %name, bytes = size, "Extracting the cache archive.");
        let object = inner
            .s3
            .get_object()
            .bucket(&source.bucket)
            .key(&source.key)
            // The volume is named for this ETag: never fill it with another.
            .if_match(etag)
            .send()
            .await
            .map_err(|e| CacheError::Get {
                bucket: source.bucket.clone(),
                key: source.key.clone(),
                source: e.into(),
            })?;
        let (bucket, key) = (source.bucket.clone(), source.key.clone());
        let limits = Limits::for_disk_of(&dir);
        // Boot waits for it whole; a stop during boot drops this future, which
        // stops the extraction with it.
        let extracted = unpack_stream(object.body.into_async_read(), dir.clone(), limits).await;
        match extracted {
            Ok(Unpacked { entries, .. }) => {
                let elapsed = started.elapsed();
                tracing::info!(
                    volume = %name,
                    entries,
                    elapsed_ms = elapsed.as_millis() as u64,
                    mb_per_s = (size as f64 / 1e6 / elapsed.as_secs_f64().max(1e-3)).round(),
                    "Cache extracted."
                );
                Ok(())
            }
            Err(failure) => {
                self.remove(name).await;
                Err(match failure {
                    Unpack::Escape(entry) => CacheError::Escape { bucket, key, entry },
                    Unpack::Special(entry) => CacheError::Special { bucket, key, entry },
                    Unpack::Limit(limit) => CacheError::Limit { bucket, key, limit },
                    Unpack::Malformed(what) => CacheError::Malformed { bucket, key, what },
                    Unpack::Stopped => CacheError::Extract {
                        bucket,
                        key,
                        dir,
                        source: std::io::Error::other("stopped"),
                    },
                    Unpack::Io(source) => CacheError::Extract {
                        bucket,
                        key,
                        dir,
                        source,
                    },
                })
            }
        }
    }

    /// At boot no job runs: every other volume of this same source is an old
    /// version. Volumes of other sources (another agent on a shared Docker host)
    /// are not ours to remove.
    async fn remove_stale_volumes(&self) {
        let current = self.current().map(|c| c.name.clone());
        let source = format!(
            "s3://{}/{}",
            self.inner.source.bucket, self.inner.source.key
        );
        match self
            .inner
            .docker
            .list_managed_volumes((LABEL_SOURCE, &source))
            .await
        {
            Ok(volumes) => {
                for volume in volumes {
                    if Some(&volume) != current.as_ref() {
                        self.remove(&volume).await;
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "Could not look for old cache volumes."),
        }
    }

    async fn remove(&self, name: &str) {
        let _ = std::fs::remove_file(self.inner.markers.join(format!("{name}.complete")));
        match self.inner.docker.remove_volume(name).await {
            Ok(()) => tracing::info!(volume = %name, "Removed an old cache volume."),
            Err(error) => tracing::warn!(%error, "Could not remove an old cache volume."),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The data is a plain handle: a panic elsewhere cannot leave it half-written.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn volume_name(source: &S3Location, etag: &str, version: &str) -> String {
    let digest = Sha256::digest(format!(
        "s3://{}/{}@{etag}#{version}",
        source.bucket, source.key
    ));
    format!("deckhand-cache-{}", &hex::encode(digest)[..16])
}

#[cfg(test)]
mod tests;
