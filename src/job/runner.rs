//! Runs one validated job in a fresh, locked-down container and turns what happened
//! into a [`JobResult`].
//!
//! The container gets: its own empty workspace volume; the cache volume read-only;
//! memory (no swap), CPU and pid limits; `no-new-privileges`; every capability
//! dropped but the few a build needs (see `CAPABILITIES`); no Docker socket (nothing
//! of the host is bind-mounted); `CI=true`, `DECKHAND_JOB_ID`, `DECKHAND_ATTEMPT`.
//! Whatever happens, the container and the workspace are removed before `run`
//! returns.

use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use std::path::PathBuf;
use std::sync::Arc;

use crate::backoff::Backoff;
use crate::config::Config;
use crate::docker::{self, ContainerSpec, Docker, Output, RegistryAuth};
use crate::host::cache::Cache;
use crate::host::credentials::Broker;
use crate::host::disk::Disk;
use crate::host::secrets::Secrets;
use crate::host::stop::Stop;
use crate::job::log::{JobLog, LogBody, Stream};
use crate::job::mask::Masker;
use crate::job::result::{AGENT_VERSION, JobResult, Status, timestamp};
use crate::job::{Job, Problem, Rejection};

/// Capabilities a job keeps; Docker's default set minus NET_RAW (packet spoofing),
/// MKNOD (device nodes), AUDIT_WRITE, SETFCAP, SETPCAP and SYS_CHROOT, which builds
/// do not need. What is left lets a root build install packages (chown, setuid to a
/// package manager's user) and manage its own processes.
pub const CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "NET_BIND_SERVICE",
];

/// After the container exits, how long its output may take to drain before the
/// log is closed without the rest.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);
/// An output stream that ends while the container is not known to have exited
/// was cut: after this long without the exit, it is read again. Longer than the
/// outage backoff's longest step, so an exit seen late after an outage is not
/// taken for another cut.
const STREAM_END_GRACE: Duration = Duration::from_secs(6);
/// How long cleanup retries while Docker does not answer. What is still left
/// then is removed by the orphan sweep of the agent's next start.
const CLEANUP_PATIENCE: Duration = Duration::from_secs(30);

/// Retries while Docker does not answer: quick at first, since most outages are a
/// restart of a few seconds.
fn outage_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(250), Duration::from_secs(5))
}

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
    /// The containers of the jobs running now.
    active: Arc<Mutex<HashSet<String>>>,
    /// A cleanup left something behind: sweep once Docker answers.
    leftovers: Arc<AtomicBool>,
}

/// A finished job: its result (without the `log` location, which the caller
/// decides) and its whole log.
pub struct Finished {
    pub result: JobResult,
    pub log: LogBody,
}

/// How supervision of a started container ended.
enum Ended {
    Exited,
    TimedOut,
    Preempted,
}

/// What the runner learned before building the result.
enum Outcome {
    Exited { code: i64, oom_killed: bool },
    TimedOut { code: i64 },
    Interrupted { code: Option<i64> },
    Error(String),
}

impl Runner {
    pub fn new(docker: Docker, config: Arc<Config>, instance_id: String) -> Self {
        Runner {
            docker,
            config,
            instance_id,
            secrets: Arc::default(),
            masker: Arc::new(Masker::none()),
            cache: None,
            disk: None,
            credentials: None,
            active: Arc::default(),
            leftovers: Arc::default(),
        }
    }

    /// Jobs get their secrets from `secrets`; every log is masked against all of it.
    pub fn with_secrets(mut self, secrets: Arc<Secrets>) -> Self {
        self.masker = Arc::new(secrets.masker());
        self.secrets = secrets;
        self
    }

