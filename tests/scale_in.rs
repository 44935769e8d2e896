//! Scale-in, against the IMDS simulator, moto and the real Docker engine: an Auto
//! Scaling termination drained and then its lifecycle hook completed (only the
//! configured one among several), and an idle host leaving its group, or outside a
//! group terminating itself through EC2, through throttling.

mod common;

use common::agent::{AgentProcess, agent_config};
use common::aws::{Aws, Pool};
use common::imds::ImdsSim;
use common::notices::imds_config;
use common::scenario::Scenario;
use common::*;
use serde_json::json;

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
