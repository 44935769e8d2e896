//! `deckhand logs ID [--follow] [--attempt N]`: a job's log from the S3 record,
//! whole once recorded, or live from a running attempt's chunks. Following
//! prints each chunk as it lands, then the rest of `log.txt` from where the chunks
//! left off, and ends with the job's result.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::cli::RecordError;
use crate::config::Config;
use crate::job::result::JobResult;
use crate::record::{ResultStore, StoreError};

/// How often a follower looks for new chunks and the result.
const FOLLOW_POLL: Duration = Duration::from_millis(500);
/// How long a follow mark lasts, and how often a follower renews it: the agent
/// uploads live chunks only while one is fresh.
const MARK_LASTS: Duration = Duration::from_secs(90);
const MARK_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("no log for {id}{}: it has not started, or the id is unknown", attempt.map(|n| format!(" attempt {n}")).unwrap_or_default())]
    NotFound { id: String, attempt: Option<u32> },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("write the log: {0}")]
    Write(#[source] std::io::Error),
    #[error("no result for {id} after {secs}s")]
    WaitTimedOut { id: String, secs: u64 },
}

/// Prints the log of job `id` to stdout; with `follow`, until the job (or
/// `attempt`) ends, returning its result.
pub async fn logs(
    config: Arc<Config>,
    id: &str,
    follow: bool,
    attempt: Option<u32>,
) -> Result<Option<JobResult>, LogsError> {
    let store = super::job_record(&config, id, "logs", "the log is read from S3").await?;
    let mut follower = Follower::new(&store, id, attempt, std::io::stdout());
    if follow {
        follower.follow(None).await.map(Some)
    } else {
        follower.print_what_is_there().await.map(|()| None)
    }
}

/// Prints a job's log as it grows: the chunks of the attempt running now, then
/// the rest from the recorded log.
pub struct Follower<'a, W> {
    store: &'a ResultStore,
    id: &'a str,
    /// Only this attempt (`--attempt`), or whichever runs.
    only: Option<u32>,
    out: W,
    /// The attempt being printed, once known.
    attempt: Option<u32>,
    /// The next chunk to read.
    seq: u32,
    /// How far into the attempt's whole log has been printed.
    printed: u64,
    /// The latest attempt seen to end without finishing the job.
    ended: u32,
    /// When this follower last marked the job followed.
    marked: Option<Instant>,
}

impl<'a, W: Write> Follower<'a, W> {
    pub fn new(store: &'a ResultStore, id: &'a str, only: Option<u32>, out: W) -> Self {
        Follower {
            store,
            id,
            only,
            out,
            attempt: only,
            seq: 0,
            printed: 0,
            ended: 0,
            marked: None,
        }
    }

