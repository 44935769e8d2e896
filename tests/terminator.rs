//! The slave terminator: spot and rebalance notices from the IMDS simulator, drained
//! against the real Docker engine and moto, and the metadata service failing or
//! absent without stopping a job. Auto Scaling's side is in `scale_in.rs`.

mod common;

use std::time::Duration;

use common::agent::{AgentProcess, agent_config};
use common::aws::{Aws, Pool};
use common::imds::ImdsSim;
use common::notices::imds_config;
use common::scenario::Scenario;
use common::*;
use serde_json::json;

/// A job that runs for ten minutes on its first delivery and finishes at once on
/// any later one: what a second agent completes after a spot notice.
fn first_attempt_hangs(id: &str, stack: &Stack) -> String {
    let script = "if [ \"$DECKHAND_ATTEMPT\" = 1 ]; then sleep 600; fi; echo done on attempt $DECKHAND_ATTEMPT";
    job(id, &stack.image, &["sh", "-c", script]).to_string()
}

/// An agent config for `pool` that watches `sim`, its instance id from the
/// simulator, plus `extra`.
fn sim_config(stack: &Stack, aws: &Aws, pool: &Pool, sim: &ImdsSim, extra: &str) -> TestConfig {
    agent_config(stack, pool, &aws.endpoint, "", &imds_config(sim, extra))
}

/// An agent watching a metadata simulator of its own, with `extra` TOML.
fn under_a_simulator(
    s: &Scenario,
    instance: &str,
    extra: &str,
) -> (ImdsSim, TestConfig, AgentProcess) {
    let sim = ImdsSim::start(&unique(instance));
    let config = sim_config(&s.stack, &s.aws, &s.pool, &sim, extra);
    let agent = AgentProcess::start(&config, "agent");
    (sim, config, agent)
}

/// Sends a job that sleeps for ten minutes and waits until it runs; its id.
async fn running_a_long_job(s: &Scenario, agent: &AgentProcess, name: &str) -> String {
    let id = s.send(name, &["sleep", "600"]).await;
    agent.wait_log("Job started.", LONG).await;
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spot_notice_hands_the_job_to_another_agent() {
    let Some(s) = Scenario::new("spot").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let sim = ImdsSim::start(&unique("i-spot"));
    let config = sim_config(
        stack,
        aws,
        pool,
        &sim,
        "[queue]\nvisibility_timeout_secs = 600\n[drain]\non_spot = \"release\"\nstop_grace_secs = 1",
    );
    let mut doomed = AgentProcess::start(&config, "doomed");
    let id = unique("spot");
    aws.send(&pool.queue_url, &first_attempt_hangs(&id, stack))
        .await;
    doomed.wait_log("Job started.", LONG).await;

    sim.spot("terminate", 120).await;
    let noticed = tokio::time::Instant::now();
    eventually("the message to be visible again", LONG, || async {
        aws.counts(&pool.queue_url).await == (1, 0)
    })
    .await;
    assert_eq!(doomed.wait_exit(LONG).await, Some(0));
    // Well inside the 105 s the notice leaves (120 s minus the 15 s margin).
    let exited_after = noticed.elapsed();
    assert!(exited_after < Duration::from_secs(60), "{exited_after:?}");
    let interrupted = eventually("the interrupted attempt", LONG, || {
        aws.attempt(pool, &id, 1)
    })
    .await;
    assert_eq!(interrupted["status"], "interrupted");
    assert!(
        interrupted["reason"]
            .as_str()
            .unwrap()
            .starts_with("interrupted: spot interruption notice (terminate at "),
        "{interrupted}"
    );
    // The instance id came from the metadata service.
    assert!(
        interrupted["instance_id"]
            .as_str()
            .unwrap()
            .starts_with("i-spot-")
    );

    let rescuer_config = agent_config(stack, pool, &aws.endpoint, &unique("i-rescuer"), "");
    let _rescuer = AgentProcess::start(&rescuer_config, "rescuer");
    let done = eventually("the terminal result", LONG, || aws.result(pool, &id)).await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["attempt"], 2);
    assert_clean(&id);
}

