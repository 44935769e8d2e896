//! A job's `caches` around its container: restored into it once it is
//! created (Docker unpacks them inside the container's own view, volumes
//! included), and read out of it after it succeeded, to be saved. Nothing here
//! fails the job: a cache that cannot be had is a miss with a reason, one that
//! cannot be saved is `saved: false` with a reason.

use std::path::Path;
use std::sync::Arc;

use futures_util::TryStreamExt;
use tokio::time::Instant;
use tokio_util::io::{ReaderStream, StreamReader, SyncIoBridge};
use tokio_util::sync::CancellationToken;

use super::{Controls, Ran, Runner};
use crate::docker::{ContainerSpec, OutputStream};
use crate::host::archive::{Limits, Unpack};
use crate::host::caches::{CacheError, Caches, Lease, copy, pack, readout};
use crate::job::Job;
use crate::job::caches::{Cache, CacheReport, JobCaches};
use crate::job::container::Names;
use crate::job::outcome::{Outcome, RunError};
use crate::rules::is_under;

/// Where a restore puts a cache: the created container, its workspace volume
/// and the owner of what goes in.
struct Into<'a> {
    spec: &'a ContainerSpec,
    workspace: &'a str,
    owner: (u32, u32),
}

impl Into<'_> {
    /// Whether `path` lies in the workspace volume (under the workdir) and under
    /// no other mount of the container (secrets, the boot cache).
    fn in_workspace(&self, path: &str) -> bool {
        let workdir = self.spec.workdir.as_str();
        let (ours, others): (Vec<_>, Vec<_>) = self.spec.mounts.iter().partition(|m| {
            !self.workspace.is_empty() && m.source.as_deref() == Some(self.workspace)
        });
        let mounted_at_workdir = ours.iter().any(|m| m.target.as_deref() == Some(workdir));
        let under_another = others
            .iter()
            .any(|m| m.target.as_deref().is_some_and(|t| is_under(path, t)));
        mounted_at_workdir && path != workdir && is_under(path, workdir) && !under_another
    }
}

/// A job's cache paths that lie in its workspace volume (found when its
/// container is created, from its mounts): a save reads them through the
/// volume's folder ([`readout`]) rather than Docker's archive export.
pub(super) struct InWorkspace {
    workdir: String,
    paths: Vec<String>,
}

impl InWorkspace {
    /// `path` from inside the volume (`deps/x` for `/work/deps/x` under `/work`),
    /// if it lies in it.
    fn inside<'p>(&self, path: &'p str) -> Option<&'p Path> {
        self.paths
            .iter()
            .any(|p| p == path)
            .then(|| Path::new(path[self.workdir.len()..].trim_start_matches('/')))
    }
}

/// What a restore found: the lease on it in the host tier, and how.
struct Found {
    lease: Lease,
    matched: (String, String),
    exact: bool,
    tier: &'static str,
}

impl Runner {
    /// Jobs' caches are kept in `caches` (both tiers, shared by the slots).
    pub fn with_caches(mut self, caches: Option<Arc<Caches>>) -> Self {
        self.caches = caches;
        self
    }

    /// Creates the job's container, restores its caches into it (noting what
    /// became of each in `ran`) and attaches to it; `None`: a stop or a cancel
    /// came first.
    pub(super) async fn warm(
        &self,
        spec: &ContainerSpec,
        job: &Job,
        user: &Option<String>,
        controls: &Controls<'_>,
        ran: &mut Ran,
    ) -> Result<Option<OutputStream>, RunError> {
        self.docker.create_container(spec).await?;
        let into = Into {
            spec,
            // The workspace volume's name, which its label carries.
            workspace: spec
                .labels
                .get(crate::docker::LABEL_WORKSPACE)
                .map_or("", String::as_str),
            owner: crate::job::container::container_ids(user.as_deref()),
        };
        let paths = job.caches.caches.iter().flat_map(|c| &c.paths);
        ran.caches_in_workspace = Some(InWorkspace {
            workdir: spec.workdir.trim_end_matches('/').to_owned(),
            paths: paths.filter(|p| into.in_workspace(p)).cloned().collect(),
        });
        // Dropped on a stop or a cancel, which stops the unpacking with it.
        tokio::select! {
            restored = self.restore_caches(job, &into) => ran.caches = restored,
            () = controls.interrupted() => return Ok(None),
        }
        Ok(Some(self.docker.attach(&spec.name).await?))
    }

