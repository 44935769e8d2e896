//! Every exit code the process can end with, and the one table that maps each
//! outcome to one. sysexits(3) numbers where one fits, so systemd's
//! `RestartPreventExitStatus=78` can stop a crash loop on bad config.

use crate::agent::AgentError;
use crate::cli::RecordError;
use crate::cli::artifacts::ArtifactsError;
use crate::cli::cancel::CancelError;
use crate::cli::exec::ExecError;
use crate::cli::logs::LogsError;
use crate::cli::seal::SealError;
use crate::cli::submit::SubmitError;
use crate::config::ConfigError;
use crate::host::forwarder::ForwarderError;
use crate::job::result::{JobResult, Status};

/// Clean exit: the command did what it was asked, or the agent drained.
pub const OK: u8 = 0;
/// Something unexpected; the message says what.
pub const FAILURE: u8 = 1;
/// A job was rejected (EX_DATAERR).
pub const REJECTED: u8 = 65;
/// An input file could not be read (EX_NOINPUT).
pub const NO_INPUT: u8 = 66;
/// An output file could not be written (EX_CANTCREAT).
pub const CANT_CREATE: u8 = 73;
/// A service deckhand needs is unavailable: Docker, the queue (EX_UNAVAILABLE).
pub const UNAVAILABLE: u8 = 69;
/// Invalid configuration (EX_CONFIG). systemd must not restart on it.
pub const CONFIG: u8 = 78;
/// The job ran out of time, as `timeout(1)` reports it.
pub const TIMED_OUT: u8 = 124;
/// The job was interrupted by a signal to deckhand (128 + SIGINT, as shells do).
pub const INTERRUPTED: u8 = 130;
/// The job was cancelled (128 + SIGTERM, as a shell reports a job it terminated).
pub const CANCELLED: u8 = 143;

/// What something that ends the process exits with.
pub trait ExitStatus {
    fn exit_code(&self) -> u8;
}

/// 78 for what an operator must fix (retrying cannot help), 69 for what may come
/// back by itself.
fn permanent_or_unavailable(permanent: bool) -> u8 {
    if permanent { CONFIG } else { UNAVAILABLE }
}

/// `deckhand exec` and `submit --wait` exit with the job's own exit code when it ran.
impl ExitStatus for JobResult {
    fn exit_code(&self) -> u8 {
        match self.status {
            Status::Succeeded => OK,
            Status::Failed => self
                .exit_code
                .and_then(|c| u8::try_from(c).ok())
                .filter(|c| *c != 0)
                .unwrap_or(FAILURE),
            Status::TimedOut => TIMED_OUT,
            Status::Rejected => REJECTED,
            Status::Interrupted => INTERRUPTED,
            Status::Cancelled => CANCELLED,
            Status::Error => UNAVAILABLE,
        }
    }
}

impl ExitStatus for ConfigError {
    fn exit_code(&self) -> u8 {
        CONFIG
    }
}

impl ExitStatus for AgentError {
    fn exit_code(&self) -> u8 {
        match self {
            AgentError::Config(_)
            | AgentError::SecretsDir { .. }
            | AgentError::MissingSecret { .. }
            // Another process has the port, or the host lacks the address
            // (169.254.170.2 on lo): the config or the host must change.
            | AgentError::Bind(_) => CONFIG,
            AgentError::Secrets(e) => permanent_or_unavailable(e.is_permanent()),
            AgentError::Warm { .. } => UNAVAILABLE,
            AgentError::Cache(e) => permanent_or_unavailable(e.is_permanent()),
            AgentError::Seed(e) => permanent_or_unavailable(e.is_permanent()),
            AgentError::Mirrors(_) => UNAVAILABLE,
        }
    }
}

impl ExitStatus for SubmitError {
    fn exit_code(&self) -> u8 {
        match self {
            SubmitError::Rejected(_) => REJECTED,
            SubmitError::ReadJob { .. } => NO_INPUT,
            SubmitError::NoQueue | SubmitError::NoBucket => CONFIG,
            SubmitError::Send(_) | SubmitError::Store(_) => UNAVAILABLE,
            SubmitError::WaitTimedOut { .. } => TIMED_OUT,
            SubmitError::Follow(e) => e.exit_code(),
        }
    }
}

