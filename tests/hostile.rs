//! The hostile corpus (tests/hostile/corpus.rs) through `deckhand exec`, then
//! through one agent on one queue: every message gets exactly one result, under
//! the id it may speak for, with a reason that names the field and stays within
//! 1 KiB; the agent stays up; the queue ends empty.

mod common;
#[path = "hostile/corpus.rs"]
mod corpus;

use common::scenario::Scenario;
use common::*;
use corpus::{Case, Under};

/// What the agent (a debug build) may hold at its peak while hostile jobs run
/// beside it: far below what any of them tries to take.
const AGENT_PEAK_RSS_MB: u64 = 80;

/// The case's body with its placeholders filled in, and the id it names.
fn body(case: &Case, stack: &Stack) -> (String, String) {
    let id = unique("hostile");
    let mut body = case
        .body
        .replace("{ID}", &id)
        .replace("{IMG}", &stack.image)
        .replace("{REG}", &stack.registry);
    let mut named = id.clone();
    if body.contains("{PAD}") {
        let pad = "x".repeat(128 - id.len() - 1);
        body = body.replace("{PAD}", &pad);
        named = format!("{id}-{pad}");
    }
    (body, named)
}

/// What is wrong with `result` for `case`, if anything.
fn wrong(case: &Case, result: &serde_json::Value) -> Option<String> {
    let name = case.name;
    let status = &result["status"];
    let reason = result["reason"].as_str().unwrap_or_default();
    match case.rejected {
        None if status != "succeeded" => Some(format!("{name}: {status} {reason:?}")),
        None => None,
        Some(_) if status != "rejected" => Some(format!("{name}: {status}, not rejected")),
        Some(_) if reason.len() > 1024 => Some(format!("{name}: a {} byte reason", reason.len())),
        Some(words) => words
            .iter()
            .find(|word| !reason.contains(*word))
            .map(|word| format!("{name}: {word:?} not in {reason:?}")),
    }
}

/// Panics listing every case that went wrong.
fn assert_all_right(wrongs: Vec<String>) {
    assert!(
        wrongs.is_empty(),
        "{} wrong:\n{}",
        wrongs.len(),
        wrongs.join("\n")
    );
}

#[test]
fn the_corpus_has_what_the_boundary_promises() {
    let cases = corpus::cases();
    assert!(cases.len() >= 80, "{} cases", cases.len());
    let mut names: Vec<_> = cases.iter().map(|c| c.name).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "case names are unique");
}

