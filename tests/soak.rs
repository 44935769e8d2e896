//! The soak: many jobs through three agents while, at random, an agent is killed
//! with SIGKILL and started again, Docker goes away (a real dockerd restart under
//! live-restore when `SOAK_DOCKER_RESTART` names the command, else the agent's
//! Docker socket is cut), a host gets a spot notice and is replaced, and S3 and
//! SQS fail a share of requests (a proxy in front of moto). At the end every job
//! has exactly one terminal result, written once (counted from S3's answers on
//! the proxy) and with a whole log, only the malformed messages are
//! dead-lettered, the queue is empty, every agent exits 0 on SIGTERM and nothing
//! is left on the host.
//!
//! `SOAK_JOBS` (default 60, what CI runs) sets the number of jobs, `SOAK_SEED` the
//! randomness, `SOAK_LIMIT_SECS` its own time limit. `scripts/chaos` runs the long
//! one. A line a minute says how it goes.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::agent::{AgentProcess, agent_config};
use common::aws::{Aws, Pool};
use common::imds::ImdsSim;
use common::proxy::{Faults, Proxy};
use common::scenario::Scenario;
use common::workload::{
    assert_each_succeeded_whole, assert_each_told, assert_each_written_once, short_job, told,
};
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

/// The soak's own limit (`SOAK_LIMIT_SECS`), inside nextest's: 300 s in the
/// default profile (what CI runs), longer in `scripts/chaos`'s.
const LIMIT_SECS: u64 = 280;
/// What the wait for results leaves for the rest: the queue, the dead-letter
/// queue and the agents' exits.
const AFTER_RESULTS: Duration = Duration::from_secs(100);
/// A message whose delete failed comes back after its visibility timeout (30 s)
/// and may be deferred once (30 s) behind a stale claim.
const QUEUE_EMPTY: Duration = Duration::from_secs(120);
/// A dead-letter copy is sent before its message is deleted.
const DEAD_LETTERED: Duration = Duration::from_secs(30);
/// Idle agents drain at once.
const EXIT: Duration = Duration::from_secs(60);
/// The checks at the end: reads of every result and log, the agents' logs.
const CHECKS: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread")]
async fn every_job_ends_once_through_kills_docker_restarts_spot_notices_and_aws_faults() {
    let Some(s) = Scenario::with_receives("soak", 50).await else {
        return;
    };
    let budget = Budget::new(Duration::from_secs(env_or("SOAK_LIMIT_SECS", LIMIT_SECS)));
    let jobs_wanted: usize = env_or("SOAK_JOBS", 60);
    let seed: u64 = env_or("SOAK_SEED", std::process::id() as u64 * 7919);
    eprintln!("soak: {jobs_wanted} jobs, seed {seed}");
    let started = Instant::now();
    let Scenario { stack, aws, pool } = &s;
    let (moto, faults) = Proxy::tcp_faulty(&aws.upstream()).await;
    faults.set_percent(FAULT_PERCENT, seed);
    let mut soak = Soak {
        stack,
        pool,
        moto: &moto.address,
        hosts: Vec::new(),
        retired: Vec::new(),
        started: 0,
        budget: &budget,
    };
    for _ in 0..3 {
        let host = soak.host().await;
        soak.hosts.push(host);
    }
    let (ids, malformed) = send_work(&s, jobs_wanted).await;
    let expected = jobs_wanted + malformed.len();
    eprintln!(
        "soak: 3 agents started and {expected} messages sent in {}s",
        started.elapsed().as_secs()
    );
    let working = Instant::now();
    let tally = soak.until_results(aws, &faults, expected, seed).await;
    faults.set_percent(0, seed);
    eprintln!(
        "soak: all {expected} results in {}s; {tally:?}; aws requests {} (faults injected {})",
        working.elapsed().as_secs(),
        faults.requests.load(Ordering::Relaxed),
        faults.injected.load(Ordering::Relaxed),
    );
    soak.queue_empties(aws).await;
    only_the_malformed_dead_lettered(aws, pool, &malformed, &budget).await;
    soak.stop_every_agent().await;

    // What the logs tell first, so that a failed check below comes with the
    // story of the jobs the logs single out: found already recorded (their
    // writer killed before it logged) or run again (after a hand-back).
    let checking = Instant::now();
    let told = told(soak.runs());
    let found = told.values().filter(|t| t.recorded == 0).count();
    let ran_again = told.values().filter(|t| t.ran_again > 0).count();
    eprintln!(
        "soak: {found} results found already recorded by the next delivery (their writer killed before it logged), {ran_again} jobs ran again"
    );
    let singled_out = |id: &str| {
        told.get(id)
            .is_some_and(|t| t.recorded == 0 || t.ran_again > 0)
    };
    // Their whole story, but for the jobs' own output: every agent's lines.
    for line in soak.runs().flat_map(|r| r.logs()) {
        if line["stream"].is_null() && line["job_id"].as_str().is_some_and(singled_out) {
            eprintln!("soak: {line}");
        }
    }
    // One result per job, whole, written once (S3's own answers), and told.
    assert_each_succeeded_whole(aws, pool, &ids).await;
    assert_each_written_once(&faults.writes, pool, &ids);
    assert_each_told(&told, &ids);
    assert_all_clean(&ids);
    eprintln!(
        "soak: checked in {}s; {}s in all",
        checking.elapsed().as_secs(),
        started.elapsed().as_secs()
    );
}

