//! The trust boundary under attack, on the stack (real Docker, moto's S3 and
//! SQS): what a job, a producer or anyone who can write the bucket controls —
//! artifact patterns and the files beside them, input archives, a cancel
//! request — each shaped to take a slot, a core or the agent's memory. Every
//! one ends with one terminal result, inside the job's timeout plus its stop
//! grace plus 10 s, with a reason of at most 1 KiB and no control character,
//! while the agent stays up under 128 MB.

mod common;

use std::time::Duration;

use common::scenario::Scenario;
use common::*;
use serde_json::{Value, json};
use tokio::time::Instant;

/// What the agent (a debug build) may hold at its peak while the attacks run.
const AGENT_PEAK_RSS_MB: u64 = 128;
/// The stack's `drain.stop_grace_secs`.
const STOP_GRACE_SECS: u64 = 2;
const TIMEOUT_SECS: u64 = 20;

/// A 512-byte tar header, as an attacker writes it: any name, any size.
fn header(name: &[u8], flag: u8, size: u64, link: &str) -> Vec<u8> {
    let mut block = [0u8; 512];
    block[..name.len()].copy_from_slice(name);
    block[100..107].copy_from_slice(b"0000644");
    let size = format!("{size:011o}");
    block[124..124 + size.len()].copy_from_slice(size.as_bytes());
    block[136..147].copy_from_slice(b"00000000000");
    block[156] = flag;
    block[157..157 + link.len()].copy_from_slice(link.as_bytes());
    block[257..263].copy_from_slice(b"ustar\0");
    block[263..265].copy_from_slice(b"00");
    block[148..156].copy_from_slice(b"        ");
    let sum: u64 = block.iter().map(|&b| u64::from(b)).sum();
    block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    block.to_vec()
}

/// A PAX header entry holding one record.
fn pax(key: &str, value: &str) -> Vec<u8> {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while format!("{len}{body}").len() != len {
        len += 1;
    }
    let record = format!("{len}{body}").into_bytes();
    let mut out = header(b"PaxHeader", b'x', record.len() as u64, "");
    out.extend(padded(&record));
    out
}

fn padded(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    out.resize(data.len().div_ceil(512) * 512, 0);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// The hostile inputs: (name, archive, words its reason must hold).
fn hostile_inputs() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    // Claims a 1 GiB long name and carries 1 MiB of it: refused at the header,
    // before a byte of the name is held.
    let mut long_name = header(b"././@LongLink", b'L', 1 << 30, "");
    long_name.extend(vec![b'a'; 1 << 20]);
    let pax_size = [pax("size", "3000000000"), header(b"big.bin", b'0', 0, "")].concat();
    let chain = [
        header(b"a/b", b'2', 0, ".."),
        header(b"a/b/c", b'2', 0, ".."),
    ]
    .concat();
    let long_path = pax("path", &format!("../{}", "\u{1b}x".repeat(150_000)));
    let bad_name = header(b"../\x1b[31mred", b'0', 0, "");
    vec![
        ("long-name", gzip(&long_name), "metadata entry"),
        ("pax-size", pax_size, "inputs_max_mb"),
        ("link-chain", chain, "leads outside its folder"),
        ("long-pax-path", long_path, "metadata entry"),
        ("control-name", bad_name, "leads outside its folder"),
    ]
}

/// Waits for `id`'s result, and checks it came within the job's clock with a
/// bounded, escaped reason.
async fn result_in_time(s: &Scenario, id: &str, sent: Instant) -> Value {
    let result = s.wait_result(id).await;
    let elapsed = sent.elapsed();
    let bound = Duration::from_secs(TIMEOUT_SECS + STOP_GRACE_SECS + 10);
    assert!(elapsed <= bound, "{id}: {elapsed:?} > {bound:?}: {result}");
    let reason = result["reason"].as_str().unwrap_or_default();
    assert!(reason.len() <= 1024, "{id}: a {} byte reason", reason.len());
    assert!(!reason.chars().any(char::is_control), "{id}: {reason:?}");
    result
}

/// A job named `name` (then made unique) running `script` within TIMEOUT_SECS.
fn attack(s: &Scenario, name: &str, script: &str) -> Value {
    let mut body = job(&unique(name), &s.stack.image, &["sh", "-c", script]);
    body["timeout_secs"] = json!(TIMEOUT_SECS);
    body
}

