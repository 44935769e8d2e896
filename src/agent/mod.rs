//! `deckhand run`: serve the job queue until drained.
//!
//! The contract with SQS: a message is deleted only once its outcome is recorded in
//! S3; an interrupted job's message is released at once (visibility 0); a job that
//! could not run is left for SQS to redeliver. While a job runs, heartbeats keep its
//! message hidden. Nothing is ever dropped on the floor: whatever path a message
//! takes, either a result is recorded or the message goes back to the queue.

pub mod metrics;

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use crate::backoff::Backoff;
use std::path::PathBuf;

use crate::agent::metrics::Metrics;
use crate::aws::imds::{Identity, Imds};
use crate::aws::results::{Claim, ClaimOutcome, Notifier, Recorded, ResultStore, StoreError};
use crate::aws::sqs::{Queue, Received};
use crate::config::{Config, RebalancePolicy, WarmFailure};
use crate::docker::{self, Docker};
use crate::host::cache::{Cache, CacheError};
use crate::host::disk::Disk;
use crate::host::secrets::SecretsError;
use crate::host::stop::{Stop, StopReason};
use crate::host::systemd;
use crate::job::log::LogBody;
use crate::job::mask::SharedMasker;
use crate::job::result::{JobResult, Status};
use crate::job::runner::Runner;
use crate::job::{Job, Rejection};

