//! The live view of a running job's log: the masked lines not yet uploaded, taken
//! as one chunk every `results.log_flush_secs`. Each chunk says where in the final
//! `log.txt` it begins, so a follower can print the log's end from where the
//! chunks left off, and can tell when a chunk was skipped.
//!
//! Only whole masked lines enter the tail, so a chunk boundary is always a line
//! boundary: a secret can never be split between two chunks, unmasked in each.

use std::sync::{Arc, Mutex, MutexGuard};

/// The most the tail holds while uploads fail or lag: past it, the oldest pending
/// output is skipped from the live view (the whole log still lands in `log.txt`).
/// A follower cannot read more than this per flush anyway, and a log flood then
/// costs the agent a few MB (this, and the chunk in flight), not tens.
pub const MAX_PENDING_BYTES: usize = 2 * 1024 * 1024;

/// The output of a running job not yet uploaded live. Clones share it.
#[derive(Clone, Default)]
pub struct LiveTail {
    pending: Arc<Mutex<Pending>>,
}

#[derive(Default)]
struct Pending {
    /// Where `bytes` begins in the job's whole log.
    offset: u64,
    bytes: Vec<u8>,
}

/// Output to upload: `bytes` begin at byte `offset` of the job's whole log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub offset: u64,
    pub bytes: Vec<u8>,
}

impl LiveTail {
    /// Adds one masked line (without its newline).
    pub fn push_line(&self, line: &[u8]) {
        let mut pending = self.lock();
        if pending.bytes.len() + line.len() + 1 > MAX_PENDING_BYTES {
            pending.skip();
        }
        pending.bytes.extend_from_slice(line);
        pending.bytes.push(b'\n');
    }

    /// Whether there is output not yet taken.
    pub fn has_pending(&self) -> bool {
        !self.lock().bytes.is_empty()
    }

    /// Everything pending, as one chunk; `None` when there is nothing new.
    pub fn take(&self) -> Option<Chunk> {
        let mut pending = self.lock();
        if pending.bytes.is_empty() {
            return None;
        }
        let bytes = std::mem::take(&mut pending.bytes);
        let chunk = Chunk {
            offset: pending.offset,
            bytes,
        };
        pending.offset += chunk.bytes.len() as u64;
        Some(chunk)
    }

    /// Returns a chunk whose upload failed, to go with the next one; dropped when
    /// the tail skipped past it meanwhile, or it would pass the bound.
    pub fn put_back(&self, chunk: Chunk) {
        let mut pending = self.lock();
        let contiguous = chunk.offset + chunk.bytes.len() as u64 == pending.offset;
        if !contiguous || chunk.bytes.len() + pending.bytes.len() > MAX_PENDING_BYTES {
            return;
        }
        let mut bytes = chunk.bytes;
        bytes.append(&mut pending.bytes);
        pending.bytes = bytes;
        pending.offset = chunk.offset;
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Plain data, whole after any single call: consistent whatever a
        // panicking holder did.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Pending {
    fn skip(&mut self) {
        self.offset += self.bytes.len() as u64;
        self.bytes.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_follow_each_other_through_the_log() {
        let tail = LiveTail::default();
        assert_eq!(tail.take(), None, "nothing new, nothing to upload");
        tail.push_line(b"one");
        tail.push_line(b"two");
        let first = tail.take().unwrap();
        assert_eq!(
            first,
            Chunk {
                offset: 0,
                bytes: b"one\ntwo\n".to_vec()
            }
        );
        tail.push_line(b"three");
        let second = tail.take().unwrap();
        assert_eq!(second.offset, 8);
        assert_eq!(second.bytes, b"three\n");
    }

    #[test]
    fn a_failed_upload_goes_with_the_next_one() {
        let tail = LiveTail::default();
        tail.push_line(b"one");
        let failed = tail.take().unwrap();
        tail.push_line(b"two");
        tail.put_back(failed);
        assert_eq!(
            tail.take().unwrap(),
            Chunk {
                offset: 0,
                bytes: b"one\ntwo\n".to_vec()
            }
        );
    }

    #[test]
    fn past_the_bound_the_oldest_output_is_skipped_and_offsets_stay_true() {
        let tail = LiveTail::default();
        let line = vec![b'x'; 1024 * 1024 - 1];
        for _ in 0..9 {
            tail.push_line(&line);
        }
        let chunk = tail.take().unwrap();
        assert_eq!(
            chunk.offset,
            8 * 1024 * 1024,
            "the first eight lines skipped"
        );
        assert_eq!(chunk.bytes.len(), 1024 * 1024);
        // A chunk put back after the tail skipped past it is dropped.
        let stale = Chunk {
            offset: 0,
            bytes: b"old\n".to_vec(),
        };
        tail.push_line(b"new");
        tail.put_back(stale);
        assert_eq!(tail.take().unwrap().bytes, b"new\n");
    }
}
