//! What a job's container is equipped with besides its image and command: the
//! labels that tie it to the job, its secret files, its AWS credentials and the
//! cache volume.

use std::collections::HashMap;

use super::Runner;
use crate::docker;
use crate::host::cache::CacheVolume;
use crate::host::credentials::Issued;
use crate::job::Job;
use crate::job::container::{self, Names, SECRETS_MOUNT};
use crate::job::log::JobLog;
use crate::job::outcome::RunError;

impl Runner {
    /// What ties the workspace and the container to this job and this agent: the
    /// orphan sweep and recovery find them by these.
    pub(super) fn labels(
        &self,
        job: &Job,
        attempt: u32,
        extra_labels: &[(&str, &str)],
    ) -> HashMap<String, String> {
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
        labels
    }

    /// The job's secrets (and its credentials token) as files on tmpfs, mounted
    /// read-only, and the env variables its profile lets carry a secret's value.
    pub(super) fn secret_files(
        &self,
        job: &Job,
        names: &Names,
        user: Option<&str>,
        token: Option<&str>,
    ) -> Result<(Vec<String>, Vec<docker::Mount>), RunError> {
        if job.secrets.is_empty() && token.is_none() {
            return Ok((Vec::new(), Vec::new()));
        }
        let env_secrets = self
            .config
            .profile(&job.profile)
            .map(|p| p.env_secrets.as_slice())
            .unwrap_or_default();
        let files = container::SecretFiles {
            dir: &names.secrets,
            image_user: user,
            secrets: &self.secrets,
            env_secrets,
            token,
        };
        let env = files.write(&job.secrets)?;
        let mounts = vec![docker::bind_mount(&names.secrets, SECRETS_MOUNT, true)];
        Ok((env, mounts))
    }

    /// This job's credentials, when its profile names a role; they work until the
    /// returned value is dropped.
    pub(super) fn credentials(&self, job: &Job, log: &JobLog) -> Result<Option<Issued>, RunError> {
        let role_arn = self
            .config
            .profile(&job.profile)
            .and_then(|p| p.role_arn.as_deref());
        match (role_arn, &self.credentials) {
            (None, _) => Ok(None),
            (Some(role_arn), Some(broker)) => {
                Ok(Some(broker.issue(&job.id, role_arn, log.later_secrets())))
            }
            (Some(_), None) => Err(RunError::NoCredentialsBroker {
                profile: job.profile.clone(),
            }),
        }
    }

    /// The code/library cache, read-only: the managed volume of the moment, or
    /// the operator's own volume when the agent does not manage one.
    pub(super) fn cache_mount(&self, current: Option<&CacheVolume>) -> Option<docker::Mount> {
        let mount = &self.config.cache.mount;
        match (current, &self.config.cache.volume) {
            (Some(volume), _) => Some(docker::volume_mount(volume.name(), mount, true)),
            (None, Some(volume)) if self.cache.is_none() => {
                Some(docker::volume_mount(volume, mount, true))
            }
            _ => None,
        }
    }
}