    /// Jobs mount the current cache volume read-only.
    pub fn with_cache(mut self, cache: Cache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Each job's image is recorded as used, for the disk's image collection.
    pub fn with_disk(mut self, disk: Arc<Disk>) -> Self {
        self.disk = Some(disk);
        self
    }

    /// Jobs whose profile names a role get its credentials from `broker`.
    pub fn with_credentials(mut self, broker: Arc<Broker>) -> Self {
        self.credentials = Some(broker);
        self
    }

    fn role_arn(&self, job: &Job) -> Option<&str> {
        self.config
            .profile(&job.profile)
            .and_then(|p| p.role_arn.as_deref())
    }

    pub fn disk(&self) -> Option<&Arc<Disk>> {
        self.disk.as_ref()
    }

    pub fn masker(&self) -> &Arc<Masker> {
        &self.masker
    }

    pub fn cache(&self) -> Option<&Cache> {
        self.cache.as_ref()
    }

    /// A rejection when the job asks for a secret the bundle does not have (the
    /// profile allows it, but the pool was sealed without it).
    pub fn check_secrets(&self, job: &Job) -> Result<(), Rejection> {
        let missing: Vec<Problem> = job
            .secrets
            .iter()
            .filter(|name| self.secrets.get(name).is_none())
            .map(|name| Problem {
                field: format!("secrets.{name}"),
                rule: "not in the pool's secret bundle".into(),
            })
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Rejection {
                id: Some(job.id.clone()),
                problems: missing,
            })
        }
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Runs `job` to the end. `stop` preempts it: when it begins to drain, the
    /// container gets SIGTERM and `drain.stop_grace_secs`; when it is forced, SIGKILL
    /// at once. `labels` are added to the container's (the agent keeps the SQS
    /// receipt there, for recovery after a crash).
    pub async fn run(
        &self,
        job: &Job,
        attempt: u32,
        labels: &[(&str, &str)],
        stop: &Stop,
    ) -> Finished {
        let started_at = chrono::Utc::now();
        let clock = Instant::now();
        let names = Names::new(&job.id, attempt, &self.config.agent.secrets_dir);
        self.active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(names.container.clone());
        let mut log = JobLog::new(self.masker.clone()).spool_to(
            self.config
                .agent
                .work_dir
                .join("spool")
                .join(format!("{}.log", names.container)),
        );
        let mut image_ran = None;

        let outcome = self
            .run_container(job, attempt, labels, &names, stop, &mut log, &mut image_ran)
            .await;
        self.clean_up(&names).await;
        self.active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&names.container);

