//! The Docker Engine API, through bollard. No CLI, no trait: tests run against the
//! real engine.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType, VolumeCreateRequest};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, CreateImageOptions, EventsOptions,
    ListContainersOptions, LogsOptions, RemoveContainerOptions, RemoveImageOptions,
    RemoveVolumeOptions, StopContainerOptions, WaitContainerOptions,
};
use futures_util::{Stream, StreamExt};

use crate::config::DockerConfig;
use crate::job::image::ImageRef;

/// Every container and volume deckhand creates carries this label, so a restarted
/// agent can find what a previous one left behind.
pub const LABEL_MANAGED: &str = "deckhand.managed";
pub const LABEL_JOB_ID: &str = "deckhand.job_id";
pub const LABEL_ATTEMPT: &str = "deckhand.attempt";
pub const LABEL_AGENT: &str = "deckhand.agent";
/// On a container: the name of its workspace volume, for cleanup after a crash.
pub const LABEL_WORKSPACE: &str = "deckhand.workspace";

/// Per-request timeout for calls that should answer quickly. Long waits (container
/// wait, pulls) stream their body after the headers, so this bounds only the start.
const REQUEST_TIMEOUT_SECS: u64 = 60;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("connect to Docker at {socket}: {source}")]
    Connect {
        socket: String,
        source: BollardError,
    },
    #[error("Docker at {socket} is not answering: {source}")]
    Ping {
        socket: String,
        source: BollardError,
    },
    #[error("inspect image {image}: {source}")]
    InspectImage { image: String, source: BollardError },
    #[error("pull {image}: {message}")]
    Pull { image: String, message: String },
    #[error("pull {image}: no answer within {secs}s")]
    PullTimeout { image: String, secs: u64 },
    #[error("create volume {name}: {source}")]
    CreateVolume { name: String, source: BollardError },
    #[error("create container {name}: {source}")]
    CreateContainer { name: String, source: BollardError },
    #[error("attach to container {name}: {source}")]
    Attach { name: String, source: BollardError },
    #[error("start container {name}: {source}")]
    Start { name: String, source: BollardError },
    #[error("wait for container {name}: {source}")]
    Wait { name: String, source: BollardError },
    #[error("stop container {name}: {source}")]
    Stop { name: String, source: BollardError },
    #[error("inspect container {name}: {source}")]
    InspectContainer { name: String, source: BollardError },
    #[error("remove container {name}: {source}")]
    RemoveContainer { name: String, source: BollardError },
    #[error("inspect volume {name}: {source}")]
    InspectVolume { name: String, source: BollardError },
    #[error("remove volume {name}: {source}")]
    RemoveVolume { name: String, source: BollardError },
    #[error("list containers: {source}")]
    List { source: BollardError },
    #[error("remove image {image}: {source}")]
    RemoveImage { image: String, source: BollardError },
    #[error("docker info: {source}")]
    Info { source: BollardError },
    #[error("events of container {name}: {source}")]
    Events { name: String, source: BollardError },
}

impl DockerError {
    /// Docker answered 404: the thing is not there.
    pub fn is_not_found(&self) -> bool {
        self.source_error().is_some_and(is_not_found)
    }

    /// True when Docker did not answer (no socket, a dropped connection, a
    /// timeout), as opposed to answering with an error: the call may work again
    /// once dockerd is back, and a running container may well still be running.
    pub fn is_unreachable(&self) -> bool {
        match self {
            DockerError::Connect { .. } | DockerError::Ping { .. } => true,
            _ => matches!(
                self.source_error(),
                Some(
                    BollardError::IOError { .. }
                        | BollardError::HyperResponseError { .. }
                        | BollardError::HyperLegacyError { .. }
                        | BollardError::HttpClientError { .. }
                        | BollardError::RequestTimeoutError
                        | BollardError::SocketNotFoundError(_)
                        // A stream cut short (ours: "the wait stream ended without a status").
                        | BollardError::DockerStreamError { .. }
                )
            ),
        }
    }

    /// What bollard said, for the calls that reached it.
    fn source_error(&self) -> Option<&BollardError> {
        match self {
            DockerError::Pull { .. } | DockerError::PullTimeout { .. } => None,
            DockerError::Connect { source, .. }
            | DockerError::Ping { source, .. }
            | DockerError::InspectImage { source, .. }
            | DockerError::CreateVolume { source, .. }
            | DockerError::CreateContainer { source, .. }
            | DockerError::Attach { source, .. }
            | DockerError::Start { source, .. }
            | DockerError::Wait { source, .. }
            | DockerError::Stop { source, .. }
            | DockerError::InspectContainer { source, .. }
            | DockerError::RemoveContainer { source, .. }
            | DockerError::InspectVolume { source, .. }
            | DockerError::RemoveVolume { source, .. }
            | DockerError::List { source }
            | DockerError::RemoveImage { source, .. }
            | DockerError::Info { source }
            | DockerError::Events { source, .. } => Some(source),
        }
    }
}