    /// Restores each cache the job pulls into its created container; what
    /// became of each.
    async fn restore_caches(&self, job: &Job, into: &Into<'_>) -> Vec<CacheReport> {
        // Jobs since the last restore may have taken the disk's room.
        if let Some(caches) = &self.caches {
            caches.evict();
        }
        let mut reports = Vec::new();
        for cache in &job.caches.caches {
            let mut report = CacheReport::new(&cache.key);
            let Some(caches) = &self.caches else {
                report.note("this agent keeps no caches");
                reports.push(report);
                continue;
            };
            if !cache.policy.pulls() {
                report.note("policy push: not restored");
                reports.push(report);
                continue;
            }
            let clock = Instant::now();
            if let Some(found) = find(caches, &job.caches, cache, &mut report).await {
                match self.put_in(into, &found.lease, &cache.paths).await {
                    Ok(bytes) => {
                        report.matched_key =
                            Some(format!("{}/{}", found.matched.0, found.matched.1));
                        report.hit = if found.exact { "exact" } else { "prefix" }.to_owned();
                        report.tier = Some(found.tier.to_owned());
                        report.restore_bytes = bytes;
                    }
                    Err(why) => report.note(format!("putting it in the container: {why}")),
                }
            }
            report.restore_ms = clock.elapsed().as_millis() as u64;
            tracing::info!(
                key = %cache.key,
                hit = %report.hit,
                tier = report.tier.as_deref(),
                bytes = report.restore_bytes,
                elapsed_ms = report.restore_ms,
                reason = report.reason.as_deref(),
                "Cache restored."
            );
            reports.push(report);
        }
        self.mask_reports(&mut reports);
        reports
    }

