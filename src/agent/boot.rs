//! Boot: everything a host needs before its first job, in order: the instance's
//! identity, the pool's secrets, Docker, the warm images, the disk watch, the
//! seeded git mirrors and the cache volume.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::agent::AgentError;
use crate::aws::imds::{Identity, Imds};
use crate::backoff::Backoff;
use crate::config::{Config, WarmFailure};
use crate::docker::Docker;
use crate::host::cache::Cache;
use crate::host::disk::Disk;
use crate::host::forwarder::Forwarder;
use crate::host::git::Mirrors;
use crate::host::secrets::Secrets;
use crate::host::stop::Stop;
use crate::host::systemd;
use crate::mask::SharedMasker;

/// The longest pause of the boot's retry loops.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What bootstrap made ready.
pub struct Booted {
    pub docker: Docker,
    pub secrets: Arc<Secrets>,
    pub disk: Option<Arc<Disk>>,
    pub cache: Option<Cache>,
    /// The webhook's URL and key, if results are posted to one.
    pub webhook: Option<(String, String)>,
    /// The admission webhook's client, if the pool or a profile names one.
    pub admission: Option<Arc<crate::job::admission::Admission>>,
    /// The log forwarder this boot configured, for the drain to wait on.
    pub forwarder: Option<Forwarder>,
    /// The git mirrors, seeded.
    pub git: Arc<Mirrors>,
}

/// Everything a host needs before its first job, in order: secrets, Docker, warm
/// images, the disk watch, the cache. `None` if the agent was stopped while waiting
/// for Docker.
pub async fn bootstrap(
    config: &Arc<Config>,
    sdk: &aws_config::SdkConfig,
    log_masker: &SharedMasker,
    stop: &Stop,
) -> Result<Option<Booted>, AgentError> {
    let started = Instant::now();
    let s3 = crate::aws::s3_client(sdk, &config.aws);
    let secrets = phase("secrets", load_secrets(config, sdk, &s3)).await?;
    if !secrets.is_empty() {
        log_masker.set(Arc::new(secrets.masker()));
        tracing::info!(secrets = secrets.len(), "Secrets loaded into memory.");
    }
    let forwarder = log_forwarder(config, &secrets);
    let webhook = webhook(config, &secrets)?;
    check_git_credentials(config, &secrets)?;
    let admission =
        crate::job::admission::Admission::for_pool(config, &secrets, || async { sdk.clone() })
            .await
            .map_err(|missing| AgentError::MissingSecret {
                key: "admission.token_secret",
                name: missing.name,
            })?
            .map(Arc::new);
    systemd::status("bootstrap: Docker");
    let Some(docker) = connect_docker(config, stop).await else {
        return Ok(None);
    };
    let warm = phase("warm images", warm_images(&docker, &secrets, config)).await?;
    let disk = &config.disk;
    let disk = if disk.min_free_mb > 0 || disk.gc_free_mb > 0 {
        let root = docker.root_dir().await.unwrap_or_else(|error| {
            tracing::warn!(%error, "Cannot ask Docker for its data root; watching /var/lib/docker.");
            "/var/lib/docker".into()
        });
        let work_dir = &config.agent.work_dir;
        let (min_free_mb, gc_free_mb) = (disk.min_free_mb, disk.gc_free_mb);
        Some(Arc::new(Disk::new(
            docker.clone(),
            root,
            work_dir,
            min_free_mb,
            gc_free_mb,
            warm,
        )))
    } else {
        None
    };
    let git = seed_mirrors(config, &s3).await?;
    let cache = match &config.cache.source {
        Some(source) => {
            let work_dir = &config.agent.work_dir;
            let cache = Cache::bootstrap(docker.clone(), s3, source.clone(), work_dir);
            Some(phase("cache", cache).await?)
        }
        None => None,
    };
    tracing::info!(
        boot_ms = started.elapsed().as_millis() as u64,
        "Bootstrapped."
    );
    Ok(Some(Booted {
        docker,
        secrets,
        disk,
        cache,
        webhook,
        admission,
        forwarder,
        git,
    }))
}

