//! The live log against moto's S3 and SQS and the real Docker engine: a follower
//! sees a line while the job still runs, ends with the job's exit code and prints
//! exactly `log.txt`; an interrupted attempt's log is followed into the next one
//! and readable with `--attempt`; the chunks are gone once the log lands.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::agent::AgentProcess;
use common::scenario::Scenario;
use common::*;
use nix::sys::signal::Signal;

/// A deckhand command whose stdout is read line by line as it comes.
struct Streaming {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Streaming {
    fn start(config: &TestConfig, args: &[&str]) -> Streaming {
        let mut child = deckhand()
            .args(["--config", path_str(&config.path)])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        Streaming {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line equal to `want`.
    fn wait_line(&mut self, want: &str, deadline: Duration) {
        let give_up = std::time::Instant::now() + deadline;
        while !self.seen.iter().any(|l| l == want) {
            let left = give_up.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("no line {want:?} within {deadline:?}; saw {:?}", self.seen),
            }
        }
    }

    /// Waits for the command to exit: its code, all its stdout lines and stderr.
    fn finish(mut self, deadline: Duration) -> (Option<i32>, Vec<String>, String) {
        let give_up = std::time::Instant::now() + deadline;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > give_up {
                self.child.kill().unwrap();
                let mut stderr = String::new();
                self.child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut stderr)
                    .unwrap();
                self.seen.extend(self.lines.try_iter());
                panic!(
                    "still running after {deadline:?}; printed {:?}; stderr {stderr}",
                    self.seen
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        // The reader thread ends with the pipe.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(10)) {
            self.seen.push(line);
        }
        let mut stderr = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        (status.code(), self.seen, stderr)
    }
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_sees_a_line_while_the_job_still_runs_and_ends_with_its_code() {
    let Some(s) = Scenario::new("logs-follow").await else {
        return;
    };
    let (config, _agent) = s.agent(
        "i-logs-follow",
        "[results]\nlog_flush_secs = 1\n[queue]\nvisibility_timeout_secs = 600",
    );
    let id = unique("follow");
    // Runs until cancelled; the first line is printed long before.
    let script = "echo first line; i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.3; done";
    s.send_job(&job(&id, &s.stack.image, &["sh", "-c", script]))
        .await;
    let mut follower = Streaming::start(&config, &["logs", &id, "--follow"]);
    follower.wait_line("first line", LONG);
    assert!(s.result(&id).await.is_none(), "the job still runs");
    let (code, said) = {
        let output = deckhand_with(&config, &["logs", &id]);
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    assert_eq!(code, Some(0));
    assert!(
        said.starts_with("first line\n"),
        "logs without --follow prints what is there: {said:?}"
    );

    let cancelled = deckhand_with(&config, &["cancel", &id]);
    assert!(cancelled.status.success());
    let (code, printed, stderr) = follower.finish(LONG);
    assert_eq!(code, Some(143), "exits as submit --wait would: {stderr}");
    assert!(stderr.contains("cancelled"), "{stderr}");
    let log = s.log(&id).await.expect("log.txt");
    assert_eq!(
        printed,
        lines(&log),
        "the follower printed exactly the whole log"
    );
    assert!(printed.len() > 2, "{printed:?}");

    let live = s
        .aws
        .keys(&s.pool.bucket, &format!("{}live/", keys::job(&id)))
        .await;
    assert!(
        live.is_empty(),
        "the chunks are deleted once the log lands: {live:?}"
    );
    s.wait_empty().await;
    assert_clean(&id);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_attempt_is_followed_into_the_next_and_readable_by_number() {
    let Some(s) = Scenario::new("logs-attempts").await else {
        return;
    };
    let extra =
        "[results]\nlog_flush_secs = 1\n[drain]\nstop_timeout_secs = 0\nstop_grace_secs = 0";
    let config = s.config("i-logs-a", extra);
    let id = unique("attempts");
    let script = "echo attempt $DECKHAND_ATTEMPT; if [ $DECKHAND_ATTEMPT = 1 ]; then sleep 600; fi; echo done";
    let body = job(&id, &s.stack.image, &["sh", "-c", script]);
    let job_file = config.job_file(&body);
    let mut submit = Streaming::start(
        &config,
        &[
            "submit",
            path_str(&job_file),
            "--queue",
            &s.pool.queue_url,
            "--wait",
            "--follow",
            "--timeout",
            "300",
        ],
    );

    let mut first = AgentProcess::start(&config, "first");
    submit.wait_line("attempt 1", LONG);
    first.signal(Signal::SIGTERM);
    assert_eq!(first.wait_exit(LONG).await, Some(0));
    // The next attempt runs on another host.
    let (_second_config, _second) = s.agent("i-logs-b", extra);

    let (code, printed, stderr) = submit.finish(LONG);
    assert_eq!(code, Some(0), "{stderr}");
    // The job's log, then the result as one JSON line; deckhand's own log lines
    // (JSON, with "ts") are left out.
    let (result, log_lines) = printed
        .iter()
        .filter(|l| !l.starts_with("{\"ts\""))
        .collect::<Vec<_>>()
        .split_last()
        .map(|(last, rest)| (last.to_string(), rest.to_vec()))
        .expect("the result line");
    let result: serde_json::Value = serde_json::from_str(&result).unwrap();
    assert_eq!(result["status"], "succeeded");
    assert_eq!(result["attempt"], 2);
    assert_eq!(log_lines, ["attempt 1", "attempt 2", "done"], "{stderr}");
    assert!(
        stderr.contains("attempt 1 ended interrupted; following the next attempt"),
        "{stderr}"
    );

    let by_number = deckhand_with(&config, &["logs", &id, "--attempt", "1"]);
    assert_eq!(by_number.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&by_number.stdout), "attempt 1\n");
    let whole = deckhand_with(&config, &["logs", &id]);
    assert_eq!(String::from_utf8_lossy(&whole.stdout), "attempt 2\ndone\n");
    let unknown = deckhand_with(&config, &["logs", &unique("nobody")]);
    assert_eq!(unknown.status.code(), Some(66), "no such job: EX_NOINPUT");
    s.wait_empty().await;
    assert_clean(&id);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_flood_past_max_log_mb_stops_the_job_and_keeps_the_log_bounded() {
    let Some(s) = Scenario::new("logs-flood").await else {
        return;
    };
    let (_config, agent) = s.agent("i-logs-flood", "[profiles.default]\nmax_log_mb = 1");
    let id = unique("flood");
    let flood = "yes 0123456789012345678901234567890123456789 | head -c 5000000; sleep 600";
    s.send_job(&job(&id, &s.stack.image, &["sh", "-c", flood]))
        .await;
    let result = s.wait_result(&id).await;
    assert_eq!(result["status"], "failed", "{result}");
    assert_eq!(
        result["reason"],
        "the output passed max_log_mb = 1; stopped"
    );
    let log = s.log(&id).await.expect("log.txt");
    assert!(log.len() <= 1_000_000 + 200, "{} bytes kept", log.len());
    assert!(
        log.ends_with("passed max_log_mb = 1; the rest is dropped and the job stopped\n"),
        "{}",
        &log[log.len().saturating_sub(200)..]
    );
    assert_eq!(agent.count("The job's log is full; stopping the job."), 1);
    let peak = agent.peak_rss_mb();
    eprintln!("agent peak RSS: {peak} MB");
    assert!(peak < 80, "a flood of output held the agent at {peak} MB");
    s.wait_empty().await;
    assert_clean(&id);
}

/// Live chunks go up only while someone follows: a job no one follows uploads
/// none, however long it prints; a follower who comes marks the job followed and
/// sees the output printed before it came (the tail kept it), then the rest.
#[tokio::test(flavor = "multi_thread")]
async fn live_chunks_are_uploaded_only_while_someone_follows() {
    let Some(s) = Scenario::new("logs-unfollowed").await else {
        return;
    };
    let (config, agent) = s.agent(
        "i-logs-unfollowed",
        "[results]\nlog_flush_secs = 1\n[queue]\nvisibility_timeout_secs = 600",
    );
    let id = unique("unfollowed");
    let script =
        "echo before anyone came; i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.3; done";
    s.send_job(&job(&id, &s.stack.image, &["sh", "-c", script]))
        .await;
    agent.wait_log("Job started.", LONG).await;
    let live_prefix = format!("{}live/", keys::job(&id));
    // Several flush periods of output with no follower: no chunk, no mark.
    let quiet_until = tokio::time::Instant::now() + std::time::Duration::from_secs(4);
    while tokio::time::Instant::now() < quiet_until {
        let live = s.aws.keys(&s.pool.bucket, &live_prefix).await;
        assert!(live.is_empty(), "nothing uploaded unfollowed: {live:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let mut follower = Streaming::start(&config, &["logs", &id, "--follow"]);
    follower.wait_line("before anyone came", LONG);
    follower.wait_line("tick 20", LONG);
    let cancelled = deckhand_with(&config, &["cancel", &id]);
    assert!(cancelled.status.success());
    let (code, printed, _) = follower.finish(LONG);
    assert_eq!(code, Some(143));
    assert_eq!(printed, lines(&s.log(&id).await.expect("log.txt")));
    let live = s.aws.keys(&s.pool.bucket, &live_prefix).await;
    assert!(
        live.is_empty(),
        "chunks and mark gone once the log lands: {live:?}"
    );
    s.wait_empty().await;
    assert_clean(&id);
}
