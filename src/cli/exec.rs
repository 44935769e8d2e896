//! `deckhand exec JOB.json`: one job, locally, with the same validation, policy and
//! isolation as the agent, and no queue.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::Instrument;

use crate::config::Config;
use crate::docker::{Docker, DockerError};
use crate::host::secrets::Secrets;
use crate::host::stop::{Preemption, Stop};
use crate::job::admission::Admission;
use crate::job::cancel::Cancel;
use crate::job::result::JobResult;
use crate::job::runner::{Controls, Runner};
use crate::job::spec::Job;
use crate::job::sweep::Sweeper;
use crate::mask::SharedMasker;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("read job file {path}: {source}")]
    ReadJob {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Secrets(#[from] crate::host::secrets::SecretsError),
    #[error("agent.secrets_dir {path}: {source}")]
    SecretsDir {
        path: PathBuf,
        source: crate::host::secrets::SecretsDirError,
    },
    #[error(transparent)]
    AdmissionToken(#[from] crate::job::admission::MissingToken),
    #[error("git mirrors: {0}")]
    Mirrors(#[source] crate::host::git::GitError),
}

/// What `exec` did with the job.
pub enum Executed {
    Ran(JobResult),
    Rejected(JobResult),
}

/// Validates and runs the job in `path`; SIGTERM/SIGINT (through `stop`) interrupt it
/// and still clean up.
pub async fn exec(
    config: Arc<Config>,
    path: &Path,
    stop: Stop,
    log_masker: SharedMasker,
) -> Result<Executed, ExecError> {
    let body = tokio::fs::read(path)
        .await
        .map_err(|source| ExecError::ReadJob {
            path: path.to_owned(),
            source,
        })?;
    let instance_id = config
        .agent
        .instance_id
        .clone()
        .unwrap_or_else(|| "local".to_owned());
    let job = match Job::parse(&body, &config) {
        Ok(job) => job,
        Err(rejection) => {
            let id = rejection.id.clone().unwrap_or_else(|| "unknown".to_owned());
            return Ok(Executed::Rejected(JobResult::rejected(
                id,
                rejection.to_string(),
                1,
                &instance_id,
            )));
        }
    };
    let secrets = secrets_for(&config, &job, &log_masker).await?;
    if !job.secrets.is_empty() {
        crate::host::secrets::prepare_dir(&config.agent.secrets_dir, false).map_err(|source| {
            ExecError::SecretsDir {
                path: config.agent.secrets_dir.clone(),
                source,
            }
        })?;
    }
    let docker = Docker::connect(&config.docker).await?;
    if let Err(rejection) = job.check_bundle(&secrets) {
        return Ok(Executed::Rejected(JobResult::rejected(
            job.id.clone(),
            rejection.to_string(),
            1,
            &instance_id,
        )));
    }
    let sweeper = Sweeper::new(docker.clone(), &instance_id);
    let sdk = || crate::aws::sdk_config(&config.aws);
    let admission = Admission::for_pool(&config, &secrets, sdk)
        .await?
        .map(Arc::new);
    let mirrors = mirrors_for(&config, &job)?;
    let caches = caches_for(&config, &job).await;
    let runner = Runner::new(docker, config, sweeper, &instance_id)
        .with_secrets(secrets)
        .with_git(mirrors)
        .with_caches(caches)
        .with_admission(admission);
    let span = tracing::info_span!("job", job_id = %job.id, attempt = 1u32);
    let preemption = Preemption::of(&stop);
    // A job run by hand is stopped with ^C, not with `deckhand cancel`.
    let cancel = Cancel::never();
    let controls = Controls {
        preemption: &preemption,
        cancel: &cancel,
        live: None,
        artifacts: None,
        usage: None,
    };
    let finished = runner.run(&job, 1, &[], controls).instrument(span).await;
    runner.remove_workspace(finished.workspace).await;
    Ok(Executed::Ran(finished.result))
}

/// The host's git mirrors for a job with a `source`. No seed: a job run by
/// hand fetches what it needs into them, which only such a job needs to write.
fn mirrors_for(
    config: &Config,
    job: &Job,
) -> Result<Option<Arc<crate::host::git::Mirrors>>, ExecError> {
    match &job.source {
        Some(_) => Ok(Some(Arc::new(
            crate::agent::boot::mirrors(config).map_err(ExecError::Mirrors)?,
        ))),
        None => Ok(None),
    }
}

/// The host tier of `agent.work_dir/caches` (and S3's with `caches.bucket`), as
/// the agent keeps them, for a job with `caches`; `None` (logged) while another
/// deckhand on this host, an agent, has the tier open.
async fn caches_for(config: &Config, job: &Job) -> Option<Arc<crate::host::caches::Caches>> {
    if job.caches.caches.is_empty() {
        return None;
    }
    let s3 = match &config.caches.bucket {
        Some(_) => Some(crate::aws::s3_client(
            &crate::aws::sdk_config(&config.aws).await,
            &config.aws,
        )),
        None => None,
    };
    crate::host::caches::Caches::for_config(config, s3.as_ref())
}

/// Only what this job needs: the bundle when it asks for secrets (or a registry
/// or the admission webhook needs a credential); no warm images, no cache
/// archive (the job's own `caches` are kept, see `exec`).
async fn secrets_for(
    config: &Config,
    job: &Job,
    log_masker: &SharedMasker,
) -> Result<Arc<Secrets>, ExecError> {
    let needed = !job.secrets.is_empty()
        || !config.images.registry_auth.is_empty()
        || config.admission.token_secret.is_some()
        || job
            .source
            .as_ref()
            .is_some_and(|s| !s.git.credentials.is_empty());
    if config.secrets.bundle.is_none() || !needed {
        return Ok(Arc::default());
    }
    let sdk = crate::aws::sdk_config(&config.aws).await;
    let loaded = crate::host::secrets::load(
        &config.secrets,
        &crate::aws::s3_client(&sdk, &config.aws),
        &crate::aws::kms_client(&sdk),
    )
    .await?;
    let secrets = Arc::new(loaded.unwrap_or_default());
    log_masker.set(Arc::new(secrets.masker()));
    Ok(secrets)
}