        let (status, exit_code, reason) = match outcome {
            Outcome::Exited { code: 0, .. } => (Status::Succeeded, Some(0), None),
            Outcome::Exited {
                code,
                oom_killed: true,
            } => (
                Status::Failed,
                Some(code),
                Some(format!(
                    "killed: out of memory (limit {} MB)",
                    job.resources.memory_mb
                )),
            ),
            Outcome::Exited { code, .. } => (
                Status::Failed,
                Some(code),
                Some(format!("exited with code {code}")),
            ),
            Outcome::TimedOut { code } => (
                Status::TimedOut,
                Some(code),
                Some(format!(
                    "still running after timeout_secs = {}; stopped",
                    job.timeout.as_secs()
                )),
            ),
            Outcome::Interrupted { code } => (
                Status::Interrupted,
                code,
                Some(match stop.reason() {
                    Some(reason) => format!("interrupted: {reason}"),
                    None => "interrupted".to_owned(),
                }),
            ),
            Outcome::Error(message) => (Status::Error, None, Some(message)),
        };
        let reason = reason.map(|r| self.masker.mask(&r).into_owned());
        let duration_ms = clock.elapsed().as_millis() as u64;
        tracing::info!(
            status = status.as_str(),
            exit_code,
            duration_ms,
            log_lines = log.line_count(),
            "Job finished."
        );
        Finished {
            result: JobResult {
                version: crate::job::spec::VERSION,
                id: job.id.clone(),
                status,
                exit_code,
                reason,
                attempt,
                instance_id: self.instance_id.clone(),
                agent_version: AGENT_VERSION.to_owned(),
                image: image_ran.or_else(|| Some(job.image.to_string())),
                started_at: timestamp(started_at),
                finished_at: timestamp(chrono::Utc::now()),
                duration_ms,
                log: None,
            },
            log: log.into_body(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_container(
        &self,
        job: &Job,
        attempt: u32,
        extra_labels: &[(&str, &str)],
        names: &Names,
        stop: &Stop,
        log: &mut JobLog,
        image_ran: &mut Option<String>,
    ) -> Outcome {
        let docker = &self.docker;
        let auth = match self.registry_auth(&job.image.registry) {
            Ok(auth) => auth,
            Err(message) => return Outcome::Error(message),
        };
        let pull = docker.ensure_image(&job.image, self.config.images.pull_timeout, auth.as_ref());
        let image = tokio::select! {
            image = pull => match image {
                Ok(image) => image,
                Err(e) => return Outcome::Error(e.to_string()),
            },
            // Dropping a pull only stops our reading of its progress.
            _ = stop.draining().cancelled() => return Outcome::Interrupted { code: None },
        };
        *image_ran = Some(image.reference.clone());
        if let Some(disk) = &self.disk {
            disk.used(&image.id);
        }

        let mut labels = HashMap::from([
            (docker::LABEL_MANAGED.to_owned(), "true".to_owned()),
            (docker::LABEL_JOB_ID.to_owned(), job.id.clone()),
            (docker::LABEL_ATTEMPT.to_owned(), attempt.to_string()),
            (docker::LABEL_AGENT.to_owned(), self.instance_id.clone()),
        ]);
        labels.extend(
            extra_labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        if let Err(e) = docker.create_volume(&names.workspace, &labels).await {
            return Outcome::Error(e.to_string());
        }
        labels.insert(docker::LABEL_WORKSPACE.to_owned(), names.workspace.clone());
        let mut secret_env = Vec::new();
        if !job.secrets.is_empty() {
            match self.write_secrets(job, names, image.user.as_deref()) {
                Ok(env) => secret_env = env,
                Err(message) => return Outcome::Error(message),
            }
        }
        // Held for the whole run: a cache refresh removes the old volume only once
        // no running job mounts it.
        let cache_volume = self.cache.as_ref().and_then(Cache::current);
        // Held until the container is gone: the job's credentials token works
        // only while it runs.
        let credentials = match (self.role_arn(job), &self.credentials) {
            (None, _) => None,
            (Some(role_arn), Some(broker)) => {
                Some(broker.issue(&job.id, role_arn, log.later_secrets()))
            }
            (Some(_), None) => {
                return Outcome::Error(format!(
                    "profile {:?} has a role_arn: per-job AWS credentials are served by `deckhand run` only",
                    job.profile
                ));
            }
        };
        if let Some(issued) = &credentials {
            secret_env.extend(issued.env.iter().map(|(k, v)| format!("{k}={v}")));
        }
        let mut spec = self.container_spec(job, attempt, names, image.id, labels, secret_env);
        if let Some(volume) = &cache_volume {
            spec.mounts.push(docker::volume_mount(
                volume.name(),
                &self.config.cache.mount,
                true,
            ));
        }
        if !job.secrets.is_empty() {
            spec.mounts
                .push(docker::bind_mount(&names.secrets, SECRETS_MOUNT, true));
        }
        if let Err(e) = docker.create_container(&spec).await {
            return Outcome::Error(e.to_string());
        }
        let output = match docker.attach(&names.container).await {
            Ok(output) => output,
            Err(e) => return Outcome::Error(e.to_string()),
        };
        let started = chrono::Utc::now();
        if let Err(e) = docker.start(&names.container).await {
            return Outcome::Error(e.to_string());
        }
        tracing::info!(
            image = %image.reference,
            container = %names.container,
            timeout_secs = job.timeout.as_secs(),
            "Job started."
        );

        let exited = CancellationToken::new();
        // Each time Docker failed to answer the wait: an output stream older than
        // the last of these may have been cut short.
        let outages = AtomicU32::new(0);
        let pump = pump_output(docker, &names.container, output, log, &exited, &outages);
        let supervise = async {
            let ended = self
                .supervise(&names.container, job.timeout, stop, &outages)
                .await;
            exited.cancel();
            ended
        };
        let ((), ended) = tokio::join!(pump, supervise);
        match ended {
            Err(e) => Outcome::Error(e.to_string()),
            Ok((Ended::Exited, code)) => match self
                .oom_killed(&names.container, code, started.timestamp() - 1)
                .await
            {
                Ok(oom_killed) => Outcome::Exited { code, oom_killed },
                Err(e) => Outcome::Error(e.to_string()),
            },
            Ok((Ended::TimedOut, code)) => Outcome::TimedOut { code },
            Ok((Ended::Preempted, code)) => Outcome::Interrupted { code: Some(code) },
        }
    }

    /// Whether the kernel's OOM killer ended the container. dockerd sets
    /// `State.OOMKilled` only if containerd's OOM event reached it before the exit
    /// event; under load on cgroup v1 it can come after (seen in the test suite),
    /// and then only Docker's `oom` event tells, which a busy dockerd may log
    /// seconds later. So a SIGKILLed job is asked about both ways for up to 5 s
    /// before it is taken for a plain `kill -9`.
    async fn oom_killed(
        &self,
        container: &str,
        code: i64,
        started: i64,
    ) -> Result<bool, docker::DockerError> {
        const SIGKILLED: i64 = 128 + 9;
        let mut asked = 0;
        loop {
            let exit = self.docker.exit_state(container).await?;
            if exit.oom_killed || code != SIGKILLED {
                return Ok(exit.oom_killed);
            }
            if self.docker.oom_event(container, started).await? {
                return Ok(true);
            }
            if asked == 25 {
                return Ok(false);
            }
            asked += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits for the container to exit, its timeout, or preemption; stops it in the
    /// latter two cases. Returns how it ended and the exit code.
    async fn supervise(
        &self,
        container: &str,
        timeout: Duration,
        stop: &Stop,
        outages: &AtomicU32,
    ) -> Result<(Ended, i64), docker::DockerError> {
        let docker = &self.docker;
        let ended = tokio::select! {
            code = self.wait_through_outages(container, outages) => return Ok((Ended::Exited, code?)),
            _ = tokio::time::sleep(timeout) => Ended::TimedOut,
            _ = stop.draining().cancelled() => Ended::Preempted,
        };
        let grace = self.config.drain.stop_grace;
        match ended {
            Ended::TimedOut => tracing::warn!(
                timeout_secs = timeout.as_secs(),
                grace_secs = grace.as_secs(),
                "Job timed out; stopping it."
            ),
            _ => tracing::info!(grace_secs = grace.as_secs(), "Stopping job."),
        }
        // A forced stop cuts the grace period short: SIGKILL now.
        tokio::select! {
            biased;
            _ = stop.forced().cancelled() => docker.stop(container, Duration::ZERO).await?,
            stopped = docker.stop(container, grace) => stopped?,
        }
        let code = docker.wait(container).await?;
        Ok((ended, code))
    }

    /// Waits for the container to exit, riding out a Docker that stops answering:
    /// the container runs on without us (a dockerd restart with `live-restore`, a
    /// dropped socket), so losing the connection is no reason to give the job up.
    /// The job's timeout and the drain still apply around it.
    async fn wait_through_outages(
        &self,
        container: &str,
        outages: &AtomicU32,
    ) -> Result<i64, docker::DockerError> {
        let mut backoff = outage_backoff();
        loop {
            match self.docker.wait(container).await {
                Err(error) if error.is_unreachable() => {
                    outages.fetch_add(1, Ordering::SeqCst);
                    let delay = backoff.next_delay();
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "Lost Docker while the job runs; waiting for it to answer again.");
                    tokio::time::sleep(delay).await;
                }
                waited => {
                    if backoff.reset() {
                        tracing::info!("Docker answers again; the job's container is still there.");
                    }
                    return waited;
                }
            }
        }
    }

    fn container_spec(
        &self,
        job: &Job,
        attempt: u32,
        names: &Names,
        image_id: String,
        labels: HashMap<String, String>,
        secret_env: Vec<String>,
    ) -> ContainerSpec {
        let mut env: Vec<String> = job.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.extend(secret_env);
        // Ours last: Docker keeps the last of duplicate names.
        env.push("CI=true".into());
        env.push(format!("DECKHAND_JOB_ID={}", job.id));
        env.push(format!("DECKHAND_ATTEMPT={attempt}"));

        let mut mounts = vec![docker::volume_mount(&names.workspace, &job.workdir, false)];
        if let Some(cache) = &self.config.cache.volume
            && self.cache.is_none()
        {
            mounts.push(docker::volume_mount(cache, &self.config.cache.mount, true));
        }
        ContainerSpec {
            name: names.container.clone(),
            image_id,
            command: job.command.clone(),
            env,
            workdir: job.workdir.clone(),
            labels,
            mounts,
            memory_bytes: (job.resources.memory_mb * 1024 * 1024) as i64,
            nano_cpus: (job.resources.cpus * 1e9).round() as i64,
            pids: job.resources.pids as i64,
            network: job.network.clone(),
            cap_add: CAPABILITIES.iter().map(|c| (*c).to_owned()).collect(),
        }
    }

    /// `user:password` for `registry`, from the secret `images.registry_auth` names.
    pub fn registry_auth(&self, registry: &str) -> Result<Option<RegistryAuth>, String> {
        let Some(secret) = self.config.images.registry_auth.get(registry) else {
            return Ok(None);
        };
        let value = self.secrets.get(secret).ok_or_else(|| {
            format!("images.registry_auth names secret {secret:?} for {registry}, which is not in the bundle")
        })?;
        let (username, password) = value
            .expose()
            .trim_end()
            .split_once(':')
            .ok_or_else(|| format!("secret {secret:?} for {registry} is not user:password"))?;
        Ok(Some(RegistryAuth {
            username: username.to_owned(),
            password: password.to_owned(),
        }))
    }

    /// Writes the job's secrets as files (0400, owned by the container's user) in a
    /// directory of its own under `agent.secrets_dir` (tmpfs); returns the
    /// environment variables the profile exposes.
    fn write_secrets(
        &self,
        job: &Job,
        names: &Names,
        image_user: Option<&str>,
    ) -> Result<Vec<String>, String> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
        let dir = &names.secrets;
        let fail = |what: &str, e: std::io::Error| {
            format!("write the job's secrets ({what} {}): {e}", dir.display())
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| fail("create", e))?;
        let (uid, gid) = container_ids(image_user);
        let profile = self.config.profile(&job.profile);
        let mut env = Vec::new();
        for name in &job.secrets {
            let value = self
                .secrets
                .get(name)
                .ok_or_else(|| format!("secret {name:?} vanished from the bundle"))?;
            let path = dir.join(name);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .open(&path)
                .map_err(|e| fail("open", e))?;
            std::io::Write::write_all(&mut file, value.expose().as_bytes())
                .map_err(|e| fail("write", e))?;
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(|e| fail("chown", e))?;
            if profile.is_some_and(|p| p.env_secrets.contains(name)) {
                env.push(format!(
                    "{}={}",
                    crate::rules::secret_env_name(name),
                    value.expose()
                ));
            }
        }
        // The container's user must be able to enter the directory; nobody else.
        std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(|e| fail("chown", e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o500))
            .map_err(|e| fail("chmod", e))?;
        Ok(env)
    }

    /// Removes the container and the workspace, retrying for `CLEANUP_PATIENCE`
    /// while Docker does not answer. Never cancelled: a second signal must not
    /// leave them behind.
    async fn clean_up(&self, names: &Names) {
        if names.secrets.exists()
            && let Err(error) = remove_secrets_dir(&names.secrets)
        {
            tracing::error!(%error, dir = %names.secrets.display(), "Could not remove the job's secrets.");
        }
        let give_up = Instant::now() + CLEANUP_PATIENCE;
        let mut backoff = outage_backoff();
        // The volume is in use until the container is gone.
        let removed = loop {
            match self.docker.remove_container(&names.container).await {
                Ok(()) => break true,
                Err(error) if error.is_unreachable() && Instant::now() < give_up => {
                    tracing::warn!(%error, "Could not remove the job's container yet; Docker does not answer.");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(error) => {
                    tracing::warn!(%error, "Could not remove the job's container; removing it once Docker answers.");
                    break false;
                }
            }
        };
        let removed = removed
            && match self.docker.remove_volume(&names.workspace).await {
                Ok(()) => true,
                Err(error) => {
                    tracing::warn!(%error, "Could not remove the job's workspace volume.");
                    false
                }
            };
        if !removed {
            self.leftovers.store(true, Ordering::SeqCst);
        }
    }

    /// Removes what a job's cleanup could not, Docker having been away for longer
    /// than `CLEANUP_PATIENCE`: this agent's containers that no running job owns,
    /// with their workspaces. Their jobs' messages met their fate already. Cheap
    /// when there is nothing to do; the agent calls it whenever Docker answers.
    pub async fn sweep_leftovers(&self) {
        if !self.leftovers.swap(false, Ordering::SeqCst) {
            return;
        }
        let found = match self
            .docker
            .list_managed(&[(docker::LABEL_AGENT, &self.instance_id)])
            .await
        {
            Ok(found) => found,
            Err(error) => {
                self.leftovers.store(true, Ordering::SeqCst);
                tracing::warn!(%error, "Could not look for containers earlier jobs left.");
                return;
            }
        };
        let active = self
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for container in found.into_iter().filter(|c| !active.contains(&c.name)) {
            let removed = match self.docker.remove_container(&container.name).await {
                Ok(()) => match container.labels.get(docker::LABEL_WORKSPACE) {
                    Some(volume) => self.docker.remove_volume(volume).await,
                    None => Ok(()),
                },
                Err(error) => Err(error),
            };
            match removed {
                Ok(()) => {
                    tracing::info!(container = %container.name, "Removed a container an earlier job's cleanup could not.")
                }
                Err(error) => {
                    self.leftovers.store(true, Ordering::SeqCst);
                    tracing::warn!(%error, container = %container.name, "Could not remove a container an earlier job left.");
                }
            }
        }
    }
}

/// Reads the container's output into the log until it ends, or until
/// `OUTPUT_DRAIN` after the container exited.
///
/// A stream lost while the container runs (dockerd restarted, the socket
/// dropped) is read again from the log driver once Docker answers, skipping the
/// bytes of each stream already logged, so the log comes out whole and once.
async fn pump_output(
    docker: &Docker,
    container: &str,
    mut output: docker::OutputStream,
    log: &mut JobLog,
    exited: &CancellationToken,
    outages: &AtomicU32,
) {
    let drained = async {
        exited.cancelled().await;
        tokio::time::sleep(OUTPUT_DRAIN).await;
    };
    tokio::pin!(drained);
    let mut bytes = SeenBytes::default();
    let mut replaying = false;
    // The outage count when the current stream began.
    let mut stream_began = 0;
    let mut backoff = outage_backoff();
    loop {
        let lost = tokio::select! {
            item = output.next() => match item {
                Some(Ok(chunk)) => {
                    bytes.push_unseen(log, chunk);
                    continue;
                }
                Some(Err(error)) if replaying && !error.is_unreachable() => {
                    // The log driver cannot be read back (`none`, `syslog`...).
                    tracing::warn!(%error, "Cannot read the job's output again; its log misses what came while Docker was away.");
                    break;
                }
                Some(Err(error)) => error.to_string(),
                None => tokio::select! {
                    // The end, unless Docker went away since the stream began: a
                    // cut stream ends the same way, and the exit may have come
                    // after. Then what is left is read back once more.
                    _ = exited.cancelled() => {
                        if outages.load(Ordering::SeqCst) == stream_began {
                            break;
                        }
                        "the stream ended while Docker was away".to_owned()
                    }
                    _ = tokio::time::sleep(STREAM_END_GRACE) => "the stream ended while the container runs".to_owned(),
                },
            },
            _ = &mut drained => {
                tracing::warn!("The job's output did not end after it exited; closing the log.");
                break;
            }
        };
        let delay = backoff.next_delay();
        tracing::warn!(error = %lost, retry_in_ms = delay.as_millis() as u64, "Lost the job's output stream; reading it again.");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut drained => break,
        }
        bytes.replay();
        replaying = true;
        stream_began = outages.load(Ordering::SeqCst);
        output = docker.replay(container, !exited.is_cancelled());
    }
    log.finish();
}

/// How much of each stream is in the log, and how much of a replay (which starts
/// from the container's first byte) to pass over.
#[derive(Default)]
struct SeenBytes {
    logged: [usize; 2],
    to_skip: [usize; 2],
}

impl SeenBytes {
    fn push_unseen(&mut self, log: &mut JobLog, chunk: Output) {
        let (stream, i, data) = match chunk {
            Output::Stdout(data) => (Stream::Stdout, 0, data),
            Output::Stderr(data) => (Stream::Stderr, 1, data),
        };
        let skip = self.to_skip[i].min(data.len());
        self.to_skip[i] -= skip;
        if skip < data.len() {
            log.push(stream, &data[skip..]);
            self.logged[i] += data.len() - skip;
        }
    }

    fn replay(&mut self) {
        self.to_skip = self.logged;
    }
}

/// Where a job's secrets appear in its container.
pub const SECRETS_MOUNT: &str = "/run/secrets";

/// The uid and gid to own secret files: the image's numeric `USER`, else root. A
/// user *name* would need the image's /etc/passwd; images that want secrets as a
/// non-root user set a numeric USER.
fn container_ids(user: Option<&str>) -> (u32, u32) {
    let Some(user) = user else { return (0, 0) };
    let (uid, gid) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    match uid.parse::<u32>() {
        Ok(uid) => (uid, gid.and_then(|g| g.parse().ok()).unwrap_or(uid)),
        Err(_) => {
            tracing::warn!(
                user,
                "The image's USER is a name; its secret files are owned by root."
            );
            (0, 0)
        }
    }
}

fn remove_secrets_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // 0500 directories cannot be emptied until writable again.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    std::fs::remove_dir_all(dir)
}

/// The Docker names of one attempt's container and workspace, and its secrets
/// directory. Unique per run, so two agents on one host (or a retry of the same
/// job) never collide.
struct Names {
    container: String,
    workspace: String,
    secrets: PathBuf,
}

impl Names {
    fn new(job_id: &str, attempt: u32, secrets_dir: &std::path::Path) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let unique =
            nanos ^ std::process::id().rotate_left(16) ^ COUNTER.fetch_add(1, Ordering::Relaxed);
        let container = format!("deckhand-{job_id}-{attempt}-{unique:08x}");
        Names {
            secrets: secrets_dir.join(&container),
            workspace: format!("deckhand-ws-{job_id}-{attempt}-{unique:08x}"),
            container,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(log: JobLog) -> String {
        match log.into_body() {
            LogBody::Memory(ref bytes) => String::from_utf8(bytes.clone()).unwrap(),
            LogBody::Spooled { .. } => unreachable!("a few bytes stay in memory"),
        }
    }

    fn out(s: &str) -> Output {
        Output::Stdout(bytes::Bytes::copy_from_slice(s.as_bytes()))
    }

    fn err(s: &str) -> Output {
        Output::Stderr(bytes::Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn a_replay_adds_only_what_was_not_logged_per_stream() {
        let mut log = JobLog::new(Arc::new(Masker::none()));
        let mut seen = SeenBytes::default();
        // The attach stream: one and a half stdout lines, one stderr line, cut.
        seen.push_unseen(&mut log, out("one\ntw"));
        seen.push_unseen(&mut log, err("e1\n"));
        // The replay starts from each stream's first byte, framed differently
        // (the log driver stores lines), and stderr comes first this time.
        seen.replay();
        seen.push_unseen(&mut log, err("e1\n"));
        seen.push_unseen(&mut log, err("e2\n"));
        seen.push_unseen(&mut log, out("one\n"));
        seen.push_unseen(&mut log, out("two\nthree\n"));
        // A second cut and replay, mid-line again.
        seen.replay();
        seen.push_unseen(&mut log, out("one\ntwo\nthree\nfo"));
        seen.push_unseen(&mut log, out("ur\n"));
        log.finish();
        let text = text(log);
        let lines: Vec<&str> = text.lines().collect();
        let stdout: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| !l.starts_with('e'))
            .collect();
        let stderr: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.starts_with('e'))
            .collect();
        assert_eq!(stdout, ["one", "two", "three", "four"], "{text}");
        assert_eq!(stderr, ["e1", "e2"], "{text}");
    }
}
