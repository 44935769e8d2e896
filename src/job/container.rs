//! What a job's container is: its names, its spec (image, command, environment,
//! mounts, limits, capabilities) and its secret files. docs/interface.md ("What a
//! job container sees") is the contract.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::docker::{self, ContainerSpec, Limits};
use crate::host::secrets::Secrets;
use crate::job::Job;

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

/// Where a job's secrets appear in its container.
/// The job's AWS credentials token, in the secrets mount: a dot-file, so no
/// secret (whose names start with a letter or digit) can take its name.
pub const TOKEN_FILE: &str = ".aws-container-authorization-token";

pub const SECRETS_MOUNT: &str = "/run/secrets";

/// The uid and gid to own secret files: the image's numeric `USER`, else root. A
/// user *name* would need the image's /etc/passwd; images that want secrets as a
/// non-root user set a numeric USER.
pub(crate) fn container_ids(user: Option<&str>) -> (u32, u32) {
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

pub(crate) fn remove_secrets_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // 0500 directories cannot be emptied until writable again.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    std::fs::remove_dir_all(dir)
}

/// The Docker names of one attempt's container and workspace, and its secrets
/// directory. Unique per run, so two agents on one host (or a retry of the same
/// job) never collide.
pub(crate) struct Names {
    pub container: String,
    pub workspace: String,
    pub secrets: PathBuf,
    /// The container that holds the network namespace of the job and its
    /// services, when it has any.
    pub sandbox: String,
}

impl Names {
    pub fn new(job_id: &str, attempt: u32, secrets_dir: &Path) -> Self {
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
            sandbox: format!("{container}-net"),
            container,
        }
    }

    /// The container of the job's service `name`.
    pub fn service(&self, name: &str) -> String {
        format!("{}-svc-{name}", self.container)
    }

    /// The secrets directory of the job's service `name`, beside the job's.
    pub fn service_secrets(&self, name: &str) -> PathBuf {
        self.secrets.with_file_name(self.service(name))
    }
}

/// The container for `job`'s attempt. `env` goes after the job's own variables
/// (secrets, credentials); `mounts` after its workspace (cache, secrets).
pub(crate) fn spec(
    job: &Job,
    attempt: u32,
    names: &Names,
    image_id: String,
    labels: HashMap<String, String>,
    env: Vec<String>,
    mounts: Vec<bollard::models::Mount>,
) -> ContainerSpec {
    let mut all_env: Vec<String> = job.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    all_env.extend(env);
    // Ours last: Docker keeps the last of duplicate names.
    all_env.push("CI=true".into());
    all_env.push(format!("DECKHAND_JOB_ID={}", job.id));
    all_env.push(format!("DECKHAND_ATTEMPT={attempt}"));
    let mut all_mounts = vec![docker::volume_mount(&names.workspace, &job.workdir, false)];
    all_mounts.extend(mounts);
    let resources = &job.resources;
    let limits = Limits::new(resources.memory_mb, resources.cpus, resources.pids);
    ContainerSpec {
        command: job.command.clone(),
        env: all_env,
        workdir: job.workdir.clone(),
        labels,
        mounts: all_mounts,
        cap_add: CAPABILITIES.iter().map(|c| (*c).to_owned()).collect(),
        // Docker's copy carries JSON around every line: room for that, and for
        // the lines past the cap printed before the job stops.
        log_max_bytes: job
            .max_log_bytes
            .saturating_mul(2)
            .saturating_add(16_000_000),
        ..ContainerSpec::new(
            names.container.clone(),
            image_id,
            job.network.clone(),
            limits,
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretFilesError {
    #[error("write the job's secrets ({operation} {dir}): {source}")]
    Io {
        operation: &'static str,
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("secret {0:?} vanished from the bundle")]
    Vanished(String),
}

/// Where a job's secret files go and what goes in them.
pub(crate) struct SecretFiles<'a> {
    /// On tmpfs, mounted read-only at `/run/secrets`.
    pub dir: &'a Path,
    pub image_user: Option<&'a str>,
    pub secrets: &'a Secrets,
    /// Secrets the profile also gives as environment variables.
    pub env_secrets: &'a [String],
    /// The job's AWS credentials token, if its profile names a role.
    pub token: Option<&'a str>,
}

impl SecretFiles<'_> {
    /// Writes each secret named (a job's, or a service's), and the token, as a
    /// file readable by the image's user only; returns the env variables the
    /// profile allows.
    pub(crate) fn write(&self, names: &[String]) -> Result<Vec<String>, SecretFilesError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let dir = self.dir;
        let fail = |operation: &'static str| {
            move |source| SecretFilesError::Io {
                operation,
                dir: dir.to_owned(),
                source,
            }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(fail("create"))?;
        let (uid, gid) = container_ids(self.image_user);
        let mut env = Vec::new();
        for name in names {
            let value = self
                .secrets
                .get(name)
                .ok_or_else(|| SecretFilesError::Vanished(name.clone()))?;
            write_owned(&dir.join(name), value.expose(), uid, gid).map_err(fail("write"))?;
            if self.env_secrets.contains(name) {
                env.push(format!(
                    "{}={}",
                    crate::rules::secret_env_name(name),
                    value.expose()
                ));
            }
        }
        if let Some(token) = self.token {
            write_owned(&dir.join(TOKEN_FILE), token, uid, gid).map_err(fail("write"))?;
        }
        // The container's user must be able to enter the directory; nobody else.
        std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(fail("chown"))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o500))
            .map_err(fail("chmod"))?;
        Ok(env)
    }
}

/// A new file holding `value`, mode 0400, owned by `uid:gid`.
fn write_owned(path: &Path, value: &str, uid: u32, gid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(path)?;
    std::io::Write::write_all(&mut file, value.as_bytes())?;
    std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
}