/// Sends every attack: (name, job id, when sent).
async fn send_attacks(s: &Scenario) -> Vec<(String, String, Instant)> {
    let bucket = &s.pool.bucket;
    // Backtracking: more than 90 s of one core under the old matcher.
    let mut bomb = attack(
        s,
        "glob-bomb",
        &format!("touch {}.txt; echo made", "a".repeat(200)),
    );
    bomb["artifacts"] = json!(["*a*a*a*a*a*a*a*a*a*a*a*a*b"]);
    // A pattern rooted at the workdir beside a sparse 10 TiB file: Docker would
    // stream every byte of it.
    let script = "truncate -s 10995116277760 huge && echo small > small.txt";
    let mut sparse = attack(s, "sparse", script);
    sparse["artifacts"] = json!(["**/small.txt", "huge"]);
    let mut jobs = vec![("glob-bomb", bomb), ("sparse", sparse)];
    for (name, archive, _) in hostile_inputs() {
        let key = format!("hostile/{name}.tar");
        s.aws.put(bucket, &key, archive).await;
        let mut body = attack(s, name, "echo ran");
        body["inputs"] = json!([{"source": format!("s3://{bucket}/{key}")}]);
        jobs.push((name, body));
    }
    let mut sent = Vec::new();
    for (name, body) in jobs {
        s.send_job(&body).await;
        let id = body["id"].as_str().unwrap().to_owned();
        sent.push((name.to_owned(), id, Instant::now()));
    }
    sent
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_artifacts_and_inputs_end_in_time_with_bounded_reasons() {
    let Some(s) = Scenario::new("boundary").await else {
        return;
    };
    let bucket = s.pool.bucket.clone();
    let (_config, mut agent) = s.agent(
        "i-boundary",
        &format!(
            "[agent]\nslots = 3\n[profiles.default]\ninput_buckets = [\"{bucket}\"]\ninputs_max_mb = 1\nartifacts_max_mb = 1"
        ),
    );
    let sent = send_attacks(&s).await;
    let mut results = std::collections::HashMap::new();
    for (name, id, at) in &sent {
        let result = result_in_time(&s, id, *at).await;
        results.insert(name.clone(), (id.clone(), result));
    }
    let (_, bomb) = &results["glob-bomb"];
    assert_eq!(bomb["status"], "succeeded", "{bomb}");
    assert_eq!(
        bomb["artifacts_unmatched"],
        json!(["*a*a*a*a*a*a*a*a*a*a*a*a*b"]),
        "{bomb}"
    );
    let (_, sparse) = &results["sparse"];
    assert_eq!(sparse["status"], "succeeded", "{sparse}");
    assert!(
        sparse["artifacts_left_out"]
            .to_string()
            .contains("artifacts_max_mb = 1 reached"),
        "the 10 TiB file is counted at its size, never staged: {sparse}"
    );
    for (name, _, words) in hostile_inputs() {
        let (id, result) = &results[name];
        assert_eq!(
            result["status"], "failed",
            "{name}: the producer's fault, once: {result}"
        );
        let reason = result["reason"].as_str().unwrap();
        assert!(reason.contains(words), "{name}: {reason}");
        assert!(
            s.attempt(id, 1).await.is_none(),
            "{name}: never an error to retry"
        );
    }
    s.wait_empty().await;
    assert_eq!(agent.try_exit(), None, "the agent is still serving");
    assert_eq!(agent.count("ran"), 0, "no job with a hostile input ran");
    let peak = agent.peak_rss_mb();
    eprintln!("agent peak RSS: {peak} MB");
    assert!(peak <= AGENT_PEAK_RSS_MB, "the agent peaked at {peak} MB");
    for (_, id, _) in &sent {
        assert_clean(id);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_request_that_is_not_one_cancels_once_and_is_not_read_again() {
    let Some(s) = Scenario::new("boundary-cancel").await else {
        return;
    };
    let (_config, mut agent) = s.agent("i-boundary-cancel", "[results]\ncancel_poll_secs = 1");
    let id = unique("cancel-garbage");
    let mut body = job(&id, &s.stack.image, &["sh", "-c", "echo started; sleep 60"]);
    body["timeout_secs"] = json!(TIMEOUT_SECS);
    s.send_job(&body).await;
    let sent = Instant::now();
    agent.wait_log("Job started.", LONG).await;
    // 2 MB of something that is not JSON, where `deckhand cancel` writes its request.
    let key = format!("{}cancel.json", common::keys::job(&id));
    s.aws.put(&s.pool.bucket, &key, vec![b'{'; 2_000_000]).await;
    let result = result_in_time(&s, &id, sent).await;
    assert_eq!(result["status"], "cancelled", "{result}");
    let reason = result["reason"].as_str().unwrap();
    assert!(reason.contains("cancel.json could not be read"), "{reason}");
    s.wait_empty().await;
    assert_eq!(agent.try_exit(), None, "the agent is still serving");
    assert_clean(&id);
}

/// A follow mark that is not one (2 MB of garbage, or JSON of another shape)
/// is no follower: nothing is uploaded live, and the job runs on.
#[tokio::test(flavor = "multi_thread")]
async fn a_follow_mark_that_is_not_one_uploads_nothing() {
    let Some(s) = Scenario::new("boundary-follow").await else {
        return;
    };
    let (_config, mut agent) = s.agent(
        "i-boundary-follow",
        "[results]\nlog_flush_secs = 1\n[queue]\nvisibility_timeout_secs = 600",
    );
    for (n, mark) in [vec![b'{'; 2_000_000], br#"{"until": "forever"}"#.to_vec()]
        .into_iter()
        .enumerate()
    {
        let id = unique(&format!("follow-garbage-{n}"));
        let live = format!("{}live/", common::keys::job(&id));
        s.aws
            .put(&s.pool.bucket, &format!("{live}follow.json"), mark)
            .await;
        let script = "for i in 1 2 3 4 5 6 7 8 9 10; do echo tick $i; sleep 0.3; done";
        s.send_job(&job(&id, &s.stack.image, &["sh", "-c", script]))
            .await;
        assert_eq!(s.wait_result(&id).await["status"], "succeeded");
        let keys = s.aws.keys(&s.pool.bucket, &live).await;
        assert!(keys.iter().all(|k| !k.contains("attempt-")), "{keys:?}");
        assert_clean(&id);
    }
    s.wait_empty().await;
    assert_eq!(agent.try_exit(), None, "the agent is still serving");
}
