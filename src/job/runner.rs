//! One job's container, from pull to removal: the runner creates it (see
//! [`container`](crate::job::container) for what it is), starts it, reads its
//! output, enforces its timeout and the drain's [`Preemption`], and removes it and
//! its workspace whatever happens, then words the result
//! ([`outcome`](crate::job::outcome)).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::docker::{self, Docker, OutputStream};
use crate::host::cache::{Cache, CacheVolume};
use crate::host::cgroups::Sample;
use crate::host::credentials::{Broker, Issued};
use crate::host::disk::Disk;
use crate::host::secrets::Secrets;
use crate::host::stop::Preemption;
use crate::job::Job;
use crate::job::artifacts::{Collected, Sink};
use crate::job::cancel::{Cancel, Halt};
use crate::job::container::{self, Names, SECRETS_MOUNT, TOKEN_FILE};
use crate::job::live::LiveTail;
use crate::job::log::{JobLog, LogBody};
use crate::job::outcome::{Attempt, Outcome, RunError};
use crate::job::output::pump_output;
use crate::job::result::{JobResult, Usage};
use crate::job::sweep::Sweeper;
use crate::job::usage::{self, LiveUsage};
use crate::mask::Masker;
use pull::Pulled;

mod admission;
mod build;
mod caches;
mod equip;
mod exit;
mod pull;
mod services;
mod workspace;

mod cleanup;
pub use cleanup::Workspace;

/// The variables that point the AWS SDKs at the job's credentials.
fn credentials_env(issued: &Issued) -> [String; 2] {
    [
        format!("AWS_CONTAINER_CREDENTIALS_FULL_URI={}", issued.uri),
        format!("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE={SECRETS_MOUNT}/{TOKEN_FILE}"),
    ]
}

/// The exit code Docker gives a container it restores without its task (it ended
/// while dockerd was down, and its real exit status is gone).
const LOST_EXIT_CODE: i64 = 255;

/// Runs jobs on one Docker engine for one agent.
#[derive(Clone)]
pub struct Runner {
    docker: Docker,
    config: Arc<Config>,
    instance_id: String,
    secrets: Arc<Secrets>,
    masker: Arc<Masker>,
    cache: Option<Cache>,
    disk: Option<Arc<Disk>>,
    credentials: Option<Arc<Broker>>,
    /// Where jobs' `inputs` are read from.
    inputs: Option<aws_sdk_s3::Client>,
    admission: Option<Arc<crate::job::admission::Admission>>,
    /// The host's git mirrors, which jobs' `source` is checked out from.
    git: Option<Arc<crate::host::git::Mirrors>>,
    caches: Option<Arc<crate::host::caches::Caches>>,
    sweeper: Sweeper,
}

/// A finished job: its result (without the `log` location, which the caller
/// decides) and its whole log.
pub struct Finished {
    pub result: JobResult,
    pub log: LogBody,
    /// The files its `artifacts` matched, staged for upload; `None` when it
    /// named none, or its container did not run to an end (interrupted, error).
    pub artifacts: Option<Collected>,
    /// Its workspace volume, for [`Runner::remove_workspace`] once the result
    /// is on its way.
    pub workspace: Workspace,
}

/// How supervision of a started container ended.
enum Ended {
    Exited,
    TimedOut,
    Preempted,
    Cancelled,
    LogFull,
}

/// What the caller hands a run besides the job: what stops it before its end (the
/// drain, for all jobs, and this job's own cancel request), and where its output
/// goes live.
pub struct Controls<'a> {
    pub preemption: &'a Preemption,
    pub cancel: &'a Cancel,
    /// Each masked line also goes here, for the live log.
    pub live: Option<LiveTail>,
    /// Each artifact goes here as soon as it is read, to be uploaded.
    pub artifacts: Option<Sink>,
    /// The container's latest CPU and memory sample goes here, for live metrics.
    pub usage: Option<LiveUsage>,
}

impl Controls<'_> {
    /// Completes once the drain stops jobs or this one is cancelled: what cuts
    /// short each step before the container starts.
    async fn interrupted(&self) {
        tokio::select! {
            _ = self.preemption.stopping().cancelled() => {}
            () = self.cancel.requested() => {}
        }
    }
}

/// Which attempt of which job a run starts, under which names, with which
/// labels added (the agent's message receipt).
#[derive(Clone, Copy)]
struct Launch<'a> {
    job: &'a Job,
    attempt: u32,
    labels: &'a [(&'a str, &'a str)],
    names: &'a Names,
}