/// A Docker connection. Cheap to clone: bollard shares one connection pool.
#[derive(Clone, Debug)]
pub struct Docker {
    client: bollard::Docker,
    socket: String,
}

/// An image that is present locally, resolved to exactly what will run.
#[derive(Debug, Clone)]
pub struct LocalImage {
    /// The content-addressed image id; containers are created from this, so the
    /// digest recorded is the one that ran even if a tag moves meanwhile.
    pub id: String,
    /// `registry/repo@sha256:…` when the registry gave a digest, else the name.
    pub reference: String,
    /// The image's `USER`, if it sets one.
    pub user: Option<String>,
}

/// `user:password` for a registry, from a named secret.
#[derive(Clone)]
pub struct RegistryAuth {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RegistryAuth({}:***)", self.username)
    }
}

/// What a job's container is made of; see `runner` for the policy behind each field.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub name: String,
    pub image_id: String,
    pub command: Option<Vec<String>>,
    pub env: Vec<String>,
    pub workdir: String,
    pub labels: HashMap<String, String>,
    pub mounts: Vec<Mount>,
    pub memory_bytes: i64,
    pub nano_cpus: i64,
    pub pids: i64,
    pub network: String,
    pub cap_add: Vec<String>,
}

/// One chunk of a container's output.
pub enum Output {
    Stdout(bytes::Bytes),
    Stderr(bytes::Bytes),
}

pub type OutputStream = Pin<Box<dyn Stream<Item = Result<Output, DockerError>> + Send>>;

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub code: i64,
    pub oom_killed: bool,
}

// === impl Docker ===

impl Docker {
    /// Connects to the socket and settles the API version with the daemon (bollard
    /// defaults to a newer one than Debian's engine speaks).
    pub async fn connect(config: &DockerConfig) -> Result<Docker, DockerError> {
        let socket = config.socket.display().to_string();
        let connect = |source| DockerError::Connect {
            socket: socket.clone(),
            source,
        };
        let client = bollard::Docker::connect_with_unix(
            &socket,
            REQUEST_TIMEOUT_SECS,
            bollard::API_DEFAULT_VERSION,
        )
        .map_err(connect)?
        .negotiate_version()
        .await
        .map_err(connect)?;
        Ok(Docker { client, socket })
    }

    /// Whether the daemon answers.
    pub async fn ping(&self) -> Result<(), DockerError> {
        self.client
            .ping()
            .await
            .map(drop)
            .map_err(|source| DockerError::Ping {
                socket: self.socket.clone(),
                source,
            })
    }

    /// Makes `image` present locally and resolves it. A pinned digest that is already
    /// here is never pulled again; a tag is pulled only when absent (tags other than
    /// `latest` are treated as immutable releases).
    pub async fn ensure_image(
        &self,
        image: &ImageRef,
        pull_timeout: Duration,
        auth: Option<&RegistryAuth>,
    ) -> Result<LocalImage, DockerError> {
        if let Some(local) = self.resolve_image(image).await? {
            tracing::debug!(image = %image, "Image present; not pulling.");
            return Ok(local);
        }
        let started = tokio::time::Instant::now();
        tokio::time::timeout(pull_timeout, self.pull(image, auth))
            .await
            .map_err(|_| DockerError::PullTimeout {
                image: image.to_string(),
                secs: pull_timeout.as_secs(),
            })??;
        let local = self
            .resolve_image(image)
            .await?
            .ok_or_else(|| DockerError::Pull {
                image: image.to_string(),
                message: "the pull finished but the image is not present".into(),
            })?;
        tracing::info!(
            image = %image,
            digest = %local.reference,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Pulled image."
        );
        Ok(local)
    }

