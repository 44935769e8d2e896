//! Containers that run this deckhand binary where a job would run, under a job's
//! network and hardening: `deckhand check`'s probes (how the host looks from a
//! job), and the sandbox that holds a job's network namespace for it and its
//! services (`deckhand pause`). Their image is empty (imported from an empty
//! archive, so it never names an image the engine lacks); the binary is mounted
//! into it read-only. And `exec`, to run a command in a running container.

use std::time::Duration;

use bollard::query_parameters::CreateImageOptions;
use futures_util::StreamExt;

use super::{ContainerSpec, Docker, DockerError, Limits, Output};

/// The empty image the probes run in, made on this host.
pub const PROBE_IMAGE: &str = "deckhand-probe:empty";

/// How a probe container ended.
#[derive(Debug)]
pub struct Probed {
    /// `None`: still running at the deadline (it is removed all the same).
    pub code: Option<i64>,
    /// Its stdout and stderr, as text.
    pub output: String,
}

impl Docker {
    /// [`PROBE_IMAGE`], imported from an empty tar archive if the engine lacks it.
    pub async fn probe_image(&self) -> Result<String, DockerError> {
        if let Ok(image) = self.client.inspect_image(PROBE_IMAGE).await {
            return Ok(image.id.unwrap_or_else(|| PROBE_IMAGE.to_owned()));
        }
        let import = |source| DockerError::Import {
            image: PROBE_IMAGE.to_owned(),
            source,
        };
        // A tar archive with no entries: its two zero blocks.
        let empty = bytes::Bytes::from_static(&[0; 1024]);
        let (repo, tag) = PROBE_IMAGE.split_once(':').expect("a tagged name");
        let options = CreateImageOptions {
            from_src: Some("-".to_owned()),
            repo: Some(repo.to_owned()),
            tag: Some(tag.to_owned()),
            ..Default::default()
        };
        let mut progress =
            self.client
                .create_image(Some(options), Some(bollard::body_full(empty)), None);
        while let Some(step) = progress.next().await {
            step.map_err(import)?;
        }
        let image = self
            .client
            .inspect_image(PROBE_IMAGE)
            .await
            .map_err(import)?;
        Ok(image.id.unwrap_or_else(|| PROBE_IMAGE.to_owned()))
    }

    /// Runs `command` in the running container `name` and waits, at most
    /// `deadline`, for its exit code; `None` if it has not exited by then.
    pub async fn exec(
        &self,
        name: &str,
        command: &[String],
        deadline: Duration,
    ) -> Result<Option<i64>, DockerError> {
        let failed = |source| DockerError::Exec {
            name: name.to_owned(),
            source,
        };
        let options = bollard::exec::CreateExecOptions {
            cmd: Some(command.to_vec()),
            attach_stdout: Some(false),
            attach_stderr: Some(false),
            ..Default::default()
        };
        let created = self
            .client
            .create_exec(name, options)
            .await
            .map_err(failed)?;
        let start = bollard::exec::StartExecOptions {
            detach: true,
            ..Default::default()
        };
        self.client
            .start_exec(&created.id, Some(start))
            .await
            .map_err(failed)?;
        let give_up = tokio::time::Instant::now() + deadline;
        loop {
            let inspect = self
                .client
                .inspect_exec(&created.id)
                .await
                .map_err(failed)?;
            if inspect.running != Some(true) {
                return Ok(inspect.exit_code);
            }
            if tokio::time::Instant::now() >= give_up {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs the container `spec` describes to its end, for at most `deadline`,
    /// and removes it whatever happened.
    pub async fn run_probe(
        &self,
        spec: &ContainerSpec,
        deadline: Duration,
    ) -> Result<Probed, DockerError> {
        self.create_container(spec).await?;
        let ran = async {
            let mut output = self.attach(&spec.name).await?;
            self.start(&spec.name).await?;
            let mut text = String::new();
            let read = async {
                while let Some(Ok(chunk)) = output.next().await {
                    let (Output::Stdout(bytes) | Output::Stderr(bytes)) = chunk;
                    text.push_str(&String::from_utf8_lossy(&bytes));
                }
                self.wait(&spec.name).await
            };
            match tokio::time::timeout(deadline, read).await {
                Ok(code) => Ok(Probed {
                    code: Some(code?),
                    output: text,
                }),
                Err(_) => Ok(Probed {
                    code: None,
                    output: text,
                }),
            }
        }
        .await;
        let removed = self.remove_container(&spec.name).await;
        let probed = ran?;
        removed?;
        Ok(probed)
    }
}

/// Where this binary is mounted in a container of [`PROBE_IMAGE`].
pub const OWN_BINARY: &str = "/deckhand";

/// A container of [`PROBE_IMAGE`] (`image_id`) that runs this binary (`exe`)
/// with `args`, under a job's hardening (the create call adds it), with no
/// capabilities and little memory, on `network`.
pub fn own_binary_spec(
    name: String,
    image_id: String,
    exe: &std::path::Path,
    args: &[&str],
    network: &str,
    labels: std::collections::HashMap<String, String>,
) -> ContainerSpec {
    let mut command = vec![OWN_BINARY.to_owned()];
    command.extend(args.iter().map(|a| (*a).to_owned()));
    let limits = Limits {
        memory_bytes: 64 << 20,
        nano_cpus: 500_000_000,
        pids: 16,
    };
    ContainerSpec {
        command: Some(command),
        workdir: "/".to_owned(),
        labels,
        mounts: binary_mounts(exe),
        log_max_bytes: 1 << 20,
        ..ContainerSpec::new(name, image_id, network.to_owned(), limits)
    }
}

/// The mounts that run this binary in an empty image: the binary, and,
/// read-only, the host's library folders (a static build needs none of them; a
/// development build finds its loader and libc there).
fn binary_mounts(exe: &std::path::Path) -> Vec<super::Mount> {
    let mut mounts = vec![super::bind_mount(exe, OWN_BINARY, true)];
    for dir in ["/lib", "/lib64", "/usr/lib"] {
        if let Ok(real) = std::fs::canonicalize(dir) {
            mounts.push(super::bind_mount(&real, dir, true));
        }
    }
    mounts
}