/// On a job's container: the SQS receipt handle of its message, so that an agent
/// restarted after a crash can hand the message back at once.
const LABEL_RECEIPT: &str = "deckhand.receipt";
/// How long the agent keeps trying to record a finished job's result before it
/// gives the message back to SQS (the job will run again: at least once).
const RECORD_DEADLINE: Duration = Duration::from_secs(300);
/// How long a duplicate delivery of a job another agent is running stays hidden.
const DEFER_VISIBILITY: Duration = Duration::from_secs(30);
/// The longest pause of the agent's retry loops.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("agent.secrets_dir {path}: {reason}")]
    SecretsDir { path: PathBuf, reason: String },
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error("warm image {image}: {message} (images.warm_failure = \"fail\")")]
    Warm { image: String, message: String },
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("{key}: names secret {name:?}, which is not in the bundle")]
    MissingSecret { key: &'static str, name: String },
    #[error(transparent)]
    Metrics(#[from] crate::agent::metrics::BindError),
    #[error(transparent)]
    Credentials(#[from] crate::host::credentials::BindError),
}

/// Everything a job task needs; shared by all of them.
struct Agent {
    config: Arc<Config>,
    /// What systemd's watchdog is told: Docker and the queue answered last time.
    healthy: Health,
    metrics: Arc<Metrics>,
    runner: Runner,
    queue: Queue,
    dead_letter: Option<Queue>,
    store: ResultStore,
    notifier: Notifier,
}

/// Bootstraps, serves the queue until `stop` drains it, and returns once every job
/// has finished or been handed back.
pub async fn run(
    config: Arc<Config>,
    stop: Stop,
    log_masker: SharedMasker,
) -> Result<(), AgentError> {
    let targets = config.run_targets()?;
    let (queue_url, bucket) = (targets.queue_url.to_owned(), targets.bucket.to_owned());
    let (imds, identity) = metadata(&config).await;
    let instance_id = config
        .agent
        .instance_id
        .clone()
        .or_else(|| identity.as_ref().map(|i| i.instance_id.clone()))
        .unwrap_or_else(hostname);
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
        let metrics_server = match config.metrics.listen {
            Some(address) => {
                let listener = crate::agent::metrics::bind(address).await?;
                let state = metrics_state(&config, &healthy, &stop);
                Some(crate::agent::metrics::serve(
                    listener,
                    Arc::clone(&metrics),
                    state,
                ))
            }
            None => None,
        };
        // Only when some profile names a role: the address is the host's to set up.
        let credentials = if config.profiles.values().any(|p| p.role_arn.is_some()) {
            Some(
                crate::host::credentials::Broker::bind(
                    &sdk,
                    config.credentials.listen,
                    config.credentials.session,
                )
                .await?,
            )
        } else {
            None
        };
        let broker = credentials.as_ref().map(|(broker, _)| Arc::clone(broker));
        let credentials_server =
            credentials.map(|(broker, listener)| crate::host::credentials::serve(listener, broker));
        let life = async {
            let boot_started = Instant::now();
            // A stop during bootstrap (SIGTERM, a spot notice) ends it: nothing
            // has been received yet, so nothing needs handing back.
            let booted = tokio::select! {
                booted = bootstrap(&config, &sdk, &instance_id, &log_masker, &stop) => booted?,
                _ = stop.draining().cancelled() => None,
            };
            let Some((mut runner, webhook)) = booted else {
                tracing::info!("Stopped during bootstrap.");
                return Ok(());
            };
            if let Some(broker) = &broker {
                runner = runner.with_credentials(Arc::clone(broker));
            }
            let sqs = crate::aws::sqs_client(&sdk);
            let agent = Arc::new(Agent {
                queue: Queue::new(sqs.clone(), queue_url),
                dead_letter: config
                    .queue
                    .dead_letter_url
                    .as_ref()
                    .map(|url| Queue::new(sqs.clone(), url)),
                store: ResultStore::new(
                    crate::aws::s3_client(&sdk, &config.aws),
                    bucket,
                    config.results.prefix.clone(),
                ),
                notifier: Notifier::new(
                    config
                        .results
                        .queue_url
                        .as_ref()
                        .map(|url| Queue::new(sqs.clone(), url)),
                    webhook,
                ),
                config: config.clone(),
                healthy: healthy.clone(),
                metrics: Arc::clone(&metrics),
                runner,
            });
            agent.recover_orphans().await;
            metrics.ready(boot_started.elapsed());
            tracing::info!(
                slots = config.agent.slots,
                queue_url = %agent.queue.url(),
                "Ready; serving the queue."
            );
            systemd::ready("serving the queue");
            let refresh = agent
                .runner
                .cache()
                .zip(config.cache.refresh)
                .map(|(cache, every)| cache.watch(every));
            let watchdog =
                systemd::watchdog_period().map(|period| agent.healthy.pet_while_healthy(period));
            tokio::select! {
                () = agent.serve(&stop) => {}
                never = duty(refresh) => match never {},
                never = duty(watchdog) => match never {},
            }
            Ok::<_, AgentError>(())
        };
        // Notices are watched from the start: one that comes during bootstrap
        // stops it.
        let watcher = imds.map(|imds| crate::host::notices::watch(imds, &config, stop.clone()));
        tokio::select! {
            lived = life => lived?,
            never = duty(watcher) => match never {},
            never = duty(metrics_server) => match never {},
            never = duty(credentials_server) => match never {},
        }
        if let Some(reason @ (StopReason::Idle { .. } | StopReason::AutoScaling)) = stop.reason() {
            let scale_in = crate::aws::autoscaling::ScaleIn {
                config: &config,
                autoscaling: &crate::aws::autoscaling_client(&sdk),
                ec2: &crate::aws::ec2::Ec2::new(&sdk, config.aws.endpoint_url.as_deref()),
                instance_id: &instance_id,
            };
            if let Err(error) = scale_in.on_exit(*reason == StopReason::AutoScaling).await {
                tracing::error!(%error, "Scale-in failed; the instance stays up.");
            }
        }
        tracing::info!("Drained; exiting.");
        Ok(())
    }
    .instrument(span)
    .await
}

/// Everything a host needs before its first job, in order: secrets, Docker, warm
/// images, the cache. Returns the runner and the webhook (URL and key), or `None`
/// if the agent was stopped while waiting for Docker.
async fn bootstrap(
    config: &Arc<Config>,
    sdk: &aws_config::SdkConfig,
    instance_id: &str,
    log_masker: &SharedMasker,
    stop: &Stop,
) -> Result<Option<(Runner, Option<(String, String)>)>, AgentError> {
    let started = Instant::now();
    let s3 = crate::aws::s3_client(sdk, &config.aws);
    let secrets = phase("secrets", async {
        let kms = crate::aws::kms_client(sdk);
        let secrets = crate::host::secrets::load(&config.secrets, &s3, &kms).await?;
        if secrets.is_some() {
            crate::host::secrets::prepare_dir(&config.agent.secrets_dir, true).map_err(
                |reason| AgentError::SecretsDir {
                    path: config.agent.secrets_dir.clone(),
                    reason,
                },
            )?;
        }
        Ok::<_, AgentError>(Arc::new(secrets.unwrap_or_default()))
    })
    .await?;
    if !secrets.is_empty() {
        log_masker.set(Arc::new(secrets.masker()));
        tracing::info!(secrets = secrets.len(), "Secrets loaded into memory.");
    }
    let webhook = match (&config.results.webhook_url, &config.results.webhook_secret) {
        (Some(url), Some(name)) => {
            let key = secrets.get(name).ok_or_else(|| AgentError::MissingSecret {
                key: "results.webhook_secret",
                name: name.clone(),
            })?;
            Some((url.clone(), key.expose().to_owned()))
        }
        _ => None,
    };
    systemd::status("bootstrap: Docker");
    let Some(docker) = connect_docker(config, stop).await else {
        return Ok(None);
    };
    let mut runner =
        Runner::new(docker.clone(), config.clone(), instance_id.to_owned()).with_secrets(secrets);
    let warm = phase("warm images", warm_images(&runner, config)).await?;
    let disk = &config.disk;
    if disk.min_free_mb > 0 || disk.gc_free_mb > 0 {
        let root = docker.root_dir().await.unwrap_or_else(|error| {
            tracing::warn!(%error, "Cannot ask Docker for its data root; watching /var/lib/docker.");
            "/var/lib/docker".into()
        });
        runner = runner.with_disk(Arc::new(Disk::new(
            docker.clone(),
            root,
            &config.agent.work_dir,
            disk.min_free_mb,
            disk.gc_free_mb,
            warm,
        )));
    }
    if let Some(source) = &config.cache.source {
        let cache = phase(
            "cache",
            Cache::bootstrap(docker, s3, source.clone(), &config.agent.work_dir),
        )
        .await?;
        runner = runner.with_cache(cache);
    }
    tracing::info!(
        boot_ms = started.elapsed().as_millis() as u64,
        "Bootstrapped."
    );
    Ok(Some((runner, webhook)))
}

/// Pulls `images.warm`, a few at a time, before the agent reports ready. An image
/// already present is not pulled again; a digest pin is verified by pulling by
/// digest.
/// Pulls `images.warm`; returns the ids of the images that are ready, which the
/// disk's image collection keeps.
async fn warm_images(runner: &Runner, config: &Config) -> Result<HashSet<String>, AgentError> {
    use futures_util::stream::{self, StreamExt};
    let warm = &config.images.warm;
    let results: Vec<_> = stream::iter(warm.iter().map(|image| async move {
        let auth = runner.registry_auth(&image.registry)?;
        runner
            .docker()
            .ensure_image(image, config.images.pull_timeout, auth.as_ref())
            .await
            .map_err(|e| e.to_string())
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
            (Err(message), WarmFailure::Fail) => {
                return Err(AgentError::Warm {
                    image: image.to_string(),
                    message,
                });
            }
            (Err(message), WarmFailure::Continue) => tracing::warn!(
                image = %image,
                error = %message,
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

/// The metadata client and this instance's identity, or neither off EC2 (one
/// warning, then the watchers stay off: no crash loop on a laptop).
async fn metadata(config: &Config) -> (Option<Imds>, Option<Identity>) {
    if !config.imds.enabled {
        tracing::info!(
            "Instance metadata disabled (imds.enabled = false): no spot, rebalance or Auto Scaling watchers."
        );
        return (None, None);
    }
    let imds = match Imds::new(&config.imds) {
        Ok(imds) => imds,
        Err(error) => {
            tracing::warn!(%error, "No instance metadata client; the watchers are off.");
            return (None, None);
        }
    };
    match imds.identity().await {
        Ok(identity) => (Some(imds), Some(identity)),
        Err(error) if error.is_unreachable() => {
            tracing::warn!(
                endpoint = %config.imds.endpoint,
                %error,
                "No instance metadata service: not on EC2? Spot, rebalance and Auto Scaling watchers are off."
            );
            (None, None)
        }
        // It answers, but not well: keep watching, it may recover.
        Err(error) => {
            tracing::warn!(%error, "Cannot read this instance's identity; watching for notices anyway.");
            (Some(imds), None)
        }
    }
}

fn hostname() -> String {
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

impl Agent {
    /// The receive loop, then the drain.
    async fn serve(self: &Arc<Self>, stop: &Stop) {
        // Preempts running jobs; triggered by the drain, not by the first signal,
        // so jobs get `drain.stop_timeout_secs` to finish.
        let jobs_stop = Stop::new();
        // Every task, from receipt to the message's fate: what the drain waits for.
        let mut jobs: JoinSet<()> = JoinSet::new();
        // A slot is a container, so a slot frees when its container is gone, while
        // the result is still being recorded: the next job's receive, claim and
        // start overlap the last one's uploads instead of queueing behind them.
        let slots = Arc::new(Semaphore::new(self.config.agent.slots));
        let mut docker_backoff = Backoff::new(Duration::from_secs(1), MAX_BACKOFF);
        let mut queue_backoff = Backoff::new(Duration::from_secs(1), MAX_BACKOFF);
        let mut disk_backoff = Backoff::new(Duration::from_secs(1), MAX_BACKOFF);
        let mut disk_check_failed = false;
        let mut idle_since = Instant::now();
        let mut in_flight = None;

        while !stop.is_draining() {
            while let Some(done) = jobs.try_join_next() {
                reap(done);
                idle_since = Instant::now();
            }
            if slots.available_permits() == 0 {
                tokio::select! {
                    Some(done) = jobs.join_next() => {
                        reap(done);
                        idle_since = Instant::now();
                    }
                    // A container finished; its task is still recording.
                    permit = Arc::clone(&slots).acquire_owned() => drop(permit),
                    _ = stop.draining().cancelled() => break,
                }
                continue;
            }
            if let Some(limit) = self.config.agent.idle_shutdown
                && jobs.is_empty()
                && idle_since.elapsed() >= limit
            {
                stop.begin(StopReason::Idle {
                    after_secs: limit.as_secs(),
                });
                break;
            }
            // Receive only while a job could start: never hold a message it cannot run.
            if let Err(error) = self.runner.docker().ping().await {
                self.healthy.set_docker(false);
                let delay = docker_backoff.next_delay();
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "Docker is unreachable; not receiving.");
                systemd::status("Docker unreachable; not receiving");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.draining().cancelled() => break,
                }
                continue;
            }
            self.healthy.set_docker(true);
            if docker_backoff.reset() {
                tracing::info!("Docker is back; receiving again.");
                systemd::status("serving the queue");
            }
            self.runner.sweep_leftovers().await;
            if let Some(disk) = self.runner.disk() {
                match disk.ensure_room().await {
                    Ok(room) => {
                        disk_check_failed = false;
                        self.metrics.disk(&room);
                        if let Some(low) = room.low {
                            let delay = disk_backoff.next_delay();
                            tracing::warn!(path = %low.path.display(), free_mb = low.free_mb, min_free_mb = low.min_free_mb, retry_in_ms = delay.as_millis() as u64, "Disk space is low; not receiving.");
                            systemd::status("disk space low; not receiving");
                            tokio::select! {
                                _ = tokio::time::sleep(delay) => {}
                                _ = stop.draining().cancelled() => break,
                            }
                            continue;
                        }
                        if disk_backoff.reset() {
                            tracing::info!(
                                free_mb = room.free_mb,
                                "Disk space is back; receiving again."
                            );
                            systemd::status("serving the queue");
                        }
                    }
                    // Not a reason to stop: the check itself is what failed.
                    Err(error) if !disk_check_failed => {
                        disk_check_failed = true;
                        tracing::warn!(%error, "Cannot check the free disk space; receiving anyway.");
                    }
                    Err(_) => {}
                }
            }
            // At most 10: one receive brings no more.
            let mut free: Vec<OwnedSemaphorePermit> =
                std::iter::from_fn(|| Arc::clone(&slots).try_acquire_owned().ok())
                    .take(10)
                    .collect();
            let mut receive: InFlight<'_> = Box::pin(self.queue.receive(
                free.len(),
                self.config.queue.wait,
                self.config.queue.visibility_timeout,
            ));
            let received = tokio::select! {
                received = &mut receive => received,
                // Not dropped: SQS may already have handed this long poll a
                // message, which would stay hidden for the visibility timeout.
                // The drain finishes it and hands back what it brings.
                _ = stop.draining().cancelled() => {
                    in_flight = Some(receive);
                    break;
                }
            };
            match received {
                Ok(messages) => {
                    self.metrics.received(messages.len());
                    self.healthy.set_queue(true);
                    if queue_backoff.reset() {
                        tracing::info!("The queue answers again.");
                    }
                    for message in messages {
                        let slot = free.pop().expect("SQS returns at most as many as asked");
                        idle_since = Instant::now();
                        let span = tracing::info_span!(
                            "job",
                            job_id = tracing::field::Empty,
                            sqs_message_id = %message.message_id,
                            attempt = message.receive_count,
                        );
                        let agent = Arc::clone(self);
                        let jobs_stop = jobs_stop.clone();
                        jobs.spawn(
                            async move { agent.handle(message, slot, &jobs_stop).await }
                                .instrument(span),
                        );
                    }
                }
                Err(error) => {
                    self.metrics.receive_failed();
                    self.healthy.set_queue(false);
                    let delay = queue_backoff.next_delay();
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "Could not receive; backing off.");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.draining().cancelled() => break,
                    }
                }
            }
        }
        self.drain(jobs, jobs_stop, stop, in_flight).await;
    }

    /// Waits for running jobs, then stops what still runs: after
    /// `drain.stop_timeout_secs` (signals, Auto Scaling, a rebalance under `drain`),
    /// at the preemption deadline a spot notice set, or at once when forced. Under
    /// a rebalance with `stop-intake` running jobs finish unless a deadline comes.
    async fn drain(
        &self,
        mut jobs: JoinSet<()>,
        jobs_stop: Stop,
        stop: &Stop,
        in_flight: Option<InFlight<'_>>,
    ) {
        let reason = stop
            .reason()
            .cloned()
            .unwrap_or(StopReason::Signal("shutdown"));
        let began = Instant::now();
        let timeout = match &reason {
            StopReason::Rebalance {
                policy: RebalancePolicy::StopIntake,
            }
            | StopReason::Spot { .. } => None,
            _ => Some(self.config.drain.stop_timeout),
        };
        tracing::info!(
            running = jobs.len(),
            stop_timeout_secs = timeout.map(|t| t.as_secs()),
            %reason,
            "Stopped receiving; waiting for running jobs."
        );
        systemd::stopping(&format!("draining: {reason}"));
        // Whatever the interrupted long poll brings goes straight back, while the
        // running jobs drain; a forced stop stops waiting for it.
        let hand_back = async {
            let Some(receive) = in_flight else { return };
            let received = tokio::select! {
                received = receive => received,
                _ = stop.forced().cancelled() => return,
            };
            for message in received.unwrap_or_default() {
                let span = tracing::info_span!("job", sqs_message_id = %message.message_id);
                async {
                    tracing::info!("Received while draining; handing it back.");
                    self.give_back(&message, Duration::ZERO).await;
                }
                .instrument(span)
                .await;
            }
        };
        let jobs_done = async {
            let mut preemption = stop.preemption();
            loop {
                // The earliest of the stop timeout and any preemption deadline.
                let deadline = {
                    let preempt = preemption.borrow();
                    let by_timeout = timeout.map(|t| (began + t, reason.clone()));
                    match (by_timeout, preempt.clone()) {
                        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
                        (a, b) => a.or(b),
                    }
                };
                let preempt_at = deadline.as_ref().map(|(at, _)| *at);
                tokio::select! {
                    done = jobs.join_next() => match done {
                        Some(done) => reap(done),
                        None => break,
                    },
                    _ = sleep_until(preempt_at), if !jobs_stop.is_draining() => {
                        let (_, why) = deadline.expect("only armed with a deadline");
                        tracing::info!(
                            running = jobs.len(),
                            draining_ms = began.elapsed().as_millis() as u64,
                            "Stopping running jobs to hand them back."
                        );
                        jobs_stop.begin(why);
                    }
                    changed = preemption.changed() => {
                        if changed.is_err() {
                            // The sender lives in `stop`, which outlives the drain.
                            unreachable!("the preemption channel closed");
                        }
                    }
                    _ = stop.forced().cancelled(), if !jobs_stop.forced().is_cancelled() => {
                        tracing::info!(running = jobs.len(), "Forced; stopping running jobs now.");
                        jobs_stop.begin(reason.clone());
                        jobs_stop.force();
                    }
                }
            }
        };
        tokio::join!(jobs_done, hand_back);
        tracing::info!(
            drain_ms = began.elapsed().as_millis() as u64,
            "Every job finished or handed back."
        );
    }

    /// One message, from receipt to its fate on the queue.
    /// `slot` is held until the job's container is gone.
    async fn handle(&self, message: Received, slot: OwnedSemaphorePermit, jobs_stop: &Stop) {
        match Job::parse(message.body.as_bytes(), &self.config) {
            Ok(job) => {
                tracing::Span::current().record("job_id", job.id.as_str());
                match self.runner.check_secrets(&job) {
                    Ok(()) => self.run_job(message, job, slot, jobs_stop).await,
                    Err(rejection) => self.reject(message, rejection).await,
                }
            }
            Err(rejection) => self.reject(message, rejection).await,
        }
    }

    async fn reject(&self, message: Received, rejection: Rejection) {
        let id = rejection
            .id
            .clone()
            .unwrap_or_else(|| message.message_id.clone());
        tracing::Span::current().record("job_id", id.as_str());
        let reason = rejection.to_string();
        tracing::warn!(%reason, "Job rejected.");
        self.metrics.job_finished(Status::Rejected, Duration::ZERO);
        let mut result = JobResult::rejected(
            id,
            reason.clone(),
            message.receive_count,
            self.runner.instance_id(),
        );
        if !self
            .record_until(&mut result, &LogBody::empty(), RECORD_DEADLINE)
            .await
        {
            return;
        }
        if let Some(dlq) = &self.dead_letter {
            let attributes = [
                ("deckhand_reason", reason.as_str()),
                ("deckhand_message_id", message.message_id.as_str()),
            ];
            if let Err(error) = dlq.send(&message.body, &attributes).await {
                // Recorded but not dead-lettered: leave the message, so the next
                // delivery tries the copy again.
                tracing::warn!(%error, "Could not copy the rejected job to the dead-letter queue.");
                return;
            }
        }
        self.notifier.notify(&result).await;
        self.delete(&message).await;
    }

    async fn run_job(
        &self,
        message: Received,
        job: Job,
        slot: OwnedSemaphorePermit,
        jobs_stop: &Stop,
    ) {
        let attempt = message.receive_count;
        // Both at once: they are independent round trips, and every millisecond
        // here is paid by every job.
        let claim = self.claim(attempt);
        let (terminal, claim) = tokio::join!(
            self.store.terminal(&job.id),
            self.store.claim(&job.id, &claim),
        );
        match (terminal, claim) {
            (Ok(None), Ok(ClaimOutcome::Acquired)) => {}
            (Ok(Some(existing)), claim) => {
                tracing::info!(
                    status = existing.status.as_str(),
                    "Duplicate delivery of a finished job; deleting it without running."
                );
                if matches!(claim, Ok(ClaimOutcome::Acquired)) {
                    self.unclaim(&job.id).await;
                }
                self.delete(&message).await;
                return;
            }
            (Ok(None), Ok(ClaimOutcome::HeldBy(holder))) => {
                tracing::info!(
                    holder = %holder.instance_id,
                    "Another agent is running this job; deferring the duplicate."
                );
                self.give_back(&message, DEFER_VISIBILITY).await;
                return;
            }
            (Err(error), claim) => {
                tracing::warn!(%error, "Cannot check for an earlier result; giving the message back.");
                if matches!(claim, Ok(ClaimOutcome::Acquired)) {
                    self.unclaim(&job.id).await;
                }
                self.give_back(&message, self.retry_visibility(attempt))
                    .await;
                return;
            }
            (Ok(None), Err(error)) => {
                tracing::warn!(%error, "Cannot claim the job; giving the message back.");
                self.give_back(&message, self.retry_visibility(attempt))
                    .await;
                return;
            }
        }

        let labels = [(LABEL_RECEIPT, message.receipt.as_str())];
        self.metrics.running(true);
        let run = self.runner.run(&job, attempt, &labels, jobs_stop);
        tokio::pin!(run);
        // When the drain preempts the job, its message goes back to the queue at
        // once, while the container still has its grace period: the host is going
        // away, and every second counts for the one that takes the job over.
        let mut released = false;
        let mut finished = tokio::select! {
            finished = &mut run => finished,
            never = self.heartbeat(&message, &job.id) => match never {},
            () = jobs_stop.draining().cancelled() => {
                self.unclaim(&job.id).await;
                self.give_back(&message, Duration::ZERO).await;
                released = true;
                run.await
            }
        };
        drop(slot);
        self.metrics.running(false);
        let result = &mut finished.result;
        self.metrics
            .job_finished(result.status, Duration::from_millis(result.duration_ms));
        match result.status {
            status if status.is_terminal() => {
                let record = self.record_until(result, &finished.log, RECORD_DEADLINE);
                let recorded = if released {
                    // No heartbeat: it would hide the message again.
                    record.await
                } else {
                    tokio::select! {
                        recorded = record => recorded,
                        never = self.heartbeat(&message, &job.id) => match never {},
                    }
                };
                if recorded {
                    // Independent of each other: the result is recorded. (A
                    // redelivery after an early release finds the result.)
                    tokio::join!(
                        self.unclaim(&job.id),
                        self.notifier.notify(result),
                        self.delete(&message),
                    );
                } else {
                    self.unclaim(&job.id).await;
                }
            }
            Status::Interrupted => {
                if !released {
                    // The claim goes first, so the next host does not find it held.
                    self.unclaim(&job.id).await;
                    self.give_back(&message, Duration::ZERO).await;
                }
                self.record_until(result, &finished.log, Duration::from_secs(10))
                    .await;
            }
            _ => {
                self.record_until(result, &finished.log, Duration::from_secs(30))
                    .await;
                if !released {
                    self.unclaim(&job.id).await;
                    self.give_back(&message, self.retry_visibility(attempt))
                        .await;
                }
            }
        }
    }

    fn claim(&self, attempt: u32) -> Claim {
        Claim {
            instance_id: self.runner.instance_id().to_owned(),
            attempt,
            expires_at: chrono::Utc::now().timestamp()
                + self.config.queue.visibility_timeout.as_secs() as i64,
        }
    }

    /// Keeps the message hidden and the claim alive while the job runs. Never
    /// returns; dropping it is safe (each beat is a whole request or none).
    async fn heartbeat(&self, message: &Received, job_id: &str) -> Infallible {
        let visibility = self.config.queue.visibility_timeout;
        // A third of the timeout: two beats may fail before the message reappears.
        let period = visibility / 3;
        loop {
            tokio::time::sleep(period).await;
            if let Err(error) = self
                .queue
                .set_visibility(&message.message_id, &message.receipt, visibility)
                .await
            {
                tracing::warn!(%error, "Heartbeat failed; the message may reappear.");
            }
            let attempt = message.receive_count;
            if let Err(error) = self.store.renew(job_id, &self.claim(attempt)).await {
                tracing::warn!(%error, "Could not renew the job's claim.");
            }
        }
    }

    /// Records `result`, retrying with backoff until `deadline`; true once recorded
    /// (or found already recorded by another run).
    async fn record_until(
        &self,
        result: &mut JobResult,
        log: &LogBody,
        deadline: Duration,
    ) -> bool {
        let give_up = Instant::now() + deadline;
        let mut backoff = Backoff::new(Duration::from_millis(500), MAX_BACKOFF);
        loop {
            let error: StoreError = match self.store.record(result, log).await {
                Ok(Recorded::Stored) => {
                    tracing::info!(
                        status = result.status.as_str(),
                        log = result.log.as_deref(),
                        "Result recorded."
                    );
                    return true;
                }
                Ok(Recorded::Duplicate(existing)) => {
                    tracing::warn!(
                        recorded_status = existing.status.as_str(),
                        recorded_by = %existing.instance_id,
                        "Another run of this job recorded its result first; keeping that one."
                    );
                    return true;
                }
                Err(e) => e,
            };
            let delay = backoff.next_delay();
            if Instant::now() + delay > give_up {
                tracing::error!(%error, "Could not record the result; leaving the message to SQS.");
                return false;
            }
            tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "Could not record the result; retrying.");
            tokio::time::sleep(delay).await;
        }
    }

    async fn delete(&self, message: &Received) {
        if let Err(error) = self.queue.delete(message).await {
            // The result is recorded, so a redelivery is recognised as a duplicate.
            tracing::warn!(%error, "Could not delete the message; a redelivery will be skipped.");
        }
    }

    /// Makes the message receivable again after `visibility` (zero: at once).
    async fn give_back(&self, message: &Received, visibility: Duration) {
        match self
            .queue
            .set_visibility(&message.message_id, &message.receipt, visibility)
            .await
        {
            Ok(()) => {
                self.metrics.handed_back();
                tracing::info!(
                    visibility_secs = visibility.as_secs(),
                    "Message handed back to the queue."
                );
            }
            Err(error) => tracing::warn!(
                %error,
                "Could not hand the message back; it returns when its visibility timeout ends."
            ),
        }
    }

    async fn unclaim(&self, job_id: &str) {
        if let Err(error) = self.store.release(job_id).await {
            tracing::warn!(%error, "Could not release the job's claim; it expires by itself.");
        }
    }

    /// Before a job that could not run is retried: doubling from 5 s with each
    /// delivery, never beyond the visibility timeout.
    fn retry_visibility(&self, attempt: u32) -> Duration {
        let step = Duration::from_secs(5) * 2u32.saturating_pow(attempt.saturating_sub(1).min(10));
        step.min(self.config.queue.visibility_timeout)
    }

    /// Containers a previous run of this agent left (a crash, `kill -9`): stop and
    /// remove them, and hand their messages back at once through the receipt kept
    /// in their labels.
    async fn recover_orphans(&self) {
        let docker = self.runner.docker();
        let agent = self.runner.instance_id();
        let orphans = match docker.list_managed(&[(docker::LABEL_AGENT, agent)]).await {
            Ok(orphans) => orphans,
            Err(error) => {
                tracing::warn!(%error, "Could not look for containers left by an earlier run.");
                return;
            }
        };
        for orphan in orphans {
            let job_id = orphan
                .labels
                .get(docker::LABEL_JOB_ID)
                .cloned()
                .unwrap_or_default();
            let span = tracing::info_span!("job", job_id = %job_id, container = %orphan.name);
            async {
                tracing::warn!("Found a container left by an earlier run; removing it.");
                if let Err(error) = docker.remove_container(&orphan.name).await {
                    tracing::warn!(%error, "Could not remove the orphaned container.");
                }
                if let Some(volume) = orphan.labels.get(docker::LABEL_WORKSPACE)
                    && let Err(error) = docker.remove_volume(volume).await
                {
                    tracing::warn!(%error, "Could not remove the orphaned workspace.");
                }
                if let Some(receipt) = orphan.labels.get(LABEL_RECEIPT) {
                    self.unclaim(&job_id).await;
                    let message = Received {
                        message_id: format!("(orphan of {job_id})"),
                        receipt: receipt.clone(),
                        body: String::new(),
                        receive_count: 0,
                    };
                    self.give_back(&message, Duration::ZERO).await;
                }
            }
            .instrument(span)
            .await;
        }
        // Workspaces whose container never got created.
        match docker
            .list_managed_volumes((docker::LABEL_AGENT, agent))
            .await
        {
            Ok(volumes) => {
                for volume in volumes {
                    if let Err(error) = docker.remove_volume(&volume).await {
                        tracing::warn!(%error, volume, "Could not remove an orphaned workspace.");
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "Could not look for orphaned workspaces."),
        }
    }
}

/// A long poll the drain interrupted, kept to finish.
type InFlight<'a> = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<Vec<Received>, crate::aws::sqs::SqsError>>
            + Send
            + 'a,
    >,
>;

/// Whether Docker and the queue answered at their last use. Starts healthy: the
/// agent is only running once bootstrap reached both.
#[derive(Clone)]
struct Health(Arc<[std::sync::atomic::AtomicBool; 2]>);

impl Default for Health {
    fn default() -> Self {
        Health(Arc::new([
            std::sync::atomic::AtomicBool::new(true),
            std::sync::atomic::AtomicBool::new(true),
        ]))
    }
}

impl Health {
    fn set_docker(&self, ok: bool) {
        self.0[0].store(ok, std::sync::atomic::Ordering::Relaxed);
    }

    fn set_queue(&self, ok: bool) {
        self.0[1].store(ok, std::sync::atomic::Ordering::Relaxed);
    }

    fn docker_up(&self) -> bool {
        self.0[0].load(std::sync::atomic::Ordering::Relaxed)
    }

    fn queue_up(&self) -> bool {
        self.0[1].load(std::sync::atomic::Ordering::Relaxed)
    }

    fn is_healthy(&self) -> bool {
        self.docker_up() && self.queue_up()
    }

    /// Pets systemd's watchdog every `period` while healthy, so a wedged agent is
    /// restarted. Its own loop, not the receive loop's: a host whose slots are all
    /// busy for hours is healthy too.
    async fn pet_while_healthy(&self, period: Duration) -> Infallible {
        loop {
            if self.is_healthy() {
                systemd::watchdog();
            }
            tokio::time::sleep(period).await;
        }
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

/// What `/metrics` and the probes read at scrape time.
fn metrics_state(
    config: &Config,
    healthy: &Health,
    stop: &Stop,
) -> Arc<dyn Fn() -> crate::agent::metrics::State + Send + Sync> {
    let (healthy, stop, slots) = (healthy.clone(), stop.clone(), config.agent.slots);
    Arc::new(move || crate::agent::metrics::State {
        slots,
        docker_up: healthy.docker_up(),
        queue_up: healthy.queue_up(),
        draining: stop.is_draining(),
    })
}

/// Sleeps until `at`; never returns without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Logs a job task that panicked. Its message was neither deleted nor released, so
/// it returns to the queue when its visibility timeout ends.
fn reap(done: Result<(), tokio::task::JoinError>) {
    if let Err(error) = done {
        tracing::error!(%error, "A job task failed; its message returns after its visibility timeout.");
    }
}
