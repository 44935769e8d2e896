//! Job containers and their volumes: created, attached, started, waited for,
//! stopped, inspected, listed by label and removed.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType, VolumeCreateRequest,
};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, DownloadFromContainerOptions, EventsOptions,
    ListContainersOptions, LogsOptions, RemoveContainerOptions, RemoveVolumeOptions,
    StopContainerOptions, WaitContainerOptions,
};
use futures_util::{Stream, StreamExt};

use super::{Docker, DockerError, LABEL_MANAGED, is_not_found};

/// What a container of ours is made of: a job's, a service's, the sandbox, a
/// probe. Made with [`ContainerSpec::new`], which asks for the limits every
/// container must have; what it does not ask for starts empty (no command of its
/// own, no mounts, no capabilities, no variables). The hardening that no spec
/// can turn off (every capability dropped but `cap_add`, no new privileges, not
/// privileged, the log capped) is added by [`Docker::create_container`].
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
    /// The most Docker keeps of the container's output (json-file, one file).
    pub log_max_bytes: u64,
    /// `NAME:ADDRESS` lines for its /etc/hosts (a sandbox's: the containers that
    /// join its network see them too).
    pub extra_hosts: Vec<String>,
    /// A cgroup parent of its own, whose counters outlive the container, so its
    /// usage can be read after its exit (jobs and services; see
    /// [`Docker::own_cgroup`]). Whoever asks removes it after the container.
    pub own_cgroup: bool,
    /// Security options besides `no-new-privileges` (always set): the image
    /// builder's own seccomp profile.
    pub security_opt: Vec<String>,
    /// Path to mount options of a tmpfs each (the image builder's storage).
    pub tmpfs: HashMap<String, String>,
}

/// What every container is held to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub memory_bytes: i64,
    pub nano_cpus: i64,
    pub pids: i64,
}

impl Limits {
    pub fn new(memory_mb: u64, cpus: f64, pids: u64) -> Limits {
        Limits {
            memory_bytes: (memory_mb * 1024 * 1024) as i64,
            nano_cpus: (cpus * 1e9).round() as i64,
            pids: pids as i64,
        }
    }
}

/// What Docker keeps of a container's output unless a spec says more.
const DEFAULT_LOG_MAX_BYTES: u64 = 16_000_000;

impl ContainerSpec {
    /// Container `name` from `image_id` on `network`, held to `limits`, and
    /// nothing more until the caller adds it.
    pub fn new(name: String, image_id: String, network: String, limits: Limits) -> Self {
        ContainerSpec {
            name,
            image_id,
            command: None,
            env: Vec::new(),
            workdir: String::new(),
            labels: HashMap::new(),
            mounts: Vec::new(),
            memory_bytes: limits.memory_bytes,
            nano_cpus: limits.nano_cpus,
            pids: limits.pids,
            network,
            cap_add: Vec::new(),
            log_max_bytes: DEFAULT_LOG_MAX_BYTES,
            extra_hosts: Vec::new(),
            own_cgroup: false,
            security_opt: Vec::new(),
            tmpfs: HashMap::new(),
        }
    }
}

/// One chunk of a container's output.
pub enum Output {
    Stdout(bytes::Bytes),
    Stderr(bytes::Bytes),
}

pub type OutputStream = Pin<Box<dyn Stream<Item = Result<Output, DockerError>> + Send>>;

/// A tar archive read from a container.
pub type TarStream = Pin<Box<dyn Stream<Item = Result<bytes::Bytes, DockerError>> + Send>>;

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub code: i64,
    pub oom_killed: bool,
}

/// A container found by label.
#[derive(Debug, Clone)]
pub struct ManagedContainer {
    pub name: String,
    pub labels: HashMap<String, String>,
    /// What it wrote to its writable layer, when the list was asked to count.
    pub written_bytes: Option<u64>,
}

