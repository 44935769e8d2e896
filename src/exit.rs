//! The process's exit codes. sysexits(3) numbers where one fits, so systemd's
//! `RestartPreventExitStatus=78` can stop a crash loop on bad config.

use std::process::ExitCode;

use crate::outcome::{JobResult, Status};

/// Clean exit: the command did what it was asked, or the agent drained.
pub const OK: u8 = 0;
/// Something unexpected; the message says what.
pub const FAILURE: u8 = 1;
/// A job was rejected (EX_DATAERR).
pub const REJECTED: u8 = 65;
/// An input file could not be read (EX_NOINPUT).
pub const NO_INPUT: u8 = 66;
/// A service deckhand needs is unavailable: Docker, the queue (EX_UNAVAILABLE).
pub const UNAVAILABLE: u8 = 69;
/// Invalid configuration (EX_CONFIG). systemd must not restart on it.
pub const CONFIG: u8 = 78;
/// The job ran out of time, as `timeout(1)` reports it.
pub const TIMED_OUT: u8 = 124;
/// The job was interrupted by a signal to deckhand (128 + SIGINT, as shells do).
pub const INTERRUPTED: u8 = 130;

/// `deckhand exec` exits with the job's own exit code when it ran.
pub fn for_result(result: &JobResult) -> ExitCode {
    let code = match result.status {
        Status::Succeeded => OK,
        Status::Failed => result
            .exit_code
            .and_then(|c| u8::try_from(c).ok())
            .filter(|c| *c != 0)
            .unwrap_or(FAILURE),
        Status::TimedOut => TIMED_OUT,
        Status::Rejected => REJECTED,
        Status::Interrupted => INTERRUPTED,
        Status::Error => UNAVAILABLE,
    };
    ExitCode::from(code)
}
