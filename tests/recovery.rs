//! `deckhand run` after a crash and through outages, against moto and the real
//! Docker engine: kill -9 mid-job then a restart, AWS unreachable, Docker down
//! before a job, lost in the middle of one, and gone through a cleanup; nothing is
//! lost and nothing runs twice.

mod common;

use common::agent::{AgentProcess, agent_config, behind_a_docker_proxy};
use common::scenario::Scenario;
use common::*;
use nix::sys::signal::Signal;
use serde_json::json;

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
