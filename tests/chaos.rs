//! Chaos: a pool of agents loses one to `kill -9`, one to a spot notice and one's
//! Docker connection, all while a queue of jobs is being worked through, and still
//! every job ends with exactly one terminal result (one write of it, by S3's
//! answers), none is lost and none runs to a result twice.

mod common;

use std::time::Duration;

use common::agent::{AgentProcess, agent_config, behind_a_docker_proxy};
use common::aws::{Aws, Pool};
use common::imds::ImdsSim;
use common::proxy::{Proxy, Writes};
use common::scenario::Scenario;
use common::workload::{
    assert_each_succeeded_whole, assert_each_told, assert_each_written_once, short_job, told,
};
use common::*;
use nix::sys::signal::Signal;

const JOBS: usize = 40;
/// Inside nextest's 300 s: each wait gives up with its own message first.
const LIMIT: Duration = Duration::from_secs(280);
/// Kept for the checks at the end, from each wait before them.
const CHECKS: Duration = Duration::from_secs(30);

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

/// Every agent's settings: AWS through `moto` (the counting proxy), and a
/// visibility timeout short enough that a message whose agent died between
/// recording its result and deleting it comes back within the test (and is then
/// deleted as a duplicate); heartbeats keep running jobs hidden.
fn settings(moto: &str) -> String {
    format!(
        "[aws]\nendpoint_url = \"{moto}\"\n[agent]\nslots = 2\n[queue]\nvisibility_timeout_secs = 30\n[drain]\non_spot = \"release\"\nstop_grace_secs = 1\nstop_timeout_secs = 5"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn no_job_is_lost_when_agents_die_docker_drops_and_spot_takes_a_host() {
    let Some(s) = Scenario::new("chaos").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let budget = Budget::new(LIMIT);
    let wait = || budget.deadline(VERY_LONG, CHECKS);
    // Every agent reaches S3 and SQS through this proxy (no faults injected): it
    // counts the writes S3 took.
    let (moto, wire) = Proxy::tcp_faulty(&aws.upstream()).await;
    let settings = &settings(&moto.address);

    // Agent A watches a metadata simulator: the spot notice comes there.
    let sim = ImdsSim::start(&unique("i-chaos-a"));
    let a_config = agent_config(
        stack,
        pool,
        &moto.address,
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
        s.send_job(body).await;
    }

    // 1. A is killed outright mid-work and restarted: its orphans go back.
    eventually("a few results", wait(), || async {
        results(aws, pool).await >= 4
    })
    .await;
    a.signal(Signal::SIGKILL);
    a.wait_exit(wait()).await;
    let mut a2 = AgentProcess::start(&a_config, "a2");

    // 2. B loses Docker for a while.
    eventually("more results", wait(), || async {
        results(aws, pool).await >= 12
    })
    .await;
    docker_link.set_down(true);
    eventually("B to notice its Docker is gone", wait(), || async {
        b.docker_lost_count() >= 2
    })
    .await;
    docker_link.set_down(false);

    // 3. A's host gets a spot notice; a fresh host C takes its place.
    eventually("yet more results", wait(), || async {
        results(aws, pool).await >= 22
    })
    .await;
    sim.spot("terminate", 120).await;
    assert_eq!(a2.wait_exit(wait()).await, Some(0), "a spot drain exits 0");
    let c_config = agent_config(stack, pool, &moto.address, &unique("i-chaos-c"), settings);
    let c = AgentProcess::start(&c_config, "c");

    // Every job ends, succeeded, once.
    eventually("every job's result", wait(), || async {
        results(aws, pool).await == JOBS
    })
    .await;
    every_job_once(&s, &jobs, &wire.writes, [&a, &a2, &b, &c], wait()).await;
    let interrupted = a2.count("Job sent back to the queue as a fresh copy.")
        + a2.count("Message handed back to the queue.")
        + a2.count("Found a container left by an earlier run; removing it.");
    eprintln!(
        "chaos: {} results; A2 handed back or recovered {interrupted}",
        JOBS
    );
}

/// The end state: the queue empty (within `deadline`), nothing dead-lettered, every job `succeeded` with a whole
/// log, its result written once (S3's answers say so, whatever a killed agent
/// got to log) and the logs agree, none ran to a result twice, nothing left.
async fn every_job_once(
    s: &Scenario,
    jobs: &[(String, serde_json::Value)],
    writes: &Writes,
    agents: [&AgentProcess; 4],
    deadline: Duration,
) {
    let Scenario { aws, pool, .. } = s;
    eventually("the queue to be empty", deadline, || async {
        aws.counts(&pool.queue_url).await == (0, 0)
    })
    .await;
    assert_eq!(
        aws.counts(&pool.dlq_url).await,
        (0, 0),
        "nothing dead-lettered"
    );
    let ids = || jobs.iter().map(|(id, _)| id);
    assert_each_succeeded_whole(aws, pool, ids()).await;
    for id in ids() {
        if !leftovers(id).is_empty() {
            for line in agents.iter().flat_map(|a| a.logs()) {
                if line["job_id"] == id.as_str() && line["stream"].is_null() {
                    eprintln!("{line}");
                }
            }
        }
        assert_clean(id);
    }
    assert_each_written_once(writes, pool, ids());
    let told = told(agents);
    assert_each_told(&told, ids());
    let ran_again: Vec<_> = told.iter().filter(|(_, t)| t.ran_again > 0).collect();
    assert!(ran_again.is_empty(), "jobs that ran again: {ran_again:?}");
}

/// The soak's first failure: an agent killed after S3 took its result and
/// before it could log it. The delivery after it finds the result and says
/// whose; the job ran once and its result was written once, though no agent
/// ever logged `Result recorded.` for it.
#[tokio::test(flavor = "multi_thread")]
async fn a_result_written_just_before_kill_9_is_told_by_the_next_delivery() {
    let Some(s) = Scenario::new("told").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let id = unique("told");
    // S3 takes this PUT; the agent never hears that it did.
    let marker = format!("PUT /{}/{}", pool.bucket, keys::result(&id));
    let (moto, held) = Proxy::tcp_holding(&aws.upstream(), &marker).await;
    let instance = unique("i-told");
    let config = agent_config(stack, pool, &moto.address, &instance, "");
    let mut first = AgentProcess::start(&config, "first");
    s.send_job(&job(&id, &stack.image, &["sh", "-c", "echo once"]))
        .await;
    eventually("S3 to take the result (its answer held)", LONG, || async {
        held.load(std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    first.signal(Signal::SIGKILL);
    first.wait_exit(LONG).await;

    // The message comes back after its visibility timeout (30 s).
    let second = AgentProcess::start(&config, "second");
    second.wait_log("Result already recorded.", VERY_LONG).await;
    s.wait_empty().await;
    let r = s.result(&id).await.unwrap();
    assert_eq!(
        (&r["status"], &r["instance_id"], &r["attempt"]),
        (&"succeeded".into(), &instance.as_str().into(), &1.into())
    );
    let found = second
        .logs()
        .into_iter()
        .find(|l| l["msg"] == "Result already recorded.")
        .unwrap();
    assert_eq!(
        (&found["recorded_by"], &found["recorded_attempt"]),
        (&r["instance_id"], &r["attempt"]),
        "{found}"
    );
    // What the soak's old proof counted: no `Result recorded.` for this job.
    let both = [&first, &second];
    assert_eq!(
        both.iter()
            .map(|a| a.count("Result recorded."))
            .sum::<usize>(),
        0
    );
    assert_eq!(
        both.iter().map(|a| a.count("Job started.")).sum::<usize>(),
        1
    );
    assert_clean(&id);
}
