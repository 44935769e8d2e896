//! The soak: many jobs through three agents while, at random, an agent is killed
//! with SIGKILL and started again, Docker goes away (a real dockerd restart under
//! live-restore when `SOAK_DOCKER_RESTART` names the command, else the agent's
//! Docker socket is cut), a host gets a spot notice and is replaced, and S3 and
//! SQS fail a share of requests (a proxy in front of moto). At the end every job
//! has exactly one terminal result and a whole log, only the malformed messages
//! are dead-lettered, the queue is empty and nothing is left on the host.
//!
//! `SOAK_JOBS` (default 60, what CI runs) sets the number of jobs, `SOAK_SEED` the
//! randomness. `scripts/chaos` runs the long one. A line a minute says how it goes.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::agent::{AgentProcess, agent_config};
use common::aws::{Aws, Pool};
use common::imds::ImdsSim;
use common::proxy::Proxy;
use common::scenario::Scenario;
use common::workload::{assert_each_succeeded_whole, short_job, succeeded_records};
use common::*;
use nix::sys::signal::Signal;
use tokio::time::Instant;

/// Background failure share of S3 and SQS requests, and during a burst (the SDK
/// retries each request up to 3 times, so a burst is what reaches the agent).
const FAULT_PERCENT: u64 = 2;
const BURST_PERCENT: u64 = 35;
/// Faults happen every this many results.
const EVENTS: usize = 14;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A tiny xorshift: the soak's choices, repeatable from `SOAK_SEED`.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % sides as u64) as usize
    }
}

/// One instance: its metadata simulator, its Docker socket proxy, its config,
/// and the agent processes it has run (killed ones too: their logs count).
struct Host {
    sim: ImdsSim,
    docker_link: Proxy,
    config: TestConfig,
    runs: Vec<AgentProcess>,
}

impl Host {
    async fn start(stack: &Stack, pool: &Pool, endpoint: &str, n: usize) -> Host {
        let instance = unique(&format!("i-soak{n}"));
        let sim = ImdsSim::start(&instance);
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("docker.sock");
        let docker_link = Proxy::unix(&socket, std::path::Path::new("/var/run/docker.sock")).await;
        let settings = format!(
            "[agent]\nslots = 2\n[queue]\nvisibility_timeout_secs = 30\n[drain]\non_spot = \"release\"\nstop_grace_secs = 1\nstop_timeout_secs = 5\n[imds]\nenabled = true\nendpoint = \"{}\"\npoll_ms = 200\n[docker]\nsocket = \"{}\"",
            sim.url,
            socket.display()
        );
        let mut config = agent_config(stack, pool, endpoint, &instance, &settings);
        config.keep(dir);
        let agent = AgentProcess::start(&config, &format!("host{n}-run0"));
        Host {
            sim,
            docker_link,
            config,
            runs: vec![agent],
        }
    }

    fn agent(&mut self) -> &mut AgentProcess {
        self.runs.last_mut().unwrap()
    }
}

async fn results(aws: &Aws, pool: &Pool) -> Vec<String> {
    aws.keys(&pool.bucket, keys::PREFIX)
        .await
        .into_iter()
        .filter(|k| k.ends_with("/result.json") && !k.contains("/attempt-"))
        .collect()
}

/// What the soak did, for the minute lines and the summary.
#[derive(Default, Debug)]
struct Tally {
    kills: usize,
    docker: usize,
    spot: usize,
    bursts: usize,
}