/// What a run learns on the way that its result reports.
#[derive(Default)]
struct Ran {
    /// The image that ran, by digest where the registry gave one.
    image: Option<String>,
    /// The container's last cgroup sample.
    usage: Option<Sample>,
    /// The job's services, while they run.
    services: Option<services::Running>,
    /// When its container started: its timeout runs from here.
    started: Option<Instant>,
    admission: Option<crate::job::admission::Admitted>,
    /// Its checkout, once made.
    source: Option<crate::job::source::SourceReport>,
    caches: Vec<crate::job::caches::CacheReport>,
    /// Its caches' paths that lie in its workspace volume, for their save.
    caches_in_workspace: Option<caches::InWorkspace>,
    /// Its `image_build` has no command to run first: no container of its own.
    build_only: bool,
    /// What its `image_build` pushed.
    images: Vec<crate::job::build::BuiltImage>,
}

/// A created and started container, and what must live as long as it does.
struct Started {
    output: OutputStream,
    started_at: chrono::DateTime<chrono::Utc>,
    /// The job's credentials token works only while this is held.
    _credentials: Option<Issued>,
    /// A cache refresh removes the old volume only once no running job holds it.
    _cache: Option<Arc<CacheVolume>>,
}

impl Runner {
    pub fn new(docker: Docker, config: Arc<Config>, sweeper: Sweeper, instance_id: &str) -> Self {
        Runner {
            docker,
            config,
            instance_id: instance_id.to_owned(),
            secrets: Arc::default(),
            masker: Arc::new(Masker::none()),
            cache: None,
            disk: None,
            credentials: None,
            inputs: None,
            admission: None,
            git: None,
            caches: None,
            sweeper,
        }
    }

    /// Jobs get their secrets from `secrets`; every log is masked against all of it.
    pub fn with_secrets(mut self, secrets: Arc<Secrets>) -> Self {
        self.masker = Arc::new(secrets.masker());
        self.secrets = secrets;
        self
    }

    /// Jobs mount the current cache volume read-only.
    pub fn with_cache(mut self, cache: Option<Cache>) -> Self {
        self.cache = cache;
        self
    }

    /// Each job's image is recorded as used, for the disk's image collection.
    pub fn with_disk(mut self, disk: Option<Arc<Disk>>) -> Self {
        self.disk = disk;
        self
    }

    /// Jobs' `inputs` are read from S3 with `s3`.
    pub fn with_inputs(mut self, s3: Option<aws_sdk_s3::Client>) -> Self {
        self.inputs = s3;
        self
    }

    /// Jobs' `source` is checked out from `mirrors`.
    pub fn with_git(mut self, mirrors: Option<Arc<crate::host::git::Mirrors>>) -> Self {
        self.git = mirrors;
        self
    }

    /// Jobs whose profile names a role get its credentials from `broker`.
    pub fn with_credentials(mut self, broker: Option<Arc<Broker>>) -> Self {
        self.credentials = broker;
        self
    }

    /// Runs `job` to the end. The drain's preemption or the job's cancel stops
    /// it: the container gets SIGTERM and `drain.stop_grace_secs`, or SIGKILL at
    /// once when the drain kills. `labels` are added to the container's (the agent
    /// keeps the SQS receipt there, for recovery after a crash).
    pub async fn run(
        &self,
        job: &Job,
        attempt: u32,
        labels: &[(&str, &str)],
        controls: Controls<'_>,
    ) -> Finished {
        let started_at = chrono::Utc::now();
        let clock = Instant::now();
        let names = Names::new(&job.id, attempt, &self.config.agent.secrets_dir);
        self.sweeper.started(&names.container, &names.workspace);
        let spool = self.config.agent.work_dir.join("spool");
        let mut log = JobLog::new(self.masker.clone())
            .spool_to(spool.join(format!("{}.log", names.container)))
            .live_to(controls.live.clone())
            .capped_at(job.max_log_bytes);
        let mut ran = Ran::default();
        let launch = Launch {
            job,
            attempt,
            labels,
            names: &names,
        };
        let outcome = self
            .run_container(&launch, &controls, &mut log, &mut ran)
            .await;
        let service_usage = match ran.services.take() {
            Some(running) => running.finish(&mut log).await,
            None => Default::default(),
        };
        let outcome = self
            .build_image(&launch, &controls, &mut log, &mut ran, outcome)
            .await;
        let artifacts = self
            .artifacts(job, &names, &outcome, &controls, ran.started)
            .await;
        self.save_caches(job, &names, &outcome, &controls, &mut ran)
            .await;
        let workspace = self.clean_up(job, &names).await;

        let (status, exit_code, reason) = outcome.describe(
            job,
            controls.preemption.reason(),
            controls.cancel.halt_for(),
        );
        // Docker's errors and an input's entry names carry the job's own text.
        let reason = reason.map(|r| {
            crate::rules::bounded_text(&self.masker.mask(&r), crate::job::spec::MAX_REASON_BYTES)
        });
        let duration_ms = clock.elapsed().as_millis() as u64;
        tracing::info!(
            status = status.as_str(),
            exit_code,
            duration_ms,
            log_lines = log.line_count(),
            "Job finished."
        );
        let attempt = Attempt {
            job,
            attempt,
            instance_id: &self.instance_id,
            image: ran.image,
            started_at,
            duration_ms,
        };
        let mut result = attempt.result(status, exit_code, reason);
        result.admission = self.masked(ran.admission);
        result.source = ran.source;
        result.caches = ran.caches;
        result.images = ran.images;
        result.usage = Usage::measured(ran.usage, service_usage);
        Finished {
            result,
            log: log.into_body(),
            workspace,
            artifacts,
        }
    }

