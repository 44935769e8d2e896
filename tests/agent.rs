//! `deckhand run` against moto's SQS and S3 and the real Docker engine: every
//! outcome's fate on the queue, run-once, recovery, outages and the drain.

mod common;

use std::time::Duration;

use common::agent::{AgentProcess, agent_config, behind_a_docker_proxy};
use common::scenario::Scenario;
use common::*;
use nix::sys::signal::Signal;
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

    // Terminal outcomes are deleted; the rejected ones are copied to the DLQ first.
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
    for id in [&ok, &failed, &slow] {
        assert_clean(id);
    }
    drop(agent);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_that_cannot_run_is_left_to_the_redrive_policy() {
    let Some(s) = Scenario::with_receives("errors", 2).await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let (_config, agent) = s.agent("i-errors", "");
    let id = unique("nopull");
    let image = format!("{}/ci/no-such-image:1.0", stack.registry);
    aws.send_job(&pool.queue_url, &job(&id, &image, &["true"]))
        .await;

    // Two deliveries fail, then SQS moves the message to the DLQ by itself.
    eventually("the message to reach the DLQ", LONG, || async {
        aws.counts(&pool.dlq_url).await.0 == 1
    })
    .await;
    aws.wait_empty(pool).await;
    for attempt in [1, 2] {
        let r = aws
            .json(&pool.bucket, &keys::attempt(&id, attempt))
            .await
            .unwrap_or_else(|| panic!("attempt {attempt} recorded"));
        assert_eq!(r["status"], "error");
        assert_eq!(r["attempt"], attempt);
        assert!(
            r["reason"]
                .as_str()
                .unwrap()
                .starts_with(&format!("pull {image}"))
        );
    }
    assert!(
        aws.result(pool, &id).await.is_none(),
        "an error is not terminal"
    );
    drop(agent);
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
    agent
        .wait_log(
            "Duplicate delivery of a finished job; deleting it without running.",
            LONG,
        )
        .await;
    aws.wait_empty(pool).await;
    assert_eq!(agent.count("Job started."), 1);
    assert_eq!(aws.result(pool, &id).await.unwrap(), first);
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_job_then_restart_completes_the_job_once() {
    let Some(s) = Scenario::new("crash").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let instance = unique("i-crash");
    // The visibility timeout is long: only the receipt kept in the container's
    // labels can bring the message back quickly.
    let config = agent_config(
        stack,
        pool,
        &aws.endpoint,
        &instance,
        "[queue]\nvisibility_timeout_secs = 600",
    );
    let id = unique("crash");
    let script = "if [ \"$DECKHAND_ATTEMPT\" = 1 ]; then sleep 600; fi; echo finished on attempt $DECKHAND_ATTEMPT";
    aws.send_job(
        &pool.queue_url,
        &job(&id, &stack.image, &["sh", "-c", script]),
    )
    .await;

    let mut first = AgentProcess::start(&config, "first");
    first.wait_log("Job started.", LONG).await;
    first.signal(Signal::SIGKILL);
    first.wait_exit(LONG).await;
    assert_eq!(
        leftovers(&id).len(),
        2,
        "the crash leaves the container and workspace"
    );

    let second = AgentProcess::start(&config, "second");
    second
        .wait_log(
            "Found a container left by an earlier run; removing it.",
            LONG,
        )
        .await;
    let r = aws.wait_result(pool, &id).await;
    assert_eq!(r["status"], "succeeded");
    assert_eq!(r["attempt"], 2);
    let log = aws.object(&pool.bucket, &keys::log(&id)).await.unwrap();
    assert_eq!(String::from_utf8(log).unwrap(), "finished on attempt 2\n");
    aws.wait_empty(pool).await;
    assert_eq!(second.count("Job started."), 1);
    assert_clean(&id);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_releases_running_jobs_at_once() {
    let Some(s) = Scenario::new("sigterm").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let (_config, mut agent) = s.agent("i-sigterm", "[agent]\nslots = 2\n[queue]\nvisibility_timeout_secs = 600\n[drain]\nstop_timeout_secs = 0\nstop_grace_secs = 0");
    let ids = [unique("long"), unique("long")];
    for id in &ids {
        aws.send_job(&pool.queue_url, &job(id, &stack.image, &["sleep", "600"]))
            .await;
    }
    eventually("both jobs to run", LONG, || async {
        agent.count("Job started.") == 2
    })
    .await;
    assert_eq!(aws.counts(&pool.queue_url).await, (0, 2));

    let signalled = tokio::time::Instant::now();
    agent.signal(Signal::SIGTERM);
    eventually("both messages to be visible again", LONG, || async {
        aws.counts(&pool.queue_url).await == (2, 0)
    })
    .await;
    let released_after = signalled.elapsed();
    assert_eq!(agent.wait_exit(LONG).await, Some(0));
    eprintln!(
        "released {} messages {released_after:?} after SIGTERM",
        ids.len()
    );
    for id in &ids {
        let r = aws
            .json(&pool.bucket, &keys::attempt(id, 1))
            .await
            .expect("the interrupted attempt is recorded");
        assert_eq!(r["status"], "interrupted");
        assert_eq!(r["reason"], "interrupted: SIGTERM received");
        assert!(aws.result(pool, id).await.is_none());
        assert_clean(id);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_running_jobs_finish_within_the_stop_timeout() {
    let Some(s) = Scenario::new("finish").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let (_config, mut agent) = s.agent("i-finish", "[drain]\nstop_timeout_secs = 120");
    let id = unique("short");
    aws.send_job(
        &pool.queue_url,
        &job(&id, &stack.image, &["sh", "-c", "sleep 2; echo made it"]),
    )
    .await;
    agent.wait_log("Job started.", LONG).await;
    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait_exit(LONG).await, Some(0));
    let r = aws.result(pool, &id).await.expect("finished before exit");
    assert_eq!(r["status"], "succeeded");
    assert_eq!(aws.counts(&pool.queue_url).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_sigterm_skips_the_wait() {
    let Some(s) = Scenario::new("twice").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let (_config, mut agent) = s.agent("i-twice", "[queue]\nvisibility_timeout_secs = 600\n[drain]\nstop_timeout_secs = 3600\nstop_grace_secs = 300");
    let id = unique("stubborn");
    aws.send_job(&pool.queue_url, &job(&id, &stack.image, &["sleep", "600"]))
        .await;
    agent.wait_log("Job started.", LONG).await;
    agent.signal(Signal::SIGTERM);
    agent
        .wait_log("Stopped receiving; waiting for running jobs.", LONG)
        .await;
    agent.signal(Signal::SIGTERM);
    // Without the second signal this would take the hour of stop_timeout_secs.
    assert_eq!(agent.wait_exit(LONG).await, Some(0));
    assert_eq!(
        aws.counts(&pool.queue_url).await,
        (1, 0),
        "handed back, not lost"
    );
    assert_clean(&id);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_aws_outage_delays_but_loses_nothing() {
    let Some(s) = Scenario::new("outage").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let upstream = aws.upstream();
    let proxy = common::proxy::Proxy::tcp(&upstream).await;
    // Two slots: while one job waits to record its result, the loop still polls.
    let config = agent_config(
        stack,
        pool,
        &proxy.address,
        &unique("i-outage"),
        "[agent]\nslots = 2",
    );
    let agent = AgentProcess::start(&config, "agent");
    let first = unique("before");
    aws.send_job(
        &pool.queue_url,
        &job(&first, &stack.image, &["sh", "-c", "sleep 2; echo done"]),
    )
    .await;
    agent.wait_log("Job started.", LONG).await;

    proxy.set_down(true);
    // Sent while the agent cannot reach the queue.
    let second = unique("during");
    aws.send_job(&pool.queue_url, &job(&second, &stack.image, &["true"]))
        .await;
    agent
        .wait_log("Could not record the result; retrying.", LONG)
        .await;
    eventually("two backoff steps of the receive loop", LONG, || async {
        agent.count("Could not receive; backing off.") >= 2
    })
    .await;
    let warnings = agent.count("Could not receive; backing off.");
    proxy.set_down(false);

    for id in [&first, &second] {
        let r = aws.wait_result(pool, id).await;
        assert_eq!(r["status"], "succeeded", "{r}");
    }
    aws.wait_empty(pool).await;
    agent.wait_log("The queue answers again.", LONG).await;
    // Once per backoff step, not once per attempt: a handful, not a flood.
    assert!(
        warnings <= 6,
        "{warnings} receive warnings during a short outage"
    );
    assert_eq!(agent.count("Job started."), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_is_received_while_docker_is_down() {
    let Some(s) = Scenario::new("dockerdown").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let (proxy, config) = behind_a_docker_proxy(stack, aws, pool, "").await;
    let agent = AgentProcess::start(&config, "agent");
    agent.wait_log("Ready; serving the queue.", LONG).await;

    proxy.set_down(true);
    agent
        .wait_log("Docker is unreachable; not receiving.", LONG)
        .await;
    let id = unique("waits");
    aws.send_job(&pool.queue_url, &job(&id, &stack.image, &["true"]))
        .await;
    // A window in which the agent must leave the message alone: it keeps
    // backing off (two more warnings) while the message stays visible.
    let seen = agent.count("Docker is unreachable; not receiving.");
    eventually("two more Docker backoff steps", LONG, || async {
        assert_eq!(
            aws.counts(&pool.queue_url).await,
            (1, 0),
            "received while Docker was down"
        );
        agent.count("Docker is unreachable; not receiving.") >= seen + 2
    })
    .await;

    proxy.set_down(false);
    agent
        .wait_log("Docker is back; receiving again.", LONG)
        .await;
    let r = aws.wait_result(pool, &id).await;
    assert_eq!(r["status"], "succeeded");
    assert_eq!(r["attempt"], 1, "never received while Docker was down");
    assert_clean(&id);
}

#[tokio::test(flavor = "multi_thread")]
async fn losing_docker_mid_job_loses_neither_the_job_nor_a_line_of_its_output() {
    let Some(s) = Scenario::new("dockerblip").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let (proxy, config) = behind_a_docker_proxy(stack, aws, pool, "").await;
    let agent = AgentProcess::start(&config, "agent");
    let id = unique("blip");
    let lines = 60;
    let script = format!(
        "i=1; while [ $i -le {lines} ]; do echo out $i; echo err $i >&2; i=$((i+1)); sleep 0.1; done"
    );
    aws.send_job(
        &pool.queue_url,
        &job(&id, &stack.image, &["sh", "-c", &script]),
    )
    .await;
    agent.wait_log("out 5", LONG).await;

    // The connection drops as in a dockerd restart with live-restore: the
    // container runs on, and deckhand hears nothing from Docker for a while.
    proxy.set_down(true);
    agent
        .wait_log(
            "Lost Docker while the job runs; waiting for it to answer again.",
            LONG,
        )
        .await;
    let lost_at = agent
        .logs()
        .iter()
        .filter(|l| l["msg"].as_str().is_some_and(|m| m.starts_with("out ")))
        .count();
    eventually("a second of output missed", LONG, || async {
        agent.count("Lost Docker while the job runs; waiting for it to answer again.") >= 3
    })
    .await;
    proxy.set_down(false);

    let r = aws.wait_result(pool, &id).await;
    assert_eq!(
        (r["status"].as_str(), r["exit_code"].as_i64()),
        (Some("succeeded"), Some(0)),
        "{r}"
    );
    assert!(
        lost_at < lines,
        "Docker was lost while the job ran ({lost_at} lines)"
    );
    let log = aws.object(&pool.bucket, &keys::log(&id)).await.unwrap();
    let log = String::from_utf8(log).unwrap();
    for stream in ["out", "err"] {
        let got: Vec<&str> = log.lines().filter(|l| l.starts_with(stream)).collect();
        let want: Vec<String> = (1..=lines).map(|i| format!("{stream} {i}")).collect();
        assert_eq!(
            got,
            want,
            "every {stream} line once, in order:\n{log}\nagent:\n{}",
            std::fs::read_to_string(agent.log_path()).unwrap()
        );
    }
    assert_eq!(log.lines().count(), 2 * lines, "nothing else:\n{log}");
    assert_eq!(
        agent.count("Docker answers again; the job's container is still there."),
        1
    );
    assert_clean(&id);
}

#[tokio::test(flavor = "multi_thread")]
async fn what_a_cleanup_leaves_in_a_long_docker_outage_is_swept_when_docker_returns() {
    let Some(s) = Scenario::new("sweep").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let (proxy, config) = behind_a_docker_proxy(stack, aws, pool, "").await;
    let agent = AgentProcess::start(&config, "agent");
    let id = unique("sweep");
    let mut body = job(&id, &stack.image, &["sleep", "600"]);
    body["timeout_secs"] = json!(2);
    aws.send_job(&pool.queue_url, &body).await;
    agent.wait_log("Job started.", LONG).await;

    // Docker goes away before the timeout: the stop cannot reach it, and the
    // cleanup gives up after its 30 s of patience.
    proxy.set_down(true);
    agent
        .wait_log(
            "Could not remove the job's container; removing it once Docker answers.",
            LONG,
        )
        .await;
    assert_eq!(leftovers(&id).len(), 2, "container and workspace left");
    proxy.set_down(false);
    agent
        .wait_log(
            "Removed a container an earlier job's cleanup could not.",
            LONG,
        )
        .await;
    eventually("the leftovers gone", LONG, || async {
        leftovers(&id).is_empty()
    })
    .await;
    // The attempt was an error (the host failed it), so the job ran again.
    let r = aws.wait_result(pool, &id).await;
    assert_eq!(r["status"], "timed_out", "{r}");
    assert_clean(&id);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_huge_log_is_spooled_to_disk_and_uploaded_whole() {
    let Some(s) = Scenario::new("hugelog").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let (config, agent) = s.agent("i-huge", "");
    let id = unique("chatty");
    // 20 MB of output in 10 kB lines: well past the 2 MiB kept in memory.
    let script = "head -c 20000000 /dev/zero | tr '\\0' x | fold -w 10000; echo; echo the end";
    aws.send_job(
        &pool.queue_url,
        &job(&id, &stack.image, &["sh", "-c", script]),
    )
    .await;
    let r = aws.wait_result(pool, &id).await;
    assert_eq!(r["status"], "succeeded");
    let spooled = agent.count("The job's log is large; spooling it to disk.");
    let log = aws.object(&pool.bucket, &keys::log(&id)).await.unwrap();
    let text = String::from_utf8(log).unwrap();
    assert_eq!(text.matches('x').count(), 20_000_000);
    assert!(text.ends_with("\nthe end\n"));
    assert_eq!(spooled, 1, "{} bytes", text.len());
    let spool = config.dir.path().join("spool");
    assert!(
        std::fs::read_dir(&spool).unwrap().next().is_none(),
        "the spool file is removed"
    );
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

#[tokio::test(flavor = "multi_thread")]
async fn check_reports_each_dependency() {
    let Some(s) = Scenario::new("check").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let check = |config: &TestConfig| {
        let output = deckhand()
            .args(["--config", path_str(&config.path), "check"])
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let good = agent_config(stack, pool, &aws.endpoint, &unique("i-check"), "");
    let (code, report) = check(&good);
    assert_eq!(code, Some(0), "{report}");
    for probe in [
        "ok    config",
        "ok    docker",
        "ok    sqs",
        "ok    s3",
        "ok    disk",
    ] {
        assert!(report.contains(probe), "{probe} in {report}");
    }
    let bad = agent_config(
        stack,
        pool,
        &aws.endpoint,
        &unique("i-check"),
        &format!("[queue]\nurl = \"{}-missing\"", pool.queue_url),
    );
    let (code, report) = check(&bad);
    assert_eq!(code, Some(69), "{report}");
    assert!(report.contains("FAIL  sqs"), "{report}");
    // The agent would take no job below disk.min_free_mb (here 1 PB).
    let full = agent_config(
        stack,
        pool,
        &aws.endpoint,
        &unique("i-check"),
        "[disk]\nmin_free_mb = 1000000000\ngc_free_mb = 1000000000",
    );
    let (code, report) = check(&full);
    assert_ne!(code, Some(0), "{report}");
    assert!(report.contains("FAIL  disk"), "{report}");

    // metrics.listen: free before the agent runs, taken by something else, and
    // the agent's own /readyz once it does.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let with_metrics = agent_config(
        stack,
        pool,
        &aws.endpoint,
        &unique("i-check"),
        &format!("[metrics]\nlisten = \"127.0.0.1:{port}\""),
    );
    let (code, report) = check(&with_metrics);
    assert_eq!(code, Some(0), "{report}");
    assert!(
        report.contains(&format!("ok    metrics  127.0.0.1:{port} is free")),
        "{report}"
    );
    let agent = AgentProcess::start(&with_metrics, "agent");
    agent.wait_log("Ready; serving the queue.", LONG).await;
    let (code, report) = check(&with_metrics);
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains("/readyz answers 200: ok"), "{report}");
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
async fn a_message_that_lands_in_the_last_long_poll_is_handed_back() {
    let Some(s) = Scenario::new("lastpoll").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    // A long poll and a long visibility timeout: a message lost to an abandoned
    // poll would stay hidden for ten minutes.
    let (_config, mut agent) = s.agent(
        "i-lastpoll",
        "[queue]\nwait_secs = 20\nvisibility_timeout_secs = 600",
    );
    agent.wait_log("Ready; serving the queue.", LONG).await;
    agent.signal(Signal::SIGTERM);
    // Sent after the drain began: only the poll already waiting at SQS can take it.
    aws.send_job(
        &pool.queue_url,
        &job(&unique("late"), &stack.image, &["true"]),
    )
    .await;
    assert_eq!(agent.wait_exit(LONG).await, Some(0));
    assert_eq!(agent.count("Job started."), 0);
    assert_eq!(
        aws.counts(&pool.queue_url).await,
        (1, 0),
        "visible at once, not hidden"
    );
}

/// GET `path` from the agent's metrics listener: status and body.
async fn scrape(address: &str, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{address}{path}"))
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_and_health_say_what_the_agent_does() {
    let Some(s) = Scenario::new("metrics").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let (_config, mut agent) = s.agent("i-metrics", "[metrics]\nlisten = \"127.0.0.1:0\"\n[queue]\nvisibility_timeout_secs = 600\n[drain]\nstop_timeout_secs = 600");
    agent.wait_log("Ready; serving the queue.", LONG).await;
    let address = agent
        .logs()
        .into_iter()
        .find(|l| l["msg"] == "Serving metrics and health.")
        .expect("the listener's address is logged")["address"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(scrape(&address, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(scrape(&address, "/readyz").await, (200, "ok\n".into()));

    let (ok, failed, latest) = (unique("ok"), unique("failed"), unique("latest"));
    aws.send_job(&pool.queue_url, &job(&ok, &stack.image, &["true"]))
        .await;
    aws.send_job(
        &pool.queue_url,
        &job(&failed, &stack.image, &["sh", "-c", "exit 3"]),
    )
    .await;
    let untagged = format!("{}/ci/busybox:latest", stack.registry);
    aws.send_job(&pool.queue_url, &job(&latest, &untagged, &["true"]))
        .await;
    for id in [&ok, &failed, &latest] {
        aws.wait_result(pool, id).await;
    }
    eventually("three jobs counted", LONG, || async {
        let (_, text) = scrape(&address, "/metrics").await;
        sample(&text, "deckhand_jobs_total{status=\"rejected\"}") == Some(1.0)
            && sample(&text, "deckhand_jobs_total{status=\"failed\"}") == Some(1.0)
            && sample(&text, "deckhand_jobs_total{status=\"succeeded\"}") == Some(1.0)
    })
    .await;
    let (status, text) = scrape(&address, "/metrics").await;
    assert_eq!(status, 200);
    for (name, value) in [
        ("deckhand_messages_received_total", 3.0),
        ("deckhand_jobs_total{status=\"timed_out\"}", 0.0),
        (
            "deckhand_job_duration_seconds_count{status=\"succeeded\"}",
            1.0,
        ),
        ("deckhand_jobs_running", 0.0),
        ("deckhand_slots", 1.0),
        ("deckhand_ready", 1.0),
        ("deckhand_docker_up", 1.0),
        ("deckhand_draining", 0.0),
    ] {
        assert_eq!(sample(&text, name), Some(value), "{name} in\n{text}");
    }

    let long = unique("long");
    aws.send_job(
        &pool.queue_url,
        &job(&long, &stack.image, &["sleep", "600"]),
    )
    .await;
    agent.wait_log("Job started.", LONG).await;
    eventually("the running job counted", LONG, || async {
        sample(
            &scrape(&address, "/metrics").await.1,
            "deckhand_jobs_running",
        ) == Some(1.0)
    })
    .await;
    // Its cgroup, sampled: by profile and slot, never by job id.
    eventually(
        "the running job's memory, by profile and slot",
        LONG,
        || async {
            let text = scrape(&address, "/metrics").await.1;
            sample(
                &text,
                "deckhand_running_memory_bytes{profile=\"default\",slot=\"0\"}",
            )
            .is_some_and(|bytes| bytes > 0.0)
                && sample(
                    &text,
                    "deckhand_running_cpu_seconds{profile=\"default\",slot=\"0\"}",
                )
                .is_some()
        },
    )
    .await;
    // Draining, the job still running (stop_timeout_secs 600): a load balancer or
    // an operator's probe learns that this host takes no more work.
    agent.signal(Signal::SIGTERM);
    eventually("readyz to say draining", LONG, || async {
        scrape(&address, "/readyz").await == (503, "draining\n".into())
    })
    .await;
    assert_eq!(
        scrape(&address, "/healthz").await,
        (200, "ok\n".into()),
        "draining is healthy"
    );
    assert_eq!(scrape(&address, "/nowhere").await.0, 404);
    let post = reqwest::Client::new()
        .post(format!("http://{address}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status().as_u16(), 405);

    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait_exit(LONG).await, Some(0));
    assert_eq!(aws.counts(&pool.queue_url).await, (1, 0), "handed back");
    assert_clean(&long);
}

/// An image of its own (a new layer on the stack's busybox), so removing it touches
/// nothing another test uses. Removed on drop, if the test did not.
struct OwnImage(String);

impl OwnImage {
    fn new(stack: &Stack) -> OwnImage {
        let name = format!("{}/ci/gc-{}:1", stack.registry, unique("victim"));
        let container = docker(&["create", "--network", &stack.network, &stack.image, "true"]);
        let container = container.trim();
        docker(&["commit", "-c", "LABEL deckhand.test=gc", container, &name]);
        docker(&["rm", container]);
        OwnImage(name)
    }

    fn exists(&self) -> bool {
        std::process::Command::new("docker")
            .args(["image", "inspect", &self.0])
            .output()
            .unwrap()
            .status
            .success()
    }
}

impl Drop for OwnImage {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rmi", "-f", &self.0])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_collects_unused_images_and_stops_intake() {
    let Some(s) = Scenario::new("disk").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let victim = OwnImage::new(stack);
    let work = tempfile::tempdir().unwrap();
    let instance = unique("i-disk");
    let config = |disk: &str, warm: &str| {
        agent_config(
            stack,
            pool,
            &aws.endpoint,
            &instance,
            &format!(
                "[agent]\nwork_dir = \"{}\"\n[images]\nwarm = [{warm}]\n[disk]\n{disk}",
                work.path().display()
            ),
        )
    };

    // First, with room to spare: the agent runs a job from each image and so
    // records both as its own.
    let roomy = config("min_free_mb = 1\ngc_free_mb = 1", "");
    let mut agent = AgentProcess::start(&roomy, "roomy");
    let (a, b) = (unique("own"), unique("stack"));
    aws.send_job(&pool.queue_url, &job(&a, &victim.0, &["true"]))
        .await;
    aws.send_job(&pool.queue_url, &job(&b, &stack.image, &["true"]))
        .await;
    for id in [&a, &b] {
        assert_eq!(aws.wait_result(pool, id).await["status"], "succeeded");
    }
    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait_exit(LONG).await, Some(0));
    assert_eq!(agent.count("Removed an unused image."), 0);
    assert!(victim.exists());

    // Then the same host with a disk that can never have enough room (1 PB):
    // its own unused image goes, the warm one stays, and no job is taken.
    let full = config(
        "min_free_mb = 1000000000\ngc_free_mb = 1000000000",
        &format!("\"{}\"", stack.image),
    );
    let mut agent = AgentProcess::start(&full, "full");
    agent
        .wait_log("Disk space is low; not receiving.", LONG)
        .await;
    let removed: Vec<String> = agent
        .logs()
        .into_iter()
        .filter(|l| l["msg"] == "Removed an unused image.")
        .map(|l| l["image"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        removed.len(),
        1,
        "only the agent's own unused image: {removed:?}"
    );
    assert!(!victim.exists(), "{} removed", victim.0);
    assert!(
        std::process::Command::new("docker")
            .args(["image", "inspect", &stack.image])
            .output()
            .unwrap()
            .status
            .success(),
        "the warm image stays"
    );
    let id = unique("waits");
    aws.send_job(&pool.queue_url, &job(&id, &stack.image, &["true"]))
        .await;
    let seen = agent.count("Disk space is low; not receiving.");
    eventually("two more disk checks", LONG, || async {
        assert_eq!(
            aws.counts(&pool.queue_url).await,
            (1, 0),
            "received with a full disk"
        );
        agent.count("Disk space is low; not receiving.") >= seen + 2
    })
    .await;
    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait_exit(LONG).await, Some(0));
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.path().join("images.json")).unwrap()).unwrap();
    assert_eq!(
        record.as_object().unwrap().len(),
        1,
        "the warm image is still recorded: {record}"
    );
}

/// The host answers the metadata service; a job, probed from a container on the
/// profiles' network with a job's hardening, does not reach it.
#[tokio::test(flavor = "multi_thread")]
async fn check_probes_the_metadata_block_from_where_a_job_stands() {
    let Some(s) = Scenario::new("check-imds").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let sim = common::imds::ImdsSim::start(&unique("i-check-imds"));
    let config = agent_config(
        stack,
        pool,
        &aws.endpoint,
        &unique("i-check-imds"),
        &format!("[imds]\nenabled = true\nendpoint = \"{}\"", sim.url),
    );
    let output = deckhand()
        .args(["--config", path_str(&config.path), "check"])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{report}");
    assert!(report.contains("ok    imds     i-check-imds"), "{report}");
    let port = sim.url.rsplit(':').next().unwrap().trim_end_matches('/');
    assert!(
        report.contains(&format!(
            "ok    imds-block 127.0.0.1:{port} is out of jobs' reach (network {})",
            stack.network
        )),
        "{report}"
    );
    let left = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", "name=deckhand-probe-"])
        .output()
        .unwrap();
    assert!(left.stdout.is_empty(), "the probe container is removed");
}
