//! A job's output: split into lines as it arrives, each logged to stdout with its
//! stream, and all of it kept for `log.txt` — in memory up to `SPOOL_AFTER_BYTES`,
//! then in a spool file under the agent's work dir, so a job that prints gigabytes
//! cannot take the agent's memory with it. Only masked text is ever kept.

use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::job::live::LiveTail;
use crate::logging::{self, JOB_OUTPUT_TARGET};
use crate::mask::{Masker, SharedMasker};

/// A line longer than this is cut into pieces, so one runaway line cannot hold the
/// log hostage (or the agent's memory).
const MAX_LINE_BYTES: usize = 64 * 1024;

/// Which of the container's streams a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
    /// The image builder's output (both of its streams), for a job's
    /// `image_build`.
    Build,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::Build => "build",
        }
    }
}

/// A chunk of a service's output on its way to the job's log: the service's name,
/// which stream, the bytes.
pub type ServiceChunk = (String, Stream, bytes::Bytes);

/// Past this, the log goes to a spool file.
pub const SPOOL_AFTER_BYTES: usize = 2 * 1024 * 1024;

/// The whole log of one job, in arrival order, masked.
pub struct JobLog {
    masker: Arc<Masker>,
    /// Secrets learned while the job runs (its role credentials), masked from then on.
    later: SharedMasker,
    /// Where to spool, if the log grows past `SPOOL_AFTER_BYTES`.
    spool_path: Option<PathBuf>,
    spool: Option<std::fs::File>,
    bytes: u64,
    /// The job's own streams.
    job: Splitters,
    /// Each service's streams.
    services: std::collections::BTreeMap<String, Splitters>,
    text: Vec<u8>,
    lines: u64,
    /// Where lines also go while the job runs, for followers.
    live: Option<LiveTail>,
    /// The most the log may hold (`max_log_mb`); past it the rest is dropped.
    max_bytes: u64,
    /// Cancelled once the log passes `max_bytes`: the job is then stopped.
    full: CancellationToken,
    /// Bytes of output dropped past `max_bytes`.
    dropped: u64,
}

impl JobLog {
    /// Lines are masked whole, after splitting: a secret written in two pieces
    /// (two reads of the stream) is masked like one written at once.
    pub fn new(masker: Arc<Masker>) -> Self {
        JobLog {
            masker,
            later: SharedMasker::default(),
            spool_path: None,
            spool: None,
            bytes: 0,
            job: Splitters::default(),
            services: Default::default(),
            text: Vec::new(),
            lines: 0,
            live: None,
            max_bytes: u64::MAX,
            full: CancellationToken::new(),
            dropped: 0,
        }
    }

    /// Takes a chunk of output; complete lines are logged and kept at once, a
    /// trailing partial line waits for the rest.
    pub fn push(&mut self, stream: Stream, chunk: &[u8]) {
        self.split(None, stream, chunk);
    }

    /// Takes a chunk of a service's output, as [`push`](Self::push) does the job's.
    pub fn push_service(&mut self, service: &str, stream: Stream, chunk: &[u8]) {
        self.split(Some(service), stream, chunk);
    }

    /// Flushes partial lines: the container's streams have ended.
    pub fn finish(&mut self) {
        let job = std::mem::take(&mut self.job);
        self.flush_rest(None, job);
    }

    /// Flushes every service's partial lines: their streams have ended.
    pub fn finish_services(&mut self) {
        for (service, splitters) in std::mem::take(&mut self.services) {
            self.flush_rest(Some(&service), splitters);
        }
    }

    /// The lines of `chunk` (with what came before it) of the job's or a
    /// service's `stream`, emitted as they are found, straight from the chunk,
    /// and written to stdout at once.
    fn split(&mut self, service: Option<&str>, stream: Stream, chunk: &[u8]) {
        // Out of `self` while it runs, since each line goes through `self`.
        let mut splitters = match service {
            None => std::mem::take(&mut self.job),
            Some(name) => self.services.remove(name).unwrap_or_default(),
        };
        logging::batched(|| {
            splitters
                .of(stream)
                .push(chunk, |line| self.emit_from(service, stream, line))
        });
        match service {
            None => self.job = splitters,
            Some(name) => {
                self.services.insert(name.to_owned(), splitters);
            }
        }
    }

