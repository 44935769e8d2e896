//! What became of a job's container, before it is a recorded [`JobResult`]: the
//! runner learns an [`Outcome`], this module words it as a status, an exit code and
//! a reason, and builds the result.

use chrono::{DateTime, Utc};

use crate::docker::DockerError;
use crate::host::secrets::RegistryAuthError;
use crate::host::stop::StopReason;
use crate::job::Job;
use crate::job::admission::AdmissionError;
use crate::job::cancel::Halt;
use crate::job::container::SecretFilesError;
use crate::job::inputs::InputError;
use crate::job::result::{AGENT_VERSION, JobResult, Status, timestamp};

/// Why a job could not run: the host's trouble (status `error`: it is retried),
/// except what Docker refuses as the job's own fault (`failed`).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    RegistryAuth(#[from] RegistryAuthError),
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    SecretFiles(#[from] SecretFilesError),
    #[error(
        "profile {profile:?} has a role_arn: per-job AWS credentials are served by `deckhand run` only"
    )]
    NoCredentialsBroker { profile: String },
    #[error(transparent)]
    Input(#[from] InputError),
    /// The webhook denied an image (`rejected`) or failed with `fail = "closed"`.
    #[error(transparent)]
    Admission(#[from] AdmissionError),
    #[error(transparent)]
    Source(#[from] crate::job::source::SourceError),
    #[error("the job names a source and this runner has no git mirrors")]
    NoMirrors,
    #[error("the job names inputs: they are fetched from S3 by `deckhand run` only")]
    NoInputStore,
    #[error("the workspace volume {volume} has no folder on this host to place inputs in")]
    NoWorkspaceFolder { volume: String },
    #[error(
        "container {container} ended while Docker was down and Docker lost its exit status (255 on restore); the job runs again"
    )]
    ExitLost { container: String },
    /// A service exited or was not ready in time: the job never started.
    #[error("{0}")]
    Service(String),
    #[error("this binary's path, to mount in the services' sandbox: {source}")]
    OwnBinary { source: std::io::Error },
    /// The image builder could not be made ready or started: the host's trouble.
    #[error("the image builder could not start: {0}")]
    Builder(String),
}

/// How a job's container ended.
#[derive(Debug)]
pub enum Outcome {
    Exited {
        code: i64,
        oom_killed: bool,
    },
    TimedOut {
        code: i64,
    },
    /// Preempted by the drain, or before its container started.
    Interrupted {
        code: Option<i64>,
    },
    /// Stopped on a cancel request or over a host limit ([`Halt`]), or before
    /// its container started.
    Cancelled {
        code: Option<i64>,
    },
    /// Stopped because its output passed the profile's `max_log_mb`.
    LogFull {
        code: i64,
    },
    /// It had no command, and its `image_build` succeeded: no container of its
    /// own ran.
    Built,
    /// Its `image_build` named something the pool does not allow, found once
    /// its workspace was there (a base's registry, a link out of it).
    BuildRefused(crate::job::build::Refused),
    /// Its `image_build` failed: the Dockerfile's error, its storage full, the
    /// registry's refusal of a push. `code` is the job's command's.
    BuildFailed {
        code: Option<i64>,
        reason: String,
    },
    Error(RunError),
}

