//! A job's service containers. They and the job share one network namespace, as
//! an ECS task's containers or a pod's do, held by a sandbox container (this
//! binary, `deckhand pause`, in an empty image) on the profile's network: the job
//! reaches each service at `127.0.0.1:<port>`, and by its name, which the
//! sandbox's /etc/hosts maps to 127.0.0.1 for every container that joins it.
//! Nothing is published on the host. Services start first; the job starts once
//! each is ready. Their output goes to the job's log under their names.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Runner;
use crate::docker::{self, ContainerSpec, Limits, LocalImage, Output, OutputStream};
use crate::host::cgroups::Sample;
use crate::job::Job;
use crate::job::container::{CAPABILITIES, Names, SECRETS_MOUNT, SecretFiles};
use crate::job::log::{JobLog, ServiceChunk, Stream};
use crate::job::outcome::RunError;
use crate::job::spec::{Ready, Service};
use crate::job::usage::{self, LiveUsage};

/// How often readiness is checked.
const READY_POLL: Duration = Duration::from_millis(250);
/// How long a TCP check waits for a connection.
const TCP_CHECK_MS: u64 = 500;
/// Service output waiting for the job's log.
pub(super) const SERVICE_CHUNKS: usize = 256;
/// After a service failed, how long its last output may take to arrive.
const LAST_WORDS: Duration = Duration::from_millis(500);

/// The job's services while they run: the tasks that read their output (ending
/// with `None`) and meter them (ending with the last sample), all of which end
/// when `done` fires.
pub(super) struct Running {
    pub output: mpsc::Receiver<ServiceChunk>,
    pub tasks: JoinSet<Option<(String, Sample)>>,
    pub done: CancellationToken,
}

impl Running {
    /// Takes what the services printed so far into the log.
    pub fn drain_into(&mut self, log: &mut JobLog) {
        while let Ok((name, stream, bytes)) = self.output.try_recv() {
            log.push_service(&name, stream, &bytes);
        }
    }

    /// Stops reading and metering; each service's last sample.
    pub async fn finish(mut self, log: &mut JobLog) -> HashMap<String, Sample> {
        self.done.cancel();
        let mut samples = HashMap::new();
        while let Some(joined) = self.tasks.join_next().await {
            if let Ok(Some((name, sample))) = joined {
                samples.insert(name, sample);
            }
        }
        self.drain_into(log);
        // A last line without its newline is still a line.
        log.finish_services();
        samples
    }
}

impl Runner {
    /// Starts the sandbox and each service in it (from `images`, pulled), and
    /// begins reading their output. The names are registered with the sweeper
    /// before each container exists.
    pub(super) async fn start_services(
        &self,
        job: &Job,
        names: &Names,
        labels: &HashMap<String, String>,
        images: Vec<LocalImage>,
    ) -> Result<Running, RunError> {
        let (tx, output) = mpsc::channel(SERVICE_CHUNKS);
        let mut running = Running {
            output,
            tasks: JoinSet::new(),
            done: CancellationToken::new(),
        };
        self.sweeper.hold(&names.sandbox);
        let sandbox = self.sandbox_spec(job, names, labels).await?;
        self.docker.create_container(&sandbox).await?;
        self.docker.start(&names.sandbox).await?;
        for (service, image) in job.services.iter().zip(images) {
            let container = names.service(&service.name);
            self.sweeper.hold(&container);
            let mut spec = service_spec(service, &container, image.id, names, labels);
            if !service.secrets.is_empty() {
                let (env, mount) =
                    self.service_secrets(job, service, names, image.user.as_deref())?;
                spec.env.extend(env);
                spec.mounts.push(mount);
            }
            self.docker.create_container(&spec).await?;
            let stream = self.docker.attach(&container).await?;
            self.docker.start(&container).await?;
            tracing::info!(service = %service.name, container = %container, "Service started.");
            let done = running.done.clone();
            let forwarding = forward(service.name.clone(), stream, tx.clone(), done.clone());
            running.tasks.spawn(async move {
                forwarding.await;
                None
            });
            let docker = self.docker.clone();
            let name = service.name.clone();
            let limit = service.memory_mb.saturating_mul(1024 * 1024);
            running.tasks.spawn(async move {
                let live = LiveUsage::default();
                let sample = usage::meter(&docker, &container, &done, &live, Some(limit)).await;
                sample.map(|s| (name, s))
            });
        }
        Ok(running)
    }

    /// The service's secrets as files on tmpfs, mounted read-only where the
    /// job's are, and the variables its profile lets carry a secret's value.
    fn service_secrets(
        &self,
        job: &Job,
        service: &Service,
        names: &Names,
        user: Option<&str>,
    ) -> Result<(Vec<String>, docker::Mount), RunError> {
        let dir = names.service_secrets(&service.name);
        let env_secrets = self
            .config
            .profile(&job.profile)
            .map(|p| p.env_secrets.as_slice())
            .unwrap_or_default();
        let files = SecretFiles {
            dir: &dir,
            image_user: user,
            secrets: &self.secrets,
            env_secrets,
            token: None,
        };
        let env = files.write(&service.secrets)?;
        Ok((env, docker::bind_mount(&dir, SECRETS_MOUNT, true)))
    }