/// Configures the log forwarder from `[log_forwarder]`, now that its token can
/// be read. A wrong setting turns forwarding off, loudly: the host still takes
/// jobs, its lines stay in the journal.
fn log_forwarder(config: &Config, secrets: &Secrets) -> Option<Forwarder> {
    let dir = std::path::Path::new(crate::host::forwarder::DIR);
    match crate::host::forwarder::configure(&config.log_forwarder, secrets, dir) {
        Ok(Some(forwarder)) => {
            tracing::info!(
                endpoint = config.log_forwarder.endpoint.as_deref().unwrap_or_default(),
                kind = config.log_forwarder.kind.as_deref().unwrap_or_default(),
                "Log forwarder configured."
            );
            Some(forwarder)
        }
        Ok(None) => None,
        Err(error) => {
            tracing::error!(%error, "Log forwarding is off: [log_forwarder] is wrong.");
            None
        }
    }
}

/// The host's git mirrors, each in `git.seed` made from its bundle.
async fn seed_mirrors(
    config: &Config,
    s3: &aws_sdk_s3::Client,
) -> Result<Arc<Mirrors>, AgentError> {
    let git = Arc::new(mirrors(config).map_err(AgentError::Mirrors)?);
    if !config.git.seed.is_empty() {
        let seeding =
            crate::host::git::seed_all(&git, s3, &config.git.seed, config.git.seed_max_mb);
        phase("git seed", seeding).await?;
    }
    Ok(git)
}

/// The host's git mirrors, under `<work_dir>/git`.
pub fn mirrors(config: &Config) -> Result<Mirrors, crate::host::git::GitError> {
    Mirrors::new(
        config.agent.work_dir.join("git"),
        config.agent.secrets_dir.clone(),
        config.git.fetch_timeout,
    )
    .map(|mirrors| mirrors.with_known_hosts(config.git.known_hosts.clone()))
}

/// The results webhook's URL and key, if results are posted to one.
fn webhook(config: &Config, secrets: &Secrets) -> Result<Option<(String, String)>, AgentError> {
    Ok(
        match (&config.results.webhook_url, &config.results.webhook_secret) {
            (Some(url), Some(name)) => {
                let key = secrets.get(name).ok_or_else(|| AgentError::MissingSecret {
                    key: "results.webhook_secret",
                    name: name.clone(),
                })?;
                Some((url.clone(), key.expose().to_owned()))
            }
            _ => None,
        },
    )
}

/// Every secret a profile's `git_credentials` names is in the bundle: else
/// every fetch from that remote would fail, job after job.
fn check_git_credentials(config: &Config, secrets: &Secrets) -> Result<(), AgentError> {
    for profile in config.profiles.values() {
        for name in profile.git.credentials.values() {
            if secrets.get(name).is_none() {
                return Err(AgentError::MissingSecret {
                    key: "profiles.NAME.git_credentials",
                    name: name.clone(),
                });
            }
        }
    }
    Ok(())
}

/// Opens the pool's secret bundle, if it has one, into memory, and makes the
/// tmpfs directory jobs' secret files go to.
async fn load_secrets(
    config: &Config,
    sdk: &aws_config::SdkConfig,
    s3: &aws_sdk_s3::Client,
) -> Result<Arc<Secrets>, AgentError> {
    let kms = crate::aws::kms_client(sdk);
    let secrets = crate::host::secrets::load(&config.secrets, s3, &kms).await?;
    if secrets.is_some() {
        let dir = &config.agent.secrets_dir;
        crate::host::secrets::prepare_dir(dir, true).map_err(|source| AgentError::SecretsDir {
            path: dir.clone(),
            source,
        })?;
    }
    Ok(Arc::new(secrets.unwrap_or_default()))
}

