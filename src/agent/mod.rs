//! `deckhand run`: the agent. It boots ([`boot`]), serves the queue ([`serve`]),
//! takes each message to its fate ([`delivery`], [`fate`]), drains ([`drain`]),
//! recovers what a crashed run left ([`recovery`]) and tells systemd and Prometheus
//! how it is ([`health`], [`metrics`]).
//!
//! The contract with SQS: a message is deleted only once its outcome is recorded in
//! S3; an interrupted job's message is released at once (visibility 0); a job that
//! could not run is left for SQS to redeliver. While a job runs, heartbeats keep its
//! message hidden. Nothing is ever dropped on the floor: whatever path a message
//! takes, either a result is recorded or the message goes back to the queue.

pub mod artifacts;
pub mod boot;
pub mod delivery;
pub mod drain;
pub mod fate;
pub mod fits;
pub mod health;
pub mod metrics;
pub mod protection;
pub mod recovery;
pub mod registry;
pub mod running;
pub mod serve;
pub mod slots;
pub mod watchdog;

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::time::Instant;
use tracing::Instrument;

use crate::agent::boot::Booted;
use crate::agent::health::Health;
use crate::agent::metrics::Metrics;
use crate::aws::autoscaling::Leaving;
use crate::aws::sqs::Queue;
use crate::config::Config;
use crate::docker::Docker;
use crate::host::cache::{Cache, CacheError};
use crate::host::disk::Disk;
use crate::host::secrets::{Secrets, SecretsError};
use crate::host::stop::{Stop, StopReason};
use crate::host::systemd;
use crate::job::runner::Runner;
use crate::job::sweep::Sweeper;
use crate::mask::Masker;
use crate::mask::SharedMasker;
use crate::record::{Notifier, ResultStore};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("agent.secrets_dir {path}: {source}")]
    SecretsDir {
        path: PathBuf,
        source: crate::host::secrets::SecretsDirError,
    },
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error("warm image {image}: {source} (images.warm_failure = \"fail\")")]
    Warm {
        image: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("{key}: names secret {name:?}, which is not in the bundle")]
    MissingSecret { key: &'static str, name: String },
    #[error(transparent)]
    Seed(#[from] crate::host::git::SeedError),
    #[error("git mirrors: {0}")]
    Mirrors(#[source] crate::host::git::GitError),
    /// `metrics.listen` or `credentials.listen`.
    #[error(transparent)]
    Bind(#[from] crate::host::http::BindError),
}

/// Where this agent runs, as each attempt's record names it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Placement {
    pub instance_id: String,
    /// `None` off EC2.
    pub availability_zone: Option<String>,
    /// `spot` or `on-demand`; `None` off EC2.
    pub lifecycle: Option<String>,
}

impl Placement {
    /// An attempt as the result's `attempts` lists it, from its result;
    /// `seconds_lost`: its work that did not become the job's result.
    pub(crate) fn entry(
        &self,
        result: &crate::job::result::JobResult,
        seconds_lost: u64,
    ) -> crate::job::attempts::Attempt {
        crate::job::attempts::Attempt {
            status: result.status,
            reason: crate::job::attempts::Attempt::reason(result.reason.as_deref()),
            started_at: result.started_at.clone(),
            seconds_lost,
            ..self.entry_at(result.attempt)
        }
    }

    /// An attempt still running, stopped now: interrupted, all of it lost.
    pub(crate) fn entry_now(
        &self,
        attempt: u32,
        started_at: chrono::DateTime<chrono::Utc>,
    ) -> crate::job::attempts::Attempt {
        crate::job::attempts::Attempt {
            started_at: crate::rules::timestamp(started_at),
            seconds_lost: (chrono::Utc::now() - started_at).num_seconds().max(0) as u64,
            ..self.entry_at(attempt)
        }
    }

    fn entry_at(&self, attempt: u32) -> crate::job::attempts::Attempt {
        crate::job::attempts::Attempt {
            attempt,
            instance_id: self.instance_id.clone(),
            availability_zone: self.availability_zone.clone(),
            lifecycle: self.lifecycle.clone(),
            status: crate::job::status::Status::Interrupted,
            reason: None,
            started_at: String::new(),
            seconds_lost: 0,
        }
    }
}

/// Everything a job task needs; shared by all of them.
pub(crate) struct Agent {
    config: Arc<Config>,
    instance_id: String,
    placement: Placement,
    /// This process among the instance's agents over time: random per start, so
    /// a claim tells this process's running job from an earlier process's.
    run: String,
    docker: Docker,
    disk: Option<Arc<Disk>>,
    cache: Option<Cache>,
    secrets: Arc<Secrets>,
    /// Every secret's forms, built once: a rejection's reason is masked with it.
    masker: Masker,
    sweeper: Sweeper,
    runner: Runner,
    /// What systemd's watchdog is told: Docker and the queue answered last time.
    healthy: Health,
    metrics: Arc<Metrics>,
    /// The running jobs: the disk watchdog and scale-in protection read it.
    watched: registry::Watched,
    queue: Queue,
    dead_letter: Option<Queue>,
    /// `queue.escalation_url`: where a job goes after its profile's
    /// `escalate_after_interruptions`.
    escalation: Option<Queue>,
    /// Recent durations by profile, for `admit-if-fits`.
    durations: fits::Durations,
    /// With `autoscaling.protect_busy`: the instance's scale-in protection.
    protection: Option<crate::aws::autoscaling::Protection>,
    store: ResultStore,
    notifier: Notifier,
}

/// Bootstraps, serves the queue until `stop` drains it, and returns once every job
/// has finished or been handed back; then, after an idle or Auto Scaling drain,
/// takes the instance out of service.
pub async fn run(
    config: Arc<Config>,
    stop: Stop,
    log_masker: SharedMasker,
) -> Result<(), AgentError> {
    config.run_targets()?;
    let boot::Metadata {
        imds,
        identity,
        answered,
    } = boot::metadata(&config).await;
    let instance_id = config
        .agent
        .instance_id
        .clone()
        .or_else(|| identity.as_ref().map(|i| i.instance_id.clone()))
        .unwrap_or_else(boot::hostname);
    let span = tracing::info_span!("agent", instance_id = %instance_id);
    async move {
        if let Some(identity) = &identity {
            tracing::info!(
                instance_type = %identity.instance_type,
                availability_zone = %identity.availability_zone,
                "Running on EC2."
            );
        }
        let sdk = crate::aws::sdk_config(&config.aws).await;
        let healthy = Health::default();
        let metrics = Arc::new(Metrics::default());
        // Both bound before bootstrap: /readyz says "starting" meanwhile, and a
        // host that cannot serve them fails at once.
        let metrics_server = metrics_server(&config, &healthy, &metrics, &stop).await?;
        let (broker, credentials_server) = credentials_broker(&config, &sdk).await?;
        let life = async {
            let boot_started = Instant::now();
            // A stop during bootstrap (SIGTERM, a spot notice) ends it: nothing
            // has been received yet, so nothing needs handing back.
            let booted = tokio::select! {
                booted = boot::bootstrap(&config, &sdk, &log_masker, &stop) => booted?,
                _ = stop.draining().cancelled() => None,
            };
            let Some(booted) = booted else {
                tracing::info!("Stopped during bootstrap.");
                return Ok(None);
            };
            let placement = Placement {
                instance_id: instance_id.clone(),
                availability_zone: identity.as_ref().map(|i| i.availability_zone.clone()),
                lifecycle: identity.as_ref().and_then(|i| i.lifecycle.clone()),
            };
            let forwarder = booted.forwarder.clone();
            let agent = Arc::new(Agent::new(
                &config, &sdk, placement, booted, broker, &healthy, &metrics,
            ));
            agent.recover().await;
            agent.runner.prewarm_caches(stop.draining()).await;
            metrics.ready(boot_started.elapsed());
            agent.live(&stop).await;
            Ok::<_, AgentError>(forwarder)
        };
        // Notices are watched from the start: one that comes during bootstrap
        // stops it.
        let watcher =
            imds.map(|imds| crate::host::notices::watch(imds, answered, &config, stop.clone()));
        let forwarder = tokio::select! {
            lived = life => lived?,
            never = duty(watcher) => match never {},
            never = duty(metrics_server) => match never {},
            never = duty(credentials_server) => match never {},
        };
        drain::flush_logs(forwarder.as_ref(), config.drain.log_flush_timeout).await;
        if let Some(leaving) = stop.reason().and_then(leaving) {
            scale_in(&config, &sdk, &instance_id, leaving).await;
        }
        tracing::info!("Drained; exiting.");
        Ok(())
    }
    .instrument(span)
    .await
}

impl Agent {
    fn new(
        config: &Arc<Config>,
        sdk: &aws_config::SdkConfig,
        placement: Placement,
        booted: Booted,
        broker: Option<Arc<crate::host::credentials::Broker>>,
        healthy: &Health,
        metrics: &Arc<Metrics>,
    ) -> Agent {
        let targets = config.run_targets().expect("checked before bootstrap");
        let instance_id = placement.instance_id.as_str();
        let sqs = crate::aws::sqs_client(sdk);
        let queue_at = |url: &String| Queue::new(sqs.clone(), url);
        let sweeper = Sweeper::new(booted.docker.clone(), instance_id);
        let s3 = crate::aws::s3_client(sdk, &config.aws);
        let runner = Runner::new(
            booted.docker.clone(),
            config.clone(),
            sweeper.clone(),
            instance_id,
        )
        .with_secrets(booted.secrets.clone())
        .with_cache(booted.cache.clone())
        .with_disk(booted.disk.clone())
        .with_credentials(broker)
        .with_inputs(Some(s3.clone()))
        .with_git(Some(booted.git.clone()))
        .with_caches(crate::host::caches::Caches::for_config(config, Some(&s3)))
        .with_admission(booted.admission.clone());
        Agent {
            config: config.clone(),
            instance_id: instance_id.to_owned(),
            placement: placement.clone(),
            docker: booted.docker,
            disk: booted.disk,
            cache: booted.cache,
            masker: booted.secrets.masker(),
            secrets: booted.secrets,
            sweeper,
            runner,
            healthy: healthy.clone(),
            metrics: Arc::clone(metrics),
            watched: registry::Watched::default(),
            queue: Queue::new(sqs.clone(), targets.queue_url),
            dead_letter: config.queue.dead_letter_url.as_ref().map(queue_at),
            escalation: config.queue.escalation_url.as_ref().map(queue_at),
            durations: fits::Durations::default(),
            protection: config.autoscaling.protect_busy.then(|| {
                crate::aws::autoscaling::Protection::new(
                    crate::aws::autoscaling_client(sdk),
                    instance_id,
                )
            }),
            run: crate::rules::random_hex(8),
            store: ResultStore::new(s3, targets.bucket, config.results.prefix.clone()),
            notifier: Notifier::new(
                config.results.queue_url.as_ref().map(queue_at),
                booted.webhook,
            ),
        }
    }

    /// Ready: serves the queue until drained, beside the duties of a running agent
    /// (the cache refresh, systemd's watchdog).
    async fn live(self: &Arc<Self>, stop: &Stop) {
        tracing::info!(
            slots = self.config.agent.slots,
            queue_url = %self.queue.url(),
            "Ready; serving the queue."
        );
        systemd::ready("serving the queue");
        let refresh = self
            .cache
            .clone()
            .zip(self.config.cache.refresh)
            .map(|(cache, every)| async move { cache.watch(every).await });
        let watchdog =
            systemd::watchdog_period().map(|period| self.healthy.pet_while_healthy(period));
        tokio::select! {
            () = self.serve(stop) => {}
            never = duty(refresh) => match never {},
            never = duty(watchdog) => match never {},
        }
    }
}

/// The metrics and health listener, when configured.
async fn metrics_server(
    config: &Arc<Config>,
    healthy: &Health,
    metrics: &Arc<Metrics>,
    stop: &Stop,
) -> Result<Option<impl Future<Output = Infallible> + use<>>, AgentError> {
    let Some(address) = config.metrics.listen else {
        return Ok(None);
    };
    let listener = crate::agent::metrics::bind(address).await?;
    let state = health::metrics_state(config, healthy, stop);
    Ok(Some(crate::agent::metrics::serve(
        listener,
        Arc::clone(metrics),
        state,
    )))
}

/// The per-job credentials broker and its listener, only when some profile names
/// a role: the address is the host's to set up.
async fn credentials_broker(
    config: &Config,
    sdk: &aws_config::SdkConfig,
) -> Result<
    (
        Option<Arc<crate::host::credentials::Broker>>,
        Option<impl Future<Output = Infallible> + use<>>,
    ),
    AgentError,
> {
    if !config.profiles.values().any(|p| p.role_arn.is_some()) {
        return Ok((None, None));
    }
    let (listen, session) = (config.credentials.listen, config.credentials.session);
    let (broker, listener) = crate::host::credentials::Broker::bind(sdk, listen, session).await?;
    let server = crate::host::credentials::serve(listener, Arc::clone(&broker));
    Ok((Some(broker), Some(server)))
}

/// Whether a drain for `reason` ends with `agent.on_exit`: not after a signal
/// (the operator or systemd is stopping us) nor a spot notice (EC2 takes the
/// instance itself).
fn leaving(reason: &StopReason) -> Option<Leaving> {
    match reason {
        StopReason::Idle { .. } => Some(Leaving::Idle),
        StopReason::Rebalance { .. } => Some(Leaving::Rebalance),
        StopReason::AutoScaling => Some(Leaving::GroupTerminating),
        StopReason::Signal(_) | StopReason::Spot { .. } => None,
    }
}

/// After an idle, rebalance or Auto Scaling drain: completes the lifecycle action
/// or terminates the instance, as the config says. A failure leaves the instance up.
async fn scale_in(
    config: &Config,
    sdk: &aws_config::SdkConfig,
    instance_id: &str,
    leaving: Leaving,
) {
    let scale_in = crate::aws::autoscaling::ScaleIn {
        config,
        autoscaling: &crate::aws::autoscaling_client(sdk),
        ec2: &crate::aws::ec2::Ec2::new(sdk, config.aws.endpoint_url.as_deref()),
        instance_id,
    };
    if let Err(error) = scale_in.on_exit(leaving).await {
        tracing::error!(%error, "Scale-in failed; the instance stays up.");
    }
}

/// A duty the agent may not have (no IMDS, no metrics listener, no cache to
/// refresh): runs it, or never returns, so it can sit in a `select!` either way.
async fn duty(duty: Option<impl std::future::Future<Output = Infallible>>) -> Infallible {
    match duty {
        Some(duty) => duty.await,
        None => std::future::pending().await,
    }
}
