//! `deckhand run` against moto's SQS and S3 and the real Docker engine: what becomes
//! of each message on the queue (every outcome's fate, the redrive policy, run-once
//! across two agents and a redelivery, heartbeats past the visibility timeout),
//! `deckhand submit`, and where results are announced (the results queue, a signed
//! webhook).

mod common;

use std::time::Duration;

use common::agent::{AgentProcess, agent_config};
use common::aws::{Aws, Pool};
use common::scenario::Scenario;
use common::sealed::{DB_PASS, seal, secrets_config, secrets_dir};
use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn each_outcome_meets_its_fate_on_the_queue() {
    let Some(s) = Scenario::with_receives("fates", 2).await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let (_config, agent) = s.agent("i-fates", "[agent]\nslots = 2");

    let ok = unique("ok");
    let failed = unique("failed");
    let slow = unique("slow");
    let latest = unique("latest");
    aws.send_job(
        &pool.queue_url,
        &job(&ok, &stack.image, &["sh", "-c", "echo all good"]),
    )
    .await;
    aws.send_job(
        &pool.queue_url,
        &job(&failed, &stack.image, &["sh", "-c", "exit 7"]),
    )
    .await;
    let mut timeout = job(&slow, &stack.image, &["sleep", "600"]);
    timeout["timeout_secs"] = json!(1);
    aws.send_job(&pool.queue_url, &timeout).await;
    let mut refused = job(&latest, &stack.image, &["true"]);
    refused["image"] = json!(format!("{}/ci/busybox:latest", stack.registry));
    aws.send_job(&pool.queue_url, &refused).await;
    let garbage_id = aws.send(&pool.queue_url, "this is not json").await;

    let r = aws.wait_result(pool, &ok).await;
    assert_eq!(
        (r["status"].as_str(), r["exit_code"].as_i64()),
        (Some("succeeded"), Some(0))
    );
    assert_eq!(r["log"], format!("s3://{}/{}", pool.bucket, keys::log(&ok)));
    let log = aws.object(&pool.bucket, &keys::log(&ok)).await.unwrap();
    assert_eq!(String::from_utf8(log).unwrap(), "all good\n");

    let r = aws.wait_result(pool, &failed).await;
    assert_eq!(
        (r["status"].as_str(), r["exit_code"].as_i64()),
        (Some("failed"), Some(7))
    );
    let r = aws.wait_result(pool, &slow).await;
    assert_eq!(r["status"], "timed_out");
    let r = aws.wait_result(pool, &latest).await;
    assert_eq!(r["status"], "rejected");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .starts_with("image: tag \"latest\" is not allowed")
    );
    let r = aws.wait_result(pool, &garbage_id).await;
    assert_eq!(
        r["status"], "rejected",
        "keyed by the SQS message id when there is no job id"
    );
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .starts_with("body: not valid JSON")
    );

    assert_only_the_rejected_are_dead_lettered(aws, pool).await;
    for id in [&ok, &failed, &slow] {
        assert_clean(id);
    }
    drop(agent);
}

