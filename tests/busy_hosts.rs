//! A busy host is kept: scale-in protection while jobs run (debounced), and,
//! after a rebalance recommendation under `admit-if-fits`, only jobs that fit
//! before the horizon. Against moto's Auto Scaling, the real Docker engine and the
//! IMDS simulator.

mod common;

use std::time::Duration;

use common::agent::{AgentProcess, agent_config};
use common::imds::ImdsSim;
use common::notices::imds_config;
use common::proxy::Proxy;
use common::scenario::Scenario;
use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn scale_in_protection_follows_busy_with_at_most_a_call_per_ten_seconds() {
    let Some(s) = Scenario::new("protect").await else {
        return;
    };
    let group = s.aws.group(1).await;
    let me = group.instances[0].clone();
    let (proxy, calls) =
        Proxy::tcp_recording(&s.aws.upstream(), "Action=SetInstanceProtection").await;
    let config = agent_config(
        &s.stack,
        &s.pool,
        &proxy.address,
        &me,
        "[autoscaling]\nprotect_busy = true",
    );
    let mut agent = AgentProcess::start(&config, "busy");
    let first = s.send("first", &["sleep", "3"]).await;
    agent.wait_log("Job started.", LONG).await;
    eventually("protection on while the job runs", LONG, || async {
        s.aws.protected(&me).await
    })
    .await;
    s.wait_result(&first).await;
    // A stream of short jobs: no call of their own.
    let mut short = Vec::new();
    for _ in 0..4 {
        let id = s.send("short", &["true"]).await;
        s.wait_result(&id).await;
        short.push(id);
    }
    eventually("protection off once idle", LONG, || async {
        !s.aws.protected(&me).await
    })
    .await;
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls.len(),
        2,
        "on, then off: {:?}",
        calls.iter().map(|c| &c.1).collect::<Vec<_>>()
    );
    assert!(calls[0].1.contains("ProtectedFromScaleIn=true"));
    assert!(calls[1].1.contains("ProtectedFromScaleIn=false"));
    assert!(
        calls[1]
            .1
            .contains(&format!("AutoScalingGroupName={}", group.name))
    );
    let gap = calls[1].0 - calls[0].0;
    assert!(gap >= Duration::from_secs(9), "debounced: {gap:?}");
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(agent.wait_exit(LONG).await, Some(0));
    assert_all_clean(&short);
}

#[tokio::test(flavor = "multi_thread")]
async fn admit_if_fits_takes_a_short_job_and_leaves_a_long_one() {
    let Some(s) = Scenario::new("fits").await else {
        return;
    };
    let sim = ImdsSim::start(&unique("i-fits"));
    let config = agent_config(
        &s.stack,
        &s.pool,
        &s.aws.endpoint,
        "",
        &imds_config(
            &sim,
            "[drain]\non_rebalance = \"admit-if-fits\"\nrebalance_horizon_secs = 20",
        ),
    );
    let mut agent = AgentProcess::start(&config, "fits");
    agent.wait_log("Ready; serving the queue.", LONG).await;
    sim.control("rebalance", json!({"in_secs": 0})).await;
    agent
        .wait_log(
            "Taking only jobs expected to end within the horizon; draining at it.",
            LONG,
        )
        .await;
    let with_expected = |name: &str, secs: u64| {
        let mut body = job(&unique(name), &s.stack.image, &["true"]);
        body["expected_secs"] = json!(secs);
        body
    };
    let short = with_expected("short", 2);
    s.send_job(&short).await;
    let done = s.wait_result(short["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded");
    // Too long, and one with no estimate (this host ran none of its profile
    // before the short one, whose 90th percentile is under a second: it fits).
    let long = with_expected("long", 3600);
    s.send_job(&long).await;
    agent
        .wait_log(
            "Job would not end before the rebalance horizon; sending it back for another host.",
            LONG,
        )
        .await;
    // At the horizon the host drains, and leaves.
    assert_eq!(agent.wait_exit(LONG).await, Some(0));
    assert!(s.result(long["id"].as_str().unwrap()).await.is_none());
    eventually("the long job left for another host", LONG, || async {
        s.aws.counts(&s.pool.queue_url).await == (1, 0)
    })
    .await;
    let logs = agent.logs();
    let draining = logs.iter().find(|l| l["msg"] == "Draining.").unwrap();
    assert_eq!(draining["reason"], "rebalance recommendation", "{draining}");
    // What it left costs the redrive nothing: a copy, received once at most.
    let left = s.aws.drain_queue(&s.pool.queue_url).await;
    assert_eq!(left.len(), 1);
    assert!(s.aws.drain_queue(&s.pool.dlq_url).await.is_empty());
}