#[test]
fn every_hostile_message_gets_its_result_from_exec() {
    let Some(stack) = Stack::or_skip() else {
        return;
    };
    let config = TestConfig::new(&stack, "");
    let mut wrongs = Vec::new();
    for case in corpus::cases() {
        let (body, id) = body(&case, &stack);
        let path = config.dir.path().join("job.json");
        std::fs::write(&path, &body).unwrap();
        let output = deckhand_with(&config, &["exec", path_str(&path)]);
        let run = Exec::from_output(output);
        wrongs.extend(wrong(&case, &run.result));
        let expected_id = match case.under {
            Under::Id => id.as_str(),
            Under::MessageId => "unknown",
        };
        if run.result["id"] != expected_id {
            wrongs.push(format!("{}: recorded as {}", case.name, run.result["id"]));
        }
        assert_clean(&id);
    }
    assert_all_right(wrongs);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_hostile_message_gets_one_result_from_the_agent_which_stays_up() {
    let Some(s) = Scenario::new("hostile").await else {
        return;
    };
    let (_config, mut agent) = s.agent("i-hostile", "[agent]\nslots = 2");
    let mut sent = Vec::new();
    for case in corpus::cases() {
        let (body, id) = body(&case, &s.stack);
        let message_id = s.aws.send(&s.pool.queue_url, &body).await;
        let under = match case.under {
            Under::Id => id.clone(),
            Under::MessageId => message_id,
        };
        sent.push((case, id, under));
    }
    let mut wrongs = Vec::new();
    for (case, id, under) in &sent {
        let result = s.wait_result(under).await;
        wrongs.extend(wrong(case, &result));
        if case.under == Under::MessageId && s.result(id).await.is_some() {
            wrongs.push(format!("{}: written under the id it names", case.name));
        }
    }
    assert_all_right(wrongs);
    s.wait_empty().await;
    let rejected = sent.iter().filter(|(c, ..)| c.rejected.is_some()).count() as u64;
    eventually(
        "every rejected message in the dead-letter queue",
        LONG,
        || async { s.aws.counts(&s.pool.dlq_url).await.0 == rejected },
    )
    .await;
    assert_eq!(agent.try_exit(), None, "the agent is still serving");
    for (_, id, _) in &sent {
        assert_clean(id);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_jobs_are_contained_and_the_job_beside_them_runs() {
    let Some(s) = Scenario::new("hostile-jobs").await else {
        return;
    };
    let (_config, mut agent) = s.agent(
        "i-hostile-jobs",
        "[agent]\nslots = 3\n[profiles.default]\npids = 64\nmemory_mb = 64",
    );
    let send = |name: &'static str, script: &'static str, timeout_secs: u64| {
        let s = &s;
        async move {
            let id = unique(name);
            let mut body = job(&id, &s.stack.image, &["sh", "-c", script]);
            body["timeout_secs"] = serde_json::json!(timeout_secs);
            s.send_job(&body).await;
            id
        }
    };
    // Forks until the pids limit stops it, then holds on until its timeout.
    let bomb = send("fork-bomb", "b(){ b | b & }; b; sleep 600", 8).await;
    let hog = send("memory-hog", OOM_AFTER_A_SECOND, 60).await;
    let beside = send("beside", "echo fine", 60).await;

    let result = s.wait_result(&beside).await;
    assert_eq!(result["status"], "succeeded", "{result}");
    let result = s.wait_result(&hog).await;
    assert_eq!(result["status"], "failed", "{result}");
    assert_eq!(result["reason"], "killed: out of memory (limit 64 MB)");
    let result = s.wait_result(&bomb).await;
    assert!(
        result["status"] == "timed_out" || result["status"] == "failed",
        "a fork bomb is held by its pids limit, then stopped: {result}"
    );
    s.wait_empty().await;
    assert_eq!(agent.try_exit(), None, "the agent is still serving");
    // A debug build, seen at 38 MB here; the release build idles near 16 MB.
    let peak = agent.peak_rss_mb();
    eprintln!("agent peak RSS: {peak} MB");
    assert!(peak < AGENT_PEAK_RSS_MB, "the agent peaked at {peak} MB");
    for id in [&bomb, &hog, &beside] {
        assert_clean(id);
    }
}

/// The least free space, in MB, of the filesystems holding Docker's data and `dir`.
fn free_mb(dir: &std::path::Path) -> u64 {
    let out = std::process::Command::new("docker")
        .args(["info", "-f", "{{.DockerRootDir}}"])
        .output()
        .expect("docker info");
    let root = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    [std::path::PathBuf::from(root), dir.to_owned()]
        .iter()
        .map(|path| {
            let stat = nix::sys::statvfs::statvfs(path).expect("statvfs");
            stat.blocks_available() as u64 * stat.fragment_size() as u64 / 1_000_000
        })
        .min()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disk_filler_is_stopped_and_the_job_beside_it_runs_on() {
    let Some(s) = Scenario::new("hostile-disk").await else {
        return;
    };
    // The watermark sits 600 MB under today's free space: the filler crosses it,
    // nothing else in the test comes near it.
    let probe = tempfile::tempdir().unwrap();
    let min_free_mb = free_mb(probe.path()).saturating_sub(600);
    let (config, mut agent) = s.agent(
        "i-hostile-disk",
        &format!("[agent]\nslots = 2\n[disk]\nmin_free_mb = {min_free_mb}\ngc_free_mb = 0"),
    );
    assert!(
        free_mb(config.dir.path()) > min_free_mb + 300,
        "the disk moved under the test"
    );
    let send = |name: &'static str, script: &'static str| {
        let s = &s;
        async move {
            let id = unique(name);
            let mut body = job(&id, &s.stack.image, &["sh", "-c", script]);
            body["timeout_secs"] = serde_json::json!(120);
            s.send_job(&body).await;
            id
        }
    };
    let beside = send("beside", "sleep 6; echo fine").await;
    // 50 MB at a time into its workspace, up to 5 GB: far past the watermark, and
    // bounded if nothing stopped it.
    let filler = send(
        "disk-filler",
        "sleep 1; i=0; while [ $i -lt 100 ]; do dd if=/dev/zero of=fill$i bs=1M count=50 2>/dev/null; i=$((i+1)); done; echo filled",
    )
    .await;

    let result = s.wait_result(&filler).await;
    assert_eq!(result["status"], "failed", "{result}");
    let reason = result["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("below disk.min_free_mb = {min_free_mb}"))
            && reason.contains("used the most disk"),
        "{reason}"
    );
    let result = s.wait_result(&beside).await;
    assert_eq!(
        result["status"], "succeeded",
        "the job beside runs on: {result}"
    );
    s.wait_empty().await;
    assert_eq!(agent.try_exit(), None, "the agent is still serving");
    let peak = agent.peak_rss_mb();
    eprintln!("agent peak RSS: {peak} MB");
    assert!(peak < AGENT_PEAK_RSS_MB, "the agent peaked at {peak} MB");
    for id in [&filler, &beside] {
        assert_clean(id);
    }
}
