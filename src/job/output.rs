//! A job's output, from Docker's stream into its [`JobLog`]: read until the
//! container's output ends, and read again from the log driver when Docker went
//! away mid-job, so that every line is logged exactly once.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::docker::outage_backoff;
use crate::docker::{self, Docker, Output};
use crate::job::log::{JobLog, ServiceChunk, Stream};

/// After the container exits, how long its output may take to drain before the
/// log is closed without the rest.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);
/// An output stream that ends while the container is not known to have exited
/// was cut: after this long without the exit, it is read again. Longer than the
/// outage backoff's longest step, so an exit seen late after an outage is not
/// taken for another cut.
const STREAM_END_GRACE: Duration = Duration::from_secs(6);
/// Reads the container's output into the log until it ends, or until
/// `OUTPUT_DRAIN` after the container exited.
///
/// A stream lost while the container runs (dockerd restarted, the socket
/// dropped) is read again from the log driver once Docker answers, skipping the
/// bytes of each stream already logged, so the log comes out whole and once.
pub(crate) async fn pump_output(
    docker: &Docker,
    container: &str,
    mut output: docker::OutputStream,
    log: &mut JobLog,
    exited: &CancellationToken,
    outages: &AtomicU32,
    mut services: Option<&mut tokio::sync::mpsc::Receiver<ServiceChunk>>,
) {
    let drained = async {
        exited.cancelled().await;
        tokio::time::sleep(OUTPUT_DRAIN).await;
    };
    tokio::pin!(drained);
    let mut bytes = SeenBytes::default();
    let mut replaying = false;
    // The outage count when the current stream began.
    let mut stream_began = 0;
    let mut backoff = outage_backoff();
    loop {
        let lost = tokio::select! {
            item = output.next() => match item {
                Some(Ok(chunk)) => {
                    bytes.push_unseen(log, chunk);
                    continue;
                }
                Some(Err(error)) if replaying && !error.is_unreachable() => {
                    // The log driver cannot be read back (`none`, `syslog`...).
                    tracing::warn!(%error, "Cannot read the job's output again; its log misses what came while Docker was away.");
                    break;
                }
                Some(Err(error)) => error.to_string(),
                None => tokio::select! {
                    // The end, unless Docker went away since the stream began: a
                    // cut stream ends the same way, and the exit may have come
                    // after. Then what is left is read back once more.
                    _ = exited.cancelled() => {
                        if outages.load(Ordering::SeqCst) == stream_began {
                            break;
                        }
                        "the stream ended while Docker was away".to_owned()
                    }
                    _ = tokio::time::sleep(STREAM_END_GRACE) => "the stream ended while the container runs".to_owned(),
                },
            },
            Some((name, stream, bytes)) = next_service(&mut services) => {
                log.push_service(&name, stream, &bytes);
                continue;
            }
            _ = &mut drained => {
                tracing::warn!("The job's output did not end after it exited; closing the log.");
                break;
            }
        };
        let delay = backoff.next_delay();
        tracing::warn!(error = %lost, retry_in_ms = delay.as_millis() as u64, "Lost the job's output stream; reading it again.");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut drained => break,
        }
        bytes.replay();
        replaying = true;
        stream_began = outages.load(Ordering::SeqCst);
        output = docker.replay(container, !exited.is_cancelled());
    }
    log.finish();
}

/// The next chunk of the services' output; never, for a job without services.
async fn next_service(
    services: &mut Option<&mut tokio::sync::mpsc::Receiver<ServiceChunk>>,
) -> Option<ServiceChunk> {
    match services {
        Some(output) => output.recv().await,
        None => std::future::pending().await,
    }
}

/// How much of each stream is in the log, and how much of a replay (which starts
/// from the container's first byte) to pass over.
#[derive(Default)]
struct SeenBytes {
    logged: [usize; 2],
    to_skip: [usize; 2],
}

impl SeenBytes {
    fn push_unseen(&mut self, log: &mut JobLog, chunk: Output) {
        let (stream, i, data) = match chunk {
            Output::Stdout(data) => (Stream::Stdout, 0, data),
            Output::Stderr(data) => (Stream::Stderr, 1, data),
        };
        let skip = self.to_skip[i].min(data.len());
        self.to_skip[i] -= skip;
        if skip < data.len() {
            log.push(stream, &data[skip..]);
            self.logged[i] += data.len() - skip;
        }
    }

    fn replay(&mut self) {
        self.to_skip = self.logged;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::job::log::LogBody;
    use crate::mask::Masker;

    fn text(log: JobLog) -> String {
        match log.into_body() {
            LogBody::Memory(ref bytes) => String::from_utf8(bytes.clone()).unwrap(),
            LogBody::Spooled { .. } => unreachable!("a few bytes stay in memory"),
        }
    }

    fn out(s: &str) -> Output {
        Output::Stdout(bytes::Bytes::copy_from_slice(s.as_bytes()))
    }

    fn err(s: &str) -> Output {
        Output::Stderr(bytes::Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn a_replay_adds_only_what_was_not_logged_per_stream() {
        let mut log = JobLog::new(Arc::new(Masker::none()));
        let mut seen = SeenBytes::default();
        // The attach stream: one and a half stdout lines, one stderr line, cut.
        seen.push_unseen(&mut log, out("one\ntw"));
        seen.push_unseen(&mut log, err("e1\n"));
        // The replay starts from each stream's first byte, framed differently
        // (the log driver stores lines), and stderr comes first this time.
        seen.replay();
        seen.push_unseen(&mut log, err("e1\n"));
        seen.push_unseen(&mut log, err("e2\n"));
        seen.push_unseen(&mut log, out("one\n"));
        seen.push_unseen(&mut log, out("two\nthree\n"));
        // A second cut and replay, mid-line again.
        seen.replay();
        seen.push_unseen(&mut log, out("one\ntwo\nthree\nfo"));
        seen.push_unseen(&mut log, out("ur\n"));
        log.finish();
        let text = text(log);
        let lines: Vec<&str> = text.lines().collect();
        let stdout: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| !l.starts_with('e'))
            .collect();
        let stderr: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.starts_with('e'))
            .collect();
        assert_eq!(stdout, ["one", "two", "three", "four"], "{text}");
        assert_eq!(stderr, ["e1", "e2"], "{text}");
    }
}