    async fn resolve_image(&self, image: &ImageRef) -> Result<Option<LocalImage>, DockerError> {
        let name = image.local_name();
        let inspect = match self.client.inspect_image(&name).await {
            Ok(inspect) => inspect,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(source) => {
                return Err(DockerError::InspectImage {
                    image: name,
                    source,
                });
            }
        };
        let Some(id) = inspect.id else {
            return Ok(None);
        };
        let user = inspect
            .config
            .and_then(|c| c.user)
            .filter(|u| !u.is_empty());
        let prefix = format!("{}@", image.repository());
        let reference = inspect
            .repo_digests
            .unwrap_or_default()
            .into_iter()
            .find(|d| d.starts_with(&prefix))
            .unwrap_or(name);
        Ok(Some(LocalImage {
            id,
            reference,
            user,
        }))
    }

    async fn pull(&self, image: &ImageRef, auth: Option<&RegistryAuth>) -> Result<(), DockerError> {
        let options = CreateImageOptions {
            from_image: Some(image.repository()),
            tag: Some(image.pull_reference().to_owned()),
            ..Default::default()
        };
        let credentials = auth.map(|auth| bollard::auth::DockerCredentials {
            username: Some(auth.username.clone()),
            password: Some(auth.password.clone()),
            serveraddress: Some(image.registry.clone()),
            ..Default::default()
        });
        let mut progress = self.client.create_image(Some(options), None, credentials);
        let mut last_status = String::new();
        while let Some(item) = progress.next().await {
            let info = item.map_err(|e| DockerError::Pull {
                image: image.to_string(),
                message: e.to_string(),
            })?;
            if let Some(detail) = info.error_detail {
                return Err(DockerError::Pull {
                    image: image.to_string(),
                    message: detail.message.unwrap_or_else(|| "unknown error".into()),
                });
            }
            // Layer-level progress repeats many times a second; log each change of
            // phase per layer once.
            if let Some(status) = info.status {
                let line = match &info.id {
                    Some(id) => format!("{id}: {status}"),
                    None => status,
                };
                if line != last_status
                    && !line.contains("Downloading")
                    && !line.contains("Extracting")
                {
                    tracing::info!(image = %image, progress = %line, "Pulling image.");
                    last_status = line;
                }
            }
        }
        Ok(())
    }

    pub async fn create_volume(
        &self,
        name: &str,
        labels: &HashMap<String, String>,
    ) -> Result<(), DockerError> {
        let request = VolumeCreateRequest {
            name: Some(name.to_owned()),
            labels: Some(labels.clone()),
            ..Default::default()
        };
        self.client
            .create_volume(request)
            .await
            .map(drop)
            .map_err(|source| DockerError::CreateVolume {
                name: name.to_owned(),
                source,
            })
    }

    /// Creates the container with its isolation settings. The container does not run
    /// until [`Docker::start`].
    pub async fn create_container(&self, spec: &ContainerSpec) -> Result<(), DockerError> {
        let host_config = HostConfig {
            mounts: Some(spec.mounts.clone()),
            memory: Some(spec.memory_bytes),
            // Equal to memory: no swap, so a memory kill is a memory kill.
            memory_swap: Some(spec.memory_bytes),
            nano_cpus: Some(spec.nano_cpus),
            pids_limit: Some(spec.pids),
            network_mode: Some(spec.network.clone()),
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: Some(spec.cap_add.clone()),
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            privileged: Some(false),
            // Keep the host's devices, IPC and PID namespace out of reach.
            ipc_mode: Some("private".into()),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image_id.clone()),
            cmd: spec.command.clone(),
            env: Some(spec.env.clone()),
            working_dir: Some(spec.workdir.clone()),
            labels: Some(spec.labels.clone()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            open_stdin: Some(false),
            host_config: Some(host_config),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(spec.name.clone()),
            ..Default::default()
        };
        self.client
            .create_container(Some(options), body)
            .await
            .map(drop)
            .map_err(|source| DockerError::CreateContainer {
                name: spec.name.clone(),
                source,
            })
    }

    /// Attaches to stdout and stderr before the start, so no early output is lost
    /// and nothing depends on the daemon's log driver.
    pub async fn attach(&self, name: &str) -> Result<OutputStream, DockerError> {
        let options = AttachContainerOptions {
            stream: true,
            stdout: true,
            stderr: true,
            // Attached before the start, the stream sees everything; replaying the
            // log driver's copy as well would repeat the first lines.
            logs: false,
            ..Default::default()
        };
        let attached = self
            .client
            .attach_container(name, Some(options))
            .await
            .map_err(|source| DockerError::Attach {
                name: name.to_owned(),
                source,
            })?;
        Ok(output_stream(name, attached.output))
    }

