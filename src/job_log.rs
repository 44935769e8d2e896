//! A job's output: split into lines as it arrives, each logged to stdout with its
//! stream, and all of it kept for `log.txt`.

use std::sync::Arc;

use crate::logging::JOB_OUTPUT_TARGET;
use crate::mask::Masker;

/// A line longer than this is cut into pieces, so one runaway line cannot hold the
/// log hostage (or the agent's memory).
const MAX_LINE_BYTES: usize = 64 * 1024;

/// Which of the container's streams a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// The whole log of one job, in arrival order, masked.
pub struct JobLog {
    masker: Arc<Masker>,
    stdout: LineSplitter,
    stderr: LineSplitter,
    text: Vec<u8>,
    lines: u64,
}

impl JobLog {
    /// Lines are masked whole, after splitting: a secret written in two pieces
    /// (two reads of the stream) is masked like one written at once.
    pub fn new(masker: Arc<Masker>) -> Self {
        JobLog {
            masker,
            stdout: LineSplitter::default(),
            stderr: LineSplitter::default(),
            text: Vec::new(),
            lines: 0,
        }
    }

    /// Takes a chunk of output; complete lines are logged and kept at once, a
    /// trailing partial line waits for the rest.
    pub fn push(&mut self, stream: Stream, chunk: &[u8]) {
        let splitter = match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        let mut lines = Vec::new();
        splitter.push(chunk, &mut lines);
        for line in lines {
            self.emit(stream, &line);
        }
    }

    /// Flushes partial lines: the container's streams have ended.
    pub fn finish(&mut self) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let splitter = match stream {
                Stream::Stdout => &mut self.stdout,
                Stream::Stderr => &mut self.stderr,
            };
            if let Some(rest) = splitter.take_rest() {
                self.emit(stream, &rest);
            }
        }
    }

    fn emit(&mut self, stream: Stream, line: &[u8]) {
        let raw = String::from_utf8_lossy(line);
        let text = self.masker.mask(&raw);
        tracing::info!(target: JOB_OUTPUT_TARGET, stream = stream.as_str(), "{text}");
        self.text.extend_from_slice(text.as_bytes());
        self.text.push(b'\n');
        self.lines += 1;
    }

    /// The log so far, one line per output line.
    pub fn text(&self) -> &[u8] {
        &self.text
    }

    pub fn line_count(&self) -> u64 {
        self.lines
    }
}

/// Cuts a byte stream into lines across chunk boundaries.
#[derive(Default)]
struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    fn push(&mut self, mut chunk: &[u8], out: &mut Vec<Vec<u8>>) {
        while let Some(pos) = chunk.iter().position(|b| *b == b'\n') {
            self.partial.extend_from_slice(&chunk[..pos]);
            let mut line = std::mem::take(&mut self.partial);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            out.push(line);
            chunk = &chunk[pos + 1..];
        }
        self.partial.extend_from_slice(chunk);
        while self.partial.len() >= MAX_LINE_BYTES {
            let rest = self.partial.split_off(MAX_LINE_BYTES);
            out.push(std::mem::replace(&mut self.partial, rest));
        }
    }

    fn take_rest(&mut self) -> Option<Vec<u8>> {
        (!self.partial.is_empty()).then(|| std::mem::take(&mut self.partial))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<String> {
        let mut splitter = LineSplitter::default();
        let mut out = Vec::new();
        for chunk in chunks {
            splitter.push(chunk, &mut out);
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
    fn long_lines_are_cut() {
        let long = vec![b'x'; MAX_LINE_BYTES * 2 + 10];
        let lines = split(&[&long]);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].len(), MAX_LINE_BYTES);
        assert_eq!(lines[2].len(), 10);
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