#[tokio::test(flavor = "multi_thread")]
async fn every_job_ends_once_through_kills_docker_restarts_spot_notices_and_aws_faults() {
    let Some(s) = Scenario::with_receives("soak", 50).await else {
        return;
    };
    let jobs_wanted: usize = env_or("SOAK_JOBS", 60);
    let seed: u64 = env_or("SOAK_SEED", std::process::id() as u64 * 7919);
    let docker_restart = std::env::var("SOAK_DOCKER_RESTART").ok();
    eprintln!("soak: {jobs_wanted} jobs, seed {seed}");
    let mut dice = Dice(seed | 1);
    let Scenario { stack, aws, pool } = &s;
    let (moto, faults) = Proxy::tcp_faulty(&aws.upstream()).await;
    faults.set_percent(FAULT_PERCENT, seed);

    let mut hosts = Vec::new();
    for n in 0..3 {
        hosts.push(Host::start(stack, pool, &moto.address, n).await);
    }
    // Jobs of 0.2 to 1.8 s, and one malformed message in fifty.
    let mut ids = Vec::new();
    let mut malformed = 0;
    for i in 0..jobs_wanted {
        let id = unique(&format!("soak{i}"));
        aws.send_job(&pool.queue_url, &short_job(stack, &id, i))
            .await;
        ids.push(id);
        if i % 50 == 25 {
            aws.send(
                &pool.queue_url,
                "{\"version\":1,\"id\":\"soak-bad\",\"bogus\":1}",
            )
            .await;
            malformed += 1;
        }
    }
    let expected = jobs_wanted + malformed;

    let started = Instant::now();
    let deadline = Duration::from_secs(300 + 3 * jobs_wanted as u64);
    let step = (expected / EVENTS).max(1);
    let mut next_event = step;
    let mut next_line = Duration::from_secs(60);
    let mut tally = Tally::default();
    let mut bag: Vec<usize> = Vec::new();
    let mut replaced = 3;
    // Drained hosts, kept whole: their agents' logs live in their config dirs.
    let mut retired: Vec<Host> = Vec::new();
    loop {
        let done = results(aws, pool).await.len();
        if started.elapsed() >= next_line {
            next_line += Duration::from_secs(60);
            eprintln!(
                "soak: {:>4}s {done}/{expected} results; {tally:?}; aws requests {} (faults injected {})",
                started.elapsed().as_secs(),
                faults.requests.load(Ordering::Relaxed),
                faults.injected.load(Ordering::Relaxed),
            );
        }
        if done >= expected {
            break;
        }
        assert!(
            started.elapsed() < deadline,
            "{done}/{expected} results after {}s; {tally:?}",
            started.elapsed().as_secs()
        );
        if done >= next_event {
            next_event += step;
            // A burst lasts until the next event.
            faults.set_percent(FAULT_PERCENT, seed ^ done as u64);
            // Every kind once per round of four, in a random order.
            if bag.is_empty() {
                bag = vec![0, 1, 2, 3];
            }
            let event = bag.swap_remove(dice.roll(bag.len()));
            let host = dice.roll(hosts.len());
            match event {
                0 => {
                    tally.kills += 1;
                    let h = &mut hosts[host];
                    h.agent().signal(Signal::SIGKILL);
                    h.agent().wait_exit(VERY_LONG).await;
                    let run = format!("host{host}-run{}", h.runs.len());
                    let agent = AgentProcess::start(&h.config, &run);
                    h.runs.push(agent);
                }
                1 => {
                    tally.docker += 1;
                    docker_goes_away(&mut hosts[host], docker_restart.as_deref()).await;
                }
                2 => {
                    tally.spot += 1;
                    let h = &mut hosts[host];
                    h.sim.spot("terminate", 120).await;
                    assert_eq!(
                        h.agent().wait_exit(VERY_LONG).await,
                        Some(0),
                        "a spot drain exits 0"
                    );
                    // A fresh instance takes its place; the drained one's logs are
                    // read at the end.
                    let fresh = Host::start(stack, pool, &moto.address, replaced).await;
                    replaced += 1;
                    retired.push(std::mem::replace(h, fresh));
                }
                _ => {
                    tally.bursts += 1;
                    faults.set_percent(BURST_PERCENT, seed ^ done as u64);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    faults.set_percent(0, seed);
    eprintln!(
        "soak: all {expected} results in {}s; {tally:?}; aws requests {} (faults injected {})",
        started.elapsed().as_secs(),
        faults.requests.load(Ordering::Relaxed),
        faults.injected.load(Ordering::Relaxed),
    );

    eventually("the queue to be empty", VERY_LONG, || async {
        aws.counts(&pool.queue_url).await == (0, 0)
    })
    .await;
    eventually(
        "the malformed messages dead-lettered",
        VERY_LONG,
        || async { aws.counts(&pool.dlq_url).await.0 == malformed as u64 },
    )
    .await;
    let dead = aws.drain_queue(&pool.dlq_url).await;
    assert_eq!(
        dead.len(),
        malformed,
        "only the malformed are dead-lettered"
    );
    assert_each_succeeded_whole(aws, pool, &ids).await;
    // Stop every agent, then look: one result recorded per job, across all the
    // processes that ever ran, and nothing left.
    for host in &mut hosts {
        host.agent().signal(Signal::SIGTERM);
        assert_eq!(host.agent().wait_exit(VERY_LONG).await, Some(0));
    }
    let recorded = succeeded_records(hosts.iter().chain(&retired).flat_map(|h| &h.runs));
    assert_eq!(recorded.len(), jobs_wanted, "{recorded:?}");
    assert!(
        recorded.values().all(|&n| n == 1),
        "a job recorded twice: {recorded:?}"
    );
    for id in &ids {
        assert_clean(id);
    }
}

/// Docker goes away and comes back: the real dockerd restarted (every agent
/// loses it; containers live on under live-restore), or this host's socket cut
/// until its agent has noticed.
async fn docker_goes_away(host: &mut Host, restart: Option<&str>) {
    if let Some(command) = restart {
        let status = tokio::process::Command::new("sh")
            .args(["-c", command])
            .status()
            .await
            .unwrap();
        assert!(status.success(), "{command} failed");
        return;
    }
    let before = host.agent().docker_lost_count();
    host.docker_link.set_down(true);
    let agent = host.runs.last().unwrap();
    eventually("the agent to notice Docker is gone", VERY_LONG, || async {
        agent.docker_lost_count() > before
    })
    .await;
    host.docker_link.set_down(false);
}
