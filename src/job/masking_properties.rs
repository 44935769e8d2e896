//! Properties of masking over generated output: however a job's output is cut
//! into reads, and however the live log cuts it into chunks, a secret is never
//! readable in the log, in a chunk, or in base64 where it was base64.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use proptest::prelude::*;

use crate::job::live::LiveTail;
use crate::job::log::{JobLog, LogBody, Stream};
use crate::mask::Masker;

/// Cuts `bytes` at the given points (each taken modulo the length).
fn cut(bytes: &[u8], points: &[usize]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = points.iter().map(|p| p % (bytes.len() + 1)).collect();
    at.push(0);
    at.push(bytes.len());
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| bytes[w[0]..w[1]].to_vec()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn a_secret_survives_no_chunking_of_the_output(
        secret in "[!-)+-~]{4,40}",
        before in "[ -~]{0,30}",
        after in "[ -~]{0,30}",
        lines_before in 0usize..3,
        reads in prop::collection::vec(any::<usize>(), 0..12),
        flushes in prop::collection::vec(any::<usize>(), 0..4),
        encoded in any::<bool>(),
    ) {
        let shown = if encoded { STANDARD.encode(&secret) } else { secret.clone() };
        let output = format!("{}{before}{shown}{after}\nend\n", "line\n".repeat(lines_before));
        let live = LiveTail::default();
        let mut log = JobLog::new(Arc::new(Masker::new([secret.as_str()]))).live_to(Some(live.clone()));
        let mut chunks = Vec::new();
        let pieces = cut(output.as_bytes(), &reads);
        for (i, piece) in pieces.iter().enumerate() {
            log.push(Stream::Stdout, piece);
            // The live log flushes between some reads.
            if flushes.iter().any(|f| f % pieces.len().max(1) == i) {
                chunks.extend(live.take());
            }
        }
        log.finish();
        chunks.extend(live.take());
        let body = log.into_body();
        let LogBody::Memory(text) = &body else { panic!("a small log stays in memory") };
        let text = String::from_utf8(text.clone()).unwrap();
        prop_assert!(!text.contains(&shown), "{text:?}");
        for chunk in &chunks {
            let chunk = String::from_utf8_lossy(&chunk.bytes);
            prop_assert!(!chunk.contains(&shown), "{chunk:?}");
        }
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.bytes.clone()).collect();
        prop_assert_eq!(joined.as_slice(), text.as_bytes(), "the chunks are the log");
    }
}