    async fn run_container(
        &self,
        launch: &Launch<'_>,
        controls: &Controls<'_>,
        log: &mut JobLog,
        ran: &mut Ran,
    ) -> Outcome {
        let Launch { job, names, .. } = *launch;
        let started = match self.start(launch, controls, log, ran).await {
            Ok(Some(started)) => started,
            Ok(None) if ran.build_only => return Outcome::Built,
            Ok(None) if controls.cancel.reason().is_some() => {
                return Outcome::Cancelled { code: None };
            }
            Ok(None) => return Outcome::Interrupted { code: None },
            Err(error) => return Outcome::Error(error),
        };
        let exited = CancellationToken::new();
        let log_full = log.full();
        // Each time Docker failed to answer the wait: an output stream older than
        // the last of these may have been cut short.
        let outages = AtomicU32::new(0);
        let docker = &self.docker;
        let pump = pump_output(
            docker,
            &names.container,
            started.output,
            log,
            &exited,
            &outages,
            ran.services.as_mut().map(|s| &mut s.output),
        );
        let supervise = async {
            let ended = self
                .supervise(&names.container, job.timeout, controls, &log_full, &outages)
                .await;
            exited.cancel();
            ended
        };
        let live = controls.usage.clone().unwrap_or_default();
        let limit = job.resources.memory_mb.saturating_mul(1024 * 1024);
        let meter = usage::meter(docker, &names.container, &exited, &live, Some(limit));
        let ((), ended, used) = tokio::join!(pump, supervise, meter);
        ran.usage = used;
        let since = started.started_at.timestamp() - 1;
        match ended {
            Err(e) => Outcome::Error(e.into()),
            // Docker restored the container as ended with 255 because it ended while
            // dockerd was down and its exit status was lost with the shim: what the
            // job did is unknown, which is the host's failure, not the job's.
            Ok((Ended::Exited, LOST_EXIT_CODE)) if outages.load(Ordering::Relaxed) > 0 => {
                Outcome::Error(RunError::ExitLost {
                    container: names.container.clone(),
                })
            }
            Ok((Ended::Exited, code)) => match self.oom_killed(&names.container, code, since).await
            {
                Ok(oom_killed) => Outcome::Exited { code, oom_killed },
                Err(e) => Outcome::Error(e.into()),
            },
            Ok((Ended::TimedOut, code)) => Outcome::TimedOut { code },
            Ok((Ended::Preempted, code)) => Outcome::Interrupted { code: Some(code) },
            Ok((Ended::Cancelled, code)) => Outcome::Cancelled { code: Some(code) },
            Ok((Ended::LogFull, code)) => Outcome::LogFull { code },
        }
    }

