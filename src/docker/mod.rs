//! The Docker Engine API, through bollard. No CLI, no trait: tests run against the
//! real engine.

use std::time::Duration;

use bollard::errors::Error as BollardError;

use crate::backoff::Backoff;
use crate::config::DockerConfig;

mod builder;
mod containers;
mod images;
mod probe;
mod upload;

pub use bollard::models::Mount;
pub use builder::{BUILDER_CAPABILITIES, DENIED_SYSCALLS, SECCOMP_PROFILE, check_seccomp};
pub use containers::{
    ContainerSpec, Exit, Limits, ManagedContainer, Output, OutputStream, TarStream, bind_mount,
    volume_mount,
};
pub use images::{LocalImage, RegistryAuth};
pub use probe::{OWN_BINARY, PROBE_IMAGE, Probed, own_binary_spec};

/// Every container and volume deckhand creates carries this label, so a restarted
/// agent can find what a previous one left behind.
pub const LABEL_MANAGED: &str = "deckhand.managed";
pub const LABEL_JOB_ID: &str = "deckhand.job_id";
pub const LABEL_ATTEMPT: &str = "deckhand.attempt";
pub const LABEL_AGENT: &str = "deckhand.agent";
/// On a container: the name of its workspace volume, for cleanup after a crash.
pub const LABEL_WORKSPACE: &str = "deckhand.workspace";
/// On a job's other containers: `sandbox` (holds its network) or `service`.
pub const LABEL_ROLE: &str = "deckhand.role";
/// On a service's container: the service's name.
pub const LABEL_SERVICE: &str = "deckhand.service";

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
    #[error("put files at {path} in container {name}: {source}")]
    Upload {
        name: String,
        path: String,
        source: BollardError,
    },
    #[error("read {path} from container {name}: {source}")]
    Download {
        name: String,
        path: String,
        source: BollardError,
    },
    #[error("list containers: {source}")]
    List { source: BollardError },
    #[error("remove image {image}: {source}")]
    RemoveImage { image: String, source: BollardError },
    #[error("docker info: {source}")]
    Info { source: BollardError },
    #[error("events of container {name}: {source}")]
    Events { name: String, source: BollardError },
    #[error("import image {image}: {source}")]
    Import { image: String, source: BollardError },
    #[error("run a command in container {name}: {source}")]
    Exec { name: String, source: BollardError },
    /// An image saved, loaded or tagged for a build.
    #[error("{what}: {message}")]
    Transfer { what: String, message: String },
    /// The registry refused a push; the message is its reason.
    #[error("push {image}: {message}")]
    Push { image: String, message: String },
}

impl DockerError {
    /// Docker answered 404: the thing is not there.
    pub fn is_not_found(&self) -> bool {
        self.source_error().is_some_and(is_not_found)
    }

    /// True when Docker refused to create or start the container as asked (HTTP
    /// 400): the job's own doing (a binary its image lacks, an argument list too
    /// long), which no retry on any host would change.
    pub fn is_job_fault(&self) -> bool {
        matches!(
            self,
            DockerError::CreateContainer {
                source: BollardError::DockerResponseServerError {
                    status_code: 400,
                    ..
                },
                ..
            } | DockerError::Start {
                source: BollardError::DockerResponseServerError {
                    status_code: 400,
                    ..
                },
                ..
            }
        )
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

    /// True when the registry refused the pull by a policy of its own: a scan's
    /// block (JFrog Xray's 403 "blocked by Xray policy", Harbor's "cannot be
    /// pulled due to configured policy"), which Docker passes on only as text.
    /// The image is what is refused, on every host: the job's to fix.
    pub fn is_policy_refusal(&self) -> bool {
        let DockerError::Pull { message, .. } = self else {
            return false;
        };
        let message = message.to_ascii_lowercase();
        let refused = ["denied", "blocked", "forbidden", "403", "cannot be pulled"];
        message.contains("policy") && refused.iter().any(|word| message.contains(word))
    }

    /// What bollard said, for the calls that reached it.
    fn source_error(&self) -> Option<&BollardError> {
        match self {
            DockerError::Pull { .. }
            | DockerError::PullTimeout { .. }
            | DockerError::Transfer { .. }
            | DockerError::Push { .. } => None,
            DockerError::Connect { source, .. }
            | DockerError::Ping { source, .. }
            | DockerError::InspectImage { source, .. }
            | DockerError::CreateVolume { source, .. }
            | DockerError::Download { source, .. }
            | DockerError::Upload { source, .. }
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
            | DockerError::Events { source, .. }
            | DockerError::Import { source, .. }
            | DockerError::Exec { source, .. } => Some(source),
        }
    }
}

/// Retries while Docker does not answer: quick at first, since most outages are a
/// restart of a few seconds.
pub fn outage_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(250), Duration::from_secs(5))
}

/// A Docker connection. Cheap to clone: bollard shares one connection pool.
#[derive(Clone, Debug)]
pub struct Docker {
    client: bollard::Docker,
    socket: String,
    /// The daemon's cgroup driver is `cgroupfs`: a container may then be given a
    /// cgroup parent of its own (see [`cgroup_parent`]).
    cgroupfs: bool,
}

/// Under the `cgroupfs` driver, the cgroup parent a container that asks for one
/// gets: `/deckhand/<name>`, created by runc at the start, left by Docker when
/// the container's own cgroup goes at its exit. Its counters then still hold
/// everything the container used, however short it ran.
pub fn cgroup_parent(name: &str) -> String {
    format!("/{CGROUP_PARENT_DIR}/{name}")
}

/// The cgroup directory deckhand's per-container parents live in.
pub const CGROUP_PARENT_DIR: &str = "deckhand";

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
        // Asked once: the driver is the daemon's for its whole life.
        let cgroupfs = client.info().await.is_ok_and(|info| {
            info.cgroup_driver == Some(bollard::models::SystemInfoCgroupDriverEnum::CGROUPFS)
        });
        Ok(Docker {
            client,
            socket,
            cgroupfs,
        })
    }

    /// The cgroup parent `name` gets when it asks for one: only under the
    /// `cgroupfs` driver (the `systemd` driver wants slices, which systemd keeps).
    pub fn own_cgroup(&self, name: &str) -> Option<String> {
        self.cgroupfs.then(|| cgroup_parent(name))
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

#[cfg(test)]
mod policy_tests {
    use super::DockerError;

    fn pull(message: &str) -> DockerError {
        DockerError::Pull {
            image: "r.internal/ci/x:1".into(),
            message: message.into(),
        }
    }

    #[test]
    fn a_registry_policy_refusal_is_told_from_other_pull_errors() {
        for refusal in [
            "pull access denied for r.internal/ci/x, repository does not exist or may require 'docker login': denied: Download blocked by Xray policy 'block-critical'",
            "unknown: current image with 3 vulnerabilities cannot be pulled due to configured policy in 'Prevent images with vulnerability severity of \"High\" or higher from running.'",
        ] {
            assert!(pull(refusal).is_policy_refusal(), "{refusal}");
        }
        for other in [
            "pull access denied for r.internal/ci/x, repository does not exist or may require 'docker login': denied: requested access to the resource is denied",
            "manifest for r.internal/ci/x:1 not found: manifest unknown",
            "Get \"https://r.internal/v2/\": dial tcp: connection refused",
        ] {
            assert!(!pull(other).is_policy_refusal(), "{other}");
        }
    }
}