#[tokio::test(flavor = "multi_thread")]
async fn finish_if_possible_finishes_a_short_job_and_releases_a_long_one() {
    let Some(s) = Scenario::new("finish").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let sim = ImdsSim::start(&unique("i-finish"));
    let config = sim_config(
        stack,
        aws,
        pool,
        &sim,
        "[agent]\nslots = 2\n[queue]\nvisibility_timeout_secs = 600\n[drain]\non_spot = \"finish-if-possible\"\nsafety_margin_secs = 2\nstop_grace_secs = 1",
    );
    let mut agent = AgentProcess::start(&config, "agent");
    let short = unique("short");
    let long = unique("long");
    aws.send(
        &pool.queue_url,
        &job(
            &short,
            &stack.image,
            &["sh", "-c", "sleep 3; echo finished"],
        )
        .to_string(),
    )
    .await;
    aws.send_job(
        &pool.queue_url,
        &job(&long, &stack.image, &["sleep", "600"]),
    )
    .await;
    eventually("both jobs to run", LONG, || async {
        agent.count("Job started.") == 2
    })
    .await;

    // Interruption in 14 s: the deadline is 12 s away, jobs are stopped at 11 s.
    sim.spot("terminate", 14).await;
    let noticed = tokio::time::Instant::now();
    assert_eq!(agent.wait_exit(LONG).await, Some(0));
    let exited_after = noticed.elapsed();
    assert!(
        exited_after < Duration::from_secs(14),
        "exited {exited_after:?} after the notice"
    );
    assert_eq!(
        aws.result(pool, &short).await.unwrap()["status"],
        "succeeded"
    );
    assert_eq!(
        aws.attempt(pool, &long, 1).await.unwrap()["status"],
        "interrupted"
    );
    assert_eq!(
        aws.counts(&pool.queue_url).await,
        (1, 0),
        "the long job is back on the queue"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hibernate_drains_at_once_whatever_the_policy() {
    let Some(s) = Scenario::new("hibernate").await else {
        return;
    };
    let Scenario { aws, pool, .. } = &s;
    let (sim, _config, mut agent) = under_a_simulator(
        &s,
        "i-hib",
        "[queue]\nvisibility_timeout_secs = 600\n[drain]\non_spot = \"finish-if-possible\"\nstop_grace_secs = 1",
    );
    let id = running_a_long_job(&s, &agent, "hib").await;
    // The notice time says two minutes, but hibernation gives no warning.
    sim.spot("hibernate", 120).await;
    assert_eq!(agent.wait_exit(LONG).await, Some(0));
    assert_eq!(
        aws.attempt(pool, &id, 1).await.unwrap()["status"],
        "interrupted"
    );
    assert_eq!(aws.counts(&pool.queue_url).await, (1, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn rebalance_ignore_keeps_serving() {
    let Some(s) = Scenario::new("rb-ignore").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let sim = ImdsSim::start(&unique("i-rbi"));
    let config = sim_config(stack, aws, pool, &sim, "[drain]\non_rebalance = \"ignore\"");
    let agent = AgentProcess::start(&config, "agent");
    agent.wait_log("Ready; serving the queue.", LONG).await;
    sim.control("rebalance", json!({"in_secs": 0})).await;
    agent.wait_log("Rebalance recommendation.", LONG).await;
    let id = unique("after");
    aws.send_job(&pool.queue_url, &job(&id, &stack.image, &["true"]))
        .await;
    let r = eventually("the job sent after the notice", LONG, || {
        aws.result(pool, &id)
    })
    .await;
    assert_eq!(r["status"], "succeeded");
    assert_eq!(agent.count("Draining."), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn rebalance_stop_intake_finishes_running_jobs_and_takes_no_more() {
    let Some(s) = Scenario::new("rb-intake").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let sim = ImdsSim::start(&unique("i-rbs"));
    let config = sim_config(
        stack,
        aws,
        pool,
        &sim,
        "[drain]\non_rebalance = \"stop-intake\"\nstop_timeout_secs = 0",
    );
    let mut agent = AgentProcess::start(&config, "agent");
    let running = unique("running");
    aws.send_job(
        &pool.queue_url,
        &job(&running, &stack.image, &["sh", "-c", "sleep 3"]),
    )
    .await;
    agent.wait_log("Job started.", LONG).await;
    sim.control("rebalance", json!({"in_secs": 0})).await;
    agent
        .wait_log("Stopped receiving; waiting for running jobs.", LONG)
        .await;
    let later = unique("later");
    aws.send_job(&pool.queue_url, &job(&later, &stack.image, &["true"]))
        .await;
    assert_eq!(agent.wait_exit(LONG).await, Some(0));
    // stop_timeout_secs = 0 does not apply: stop-intake lets the job finish.
    assert_eq!(
        aws.result(pool, &running).await.unwrap()["status"],
        "succeeded"
    );
    assert_eq!(
        aws.counts(&pool.queue_url).await,
        (1, 0),
        "the later job was never taken"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rebalance_drain_acts_like_sigterm() {
    let Some(s) = Scenario::new("rb-drain").await else {
        return;
    };
    let Scenario { aws, pool, .. } = &s;
    let (sim, _config, mut agent) = under_a_simulator(
        &s,
        "i-rbd",
        "[queue]\nvisibility_timeout_secs = 600\n[drain]\non_rebalance = \"drain\"\nstop_timeout_secs = 0\nstop_grace_secs = 0",
    );
    let id = running_a_long_job(&s, &agent, "drained").await;
    sim.control("rebalance", json!({"in_secs": 0})).await;
    assert_eq!(agent.wait_exit(LONG).await, Some(0));
    let r = aws.attempt(pool, &id, 1).await.unwrap();
    assert_eq!(r["status"], "interrupted");
    assert_eq!(r["reason"], "interrupted: rebalance recommendation");
    assert_eq!(aws.counts(&pool.queue_url).await, (1, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn metadata_faults_never_stop_the_jobs() {
    let Some(s) = Scenario::new("imdsfault").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let sim = ImdsSim::start(&unique("i-fault"));
    let config = sim_config(stack, aws, pool, &sim, "");
    let agent = AgentProcess::start(&config, "agent");
    agent.wait_log("Ready; serving the queue.", LONG).await;
    let warning = "Cannot read the instance metadata; jobs go on.";
    for (mode, delay_ms) in [("500", 0), ("401", 0), ("slow", 3000), ("down", 0)] {
        let before = agent.count(warning);
        sim.faults(mode, None, delay_ms).await;
        eventually(&format!("a warning for fault {mode}"), LONG, || async {
            agent.count(warning) > before
        })
        .await;
        let id = unique(&format!("during-{mode}"));
        aws.send_job(&pool.queue_url, &job(&id, &stack.image, &["true"]))
            .await;
        let r = eventually(&format!("a job during fault {mode}"), LONG, || {
            aws.result(pool, &id)
        })
        .await;
        assert_eq!(r["status"], "succeeded");
        let warnings = agent.count(warning) - before;
        sim.faults("none", None, 0).await;
        let recovered = agent.count("The instance metadata service answers again.");
        eventually("recovery to be logged", LONG, || async {
            agent.count("The instance metadata service answers again.") > recovered
        })
        .await;
        // Once per backoff step (1 s, 2 s, 4 s …), not once per 200 ms poll.
        assert!(warnings <= 8, "{warnings} warnings during fault {mode}");
    }
    assert_eq!(agent.count("Draining."), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_poll_misses_no_notice() {
    let Some(s) = Scenario::new("missed").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let sim = ImdsSim::start(&unique("i-missed"));
    let config = sim_config(stack, aws, pool, &sim, "");
    let mut agent = AgentProcess::start(&config, "agent");
    agent.wait_log("Ready; serving the queue.", LONG).await;
    // The very next request is dropped; the notice is there from now on.
    sim.faults("down", Some(1), 0).await;
    sim.spot("terminate", 120).await;
    assert_eq!(agent.wait_exit(LONG).await, Some(0));
    assert_eq!(agent.count("Spot interruption notice."), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn off_ec2_the_watchers_are_off_with_one_warning() {
    let Some(s) = Scenario::new("offec2").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    // A loopback port nobody listens on stands for "no metadata service here".
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let config = agent_config(
        stack,
        pool,
        &aws.endpoint,
        "",
        &format!("[imds]\nenabled = true\nendpoint = \"{url}\""),
    );
    let agent = AgentProcess::start(&config, "agent");
    let id = unique("offec2");
    aws.send_job(&pool.queue_url, &job(&id, &stack.image, &["true"]))
        .await;
    let r = eventually("the job", LONG, || aws.result(pool, &id)).await;
    assert_eq!(r["status"], "succeeded");
    let warnings: Vec<_> = agent
        .logs()
        .into_iter()
        .filter(|l| l["level"] == "warn" && l["msg"].as_str().unwrap().contains("metadata"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0]["msg"]
            .as_str()
            .unwrap()
            .starts_with("No instance metadata service")
    );
}