    /// Pulls the image, makes the workspace, the secret files and the credentials,
    /// then creates, attaches to and starts the container. `None`: preempted or
    /// cancelled during the pull.
    async fn start(
        &self,
        launch: &Launch<'_>,
        controls: &Controls<'_>,
        log: &mut JobLog,
        ran: &mut Ran,
    ) -> Result<Option<Started>, RunError> {
        let Launch {
            job,
            attempt,
            labels: extra_labels,
            names,
        } = *launch;
        let docker = &self.docker;
        let pulled = self.pull(job, controls, &mut ran.admission).await?;
        let Some(Pulled { image, services }) = pulled else {
            return Ok(None);
        };
        ran.image = Some(image.reference.clone());
        let mut labels = self.labels(job, attempt, extra_labels);
        if !job.services.is_empty() {
            // Not the caller's labels (the agent's message receipt): recovery hands
            // a message back once, for the job's own container.
            let base = self.labels(job, attempt, &[]);
            // Pulls and starts; cut short by a stop or a cancel, whatever it
            // made is removed by name in `clean_up`.
            let started = tokio::select! {
                started = self.start_services(job, names, &base, services) => started?,
                () = controls.interrupted() => return Ok(None),
            };
            let running = ran.services.insert(started);
            tokio::select! {
                ready = self.await_ready(job, names, running, log) => ready.map_err(RunError::Service)?,
                () = controls.interrupted() => return Ok(None),
            }
        }
        docker.create_volume(&names.workspace, &labels).await?;
        labels.insert(docker::LABEL_WORKSPACE.to_owned(), names.workspace.clone());
        // Dropped on a stop or a cancel, which kills git or stops the unpacking.
        tokio::select! {
            placed = self.fill_workspace(job, &names.workspace, image.user.as_deref()) => ran.source = placed?,
            () = controls.interrupted() => return Ok(None),
        }
        if job.command.is_none() && job.image_build.is_some() {
            // The build is the whole job: its workspace is all it needs.
            ran.build_only = true;
            return Ok(None);
        }
        let credentials = self.credentials(job, log)?;
        let token = credentials.as_ref().map(Issued::token);
        let (mut env, mut mounts) = self.secret_files(job, names, image.user.as_deref(), token)?;
        env.extend(credentials.as_ref().into_iter().flat_map(credentials_env));
        // Held for the whole run: a cache refresh removes the old volume only once
        // no running job mounts it.
        let cache = self.cache.as_ref().and_then(Cache::current);
        mounts.extend(self.cache_mount(cache.as_deref()));
        let mut spec = container::spec(job, attempt, names, image.id, labels, env, mounts);
        if !job.services.is_empty() {
            // In the sandbox's namespace, beside its services.
            spec.network = format!("container:{}", names.sandbox);
        }
        let Some(output) = self.warm(&spec, job, &image.user, controls, ran).await? else {
            return Ok(None);
        };
        let started_at = chrono::Utc::now();
        docker.start(&names.container).await?;
        ran.started = Some(Instant::now());
        tracing::info!(
            image = %image.reference,
            container = %names.container,
            timeout_secs = job.timeout.as_secs(),
            "Job started."
        );
        Ok(Some(Started {
            output,
            started_at,
            _credentials: credentials,
            _cache: cache,
        }))
    }

    /// Waits for the container to exit, its timeout, preemption, a cancel or its
    /// log filling up; stops it in the latter four cases. Returns how it ended and the exit code.
    async fn supervise(
        &self,
        container: &str,
        timeout: Duration,
        controls: &Controls<'_>,
        log_full: &CancellationToken,
        outages: &AtomicU32,
    ) -> Result<(Ended, i64), docker::DockerError> {
        let docker = &self.docker;
        let preemption = controls.preemption;
        let ended = tokio::select! {
            code = self.wait_through_outages(container, outages) => return Ok((Ended::Exited, code?)),
            _ = tokio::time::sleep(timeout) => Ended::TimedOut,
            _ = preemption.stopping().cancelled() => Ended::Preempted,
            () = controls.cancel.requested() => Ended::Cancelled,
            () = log_full.cancelled() => Ended::LogFull,
        };
        let grace = self.config.drain.stop_grace;
        match ended {
            Ended::TimedOut => tracing::warn!(
                timeout_secs = timeout.as_secs(),
                grace_secs = grace.as_secs(),
                "Job timed out; stopping it."
            ),
            Ended::Cancelled => match controls.cancel.halt_for() {
                Some(Halt::OverLimit(reason)) => tracing::warn!(
                    grace_secs = grace.as_secs(),
                    %reason,
                    "Job over a host limit; stopping it."
                ),
                halt => tracing::info!(
                    grace_secs = grace.as_secs(),
                    reason = halt.map(Halt::reason),
                    "Job cancelled; stopping it."
                ),
            },
            _ => tracing::info!(grace_secs = grace.as_secs(), "Stopping job."),
        }
        // A forced stop cuts the grace period short: SIGKILL now.
        tokio::select! {
            biased;
            _ = preemption.killing().cancelled() => docker.stop(container, Duration::ZERO).await?,
            stopped = docker.stop(container, grace) => stopped?,
        }
        let code = docker.wait(container).await?;
        Ok((ended, code))
    }
}
