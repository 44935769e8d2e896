//! The slave terminator: spot, rebalance and Auto Scaling notices from the IMDS
//! simulator, drained against the real Docker engine and moto.

mod common;

use std::time::Duration;

use common::agent::{AgentProcess, agent_config};
use common::aws::{Aws, Pool};
use common::imds::ImdsSim;
use common::scenario::Scenario;
use common::*;
use serde_json::json;

/// A job that runs for ten minutes on its first delivery and finishes at once on
/// any later one: what a second agent completes after a spot notice.
fn first_attempt_hangs(id: &str, stack: &Stack) -> String {
    let script = "if [ \"$DECKHAND_ATTEMPT\" = 1 ]; then sleep 600; fi; echo done on attempt $DECKHAND_ATTEMPT";
    job(id, &stack.image, &["sh", "-c", script]).to_string()
}

fn imds_config(sim: &ImdsSim, extra: &str) -> String {
    format!(
        "[imds]\nenabled = true\nendpoint = \"{}\"\npoll_ms = 200\n{extra}",
        sim.url
    )
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

/// A host for scale-in tests: `me` in the simulator, AWS through `endpoint` (a
/// proxy), and a shutdown command that only leaves a mark, so a test can tell
/// that scale-in did not need it.
struct ScaleInHost {
    sim: ImdsSim,
    config: TestConfig,
    shutdown_ran: std::path::PathBuf,
    _marks: tempfile::TempDir,
}

/// A proxy in front of moto that answers CompleteLifecycleAction as Auto Scaling
/// does, and keeps each such request to check: moto does not implement that call
/// (it answers 500).
async fn completing_proxy(
    aws: &Aws,
) -> (
    common::proxy::Proxy,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    common::proxy::Proxy::tcp_intercepting(
        &aws.upstream(),
        "Action=CompleteLifecycleAction",
        usize::MAX,
        common::proxy::http_response(
            "200 OK",
            "<CompleteLifecycleActionResponse xmlns=\"http://autoscaling.amazonaws.com/doc/2011-01-01/\"><CompleteLifecycleActionResult/><ResponseMetadata><RequestId>done</RequestId></ResponseMetadata></CompleteLifecycleActionResponse>",
        ),
    )
    .await
}

impl ScaleInHost {
    /// The simulator says the group is terminating this instance.
    async fn auto_scaling_terminates(&self) {
        self.sim
            .control("lifecycle", json!({"state": "Terminated", "in_secs": 0}))
            .await;
    }
}

fn scale_in_host(stack: &Stack, pool: &Pool, endpoint: &str, me: &str, agent: &str) -> ScaleInHost {
    let sim = ImdsSim::start(me);
    let marks = tempfile::tempdir().unwrap();
    let shutdown_ran = marks.path().join("shutdown-ran");
    let config = agent_config(
        stack,
        pool,
        endpoint,
        "",
        &imds_config(
            &sim,
            &format!(
                "[agent]\n{agent}\nshutdown_command = [\"touch\", \"{}\"]",
                shutdown_ran.display()
            ),
        ),
    );
    ScaleInHost {
        sim,
        config,
        shutdown_ran,
        _marks: marks,
    }
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
async fn auto_scaling_termination_drains_then_completes_the_termination_hook() {
    let Some(s) = Scenario::new("asg-term").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let group = aws.group(2).await;
    let me = group.instances[0].clone();
    let hook = unique("drain-hook");
    aws.put_hook(&group.name, &hook, "autoscaling:EC2_INSTANCE_TERMINATING")
        .await;
    // Not a termination hook: discovery must pass it over.
    aws.put_hook(&group.name, "warm-up", "autoscaling:EC2_INSTANCE_LAUNCHING")
        .await;
    let (proxy, completed) = completing_proxy(aws).await;
    let host = scale_in_host(stack, pool, &proxy.address, &me, "on_exit = \"terminate\"");
    let mut agent = AgentProcess::start(&host.config, "agent");
    let id = unique("last");
    aws.send_job(
        &pool.queue_url,
        &job(&id, &stack.image, &["sh", "-c", "sleep 2"]),
    )
    .await;
    agent.wait_log("Job started.", LONG).await;
    host.auto_scaling_terminates().await;
    assert_eq!(agent.wait_exit(LONG).await, Some(0));
    assert_eq!(
        aws.result(pool, &id).await.unwrap()["status"],
        "succeeded",
        "finished within stop_timeout_secs"
    );

    let completed = completed.lock().unwrap().clone();
    assert_eq!(completed.len(), 1, "one completion: {completed:?}");
    for field in [
        format!("AutoScalingGroupName={}", group.name),
        format!("LifecycleHookName={hook}"),
        format!("InstanceId={me}"),
        "LifecycleActionResult=CONTINUE".to_owned(),
    ] {
        assert!(completed[0].contains(&field), "{field} in {}", completed[0]);
    }
    assert_eq!(
        aws.describe_group(&group.name).await.0,
        2,
        "no second termination: the group's capacity is Auto Scaling's to change"
    );
    assert!(
        !host.shutdown_ran.exists(),
        "the shutdown command did not run"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_several_termination_hooks_only_the_configured_one_is_completed() {
    let Some(s) = Scenario::new("asg-hooks").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let group = aws.group(1).await;
    let me = group.instances[0].clone();
    let hooks = [unique("ours"), unique("log-shipper")];
    for hook in &hooks {
        aws.put_hook(&group.name, hook, "autoscaling:EC2_INSTANCE_TERMINATING")
            .await;
    }
    let (proxy, completed) = completing_proxy(aws).await;

    // Not told which: completing another tool's hook would cut its work short.
    let host = scale_in_host(stack, pool, &proxy.address, &me, "on_exit = \"terminate\"");
    let mut agent = AgentProcess::start(&host.config, "guessing");
    host.auto_scaling_terminates().await;
    assert_eq!(agent.wait_exit(LONG).await, Some(0));
    let failed = agent
        .logs()
        .into_iter()
        .find(|l| l["msg"] == "Scale-in failed; the instance stays up.")
        .expect("scale-in refused to guess");
    let error = failed["error"].as_str().unwrap();
    assert!(
        hooks.iter().all(|h| error.contains(h.as_str())) && error.contains("agent.lifecycle_hook"),
        "{error}"
    );
    assert!(completed.lock().unwrap().is_empty());

    let host = scale_in_host(
        stack,
        pool,
        &proxy.address,
        &me,
        &format!("on_exit = \"terminate\"\nlifecycle_hook = \"{}\"", hooks[0]),
    );
    let mut agent = AgentProcess::start(&host.config, "told");
    host.auto_scaling_terminates().await;
    assert_eq!(agent.wait_exit(LONG).await, Some(0));
    let completed = completed.lock().unwrap().clone();
    assert_eq!(completed.len(), 1, "{completed:?}");
    assert!(completed[0].contains(&format!("LifecycleHookName={}", hooks[0])));
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

#[tokio::test(flavor = "multi_thread")]
async fn idle_scale_in_leaves_the_group_and_survives_throttling() {
    let Some(s) = Scenario::new("scalein").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let group = aws.group(2).await;
    let me = group.instances[0].clone();

    // Auto Scaling answers "Throttling" four times: more than the SDK's own three
    // attempts, so deckhand's retry has to carry it.
    let (proxy, throttled) =
        common::proxy::Proxy::tcp_throttling(&aws.upstream(), "/autoscaling/aws4_request", 4).await;
    let host = scale_in_host(
        stack,
        pool,
        &proxy.address,
        &me,
        "idle_shutdown_secs = 2\non_exit = \"terminate\"",
    );
    let mut agent = AgentProcess::start(&host.config, "agent");
    assert_eq!(agent.wait_exit(LONG).await, Some(0));
    assert_eq!(throttled.lock().unwrap().len(), 4);
    assert!(
        agent.count("Auto Scaling refused for now; retrying.") >= 1,
        "{}",
        std::fs::read_to_string(agent.log_path()).unwrap()
    );
    agent
        .wait_log(
            "Auto Scaling is terminating this instance; desired capacity decremented.",
            LONG,
        )
        .await;
    let (desired, left) = aws.describe_group(&group.name).await;
    assert_eq!(desired, 1, "desired capacity decremented");
    assert!(!left.contains(&me), "{me} left the group: {left:?}");
    assert!(
        !host.shutdown_ran.exists(),
        "no fallback to the shutdown command"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_scale_in_outside_a_group_terminates_through_ec2() {
    let Some(s) = Scenario::new("scalein-ec2").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    // An instance that was in a group and was detached from it: EC2 still runs it,
    // Auto Scaling no longer knows it.
    let group = aws.group(1).await;
    let me = group.instances[0].clone();
    aws.autoscaling
        .detach_instances()
        .auto_scaling_group_name(&group.name)
        .instance_ids(&me)
        .should_decrement_desired_capacity(true)
        .send()
        .await
        .unwrap();
    assert_eq!(aws.instance_state(&me).await.as_deref(), Some("running"));

    // EC2 throttles twice, in its own error format.
    let (proxy, throttled) = common::proxy::Proxy::tcp_intercepting(
        &aws.upstream(),
        "/ec2/aws4_request",
        2,
        common::proxy::http_response(
            "503 Service Unavailable",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>throttled</RequestID></Response>",
        ),
    )
    .await;
    let host = scale_in_host(
        stack,
        pool,
        &proxy.address,
        &me,
        "idle_shutdown_secs = 2\non_exit = \"terminate\"",
    );
    let mut agent = AgentProcess::start(&host.config, "agent");
    assert_eq!(agent.wait_exit(LONG).await, Some(0));
    assert_eq!(
        agent.count("EC2 is terminating this instance."),
        1,
        "{}",
        std::fs::read_to_string(agent.log_path()).unwrap()
    );
    assert_eq!(
        throttled.lock().unwrap().len(),
        2,
        "both throttled calls retried"
    );
    assert!(throttled.lock().unwrap()[0].contains(&format!("InstanceId.1={me}")));
    assert_eq!(aws.instance_state(&me).await.as_deref(), Some("terminated"));
    assert!(
        !host.shutdown_ran.exists(),
        "no fallback to the shutdown command"
    );
}