/// Jobs of 0.2 to 1.8 s, and one malformed message in fifty: the jobs' ids and
/// the malformed messages' SQS ids.
async fn send_work(s: &Scenario, jobs: usize) -> (Vec<String>, Vec<String>) {
    let mut ids = Vec::new();
    let mut malformed = Vec::new();
    for i in 0..jobs {
        let id = unique(&format!("soak{i}"));
        s.send_job(&short_job(&s.stack, &id, i)).await;
        ids.push(id);
        if i % 50 == 25 {
            let bad = "{\"version\":1,\"id\":\"soak-bad\",\"bogus\":1}";
            malformed.push(s.aws.send(&s.pool.queue_url, bad).await);
        }
    }
    (ids, malformed)
}

/// The soak's pool of hosts, the ones it retired, and its time.
struct Soak<'a> {
    stack: &'a Stack,
    pool: &'a Pool,
    /// The faulty proxy in front of moto, every agent's AWS endpoint.
    moto: &'a str,
    hosts: Vec<Host>,
    /// Drained hosts, kept whole: their agents' logs live in their config dirs.
    retired: Vec<Host>,
    /// Hosts started so far, for the next one's name.
    started: usize,
    budget: &'a Budget,
}

impl Soak<'_> {
    async fn host(&mut self) -> Host {
        self.started += 1;
        Host::start(self.stack, self.pool, self.moto, self.started - 1).await
    }

    /// Every agent process that ran, killed and drained ones too.
    fn runs(&self) -> impl Iterator<Item = &AgentProcess> {
        self.hosts.iter().chain(&self.retired).flat_map(|h| &h.runs)
    }

    /// A deadline for a wait during the run: `own`, within what the results
    /// may take.
    fn during(&self, own: Duration) -> Duration {
        self.budget.deadline(own, AFTER_RESULTS)
    }

    /// Waits for `expected` results while, every 1/[`EVENTS`] of them, one
    /// thing happens to a random host; what happened.
    async fn until_results(
        &mut self,
        aws: &Aws,
        faults: &Faults,
        expected: usize,
        seed: u64,
    ) -> Tally {
        let mut dice = Dice(seed | 1);
        let started = Instant::now();
        let step = (expected / EVENTS).max(1);
        let mut next_event = step;
        let mut next_line = Duration::from_secs(60);
        let mut tally = Tally::default();
        let mut bag: Vec<usize> = Vec::new();
        let docker_restart = std::env::var("SOAK_DOCKER_RESTART").ok();
        loop {
            let done = results(aws, self.pool).await.len();
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
                return tally;
            }
            assert!(
                self.during(Duration::MAX) > Duration::ZERO,
                "{done}/{expected} results after {}s, the soak's time for them; {tally:?}",
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
                let host = dice.roll(self.hosts.len());
                match event {
                    0 => {
                        tally.kills += 1;
                        self.kill(host).await;
                    }
                    1 => {
                        tally.docker += 1;
                        let deadline = self.during(VERY_LONG);
                        docker_goes_away(
                            &mut self.hosts[host],
                            docker_restart.as_deref(),
                            deadline,
                        )
                        .await;
                    }
                    2 => {
                        tally.spot += 1;
                        self.spot(host).await;
                    }
                    _ => {
                        tally.bursts += 1;
                        faults.set_percent(BURST_PERCENT, seed ^ done as u64);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The host's agent is killed with SIGKILL and started again.
    async fn kill(&mut self, host: usize) {
        let deadline = self.during(LONG);
        let h = &mut self.hosts[host];
        h.agent().signal(Signal::SIGKILL);
        h.agent().wait_exit(deadline).await;
        let run = format!("host{host}-run{}", h.runs.len());
        let agent = AgentProcess::start(&h.config, &run);
        h.runs.push(agent);
    }

    /// The host gets a spot notice; a fresh instance takes its place once its
    /// agent has drained.
    async fn spot(&mut self, host: usize) {
        let deadline = self.during(VERY_LONG);
        let h = &mut self.hosts[host];
        h.sim.spot("terminate", 120).await;
        assert_eq!(
            h.agent().wait_exit(deadline).await,
            Some(0),
            "a spot drain exits 0"
        );
        let fresh = self.host().await;
        let drained = std::mem::replace(&mut self.hosts[host], fresh);
        self.retired.push(drained);
    }

    /// The queue empties: every message deleted (or dead-lettered).
    async fn queue_empties(&self, aws: &Aws) {
        let deadline = self.budget.deadline(QUEUE_EMPTY, DEAD_LETTERED + EXIT / 2);
        let started = Instant::now();
        let emptied = within(deadline, || async {
            aws.counts(&self.pool.queue_url).await == (0, 0)
        })
        .await;
        if emptied.is_none() {
            let (visible, in_flight) = aws.counts(&self.pool.queue_url).await;
            panic!(
                "the queue still holds {visible} visible and {in_flight} in-flight messages after {deadline:?}; the agents' last lines:\n{}",
                self.hosts
                    .iter()
                    .map(|h| h.runs.last().unwrap().tail(10))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        eprintln!(
            "soak: the queue empty {}s after the results",
            started.elapsed().as_secs()
        );
    }

    /// SIGTERM to every agent at once; each drains and exits 0.
    async fn stop_every_agent(&mut self) {
        // A host started at the last event may still be booting: its signal
        // handlers are in place once it serves.
        for host in &self.hosts {
            let deadline = self.budget.deadline(LONG, EXIT / 2 + CHECKS);
            let agent = host.runs.last().unwrap();
            agent.wait_log("Ready; serving the queue.", deadline).await;
        }
        let started = Instant::now();
        for host in &mut self.hosts {
            host.agent().signal(Signal::SIGTERM);
        }
        for host in &mut self.hosts {
            let deadline = self.budget.deadline(EXIT, CHECKS);
            assert_eq!(
                host.agent().wait_exit(deadline).await,
                Some(0),
                "an agent drained on SIGTERM exits 0"
            );
        }
        eprintln!(
            "soak: every agent exited {}s after SIGTERM",
            started.elapsed().as_secs()
        );
    }
}

/// The dead-letter queue holds each malformed message (by the id its copy
/// names), and nothing else. A rejected message delivered again (its delete
/// failed, or its agent was killed before it) is copied again: SQS delivers at
/// least once, so copies may repeat; what counts is that none is missing and
/// none is a job.
async fn only_the_malformed_dead_lettered(
    aws: &Aws,
    pool: &Pool,
    malformed: &[String],
    budget: &Budget,
) {
    let deadline = budget.deadline(DEAD_LETTERED, EXIT / 2);
    let arrived = within(deadline, || async {
        aws.counts(&pool.dlq_url).await.0 >= malformed.len() as u64
    })
    .await;
    let dead = aws.drain_queue(&pool.dlq_url).await;
    let copied: Vec<String> = dead
        .iter()
        .map(|m| {
            m.message_attributes()
                .and_then(|a| a.get("deckhand_message_id"))
                .and_then(|v| v.string_value())
                .unwrap_or("(no deckhand_message_id)")
                .to_owned()
        })
        .collect();
    let missing: Vec<&String> = malformed.iter().filter(|m| !copied.contains(m)).collect();
    assert!(
        arrived.is_some() && missing.is_empty(),
        "after {deadline:?} the dead-letter queue lacks {missing:?}; it holds {copied:?}"
    );
    let strangers: Vec<&String> = copied.iter().filter(|c| !malformed.contains(c)).collect();
    assert!(
        strangers.is_empty(),
        "dead-lettered, not malformed: {strangers:?}"
    );
    if copied.len() > malformed.len() {
        eprintln!(
            "soak: {} dead-letter copies of {} malformed messages (some delivered again)",
            copied.len(),
            malformed.len()
        );
    }
}

/// Docker goes away and comes back: the real dockerd restarted (every agent
/// loses it; containers live on under live-restore), or this host's socket cut
/// until its agent has noticed.
async fn docker_goes_away(host: &mut Host, restart: Option<&str>, deadline: Duration) {
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
    eventually("the agent to notice Docker is gone", deadline, || async {
        agent.docker_lost_count() > before
    })
    .await;
    host.docker_link.set_down(false);
}