    /// Everything the container wrote so far, from its log driver, then (with
    /// `follow`) what it writes next: how output lost with the attach stream is
    /// read again. Works on a stopped container too.
    pub fn replay(&self, name: &str, follow: bool) -> OutputStream {
        let options = LogsOptions {
            follow,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        output_stream(name, self.client.logs(name, Some(options)))
    }

    pub async fn start(&self, name: &str) -> Result<(), DockerError> {
        self.client
            .start_container(name, None)
            .await
            .map_err(|source| DockerError::Start {
                name: name.to_owned(),
                source,
            })
    }

    /// Waits until the container is not running. Safe to drop: it only observes.
    pub async fn wait(&self, name: &str) -> Result<i64, DockerError> {
        let options = WaitContainerOptions {
            condition: "not-running".into(),
        };
        let mut stream = self.client.wait_container(name, Some(options));
        match stream.next().await {
            Some(Ok(response)) => Ok(response.status_code),
            // bollard reports every non-zero exit as an error; it is the job's exit
            // code, not a failure of ours.
            Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(source)) => Err(DockerError::Wait {
                name: name.to_owned(),
                source,
            }),
            None => Err(DockerError::Wait {
                name: name.to_owned(),
                source: BollardError::DockerStreamError {
                    error: "the wait stream ended without a status".into(),
                },
            }),
        }
    }

    /// SIGTERM, then SIGKILL after `grace`. Stopping a container that already
    /// stopped is not an error.
    pub async fn stop(&self, name: &str, grace: Duration) -> Result<(), DockerError> {
        let options = StopContainerOptions {
            t: Some(i32::try_from(grace.as_secs()).unwrap_or(i32::MAX)),
            signal: None,
        };
        match self.client.stop_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(source) => Err(DockerError::Stop {
                name: name.to_owned(),
                source,
            }),
        }
    }

    /// The exit code and whether the kernel killed it for memory.
    pub async fn exit_state(&self, name: &str) -> Result<Exit, DockerError> {
        let inspect = self
            .client
            .inspect_container(name, None)
            .await
            .map_err(|source| DockerError::InspectContainer {
                name: name.to_owned(),
                source,
            })?;
        let state = inspect.state.unwrap_or_default();
        Ok(Exit {
            code: state.exit_code.unwrap_or(-1),
            oom_killed: state.oom_killed.unwrap_or(false),
        })
    }

    /// Whether Docker logged an `oom` event for the container since `since` (Unix
    /// seconds). Past events only: the query ends at now.
    pub async fn oom_event(&self, name: &str, since: i64) -> Result<bool, DockerError> {
        let options = EventsOptions {
            since: Some(since.to_string()),
            until: Some(chrono::Utc::now().timestamp().saturating_add(1).to_string()),
            filters: Some(HashMap::from([
                ("type".to_owned(), vec!["container".to_owned()]),
                ("container".to_owned(), vec![name.to_owned()]),
                ("event".to_owned(), vec!["oom".to_owned()]),
            ])),
        };
        let mut events = self.client.events(Some(options));
        match events.next().await {
            Some(Ok(_)) => Ok(true),
            None => Ok(false),
            Some(Err(source)) => Err(DockerError::Events {
                name: name.to_owned(),
                source,
            }),
        }
    }

    /// Removes the container and its anonymous volumes; gone already is fine.
    pub async fn remove_container(&self, name: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            link: false,
        };
        match self.client.remove_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(source) => Err(DockerError::RemoveContainer {
                name: name.to_owned(),
                source,
            }),
        }
    }

    pub async fn remove_volume(&self, name: &str) -> Result<(), DockerError> {
        let options = RemoveVolumeOptions { force: true };
        match self.client.remove_volume(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(source) => Err(DockerError::RemoveVolume {
                name: name.to_owned(),
                source,
            }),
        }
    }

    /// The image ids of every container on the engine, running or not.
    pub async fn container_images(&self) -> Result<std::collections::HashSet<String>, DockerError> {
        let containers = self.list_all(None).await?;
        Ok(containers.into_iter().filter_map(|c| c.image_id).collect())
    }

    /// Every container, running or not, that matches the label filters.
    async fn list_all(
        &self,
        labels: Option<Vec<String>>,
    ) -> Result<Vec<bollard::models::ContainerSummary>, DockerError> {
        let options = ListContainersOptions {
            all: true,
            filters: labels.map(|labels| HashMap::from([("label".to_owned(), labels)])),
            ..Default::default()
        };
        self.client
            .list_containers(Some(options))
            .await
            .map_err(|source| DockerError::List { source })
    }

    /// Removes an image by id with all its tags. Docker refuses (409) while a
    /// container uses it.
    pub async fn remove_image(&self, id: &str) -> Result<(), DockerError> {
        let options = RemoveImageOptions {
            force: true,
            noprune: false,
            ..Default::default()
        };
        self.client
            .remove_image(id, Some(options), None)
            .await
            .map(drop)
            .map_err(|source| DockerError::RemoveImage {
                image: id.to_owned(),
                source,
            })
    }

    /// Where Docker keeps images, containers and volumes (`docker info`).
    pub async fn root_dir(&self) -> Result<std::path::PathBuf, DockerError> {
        let info = self
            .client
            .info()
            .await
            .map_err(|source| DockerError::Info { source })?;
        Ok(info
            .docker_root_dir
            .unwrap_or_else(|| "/var/lib/docker".to_owned())
            .into())
    }

    /// Containers carrying deckhand's label and every `label=value` in `labels`.
    pub async fn list_managed(
        &self,
        labels: &[(&str, &str)],
    ) -> Result<Vec<ManagedContainer>, DockerError> {
        let mut filter = vec![format!("{LABEL_MANAGED}=true")];
        filter.extend(labels.iter().map(|(k, v)| format!("{k}={v}")));
        let containers = self.list_all(Some(filter)).await?;
        Ok(containers
            .into_iter()
            .filter_map(|c| {
                let name = c.names?.first()?.trim_start_matches('/').to_owned();
                Some(ManagedContainer {
                    name,
                    labels: c.labels.unwrap_or_default(),
                })
            })
            .collect())
    }

    /// Where the volume's data lives on this host; `None` if there is no such volume.
    pub async fn volume_mountpoint(
        &self,
        name: &str,
    ) -> Result<Option<std::path::PathBuf>, DockerError> {
        match self.client.inspect_volume(name).await {
            Ok(volume) => Ok(Some(volume.mountpoint.into())),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(source) => Err(DockerError::InspectVolume {
                name: name.to_owned(),
                source,
            }),
        }
    }

    /// Volumes carrying deckhand's label and `label=value`.
    pub async fn list_managed_volumes(
        &self,
        label: (&str, &str),
    ) -> Result<Vec<String>, DockerError> {
        let filter = vec![
            format!("{LABEL_MANAGED}=true"),
            format!("{}={}", label.0, label.1),
        ];
        let options = bollard::query_parameters::ListVolumesOptions {
            filters: Some(HashMap::from([("label".to_owned(), filter)])),
        };
        let volumes = self
            .client
            .list_volumes(Some(options))
            .await
            .map_err(|source| DockerError::List { source })?;
        Ok(volumes
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.name)
            .collect())
    }
}

