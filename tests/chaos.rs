//! Chaos: a pool of agents loses one to `kill -9`, one to a spot notice and one's
//! Docker connection, all while a queue of jobs is being worked through, and still
//! every job ends with exactly one terminal result, none is lost and none runs to
//! a result twice.

mod common;

use common::agent::{AgentProcess, agent_config, behind_a_docker_proxy};
use common::aws::{Aws, Pool};
use common::imds::ImdsSim;
use common::scenario::Scenario;
use common::workload::{assert_each_succeeded_whole, short_job, succeeded_records};
use common::*;
use nix::sys::signal::Signal;

const JOBS: usize = 40;

/// Jobs of 0.2 to 1.8 s, so that at any moment some run and some wait.
fn jobs(stack: &Stack) -> Vec<(String, serde_json::Value)> {
    (0..JOBS)
        .map(|i| {
            let id = unique(&format!("chaos{i}"));
            let body = short_job(stack, &id, i);
            (id, body)
        })
        .collect()
}

async fn results(aws: &Aws, pool: &Pool) -> usize {
    aws.keys(&pool.bucket, keys::PREFIX)
        .await
        .iter()
        .filter(|k| k.ends_with("/result.json") && !k.contains("/attempt-"))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn no_job_is_lost_when_agents_die_docker_drops_and_spot_takes_a_host() {
    let Some(s) = Scenario::new("chaos").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    // Short enough that a message whose agent died between recording its result
    // and deleting it comes back within the test (and is then deleted as a
    // duplicate); heartbeats keep running jobs hidden.
    let settings = "[agent]\nslots = 2\n[queue]\nvisibility_timeout_secs = 30\n[drain]\non_spot = \"release\"\nstop_grace_secs = 1\nstop_timeout_secs = 5";

    // Agent A watches a metadata simulator: the spot notice comes there.
    let sim = ImdsSim::start(&unique("i-chaos-a"));
    let a_config = agent_config(
        stack,
        pool,
        &aws.endpoint,
        "",
        &format!(
            "{settings}\n[imds]\nenabled = true\nendpoint = \"{}\"\npoll_ms = 200",
            sim.url
        ),
    );
    // Agent B reaches Docker through a socket the test can cut.
    let (docker_link, b_config) = behind_a_docker_proxy(stack, aws, pool, settings).await;
    let mut a = AgentProcess::start(&a_config, "a");
    let b = AgentProcess::start(&b_config, "b");

    let jobs = jobs(stack);
    for (_, body) in &jobs {
        aws.send_job(&pool.queue_url, body).await;
    }

    // 1. A is killed outright mid-work and restarted: its orphans go back.
    eventually("a few results", VERY_LONG, || async {
        results(aws, pool).await >= 4
    })
    .await;
    a.signal(Signal::SIGKILL);
    a.wait_exit(VERY_LONG).await;
    let mut a2 = AgentProcess::start(&a_config, "a2");

    // 2. B loses Docker for a while.
    eventually("more results", VERY_LONG, || async {
        results(aws, pool).await >= 12
    })
    .await;
    docker_link.set_down(true);
    eventually("B to notice", VERY_LONG, || async {
        b.docker_lost_count() >= 2
    })
    .await;
    docker_link.set_down(false);

    // 3. A's host gets a spot notice; a fresh host C takes its place.
    eventually("yet more results", VERY_LONG, || async {
        results(aws, pool).await >= 22
    })
    .await;
    sim.spot("terminate", 120).await;
    assert_eq!(
        a2.wait_exit(VERY_LONG).await,
        Some(0),
        "a spot drain exits 0"
    );
    let c_config = agent_config(stack, pool, &aws.endpoint, &unique("i-chaos-c"), settings);
    let c = AgentProcess::start(&c_config, "c");

    // Every job ends, succeeded, once.
    eventually("every job's result", VERY_LONG, || async {
        results(aws, pool).await == JOBS
    })
    .await;
    eventually("the queue to be empty", VERY_LONG, || async {
        aws.counts(&pool.queue_url).await == (0, 0)
    })
    .await;
    assert_eq!(
        aws.counts(&pool.dlq_url).await,
        (0, 0),
        "nothing dead-lettered"
    );
    assert_each_succeeded_whole(aws, pool, jobs.iter().map(|(id, _)| id)).await;
    for (id, _) in &jobs {
        if !leftovers(id).is_empty() {
            for agent in [&a, &a2, &b, &c] {
                for line in agent.logs() {
                    if line["job_id"] == id.as_str() && line["stream"].is_null() {
                        eprintln!("{line}");
                    }
                }
            }
        }
        assert_clean(id);
    }
    // One terminal result each, across every agent: none ran to a result twice.
    for agent in [&a, &a2, &b, &c] {
        for line in agent.logs() {
            assert_ne!(
                line["msg"], "Another run of this job recorded its result first; keeping that one.",
                "{line}"
            );
        }
    }
    let recorded = succeeded_records([&a, &a2, &b, &c]);
    assert_eq!(recorded.len(), JOBS);
    assert!(recorded.values().all(|&n| n == 1), "{recorded:?}");
    let interrupted = a2.count("Message handed back to the queue.")
        + a2.count("Found a container left by an earlier run; removing it.");
    eprintln!(
        "chaos: {} results; A2 handed back or recovered {interrupted}",
        JOBS
    );
}