    /// Waits until each service is ready, in order, each within its own
    /// `ready_timeout_secs`. `Err`: why the job cannot start, naming the service.
    pub(super) async fn await_ready(
        &self,
        job: &Job,
        names: &Names,
        running: &mut Running,
        log: &mut JobLog,
    ) -> Result<(), String> {
        for service in &job.services {
            let container = names.service(&service.name);
            let deadline = Instant::now() + service.ready_timeout;
            let started = Instant::now();
            loop {
                running.drain_into(log);
                let failed = match self.docker.exit_code(&container).await {
                    Ok(Some(code)) => Some(format!("exited with code {code} before it was ready")),
                    Ok(None) => None,
                    Err(error) => Some(format!("could not be inspected: {error}")),
                };
                if let Some(why) = failed {
                    return Err(self.service_failed(service, why, running, log).await);
                }
                if self.is_ready(service, names).await {
                    tracing::info!(
                        service = %service.name,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "Service ready."
                    );
                    break;
                }
                if Instant::now() >= deadline {
                    let why = format!(
                        "not ready within ready_timeout_secs = {}",
                        service.ready_timeout.as_secs()
                    );
                    return Err(self.service_failed(service, why, running, log).await);
                }
                tokio::time::sleep(READY_POLL).await;
            }
        }
        Ok(())
    }

    async fn is_ready(&self, service: &Service, names: &Names) -> bool {
        let (container, command) = match &service.ready {
            None => return true,
            // From inside the namespace: the sandbox runs this binary.
            Some(Ready::Tcp(port)) => (
                names.sandbox.clone(),
                vec![
                    docker::OWN_BINARY.to_owned(),
                    "reach".to_owned(),
                    format!("127.0.0.1:{port}"),
                    "--timeout-ms".to_owned(),
                    TCP_CHECK_MS.to_string(),
                ],
            ),
            Some(Ready::Command(command)) => (names.service(&service.name), command.clone()),
        };
        let deadline = service.ready_timeout.max(Duration::from_secs(1));
        matches!(
            self.docker.exec(&container, &command, deadline).await,
            Ok(Some(0))
        )
    }

    /// The reason a service stopped the job, after its last output reached the log.
    async fn service_failed(
        &self,
        service: &Service,
        why: String,
        running: &mut Running,
        log: &mut JobLog,
    ) -> String {
        tokio::time::sleep(LAST_WORDS).await;
        running.drain_into(log);
        tracing::warn!(service = %service.name, %why, "A service failed; the job does not start.");
        format!("service {}: {why}", service.name)
    }

    /// The sandbox: this binary pausing in an empty image, on the profile's
    /// network, with a job's hardening and the services' names in its hosts file.
    async fn sandbox_spec(
        &self,
        job: &Job,
        names: &Names,
        labels: &HashMap<String, String>,
    ) -> Result<ContainerSpec, RunError> {
        let image_id = self.docker.probe_image().await?;
        let exe = std::env::current_exe().map_err(|source| RunError::OwnBinary { source })?;
        let mut labels = labels.clone();
        labels.insert(docker::LABEL_ROLE.to_owned(), "sandbox".to_owned());
        let mut spec = docker::own_binary_spec(
            names.sandbox.clone(),
            image_id,
            &exe,
            &["pause"],
            &job.network,
            labels,
        );
        spec.extra_hosts = job
            .services
            .iter()
            .map(|s| format!("{}:127.0.0.1", s.name))
            .collect();
        Ok(spec)
    }
}

/// A service's container: a job's hardening under the service's limits, in the
/// sandbox's network namespace, labelled as the job's.
fn service_spec(
    service: &Service,
    container: &str,
    image_id: String,
    names: &Names,
    labels: &HashMap<String, String>,
) -> ContainerSpec {
    let mut labels = labels.clone();
    labels.insert(docker::LABEL_ROLE.to_owned(), "service".to_owned());
    labels.insert(docker::LABEL_SERVICE.to_owned(), service.name.clone());
    let limits = Limits::new(service.memory_mb, service.cpus, service.pids);
    ContainerSpec {
        command: service.command.clone(),
        env: service
            .env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
        labels,
        cap_add: CAPABILITIES.iter().map(|c| (*c).to_owned()).collect(),
        own_cgroup: true,
        ..ContainerSpec::new(
            container.to_owned(),
            image_id,
            format!("container:{}", names.sandbox),
            limits,
        )
    }
}

/// Sends a service's output on until it ends (the service exited or was
/// removed) or `done` fires.
async fn forward(
    name: String,
    mut stream: OutputStream,
    tx: mpsc::Sender<ServiceChunk>,
    done: CancellationToken,
) {
    loop {
        let chunk = tokio::select! {
            chunk = stream.next() => chunk,
            () = done.cancelled() => return,
        };
        let (which, bytes) = match chunk {
            Some(Ok(Output::Stdout(bytes))) => (Stream::Stdout, bytes),
            Some(Ok(Output::Stderr(bytes))) => (Stream::Stderr, bytes),
            Some(Err(_)) | None => {
                if !done.is_cancelled() {
                    tracing::warn!(service = %name, "A service's output ended: it exited; the job goes on.");
                }
                return;
            }
        };
        if tx.send((name.clone(), which, bytes)).await.is_err() {
            return;
        }
    }
}