    /// The cache's paths from the host tier into the container: those in its
    /// workspace volume copied through the volume's folder on this host
    /// ([`copy`]), the others as a tar Docker unpacks at `/`; the bytes of
    /// their files.
    async fn put_in(
        &self,
        into: &Into<'_>,
        lease: &Lease,
        paths: &[String],
    ) -> Result<u64, String> {
        let (direct, through): (Vec<&String>, Vec<&String>) =
            paths.iter().partition(|p| into.in_workspace(p));
        let mut bytes = 0;
        if !direct.is_empty() {
            let volume = self
                .docker
                .volume_mountpoint(into.workspace)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("the workspace volume {} is gone", into.workspace))?;
            let workdir = into.spec.workdir.trim_end_matches('/').to_owned();
            let (tree, owner) = (lease.tree.clone(), into.owner);
            let direct: Vec<String> = direct.into_iter().cloned().collect();
            let copied = tokio::task::spawn_blocking(move || {
                let mut bytes = 0;
                for path in &direct {
                    let relative = std::path::Path::new(path.trim_start_matches('/'));
                    let inside = path[workdir.len()..].trim_start_matches('/');
                    bytes += copy::copy_path(&tree, relative, &volume, inside.as_ref(), owner)?;
                }
                Ok::<u64, std::io::Error>(bytes)
            });
            bytes += copied
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("copying into the workspace: {e}"))?;
        }
        if through.is_empty() {
            return Ok(bytes);
        }
        let (reader, writer) = tokio::io::duplex(1 << 20);
        let writer = SyncIoBridge::new(writer);
        let (tree, owner) = (lease.tree.clone(), into.owner);
        let through: Vec<String> = through.into_iter().cloned().collect();
        let writing =
            tokio::task::spawn_blocking(move || pack::tar_paths(&tree, &through, owner, writer));
        let uploading = self
            .docker
            .upload(&into.spec.name, "/", ReaderStream::new(reader));
        let (uploaded, written) = tokio::join!(uploading, writing);
        bytes += written
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("reading the host tier: {e}"))?;
        uploaded.map_err(|e| e.to_string())?;
        Ok(bytes)
    }

    /// Saves each cache the job pushes, if the attempt succeeded, was neither
    /// cancelled nor interrupted, and its profile may write.
    pub(super) async fn save_caches(
        &self,
        job: &Job,
        names: &Names,
        outcome: &Outcome,
        controls: &Controls<'_>,
        ran: &mut Ran,
    ) {
        let Some(caches) = &self.caches else { return };
        let (reports, in_workspace) = (&mut ran.caches, ran.caches_in_workspace.as_ref());
        let from = From {
            container: &names.container,
            workspace: &names.workspace,
            in_workspace,
        };
        let succeeded = matches!(
            outcome,
            Outcome::Exited {
                code: 0,
                oom_killed: false
            }
        ) && controls.cancel.reason().is_none()
            && controls.preemption.reason().is_none();
        for (cache, report) in job.caches.caches.iter().zip(reports.iter_mut()) {
            let why_not = if !cache.policy.pushes() {
                Some("policy pull: not saved")
            } else if !succeeded {
                Some("the attempt did not succeed: not saved")
            } else if !job.caches.writable {
                Some("the profile's caches_writable is false: not saved")
            } else if report.hit == "exact"
                && report
                    .matched_key
                    .as_deref()
                    .is_some_and(|m| m == format!("{}/{}", job.caches.scope, cache.key))
            {
                Some("the key exists: not saved again")
            } else {
                None
            };
            if let Some(why) = why_not {
                report.note(why);
                continue;
            }
            let clock = Instant::now();
            let was_cancelled = controls.cancel.reason().is_some();
            // The drain or a cancel after the exit ends the save; the job's
            // status stands.
            let saved = tokio::select! {
                saved = self.save_one(caches, &job.caches, cache, &from) => saved,
                _ = controls.preemption.stopping().cancelled() => Err("the agent is draining".to_owned()),
                () = controls.cancel.requested(), if !was_cancelled => Err("the job was cancelled".to_owned()),
            };
            match saved {
                Ok(Some(bytes)) => {
                    report.saved = true;
                    report.save_bytes = bytes;
                }
                Ok(None) => report.note("the key exists: not saved again"),
                Err(why) => report.note(format!("not saved: {why}")),
            }
            report.save_ms = clock.elapsed().as_millis() as u64;
            tracing::info!(
                key = %cache.key,
                saved = report.saved,
                bytes = report.save_bytes,
                elapsed_ms = report.save_ms,
                "Cache saved."
            );
        }
        self.mask_reports(reports);
    }

    /// Reads the cache's paths out of the exited container and saves them,
    /// unless the key exists; the packed bytes, `None` if it exists.
    async fn save_one(
        &self,
        caches: &Arc<Caches>,
        job_caches: &JobCaches,
        cache: &Cache,
        from: &From<'_>,
    ) -> Result<Option<u64>, String> {
        let scope = &job_caches.scope;
        let _key = caches.lock(scope, &cache.key).await;
        let exists = match caches.store() {
            Some(store) => store
                .exists(scope, &cache.key)
                .await
                .map_err(|e| e.to_string())?,
            None => caches.host_exact(scope, &cache.key).is_some(),
        };
        if exists {
            return Ok(None);
        }
        let staging = caches.staging();
        let clock = Instant::now();
        let read = self
            .read_out(from, &cache.paths, &staging.dir, job_caches.max_bytes)
            .await;
        tracing::info!(
            key = %cache.key,
            elapsed_ms = clock.elapsed().as_millis() as u64,
            "Cache read out of the container."
        );
        match read {
            Ok(0) if !staging.dir.exists() => Err("none of its paths exist".to_owned()),
            Ok(bytes) => caches
                .save(scope, &cache.key, staging.dir.clone(), bytes)
                .await
                .map_err(|e| e.to_string()),
            Err(why) => Err(why),
        }
    }

    /// Each path's tree from the container under `staging` (where `/a/b` is
    /// `a/b`), with the inputs' rules, within `max_bytes` all together: those
    /// in the workspace volume through its folder on this host ([`readout`]),
    /// the others through Docker's archive export.
    async fn read_out(
        &self,
        from: &From<'_>,
        paths: &[String],
        staging: &Path,
        max_bytes: u64,
    ) -> Result<u64, String> {
        let mut volume = None;
        let mut bytes = 0;
        for path in paths {
            // Both ways name the entries from the path's last component, under
            // its parent's place in `staging`.
            let parent = Path::new(path).parent().unwrap_or(Path::new("/"));
            let parent = parent.strip_prefix("/").unwrap_or(parent);
            let limits = || {
                Limits::for_disk_of(staging).capped(max_bytes.saturating_sub(bytes), "cache_max_mb")
            };
            if let Some(inside) = from.in_workspace.and_then(|w| w.inside(path)) {
                if volume.is_none() {
                    volume = self
                        .docker
                        .volume_mountpoint(from.workspace)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                if let Some(volume) = volume.clone()
                    && readout::readable(&volume, inside)
                {
                    let (inside, limits) = (inside.to_owned(), limits());
                    let (staging, parent) = (staging.to_owned(), parent.to_owned());
                    let read = tokio::task::spawn_blocking(move || {
                        readout::read_path(&volume, &inside, (&staging, &parent), limits)
                    });
                    let read = read.await.map_err(|e| e.to_string())?;
                    bytes += read.map_err(|e| refusal(path, e))?.bytes;
                    continue;
                }
            }
            let Some(tar) = self
                .docker
                .download(from.container, path)
                .await
                .map_err(|e| e.to_string())?
            else {
                continue;
            };
            let into = staging.join(parent);
            tokio::fs::create_dir_all(&into)
                .await
                .map_err(|e| format!("make {}: {e}", into.display()))?;
            let reader = StreamReader::new(tar.map_err(std::io::Error::other));
            let unpacked = crate::host::archive::unpack_stream(reader, into, limits()).await;
            bytes += unpacked.map_err(|e| refusal(path, e))?.bytes;
        }
        Ok(bytes)
    }

    /// Restores `caches.prewarm`'s `SCOPE/KEY`s into the host tier (before the
    /// agent is ready), within the largest `cache_max_mb` of the profiles,
    /// until `draining`. A miss is logged and skipped.
    pub async fn prewarm_caches(&self, draining: &CancellationToken) {
        let Some(caches) = &self.caches else { return };
        let profiles = self.config.profiles.values();
        let max_bytes = profiles.map(|p| p.caches.max_mb).max().unwrap_or(0) * 1_000_000;
        for entry in &self.config.caches.prewarm {
            let Some((scope, key)) = entry.split_once('/') else {
                continue;
            };
            let clock = Instant::now();
            let mut report = CacheReport::new(key);
            let found = tokio::select! {
                found = get(caches, scope, key, max_bytes, &mut report) => found,
                () = draining.cancelled() => return,
            };
            tracing::info!(
                scope,
                key,
                tier = found.as_ref().map(|f| f.tier),
                elapsed_ms = clock.elapsed().as_millis() as u64,
                reason = report.reason.as_deref(),
                "Cache prewarmed."
            );
        }
    }

    /// Reasons carry the job's own text (its paths, its entries' names).
    fn mask_reports(&self, reports: &mut [CacheReport]) {
        for report in reports {
            if let Some(reason) = &report.reason {
                report.reason = Some(crate::rules::bounded_text(
                    &self.masker.mask(reason),
                    crate::job::spec::MAX_REASON_BYTES,
                ));
            }
        }
    }
}