impl Outcome {
    /// Its status, exit code and reason. `preempted_for` is why the drain stopped
    /// the job, if it did; `cancelled_for` why it was cancelled.
    pub fn describe(
        &self,
        job: &Job,
        preempted_for: Option<&StopReason>,
        cancelled_for: Option<&Halt>,
    ) -> (Status, Option<i64>, Option<String>) {
        match self {
            Outcome::Exited { code: 0, .. } => (Status::Succeeded, Some(0), None),
            Outcome::Exited {
                code,
                oom_killed: true,
            } => (
                Status::Failed,
                Some(*code),
                Some(format!(
                    "killed: out of memory (limit {} MB)",
                    job.resources.memory_mb
                )),
            ),
            Outcome::Exited { code, .. } => (
                Status::Failed,
                Some(*code),
                Some(format!("exited with code {code}")),
            ),
            Outcome::TimedOut { code } => (
                Status::TimedOut,
                Some(*code),
                Some(format!(
                    "still running after timeout_secs = {}; stopped",
                    job.timeout.as_secs()
                )),
            ),
            Outcome::Interrupted { code } => (
                Status::Interrupted,
                *code,
                Some(match preempted_for {
                    Some(reason) => format!("interrupted: {reason}"),
                    None => "interrupted".to_owned(),
                }),
            ),
            Outcome::LogFull { code } => (
                Status::Failed,
                Some(*code),
                Some(format!(
                    "the output passed max_log_mb = {}; stopped",
                    job.max_log_bytes / 1_000_000
                )),
            ),
            Outcome::Cancelled { code } => match cancelled_for {
                Some(Halt::OverLimit(reason)) => (Status::Failed, *code, Some(reason.clone())),
                Some(Halt::Requested(reason)) => (Status::Cancelled, *code, Some(reason.clone())),
                None => (Status::Cancelled, *code, Some("cancelled".to_owned())),
            },
            Outcome::Built => (Status::Succeeded, None, None),
            Outcome::BuildRefused(refused) => (Status::Rejected, None, Some(refused.to_string())),
            Outcome::BuildFailed { code, reason } => (Status::Failed, *code, Some(reason.clone())),
            Outcome::Error(error) => describe_error(error),
        }
    }
}

/// A run that could not go on: the host's trouble (`error`, retried), or the
/// job's own, which no host would get past.
fn describe_error(error: &RunError) -> (Status, Option<i64>, Option<String>) {
    match error {
        // Terminal: retrying what the job itself got wrong only loops it
        // until its redrive.
        RunError::Docker(error) if error.is_job_fault() => (
            Status::Failed,
            None,
            Some(format!("the container could not start: {error}")),
        ),
        // The registry's own policy refused the image (a scan's block): it
        // would refuse it on every host.
        RunError::Docker(error) if error.is_policy_refusal() => (
            Status::Failed,
            None,
            Some(format!("the registry refused the image by policy: {error}")),
        ),
        // A missing or forbidden object, an archive that breaks the rules: the
        // producer's to fix.
        RunError::Input(error) if error.is_job_fault() => {
            (Status::Failed, None, Some(error.to_string()))
        }
        // A commit, ref or repository the remote lacks, a checkout too big, a
        // submodule from elsewhere: the job's own, on any host.
        RunError::Source(error) if error.is_job_fault() => {
            (Status::Failed, None, Some(error.to_string()))
        }
        // The pool's policy refused an image the job named: never retried.
        RunError::Admission(error) if error.is_denial() => {
            (Status::Rejected, None, Some(error.to_string()))
        }
        // Its service's failure is the job's: what it named did not come up.
        RunError::Service(reason) => (Status::Failed, None, Some(reason.clone())),
        error => (Status::Error, None, Some(error.to_string())),
    }
}

/// The facts of one attempt that every result carries.
pub struct Attempt<'a> {
    pub job: &'a Job,
    pub attempt: u32,
    pub instance_id: &'a str,
    /// The image that ran, by digest where the registry gave one.
    pub image: Option<String>,
    pub started_at: DateTime<Utc>,
    pub duration_ms: u64,
}

impl Attempt<'_> {
    /// The result of the attempt (without `log`, which the record sets).
    pub fn result(
        self,
        status: Status,
        exit_code: Option<i64>,
        reason: Option<String>,
    ) -> JobResult {
        JobResult {
            version: crate::job::spec::VERSION,
            id: self.job.id.clone(),
            status,
            exit_code,
            reason,
            attempt: self.attempt,
            instance_id: self.instance_id.to_owned(),
            agent_version: AGENT_VERSION.to_owned(),
            image: self.image.or_else(|| Some(self.job.image.to_string())),
            started_at: timestamp(self.started_at),
            finished_at: timestamp(Utc::now()),
            duration_ms: self.duration_ms,
            log: None,
            artifacts: None,
            artifacts_unmatched: Vec::new(),
            artifacts_left_out: Vec::new(),
            usage: None,
            admission: None,
            source: None,
            caches: Vec::new(),
            images: Vec::new(),
            // The agent, which knows the message, sets these three.
            receive_count: 0,
            attempts: Vec::new(),
            budget: None,
            requeued: None,
        }
    }
}