impl Docker {
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
            // Docker refuses host entries on a container that joins another's
            // network, even an empty list.
            extra_hosts: (!spec.extra_hosts.is_empty()).then(|| spec.extra_hosts.clone()),
            cgroup_parent: spec
                .own_cgroup
                .then(|| self.own_cgroup(&spec.name))
                .flatten(),
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: Some(spec.cap_add.clone()),
            security_opt: Some(
                std::iter::once("no-new-privileges:true".to_owned())
                    .chain(spec.security_opt.iter().cloned())
                    .collect(),
            ),
            tmpfs: (!spec.tmpfs.is_empty()).then(|| spec.tmpfs.clone()),
            privileged: Some(false),
            // Keep the host's devices, IPC and PID namespace out of reach.
            ipc_mode: Some("private".into()),
            // json-file, which `docker logs` reads back after an outage, in one
            // file of bounded size: a flood cannot fill the host's disk.
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".into()),
                config: Some(HashMap::from([
                    ("max-size".to_owned(), spec.log_max_bytes.to_string()),
                    ("max-file".to_owned(), "1".to_owned()),
                ])),
            }),
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

    /// The file or folder at `path` in the container as Docker's tar stream,
    /// read from the container's own view of its filesystem (a symlink resolves
    /// inside it, never to a host file; a stopped container works too). `None`:
    /// nothing is at `path`.
    pub async fn download(&self, name: &str, path: &str) -> Result<Option<TarStream>, DockerError> {
        let options = DownloadFromContainerOptions {
            path: path.to_owned(),
        };
        let error = {
            let (name, path) = (name.to_owned(), path.to_owned());
            move |source| DockerError::Download {
                name: name.clone(),
                path: path.clone(),
                source,
            }
        };
        let mut stream = self.client.download_from_container(name, Some(options));
        // Docker answers a missing path with 404 before any byte of the archive.
        let first = match stream.next().await {
            None => return Ok(Some(Box::pin(futures_util::stream::empty()))),
            Some(Err(e)) if is_not_found(&e) => return Ok(None),
            Some(first) => first.map_err(&error)?,
        };
        let rest = stream.map(move |item| item.map_err(&error));
        Ok(Some(Box::pin(
            futures_util::stream::once(async move { Ok(first) }).chain(rest),
        )))
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
        let state = self.state(name).await?;
        Ok(Exit {
            code: state.exit_code.unwrap_or(-1),
            oom_killed: state.oom_killed.unwrap_or(false),
        })
    }

    /// `None` while the container runs; its exit code once it has exited.
    pub async fn exit_code(&self, name: &str) -> Result<Option<i64>, DockerError> {
        let state = self.state(name).await?;
        Ok(match state.running {
            Some(true) => None,
            _ => Some(state.exit_code.unwrap_or(-1)),
        })
    }

    /// The host pid of the container's first process, while it runs.
    pub async fn pid(&self, name: &str) -> Result<Option<u32>, DockerError> {
        let state = self.state(name).await?;
        Ok(state
            .pid
            .and_then(|pid| u32::try_from(pid).ok())
            .filter(|&pid| pid > 0))
    }

    /// The container's state as Docker inspects it.
    async fn state(&self, name: &str) -> Result<bollard::models::ContainerState, DockerError> {
        let inspect = self
            .client
            .inspect_container(name, None)
            .await
            .map_err(|source| DockerError::InspectContainer {
                name: name.to_owned(),
                source,
            })?;
        Ok(inspect.state.unwrap_or_default())
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

    /// Every container, running or not, that matches the label filters; `size`:
    /// with the bytes each wrote (Docker walks every writable layer to count them).
    pub(super) async fn list_all(
        &self,
        labels: Option<Vec<String>>,
        size: bool,
    ) -> Result<Vec<bollard::models::ContainerSummary>, DockerError> {
        let options = ListContainersOptions {
            all: true,
            size,
            filters: labels.map(|labels| HashMap::from([("label".to_owned(), labels)])),
            ..Default::default()
        };
        self.client
            .list_containers(Some(options))
            .await
            .map_err(|source| DockerError::List { source })
    }

    /// Containers carrying deckhand's label and every `label=value` in `labels`.
    pub async fn list_managed(
        &self,
        labels: &[(&str, &str)],
    ) -> Result<Vec<ManagedContainer>, DockerError> {
        self.managed(labels, false).await
    }

    /// As [`list_managed`](Self::list_managed), with what each container wrote to
    /// its writable layer: slow on a busy layer, so for when the disk runs low.
    pub async fn list_managed_sized(
        &self,
        labels: &[(&str, &str)],
    ) -> Result<Vec<ManagedContainer>, DockerError> {
        self.managed(labels, true).await
    }

    async fn managed(
        &self,
        labels: &[(&str, &str)],
        size: bool,
    ) -> Result<Vec<ManagedContainer>, DockerError> {
        let mut filter = vec![format!("{LABEL_MANAGED}=true")];
        filter.extend(labels.iter().map(|(k, v)| format!("{k}={v}")));
        let containers = self.list_all(Some(filter), size).await?;
        Ok(containers
            .into_iter()
            .filter_map(|c| {
                let name = c.names?.first()?.trim_start_matches('/').to_owned();
                Some(ManagedContainer {
                    name,
                    labels: c.labels.unwrap_or_default(),
                    written_bytes: c.size_rw.map(|b| b.max(0) as u64),
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