/// The cache to restore: the exact key in each scope the job reads, then each
/// restore prefix's newest match; the host tier first, then S3. Each failure
/// on the way is noted in `report` and the search goes on.
/// Where a save reads a job's cache paths from: its exited container and its
/// workspace volume.
struct From<'a> {
    container: &'a str,
    workspace: &'a str,
    in_workspace: Option<&'a InWorkspace>,
}

/// Why a cache path was not read out, naming it.
fn refusal(path: &str, unpack: Unpack) -> String {
    match unpack {
        Unpack::Escape(entry) => format!("{path}: the entry {entry} is a link out of it"),
        Unpack::Special(entry) => {
            format!("{path}: the entry {entry} is a device file, FIFO or socket")
        }
        Unpack::Limit(limit) => format!("{path}: {limit}"),
        Unpack::Malformed(what) => format!("{path}: {what}"),
        Unpack::Stopped => "stopped".to_owned(),
        Unpack::Io(e) => format!("{path}: {e}"),
    }
}

async fn find(
    caches: &Arc<Caches>,
    job: &JobCaches,
    cache: &Cache,
    report: &mut CacheReport,
) -> Option<Found> {
    for scope in &job.read_scopes {
        if let Some(found) = get(caches, scope, &cache.key, job.max_bytes, report).await {
            return Some(Found {
                exact: true,
                ..found
            });
        }
    }
    for prefix in &cache.restore_keys {
        for scope in &job.read_scopes {
            if let Some((key, lease)) = caches.host_newest(scope, prefix) {
                return Some(Found {
                    lease,
                    matched: (scope.clone(), key),
                    exact: false,
                    tier: "host",
                });
            }
            let Some(store) = caches.store() else {
                continue;
            };
            match store.newest(scope, prefix).await {
                Ok(Some(key)) => {
                    if let Some(found) = get(caches, scope, &key, job.max_bytes, report).await {
                        return Some(Found {
                            exact: false,
                            ..found
                        });
                    }
                }
                Ok(None) => {}
                Err(e) => report.note(e.to_string()),
            }
        }
    }
    if report.reason.is_none() {
        report.note("no cache matched");
    }
    None
}

/// `scope/key` from the host tier, or fetched from S3 into it (once, however
/// many slots ask at the same time).
async fn get(
    caches: &Arc<Caches>,
    scope: &str,
    key: &str,
    max_bytes: u64,
    report: &mut CacheReport,
) -> Option<Found> {
    let found = |lease, tier| Found {
        lease,
        matched: (scope.to_owned(), key.to_owned()),
        exact: true,
        tier,
    };
    let _key = caches.lock(scope, key).await;
    if let Some(lease) = caches.host_exact(scope, key) {
        return Some(found(lease, "host"));
    }
    match caches.fetch(scope, key, max_bytes).await {
        Ok(Some(lease)) => Some(found(lease, "s3")),
        Ok(None) => None,
        Err(e) => {
            report.note(miss_reason(&e));
            None
        }
    }
}

fn miss_reason(error: &CacheError) -> String {
    format!("a miss: {error}")
}