/// Pulls `images.warm`, a few at a time, before the agent reports ready; returns
/// the ids of the images that are ready, which the disk's image collection keeps.
/// An image already present is not pulled again; a digest pin is verified by
/// pulling by digest.
async fn warm_images(
    docker: &Docker,
    secrets: &Secrets,
    config: &Config,
) -> Result<HashSet<String>, AgentError> {
    use futures_util::stream::{self, StreamExt};
    let warm = &config.images.warm;
    let results: Vec<_> = stream::iter(warm.iter().map(|image| async move {
        let auth = secrets.registry_auth(&config.images.registry_auth, &image.registry)?;
        docker
            .ensure_image(image, config.images.pull_timeout, auth.as_ref())
            .await
            .map_err(Box::<dyn std::error::Error + Send + Sync>::from)
    }))
    .buffered(3)
    .collect()
    .await;
    let mut ready = HashSet::new();
    for (image, result) in warm.iter().zip(results) {
        match (result, config.images.warm_failure) {
            (Ok(local), _) => {
                tracing::info!(image = %image, digest = %local.reference, "Warm image ready.");
                ready.insert(local.id);
            }
            (Err(source), WarmFailure::Fail) => {
                return Err(AgentError::Warm {
                    image: image.to_string(),
                    source,
                });
            }
            (Err(error), WarmFailure::Continue) => tracing::warn!(
                image = %image,
                %error,
                "Could not warm an image; going on (images.warm_failure = \"continue\")."
            ),
        }
    }
    Ok(ready)
}

/// Runs one boot phase, logging its duration.
async fn phase<T, E>(
    name: &'static str,
    work: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let started = Instant::now();
    systemd::status(&format!("bootstrap: {name}"));
    let result = work.await;
    if result.is_ok() {
        tracing::info!(
            phase = name,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Boot phase done."
        );
    }
    result
}

/// What the instance metadata gave at boot.
pub struct Metadata {
    /// The client, unless metadata is disabled or misconfigured.
    pub imds: Option<Imds>,
    pub identity: Option<Identity>,
    /// Whether the service answered at all; the watchers wait for it if not.
    pub answered: bool,
}

/// The metadata client and this instance's identity. Off EC2 (no answer) one
/// warning, and the watchers wait quietly for the service: a host whose metadata
/// came up late still gets its notices, and a laptop gets no crash loop.
pub async fn metadata(config: &Config) -> Metadata {
    let none = Metadata {
        imds: None,
        identity: None,
        answered: false,
    };
    if !config.imds.enabled {
        tracing::info!(
            "Instance metadata disabled (imds.enabled = false): no spot, rebalance or Auto Scaling watchers."
        );
        return none;
    }
    let imds = match Imds::new(&config.imds) {
        Ok(imds) => imds,
        Err(error) => {
            tracing::warn!(%error, "No instance metadata client; the watchers are off.");
            return none;
        }
    };
    match imds.identity().await {
        Ok(identity) => Metadata {
            imds: Some(imds),
            identity: Some(identity),
            answered: true,
        },
        Err(error) if error.is_unreachable() => {
            tracing::warn!(
                endpoint = %config.imds.endpoint,
                %error,
                "No instance metadata service: not on EC2? Spot, rebalance and Auto Scaling watchers start if it answers."
            );
            Metadata {
                imds: Some(imds),
                identity: None,
                answered: false,
            }
        }
        // It answers, but not well: keep watching, it may recover.
        Err(error) => {
            tracing::warn!(%error, "Cannot read this instance's identity; watching for notices anyway.");
            Metadata {
                imds: Some(imds),
                identity: None,
                answered: true,
            }
        }
    }
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown-host".to_owned())
}

/// Connects to Docker, retrying with backoff until it answers or the agent stops.
async fn connect_docker(config: &Config, stop: &Stop) -> Option<Docker> {
    let mut backoff = Backoff::new(Duration::from_secs(1), MAX_BACKOFF);
    loop {
        let error = match Docker::connect(&config.docker).await {
            Ok(docker) => match docker.ping().await {
                Ok(()) => return Some(docker),
                Err(e) => e,
            },
            Err(e) => e,
        };
        let delay = backoff.next_delay();
        tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "Docker is unreachable; waiting for it.");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.draining().cancelled() => return None,
        }
    }
}