    /// Follows the log until the job ends (or the attempt asked for); its result.
    /// `give_up`: stop waiting then.
    pub async fn follow(
        &mut self,
        give_up: Option<(Instant, Duration)>,
    ) -> Result<JobResult, LogsError> {
        loop {
            self.mark().await;
            if let Some(result) = self.step().await? {
                return Ok(result);
            }
            if let Some((at, waited)) = give_up
                && Instant::now() >= at
            {
                return Err(LogsError::WaitTimedOut {
                    id: self.id.to_owned(),
                    secs: waited.as_secs(),
                });
            }
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    }

    /// Tells the agent someone follows, so it uploads the live chunks, every
    /// [`MARK_EVERY`]. A mark that cannot be written is said once: the live
    /// output then shows only if another follower marks it, the end in any case.
    async fn mark(&mut self) {
        if self.marked.is_some_and(|at| at.elapsed() < MARK_EVERY) {
            return;
        }
        let first = self.marked.is_none();
        self.marked = Some(Instant::now());
        let until = chrono::Utc::now().timestamp() + MARK_LASTS.as_secs() as i64;
        if let Err(error) = self.store.mark_followed(self.id, until).await
            && first
        {
            eprintln!(
                "deckhand: cannot mark {} followed ({error}); its live output may not be uploaded, its whole log is printed at the end",
                self.id
            );
        }
    }

    /// Prints what is recorded or uploaded now, without waiting: the whole log
    /// once recorded, else the running attempt's chunks so far.
    async fn print_what_is_there(&mut self) -> Result<(), LogsError> {
        let store = self.store;
        let recorded = match self.only {
            None => store.log(self.id, None).await?,
            Some(n) => match store.log(self.id, Some(n)).await? {
                Some(log) => Some(log),
                // The attempt that finished the job has the job's log.
                None => match store.terminal(self.id).await? {
                    Some(result) if result.attempt == n => store.log(self.id, None).await?,
                    _ => None,
                },
            },
        };
        if let Some(log) = recorded {
            return self.write(&log);
        }
        let running = store.current_claim(self.id).await?.map(|c| c.attempt);
        let Some(attempt) = self.only.or(running) else {
            return Err(self.not_found());
        };
        let printed = self.print_chunks(attempt).await?;
        // Another attempt than the running one, with nothing to show.
        if !printed && running != Some(attempt) {
            return Err(self.not_found());
        }
        Ok(())
    }

    fn not_found(&self) -> LogsError {
        LogsError::NotFound {
            id: self.id.to_owned(),
            attempt: self.only,
        }
    }

    /// One look: new chunks, then whether the attempt or the job ended. The
    /// result, once the end is reached.
    async fn step(&mut self) -> Result<Option<JobResult>, LogsError> {
        let store = self.store;
        if let Some(result) = store.terminal(self.id).await? {
            if self.only.is_none_or(|n| n == result.attempt) {
                let log = store.log(self.id, None).await?.unwrap_or_default();
                // Printed so far of this very attempt; of another, nothing.
                let from = if self.attempt == Some(result.attempt) {
                    self.printed
                } else {
                    0
                };
                self.write_from(&log, from)?;
            }
            return Ok(Some(result));
        }
        if self.attempt.is_none()
            && let Some(claim) = store.current_claim(self.id).await?
            && claim.attempt > self.ended
        {
            self.follow_attempt(Some(claim.attempt));
        }
        let Some(attempt) = self.attempt else {
            return Ok(None);
        };
        self.print_chunks(attempt).await?;
        // An attempt that ended without finishing the job: its log is recorded
        // apart, and the next attempt (if any) is followed from its start.
        if let Some(ended) = store.attempt_result(self.id, attempt).await? {
            let log = store.log(self.id, Some(attempt)).await?.unwrap_or_default();
            self.write_from(&log, self.printed)?;
            if self.only == Some(attempt) {
                return Ok(Some(ended));
            }
            eprintln!(
                "deckhand: attempt {attempt} ended {}; following the next attempt",
                ended.status.as_str()
            );
            self.ended = attempt;
            self.follow_attempt(None);
        }
        Ok(None)
    }

    fn follow_attempt(&mut self, attempt: Option<u32>) {
        self.attempt = attempt;
        self.seq = 0;
        self.printed = 0;
    }

    /// Prints the attempt's chunks from `seq` on, as far as they go; whether any
    /// was printed.
    async fn print_chunks(&mut self, attempt: u32) -> Result<bool, LogsError> {
        let mut any = false;
        while let Some(chunk) = self.store.chunk(self.id, attempt, self.seq).await? {
            if chunk.offset > self.printed {
                eprintln!(
                    "deckhand: {} bytes of live output were not uploaded; `deckhand logs {}` has them once the job ends",
                    chunk.offset - self.printed,
                    self.id
                );
                self.printed = chunk.offset;
            }
            let skip = (self.printed - chunk.offset) as usize;
            self.write(chunk.bytes.get(skip..).unwrap_or_default())?;
            self.printed = chunk.offset + chunk.bytes.len() as u64;
            self.seq += 1;
            any = true;
        }
        Ok(any)
    }

    fn write_from(&mut self, log: &[u8], from: u64) -> Result<(), LogsError> {
        let from = usize::try_from(from).unwrap_or(usize::MAX).min(log.len());
        self.write(&log[from..])?;
        self.printed = log.len() as u64;
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), LogsError> {
        self.out
            .write_all(bytes)
            .and_then(|()| self.out.flush())
            .map_err(LogsError::Write)
    }
}