/// Terminal outcomes are deleted; the rejected ones (a refused image, a body that
/// is not JSON) are copied to the DLQ first.
async fn assert_only_the_rejected_are_dead_lettered(aws: &Aws, pool: &Pool) {
    aws.wait_empty(pool).await;
    let dead = aws.drain_queue(&pool.dlq_url).await;
    let mut reasons: Vec<String> = dead
        .iter()
        .map(|m| {
            m.message_attributes().unwrap()["deckhand_reason"]
                .string_value()
                .unwrap()
                .to_owned()
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons[0].starts_with("body: not valid JSON"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].starts_with("image: tag \"latest\""),
        "{reasons:?}"
    );
    assert!(dead.iter().any(|m| m.body() == Some("this is not json")));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_that_cannot_run_is_retried_as_fresh_copies_until_its_budget_ends_it() {
    // The queue's redrive would dead-letter it on its second receive: the copies
    // never count against it.
    let Some(s) = Scenario::with_receives("errors", 1).await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let (_config, agent) = s.agent("i-errors", "[profiles.default]\nmax_host_errors = 1");
    let id = unique("nopull");
    let image = format!("{}/ci/no-such-image:1.0", stack.registry);
    aws.send_job(&pool.queue_url, &job(&id, &image, &["true"]))
        .await;

    let done = s.wait_result(&id).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["budget"], "host_errors");
    assert_eq!(
        done["reason"],
        "the hosts could not run it 2 times, past the profile's max_host_errors (1); not run again"
    );
    aws.wait_empty(pool).await;
    assert_eq!(aws.counts(&pool.dlq_url).await, (0, 0));
    for (attempt, delay) in [(1, 5), (2, 10)] {
        let r = aws
            .json(&pool.bucket, &keys::attempt(&id, attempt))
            .await
            .unwrap_or_else(|| panic!("attempt {attempt} recorded"));
        assert_eq!(r["status"], "error");
        assert_eq!(r["attempt"], attempt);
        assert_eq!(r["requeued"]["cause"], "host_error");
        assert_eq!(r["requeued"]["delay_secs"], delay, "doubling: {r}");
        assert!(
            r["reason"]
                .as_str()
                .unwrap()
                .starts_with(&format!("pull {image}"))
        );
    }
    assert_eq!(
        agent.count("Job sent back to the queue as a fresh copy."),
        2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_agents_forty_jobs_each_finished_exactly_once() {
    let Some(s) = Scenario::with_receives("pair", 3).await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let mut agents = Vec::new();
    let mut configs = Vec::new();
    for name in ["a", "b"] {
        let config = agent_config(
            stack,
            pool,
            &aws.endpoint,
            &unique(&format!("i-{name}")),
            "[agent]\nslots = 2",
        );
        agents.push(AgentProcess::start(&config, name));
        configs.push(config);
    }
    let ids: Vec<String> = (0..40).map(|i| unique(&format!("j{i}"))).collect();
    for id in &ids {
        aws.send_job(
            &pool.queue_url,
            &job(id, &stack.image, &["sh", "-c", "echo $DECKHAND_JOB_ID"]),
        )
        .await;
    }
    aws.send(&pool.queue_url, "{\"poison\": true}").await;
    aws.send(&pool.queue_url, "poison").await;

    aws.wait_empty(pool).await;
    let mut by_agent = std::collections::HashMap::new();
    for id in &ids {
        let r = aws.wait_result(pool, id).await;
        assert_eq!(r["status"], "succeeded", "{r}");
        *by_agent
            .entry(r["instance_id"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
        let log = aws.object(&pool.bucket, &keys::log(id)).await.unwrap();
        assert_eq!(String::from_utf8(log).unwrap(), format!("{id}\n"));
        let keys = aws.keys(&pool.bucket, &keys::job(id)).await;
        assert_eq!(
            keys.len(),
            2,
            "one result and one log, no claims or retries: {keys:?}"
        );
        assert_clean(id);
    }
    assert_eq!(by_agent.values().sum::<i32>(), 40);
    let dead = aws.drain_queue(&pool.dlq_url).await;
    assert_eq!(dead.len(), 2, "only the poison messages are dead-lettered");
    // Each agent ran each of its jobs once: 40 starts in all.
    let starts: usize = agents.iter().map(|a| a.count("Job started.")).sum();
    assert_eq!(starts, 40);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redelivered_finished_job_is_not_run_again() {
    let Some(s) = Scenario::with_receives("dupes", 3).await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let (_config, agent) = s.agent("i-dupes", "");
    let id = unique("once");
    let body = job(&id, &stack.image, &["sh", "-c", "echo ran"]).to_string();
    aws.send(&pool.queue_url, &body).await;
    let first = aws.wait_result(pool, &id).await;
    aws.wait_empty(pool).await;

    // SQS delivers at least once: the same job again.
    aws.send(&pool.queue_url, &body).await;
    agent.wait_log("Result already recorded.", LONG).await;
    aws.wait_empty(pool).await;
    assert_eq!(agent.count("Job started."), 1);
    // The line says whose result it found.
    let found = agent
        .logs()
        .into_iter()
        .find(|l| l["msg"] == "Result already recorded.")
        .unwrap();
    assert_eq!(
        (
            &found["level"],
            &found["recorded_by"],
            &found["recorded_attempt"]
        ),
        (&"info".into(), &first["instance_id"], &first["attempt"]),
        "{found}"
    );
    assert_eq!(aws.result(pool, &id).await.unwrap(), first);
}

#[tokio::test(flavor = "multi_thread")]
async fn heartbeats_keep_a_long_job_hidden_past_the_visibility_timeout() {
    let Some(s) = Scenario::new("heartbeat").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    // The shortest visibility timeout there is; the job outlives it by far.
    let (_config, agent) = s.agent(
        "i-beat",
        "[agent]\nslots = 2\n[queue]\nvisibility_timeout_secs = 30",
    );
    let id = unique("long-haul");
    aws.send_job(
        &pool.queue_url,
        &job(&id, &stack.image, &["sh", "-c", "sleep 45; echo done"]),
    )
    .await;
    agent.wait_log("Job started.", LONG).await;
    // Until the job ends, the message must never be visible (so no second agent
    // could take it), even after 30 s.
    let start = tokio::time::Instant::now();
    loop {
        let counts = aws.counts(&pool.queue_url).await;
        if agent.count("Job finished.") == 1 {
            break;
        }
        assert_eq!(
            counts,
            (0, 1),
            "the message reappeared after {:?}",
            start.elapsed()
        );
        assert!(start.elapsed() < LONG);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        start.elapsed() > Duration::from_secs(30),
        "the job outlived the visibility timeout"
    );
    let r = aws.wait_result(pool, &id).await;
    assert_eq!(
        (r["status"].as_str(), r["attempt"].as_i64()),
        (Some("succeeded"), Some(1))
    );
    aws.wait_empty(pool).await;
    assert_eq!(agent.count("Job started."), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn submit_validates_enqueues_and_waits_for_the_result() {
    let Some(s) = Scenario::new("submit").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let (config, _agent) = s.agent("i-submit", "");
    let submit = |job: &serde_json::Value, wait: bool| {
        let mut cmd = deckhand();
        cmd.args(["--config", path_str(&config.path), "submit"])
            .arg(config.job_file(job))
            .args(["--queue", &pool.queue_url]);
        if wait {
            cmd.args(["--wait", "--timeout", "120"]);
        }
        cmd.output().unwrap()
    };

    let mut bad = job(&unique("bad"), &stack.image, &["true"]);
    bad["image"] = json!(format!("{}/ci/busybox:latest", stack.registry));
    let refused = submit(&bad, false);
    assert_eq!(refused.status.code(), Some(65));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("image: tag \"latest\" is not allowed"),
        "{stderr}"
    );
    assert_eq!(
        aws.counts(&pool.queue_url).await,
        (0, 0),
        "a bad job never reaches the queue"
    );

    let id = unique("waited");
    let output = submit(
        &job(&id, &stack.image, &["sh", "-c", "echo waited; exit 3"]),
        true,
    );
    let run = Exec::from_output(output);
    assert_eq!(
        run.code,
        Some(3),
        "exits with the job's exit code: {}",
        run.stderr
    );
    assert_eq!(run.result["id"], id.as_str());
    assert_eq!(run.result["status"], "failed");
    assert!(run.logged("Job submitted."));
}

/// A one-request-at-a-time HTTP server on loopback that records what it is sent.
async fn webhook_receiver() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<(Vec<String>, Vec<u8>)>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let head_end = loop {
                let n = stream.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
                if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break p + 4;
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
            let lines: Vec<String> = head.lines().map(str::to_owned).collect();
            let length: usize = lines
                .iter()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            while buf.len() < head_end + length {
                let n = stream.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
            }
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            let _ = tx.send((lines, buf[head_end..head_end + length].to_vec()));
        }
    });
    (url, rx)
}

#[tokio::test(flavor = "multi_thread")]
async fn results_reach_the_results_queue_and_a_signed_webhook() {
    use hmac::Mac;
    let Some(s) = Scenario::new("notify-results").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let results_queue = aws.pool("results-queue", 5).await.queue_url;
    let dir = tempfile::tempdir().unwrap();
    let sealed = seal(aws, pool, dir.path()).await;
    let (url, mut posts) = webhook_receiver().await;
    let shm = secrets_dir();
    let (_config, _agent) = s.agent("i-hook", &format!(
            "{}\n[results]\nqueue_url = \"{results_queue}\"\nwebhook_url = \"{url}\"\nwebhook_secret = \"db-pass\"\n",
            secrets_config(&sealed, &shm, &sealed.pool_name)
        ));
    let id = unique("announced");
    aws.send_job(&pool.queue_url, &job(&id, &stack.image, &["true"]))
        .await;

    let (head, body) = tokio::time::timeout(LONG, posts.recv())
        .await
        .unwrap()
        .unwrap();
    let result: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(result["id"], id.as_str());
    assert_eq!(result["status"], "succeeded");
    let signature = head
        .iter()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-deckhand-signature:")
                .map(|v| v.trim().to_owned())
        })
        .expect("a signature header");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(DB_PASS.as_bytes()).unwrap();
    mac.update(&body);
    assert_eq!(
        signature,
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    );

    let start = tokio::time::Instant::now();
    let sent = loop {
        let sent = aws.drain_queue(&results_queue).await;
        if !sent.is_empty() {
            break sent;
        }
        assert!(start.elapsed() < LONG, "no result on the results queue");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let queued: serde_json::Value = serde_json::from_str(sent[0].body().unwrap()).unwrap();
    assert_eq!(queued, result);
    std::fs::remove_dir_all(&shm).unwrap();
}
