//! A job's `image_build`, after its command succeeds (or as the whole job): the
//! Dockerfile's bases checked and pulled by the engine, saved into a staging
//! folder, built by buildah in a builder container of the agent's (no network,
//! seven capabilities, our seccomp profile, its storage a tmpfs of
//! `image_build_max_mb`), the image loaded back into the engine, pushed to each
//! tag with the registry's credentials, and put to admission. The builder never
//! holds a credential, a pool secret or a network route.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use tokio::time::Instant;

use super::{Controls, Ended, Launch, Ran, Runner};
use crate::docker::{self, ContainerSpec, Limits};
use crate::job::admission::{Ask, Kind};
use crate::job::build::{self, BuiltImage, ImageBuild, Prepared};
use crate::job::log::{JobLog, Stream};
use crate::job::outcome::{Outcome, RunError};

/// Where the builder sees the job's workspace (read-only), the bases the engine
/// saved, and the folder it writes the image archive to.
const WORKSPACE: &str = "/deckhand/workspace";
const BASES: &str = "/deckhand/bases";
const OUT: &str = "/deckhand/out";
const SCRIPT: &str = "/deckhand/build.sh";
/// buildah's storage and temporary files: one tmpfs, so `image_build_max_mb`
/// bounds them together.
const STORAGE: &str = "/var/lib/containers";