/// A container found by label.
#[derive(Debug, Clone)]
pub struct ManagedContainer {
    pub name: String,
    pub labels: HashMap<String, String>,
}

/// A named volume mounted into a job.
pub fn volume_mount(source: &str, target: &str, read_only: bool) -> Mount {
    Mount {
        source: Some(source.to_owned()),
        target: Some(target.to_owned()),
        typ: Some(MountType::VOLUME),
        read_only: Some(read_only),
        ..Default::default()
    }
}

/// A host directory bind-mounted into a job.
pub fn bind_mount(source: &std::path::Path, target: &str, read_only: bool) -> Mount {
    Mount {
        source: Some(source.display().to_string()),
        target: Some(target.to_owned()),
        typ: Some(MountType::BIND),
        read_only: Some(read_only),
        ..Default::default()
    }
}

/// A container's framed output as deckhand's `Output`, errors naming the container.
fn output_stream(
    name: &str,
    frames: impl Stream<Item = Result<LogOutput, BollardError>> + Send + 'static,
) -> OutputStream {
    let owned = name.to_owned();
    Box::pin(frames.filter_map(move |item| {
        let out = match item {
            Ok(LogOutput::StdOut { message }) => Some(Ok(Output::Stdout(message))),
            // Without a TTY everything is framed; `Console` only comes with one.
            Ok(LogOutput::StdErr { message }) => Some(Ok(Output::Stderr(message))),
            Ok(LogOutput::Console { message }) => Some(Ok(Output::Stdout(message))),
            Ok(LogOutput::StdIn { .. }) => None,
            Err(source) => Some(Err(DockerError::Attach {
                name: owned.clone(),
                source,
            })),
        };
        std::future::ready(out)
    }))
}

fn is_not_found(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}