    fn flush_rest(&mut self, service: Option<&str>, mut splitters: Splitters) {
        for stream in [Stream::Stdout, Stream::Stderr, Stream::Build] {
            if let Some(rest) = splitters.of(stream).take_rest() {
                self.emit_from(service, stream, &rest);
            }
        }
    }

    /// Spools to `path` once the log outgrows memory.
    pub fn spool_to(mut self, path: PathBuf) -> Self {
        self.spool_path = Some(path);
        self
    }

    /// Keeps at most `max_bytes`; past it one line says so, the rest is dropped,
    /// and [`JobLog::full`] fires so the job can be stopped.
    pub fn capped_at(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Fires once the log passes its cap.
    pub fn full(&self) -> CancellationToken {
        self.full.clone()
    }

    /// Every line also goes to `live`, masked, for the live view.
    pub fn live_to(mut self, live: Option<LiveTail>) -> Self {
        self.live = live;
        self
    }

    /// Where to put secrets the job is given after it starts: every line emitted
    /// after one is set is masked against them too.
    pub fn later_secrets(&self) -> SharedMasker {
        self.later.clone()
    }

    /// A line of the job's (`service` `None`) or of one of its services.
    fn emit_from(&mut self, service: Option<&str>, stream: Stream, line: &[u8]) {
        if self.full.is_cancelled() {
            self.dropped += line.len() as u64 + 1;
            return;
        }
        if self.bytes + line.len() as u64 + 1 > self.max_bytes {
            self.dropped += line.len() as u64 + 1;
            self.full.cancel();
            let note = format!(
                "deckhand: the job's output passed max_log_mb = {}; the rest is dropped and the job stopped",
                self.max_bytes / 1_000_000
            );
            tracing::warn!(
                max_log_mb = self.max_bytes / 1_000_000,
                "The job's log is full; stopping the job."
            );
            self.keep(None, Stream::Stderr, &note);
            return;
        }
        let raw = String::from_utf8_lossy(line);
        let text = self.masker.mask(&raw);
        let text = match self.later.get() {
            Some(later) => std::borrow::Cow::Owned(later.mask(&text).into_owned()),
            None => text,
        };
        self.keep(service, stream, &text);
    }

    /// One masked line: to stdout, the live view and the whole log. A service's
    /// line says whose: `stream` is `service:NAME` on stdout, and the log's text
    /// starts `[NAME] `.
    fn keep(&mut self, service: Option<&str>, stream: Stream, text: &str) {
        let prefixed;
        let text = match service {
            None => {
                tracing::info!(target: JOB_OUTPUT_TARGET, stream = stream.as_str(), "{text}");
                text
            }
            Some(name) => {
                tracing::info!(target: JOB_OUTPUT_TARGET, stream = %format_args!("service:{name}"), "{text}");
                prefixed = format!("[{name}] {text}");
                prefixed.as_str()
            }
        };
        if let Some(live) = &self.live {
            live.push_line(text.as_bytes());
        }
        self.text.extend_from_slice(text.as_bytes());
        self.text.push(b'\n');
        self.lines += 1;
        self.bytes += text.len() as u64 + 1;
        if self.text.len() >= SPOOL_AFTER_BYTES {
            self.spill();
        }
    }

    /// Moves what is in memory to the spool file. Plain blocking writes: appends to
    /// the page cache are as quick as the memcpy they replace.
    fn spill(&mut self) {
        use std::io::Write;
        if self.spool.is_none() {
            let Some(path) = &self.spool_path else { return };
            let opened = path
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::File::create(path));
            match opened {
                Ok(file) => {
                    tracing::info!(spool = %path.display(), "The job's log is large; spooling it to disk.");
                    self.spool = Some(file);
                }
                Err(error) => {
                    tracing::warn!(%error, spool = %path.display(), "Cannot spool the job's log; keeping it in memory.");
                    self.spool_path = None;
                    return;
                }
            }
        }
        let file = self.spool.as_mut().expect("opened above");
        if let Err(error) = file.write_all(&self.text) {
            tracing::warn!(%error, "Could not write the log spool; keeping the log in memory.");
            self.spool = None;
            self.spool_path = None;
            return;
        }
        self.text.clear();
    }

    /// The whole log, to upload. A spooled log stays on disk (and is deleted when
    /// the body is dropped).
    pub fn into_body(mut self) -> LogBody {
        if self.spool.is_some() {
            self.spill();
        }
        match (self.spool.take(), self.spool_path.take()) {
            (Some(file), Some(path)) => {
                drop(file);
                LogBody::Spooled {
                    path,
                    bytes: self.bytes,
                }
            }
            _ => LogBody::Memory(std::mem::take(&mut self.text)),
        }
    }