impl Runner {
    /// Runs the job's `image_build` if `outcome` lets it (the command exited 0,
    /// or there was none), and returns the outcome to record.
    pub(super) async fn build_image(
        &self,
        launch: &Launch<'_>,
        controls: &Controls<'_>,
        log: &mut JobLog,
        ran: &mut Ran,
        outcome: Outcome,
    ) -> Outcome {
        let Some(build) = &launch.job.image_build else {
            return outcome;
        };
        let code = match outcome {
            Outcome::Exited {
                code: 0,
                oom_killed: false,
            } => Some(0),
            Outcome::Built => None,
            other => return other,
        };
        let staging = build::staging_dir(&self.config.agent.work_dir, &launch.names.container);
        let builder = build::builder_name(&launch.names.container);
        self.sweeper.hold(&builder);
        let built = self
            .build(launch, build, controls, log, ran, &staging, &builder, code)
            .await;
        log.finish();
        if let Err(error) = self.docker.remove_container(&builder).await
            && !error.is_not_found()
        {
            tracing::warn!(%error, container = %builder, "Could not remove the image builder; the sweep will.");
            self.sweeper.left_behind();
        }
        self.sweeper.release(&builder);
        if let Err(error) = std::fs::remove_dir_all(&staging)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(%error, dir = %staging.display(), "Could not remove the build's staging folder.");
        }
        match built {
            Ok(images) => {
                ran.images = images;
                match code {
                    Some(code) => Outcome::Exited {
                        code,
                        oom_killed: false,
                    },
                    None => Outcome::Built,
                }
            }
            Err(outcome) => outcome,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn build(
        &self,
        launch: &Launch<'_>,
        build: &ImageBuild,
        controls: &Controls<'_>,
        log: &mut JobLog,
        ran: &mut Ran,
        staging: &Path,
        builder: &str,
        code: Option<i64>,
    ) -> Result<Vec<BuiltImage>, Outcome> {
        let error = |e: RunError| Outcome::Error(e);
        let Launch { job, names, .. } = *launch;
        let root = self
            .workspace_folder(&names.workspace)
            .await
            .map_err(error)?;
        let prepared = build::prepare(build, &root, &self.config).map_err(Outcome::BuildRefused)?;
        let Some(builder_image) = &self.config.images.builder else {
            return Err(error(RunError::Builder("images.builder is not set".into())));
        };
        let started = Instant::now();
        // The bases, pulled (the job's pull path: policy, credentials, timeout)
        // and saved, cut short by a stop or a cancel.
        tokio::select! {
            staged = self.stage(&prepared, build, staging) => staged.map_err(error)?,
            () = controls.interrupted() => return Err(interrupted(controls)),
        }
        let spec = self
            .builder_spec(launch, build, builder, builder_image, staging)
            .await
            .map_err(error)?;
        let docker = &self.docker;
        let builder_error = |e: docker::DockerError| error(RunError::Builder(e.to_string()));
        docker
            .create_container(&spec)
            .await
            .map_err(builder_error)?;
        let output = docker.attach(builder).await.map_err(builder_error)?;
        docker.start(builder).await.map_err(builder_error)?;
        tracing::info!(container = %builder, bases = prepared.bases.len(), "Image build started.");
        let remaining = job
            .timeout
            .saturating_sub(ran.started.map_or(Duration::ZERO, |s| s.elapsed()));
        let log_full = log.full();
        let outages = AtomicU32::new(0);
        let mut said = Said::default();
        let pump = pump(output, log, &mut said);
        let supervise = self.supervise(builder, remaining, controls, &log_full, &outages);
        let ((), ended) = tokio::join!(pump, supervise);
        let build_ms = started.elapsed().as_millis() as u64;
        let failed = |reason: String| Outcome::BuildFailed { code, reason };
        match ended.map_err(|e| error(e.into()))? {
            (Ended::Exited, 0) => {}
            (Ended::Exited, exit) => {
                said.oom = docker.exit_state(builder).await.is_ok_and(|e| e.oom_killed);
                return Err(failed(said.reason(exit, build, job.resources.memory_mb)));
            }
            (Ended::TimedOut, exit) => return Err(Outcome::TimedOut { code: exit }),
            (Ended::Preempted, _) => return Err(Outcome::Interrupted { code: None }),
            (Ended::Cancelled, _) => return Err(Outcome::Cancelled { code: None }),
            (Ended::LogFull, exit) => return Err(Outcome::LogFull { code: exit }),
        }
        self.publish(launch, build, controls, ran, staging, build_ms, code)
            .await
    }

    /// Loads the built image, pushes every tag, puts each to admission.
    #[allow(clippy::too_many_arguments)]
    async fn publish(
        &self,
        launch: &Launch<'_>,
        build: &ImageBuild,
        controls: &Controls<'_>,
        ran: &mut Ran,
        staging: &Path,
        build_ms: u64,
        code: Option<i64>,
    ) -> Result<Vec<BuiltImage>, Outcome> {
        let error = |e: RunError| Outcome::Error(e);
        let docker = &self.docker;
        let first = build.tags[0].to_string();
        // What the builder wrote is the job's: checked before the engine takes
        // any name from it, and a bad one is the job's failure, not the host's.
        let path = staging.join("out/image.tar");
        let archive = {
            let (path, first, max_bytes) = (path.clone(), first.clone(), build.max_bytes);
            tokio::task::spawn_blocking(move || {
                build::archive::open_checked(&path, &first, max_bytes)
            })
            .await
            .map_err(|e| error(RunError::Builder(format!("check the image archive: {e}"))))?
        }
        .map_err(|e| Outcome::BuildFailed {
            code,
            reason: e.to_string(),
        })?;
        docker
            .load_image(archive, &path)
            .await
            .map_err(|e| error(e.into()))?;
        let bytes = docker
            .image_bytes(&first)
            .await
            .map_err(|e| error(e.into()))?;
        let pushing = self.push_tags(build, bytes, build_ms);
        let pushed = tokio::select! {
            pushed = pushing => pushed,
            () = controls.interrupted() => return Err(interrupted(controls)),
        };
        // The engine's copies: the registry holds the image now, and a job that
        // runs it pulls it from there like any other.
        for tag in &build.tags {
            if let Err(error) = docker.remove_image(&tag.to_string()).await {
                // Harmless: the disk's collection takes unused images.
                tracing::debug!(%error, "Could not untag a built image.");
            }
        }
        let images = match pushed {
            Ok(images) => images,
            Err(RunError::Docker(docker::DockerError::Push { image, message })) => {
                return Err(Outcome::BuildFailed {
                    code,
                    reason: format!("the registry refused the push of {image}: {message}"),
                });
            }
            Err(e) => return Err(error(e)),
        };
        self.admit_built(launch, &images, ran)
            .await
            .map_err(error)?;
        for image in &images {
            tracing::info!(
                tag = %image.tag,
                digest = image.digest.as_deref(),
                bytes = image.bytes,
                build_ms = image.build_ms,
                push_ms = image.push_ms,
                "Image built and pushed."
            );
        }
        Ok(images)
    }

    /// Tags the built image with every tag after the first, pushes each.
    async fn push_tags(
        &self,
        build: &ImageBuild,
        bytes: u64,
        build_ms: u64,
    ) -> Result<Vec<BuiltImage>, RunError> {
        let first = build.tags[0].to_string();
        let mut images = Vec::new();
        for tag in &build.tags {
            let name = tag.to_string();
            let tag_text = tag.tag.as_deref().unwrap_or_default();
            if name != first {
                self.docker
                    .tag_image(&first, &tag.repository(), tag_text)
                    .await?;
            }
            let auth = self
                .secrets
                .registry_auth(&self.config.images.registry_auth, &tag.registry)?;
            let started = Instant::now();
            let digest = self
                .docker
                .push_image(&tag.registry, &tag.repository(), tag_text, auth.as_ref())
                .await?;
            images.push(BuiltImage {
                tag: name,
                digest,
                bytes,
                build_ms,
                push_ms: started.elapsed().as_millis() as u64,
            });
        }
        Ok(images)
    }

    /// Each pushed image put to the job's admission, by its registry digest.
    async fn admit_built(
        &self,
        launch: &Launch<'_>,
        images: &[BuiltImage],
        ran: &mut Ran,
    ) -> Result<(), RunError> {
        let job = launch.job;
        let (Some(admission), Some(rule)) =
            (&self.admission, self.config.admission_for(&job.profile))
        else {
            return Ok(());
        };
        let tags = job.image_build.as_ref().map_or(&[][..], |b| &b.tags[..]);
        for (image, tag) in images.iter().zip(tags) {
            let digest = image.digest.clone().unwrap_or_default();
            let asked = Ask {
                image: &image.tag,
                digest: &digest,
                job_id: &job.id,
                profile: &job.profile,
                kind: Kind::Build,
                name: Some(&image.tag),
            };
            let verdict = admission
                .admit(rule, &asked, tag, image.digest.as_deref())
                .await;
            if let Some(record) = ran.admission.as_mut() {
                record.images.insert(image.tag.clone(), verdict.checked);
            }
            if let Some(refusal) = verdict.refusal {
                return Err(refusal.into());
            }
        }
        Ok(())
    }

    /// The bases pulled and saved as `bases/<n>.tar`, the script written; the
    /// caller removes the folder.
    async fn stage(
        &self,
        prepared: &Prepared,
        build: &ImageBuild,
        staging: &Path,
    ) -> Result<(), RunError> {
        let io = |e: std::io::Error| RunError::Builder(format!("{}: {e}", staging.display()));
        std::fs::create_dir_all(staging.join("bases")).map_err(io)?;
        std::fs::create_dir_all(staging.join("out")).map_err(io)?;
        for (i, base) in prepared.bases.iter().enumerate() {
            self.ensure(base).await?;
            self.docker
                .save_image(&base.local_name(), &staging.join(format!("bases/{i}.tar")))
                .await?;
        }
        std::fs::write(staging.join("build.sh"), script(prepared, build)).map_err(io)?;
        Ok(())
    }

    /// The builder's container: see the module's comment and operations.md.
    async fn builder_spec(
        &self,
        launch: &Launch<'_>,
        build: &ImageBuild,
        name: &str,
        image: &str,
        staging: &Path,
    ) -> Result<ContainerSpec, RunError> {
        let job = launch.job;
        let image_id = self
            .docker
            .image_id(image)
            .await
            .map_err(|e| RunError::Builder(format!("images.builder {image:?}: {e}")))?
            .ok_or_else(|| {
                RunError::Builder(format!(
                    "images.builder {image:?} is not on this host (it is never pulled)"
                ))
            })?;
        let mut labels = self.labels(job, launch.attempt, &[]);
        labels.insert(docker::LABEL_ROLE.to_owned(), "builder".to_owned());
        let storage_mb = build.max_bytes.div_ceil(1 << 20);
        // The tmpfs is charged to the builder's memory: it gets the storage on
        // top of the job's memory, so a full store is ENOSPC, not an OOM kill.
        let limits = Limits::new(
            job.resources.memory_mb + storage_mb,
            job.resources.cpus,
            job.resources.pids,
        );
        let bind = |dir: &str, target: &str, read_only| {
            docker::bind_mount(&staging.join(dir), target, read_only)
        };
        Ok(ContainerSpec {
            command: Some(vec!["sh".to_owned(), SCRIPT.to_owned()]),
            env: vec![format!("TMPDIR={STORAGE}/tmp")],
            workdir: "/".to_owned(),
            labels,
            mounts: vec![
                docker::volume_mount(&launch.names.workspace, WORKSPACE, true),
                bind("bases", BASES, true),
                bind("out", OUT, false),
                bind("build.sh", SCRIPT, true),
            ],
            cap_add: docker::BUILDER_CAPABILITIES
                .iter()
                .map(|c| (*c).to_owned())
                .collect(),
            security_opt: vec![format!("seccomp={}", docker::SECCOMP_PROFILE)],
            tmpfs: HashMap::from([(
                STORAGE.to_owned(),
                format!("size={},exec,mode=0700", build.max_bytes),
            )]),
            ..ContainerSpec::new(name.to_owned(), image_id, "none".to_owned(), limits)
        })
    }
}

/// Stopped before the builder ran: by the drain or by a cancel.
fn interrupted(controls: &Controls<'_>) -> Outcome {
    if controls.cancel.reason().is_some() {
        Outcome::Cancelled { code: None }
    } else {
        Outcome::Interrupted { code: None }
    }
}

/// What the builder's end and output said about why it failed.
#[derive(Default)]
struct Said {
    oom: bool,
    /// Some line said its storage was full (ENOSPC).
    no_space: bool,
    /// Its last line that says `Error:`.
    last_error: Option<String>,
}

impl Said {
    /// Why a build that exited `exit` failed.
    fn reason(self, exit: i64, build: &ImageBuild, memory_mb: u64) -> String {
        let said = self.last_error.unwrap_or_default();
        if self.oom {
            format!(
                "the image build was killed: out of memory (limit {memory_mb} MB plus its storage)"
            )
        } else if self.no_space {
            format!(
                "the image build's storage passed image_build_max_mb = {}: {said}",
                build.max_bytes / 1_000_000
            )
        } else if said.is_empty() {
            format!("the image build exited with code {exit}")
        } else {
            format!("the image build failed: {said}")
        }
    }
}

/// Reads the builder's output into the log as stream `build`, noting in `said`
/// what a failure's reason needs.
async fn pump(mut output: docker::OutputStream, log: &mut JobLog, said: &mut Said) {
    use futures_util::StreamExt;
    while let Some(chunk) = output.next().await {
        let bytes = match chunk {
            Ok(docker::Output::Stdout(b) | docker::Output::Stderr(b)) => b,
            Err(error) => {
                tracing::warn!(%error, "The image builder's output was cut short.");
                break;
            }
        };
        log.push(Stream::Build, &bytes);
        let text = String::from_utf8_lossy(&bytes);
        if let Some(line) = text.lines().rev().find(|l| l.contains("Error:")) {
            said.last_error = Some(line.trim().to_owned());
        }
        if text
            .to_ascii_lowercase()
            .contains("no space left on device")
        {
            said.no_space = true;
        }
    }
}

/// The builder's script: each base loaded and named as the Dockerfile names it,
/// the build (never pulling), the image written as an archive.
fn script(prepared: &Prepared, build: &ImageBuild) -> String {
    let mut s = String::from("set -eu\nmkdir -p \"$TMPDIR\"\n");
    for (i, base) in prepared.bases.iter().enumerate() {
        s.push_str(&format!(
            "id=$(buildah pull -q docker-archive:{BASES}/{i}.tar)\nbuildah tag \"$id\" {}\n",
            quote(&base.to_string())
        ));
    }
    let mut bud = vec![
        "buildah".to_owned(),
        "bud".to_owned(),
        "--isolation".to_owned(),
        "chroot".to_owned(),
        "--pull-never".to_owned(),
        "-f".to_owned(),
        quote(&in_workspace(&prepared.dockerfile)),
        "-t".to_owned(),
        quote(&build.tags[0].to_string()),
    ];
    for (name, value) in &build.build_args {
        bud.push("--build-arg".to_owned());
        bud.push(quote(&format!("{name}={value}")));
    }
    if let Some(target) = &build.target {
        bud.push("--target".to_owned());
        bud.push(quote(target));
    }
    bud.push(quote(&in_workspace(&prepared.context)));
    s.push_str(&bud.join(" "));
    s.push('\n');
    s.push_str(&format!(
        "buildah push --quiet {} {}\n",
        quote(&build.tags[0].to_string()),
        quote(&format!("docker-archive:{OUT}/image.tar:{}", build.tags[0]))
    ));
    s
}

fn in_workspace(relative: &str) -> String {
    let path: PathBuf = Path::new(WORKSPACE).join(relative);
    path.to_string_lossy().into_owned()
}

/// `text` as one shell word: single-quoted, each `'` closed, escaped, reopened.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn a_quoted_word_stays_one_word() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's $(x) `y`"), r"'it'\''s $(x) `y`'");
    }
}