/// `forwarder-config` only: under `run` a wrong `[log_forwarder]` turns
/// forwarding off and the host goes on.
impl ExitStatus for ForwarderError {
    fn exit_code(&self) -> u8 {
        match self {
            ForwarderError::Write { .. } => CANT_CREATE,
            _ => CONFIG,
        }
    }
}

impl ExitStatus for RecordError {
    fn exit_code(&self) -> u8 {
        match self {
            RecordError::InvalidId { .. } => REJECTED,
            RecordError::NoBucket { .. } => CONFIG,
        }
    }
}

impl ExitStatus for CancelError {
    fn exit_code(&self) -> u8 {
        match self {
            CancelError::Record(e) => e.exit_code(),
            CancelError::Store(_) => UNAVAILABLE,
        }
    }
}

impl ExitStatus for ArtifactsError {
    fn exit_code(&self) -> u8 {
        match self {
            ArtifactsError::Record(e) => e.exit_code(),
            ArtifactsError::NoResult { .. } | ArtifactsError::Missing { .. } => NO_INPUT,
            // What S3 holds is not what the result lists: the data is wrong.
            ArtifactsError::Mismatch { .. } | ArtifactsError::UnsafePath { .. } => REJECTED,
            ArtifactsError::Store(_) => UNAVAILABLE,
            ArtifactsError::Write { .. } | ArtifactsError::Exists { .. } => CANT_CREATE,
        }
    }
}

impl ExitStatus for LogsError {
    fn exit_code(&self) -> u8 {
        match self {
            LogsError::Record(e) => e.exit_code(),
            LogsError::NotFound { .. } => NO_INPUT,
            LogsError::Store(_) => UNAVAILABLE,
            // Nobody reads the rest (a closed pipe).
            LogsError::Write(_) => FAILURE,
            LogsError::WaitTimedOut { .. } => TIMED_OUT,
        }
    }
}

impl ExitStatus for ExecError {
    fn exit_code(&self) -> u8 {
        match self {
            ExecError::ReadJob { .. } => NO_INPUT,
            ExecError::Docker(_) | ExecError::Mirrors(_) => UNAVAILABLE,
            ExecError::SecretsDir { .. } | ExecError::AdmissionToken(_) => CONFIG,
            ExecError::Secrets(e) => permanent_or_unavailable(e.is_permanent()),
        }
    }
}

impl ExitStatus for SealError {
    fn exit_code(&self) -> u8 {
        match self {
            SealError::Context(_) | SealError::Out(_) => CONFIG,
            SealError::ReadInput(_) => NO_INPUT,
            SealError::Seal(_) => UNAVAILABLE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(status: Status, exit_code: Option<i64>) -> JobResult {
        let mut result = JobResult::rejected("j".into(), String::new(), 1, "i-1");
        result.status = status;
        result.exit_code = exit_code;
        result
    }

    #[test]
    fn a_job_that_ran_exits_with_its_own_code() {
        assert_eq!(result(Status::Succeeded, Some(0)).exit_code(), OK);
        assert_eq!(result(Status::Failed, Some(3)).exit_code(), 3);
        // Not representable, or 0 for a failure (killed for memory): 1.
        assert_eq!(result(Status::Failed, Some(300)).exit_code(), FAILURE);
        assert_eq!(result(Status::Failed, None).exit_code(), FAILURE);
        assert_eq!(result(Status::TimedOut, None).exit_code(), TIMED_OUT);
        assert_eq!(result(Status::Rejected, None).exit_code(), REJECTED);
        assert_eq!(result(Status::Interrupted, None).exit_code(), INTERRUPTED);
        assert_eq!(result(Status::Error, None).exit_code(), UNAVAILABLE);
        assert_eq!(result(Status::Cancelled, Some(137)).exit_code(), CANCELLED);
    }
}