    /// The log so far, if it is all in memory.
    #[cfg(test)]
    fn text(&self) -> &[u8] {
        &self.text
    }

    pub fn line_count(&self) -> u64 {
        self.lines
    }

    /// Output dropped past the cap, in bytes.
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped
    }
}

/// A finished job's log, ready to upload.
#[derive(Debug)]
pub enum LogBody {
    Memory(Vec<u8>),
    Spooled { path: PathBuf, bytes: u64 },
}

impl LogBody {
    pub fn empty() -> Self {
        LogBody::Memory(Vec::new())
    }

    pub fn len(&self) -> u64 {
        match self {
            LogBody::Memory(text) => text.len() as u64,
            LogBody::Spooled { bytes, .. } => *bytes,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for LogBody {
    fn drop(&mut self) {
        if let LogBody::Spooled { path, .. } = self {
            // Best effort: a leftover spool holds masked text only, and the next
            // job of the same container name truncates it.
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The splitters of one container's stdout and stderr.
#[derive(Default)]
struct Splitters {
    stdout: LineSplitter,
    stderr: LineSplitter,
    build: LineSplitter,
}

impl Splitters {
    fn of(&mut self, stream: Stream) -> &mut LineSplitter {
        match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
            Stream::Build => &mut self.build,
        }
    }
}

/// Cuts a byte stream into lines across chunk boundaries.
#[derive(Default)]
struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    /// Calls `line` with each complete line of `chunk` (without its `\n` or
    /// `\r\n`), joined to what an earlier chunk left, and with each
    /// `MAX_LINE_BYTES` piece of a line still open past that length; keeps the
    /// rest for the next chunk. A line that lies whole in `chunk` is passed as a
    /// slice of it: no copy, whatever the output's volume.
    fn push(&mut self, mut chunk: &[u8], mut line: impl FnMut(&[u8])) {
        while let Some(pos) = memchr::memchr(b'\n', chunk) {
            let head = &chunk[..pos];
            chunk = &chunk[pos + 1..];
            if self.partial.is_empty() {
                line(strip_cr(head));
            } else {
                self.partial.extend_from_slice(head);
                line(strip_cr(&self.partial));
                // Cleared, not dropped: its capacity serves the next open line.
                self.partial.clear();
            }
        }
        self.partial.extend_from_slice(chunk);
        if self.partial.len() >= MAX_LINE_BYTES {
            let whole = self.partial.len() / MAX_LINE_BYTES * MAX_LINE_BYTES;
            self.partial[..whole]
                .chunks(MAX_LINE_BYTES)
                .for_each(&mut line);
            self.partial.drain(..whole);
        }
    }

    fn take_rest(&mut self) -> Option<Vec<u8>> {
        (!self.partial.is_empty()).then(|| std::mem::take(&mut self.partial))
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_learned_later_are_masked_from_then_on() {
        let mut log = JobLog::new(Arc::new(Masker::new(["bundle-secret"])));
        log.push(Stream::Stdout, b"early role-secret-1 bundle-secret\n");
        log.later_secrets()
            .set(Arc::new(Masker::new(["role-secret-1"])));
        log.push(Stream::Stdout, b"late role-secret-1 bundle-secret\n");
        assert_eq!(
            String::from_utf8_lossy(log.text()),
            "early role-secret-1 ***\nlate *** ***\n"
        );
    }

    fn split(chunks: &[&[u8]]) -> Vec<String> {
        let mut splitter = LineSplitter::default();
        let mut out = Vec::new();
        for chunk in chunks {
            splitter.push(chunk, |line| out.push(line.to_vec()));
        }
        out.extend(splitter.take_rest());
        out.into_iter()
            .map(|l| String::from_utf8(l).unwrap())
            .collect()
    }

    #[test]
    fn lines_span_chunks() {
        assert_eq!(split(&[b"he", b"llo\nwor", b"ld\n"]), ["hello", "world"]);
        assert_eq!(split(&[b"a\r\nb"]), ["a", "b"]);
        assert_eq!(split(&[b"\n\n"]), ["", ""]);
        // A partial line is joined to its end, its \r\n stripped, and the
        // partial buffer serves the next open line afresh.
        assert_eq!(
            split(&[b"one\r", b"\ntw", b"o\nthr", b"ee\r\nfour"]),
            ["one", "two", "three", "four"]
        );
    }

    #[test]
    fn a_secret_split_across_reads_is_masked() {
        let mut log = JobLog::new(Arc::new(Masker::new(["hunter22-secret"])));
        log.push(Stream::Stdout, b"token: hunter2");
        log.push(Stream::Stdout, b"2-secret\n");
        log.finish();
        assert_eq!(log.text(), b"token: ***\n");
    }

    #[test]
    fn a_secret_split_between_two_live_chunks_is_in_neither() {
        let live = crate::job::live::LiveTail::default();
        let mut log =
            JobLog::new(Arc::new(Masker::new(["hunter22-secret"]))).live_to(Some(live.clone()));
        log.push(Stream::Stdout, b"before\ntoken: hunter2");
        // A flush comes between the two halves: only the whole line before it goes.
        let first = live.take().unwrap();
        log.push(Stream::Stdout, b"2-secret\nafter\n");
        let second = live.take().unwrap();
        assert_eq!(first.bytes, b"before\n");
        assert_eq!(second.bytes, b"token: ***\nafter\n");
        assert_eq!(second.offset, first.bytes.len() as u64);
        // The chunks are the whole log's bytes, in order.
        let whole = [first.bytes, second.bytes].concat();
        assert_eq!(log.text(), whole.as_slice());
    }

    #[test]
    fn past_its_cap_the_log_says_so_drops_the_rest_and_fires() {
        let mut log = JobLog::new(Arc::new(Masker::none())).capped_at(1_000_000);
        let full = log.full();
        let line = format!("{}\n", "x".repeat(599_999));
        log.push(Stream::Stdout, line.as_bytes());
        assert!(!full.is_cancelled());
        log.push(Stream::Stdout, line.as_bytes());
        log.push(Stream::Stdout, b"after\n");
        assert!(full.is_cancelled());
        let text = String::from_utf8(log.text().to_vec()).unwrap();
        assert!(text.ends_with("passed max_log_mb = 1; the rest is dropped and the job stopped\n"));
        assert!(!text.contains("after"));
        assert_eq!(log.dropped_bytes(), 600_000 + 6);
    }

    #[test]
    fn a_large_log_is_spooled_and_removed_after() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool/job.log");
        let mut log = JobLog::new(Arc::new(Masker::new(["secret-value"]))).spool_to(path.clone());
        let line = format!("{} secret-value\n", "x".repeat(1000));
        for _ in 0..(SPOOL_AFTER_BYTES / 1000 + 10) {
            log.push(Stream::Stdout, line.as_bytes());
        }
        log.finish();
        let lines = log.line_count();
        let body = log.into_body();
        let LogBody::Spooled {
            path: spooled,
            bytes,
        } = &body
        else {
            panic!("not spooled: {body:?}")
        };
        let text = std::fs::read_to_string(spooled).unwrap();
        assert_eq!(text.len() as u64, *bytes);
        assert_eq!(text.lines().count() as u64, lines);
        assert!(
            !text.contains("secret-value"),
            "only masked text reaches the disk"
        );
        drop(body);
        assert!(!path.exists());
    }

    #[test]
    fn long_lines_are_cut() {
        let long = vec![b'x'; MAX_LINE_BYTES * 2 + 10];
        let lines = split(&[&long]);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].len(), MAX_LINE_BYTES);
        assert_eq!(lines[2].len(), 10);
        // Cut where the open line passes the bound, across reads; what ends the
        // line afterwards is its last piece.
        let lines = split(&[&long[..MAX_LINE_BYTES - 1], &long[..2], b"tail\n"]);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), MAX_LINE_BYTES);
        assert_eq!(lines[1], "xtail");
    }

    #[test]
    fn log_keeps_both_streams_in_arrival_order() {
        let mut log = JobLog::new(Arc::new(Masker::none()));
        log.push(Stream::Stdout, b"out 1\nout");
        log.push(Stream::Stderr, b"err 1\n");
        log.push(Stream::Stdout, b" 2\n");
        log.push(Stream::Stderr, b"tail");
        log.finish();
        assert_eq!(log.text(), b"out 1\nerr 1\nout 2\ntail\n");
        assert_eq!(log.line_count(), 4);
    }
}
