//! Service containers beside a job, through `deckhand exec` against the real
//! engine: the job reaches each on 127.0.0.1 and by its name, starts only once
//! they are ready, sees their output in its log under their names, and every
//! container goes with the job.

mod common;

use common::*;
use serde_json::json;

/// busybox's httpd serving `pong` at /ping on `port`, after a line of its own
/// and one without its newline.
fn web(name: &str, port: u16) -> serde_json::Value {
    json!({
        "name": name,
        "image": Stack::or_skip().unwrap().image,
        "command": ["sh", "-c", format!("echo {name} starting; printf '{name} no newline'; mkdir -p /www && echo pong > /www/ping && exec httpd -f -p {port} -h /www")],
        "ready": {"tcp": port},
        "resources": {"memory_mb": 64}
    })
}

#[test]
fn a_job_reaches_its_services_on_localhost_and_by_name() {
    let Some(stack) = Stack::or_skip() else {
        return;
    };
    let config = TestConfig::new(&stack, "");
    let id = unique("services");
    let mut body = job(
        &id,
        &stack.image,
        &[
            "sh",
            "-c",
            "wget -q -O- http://db:8080/ping && wget -q -O- http://127.0.0.1:8081/ping && wget -q -O- http://cache:8081/ping",
        ],
    );
    body["services"] = json!([web("db", 8080), web("cache", 8081)]);
    let run = exec(&config, &body);
    assert_eq!(
        run.result["status"], "succeeded",
        "{}\n{}",
        run.result, run.stderr
    );
    let pongs = run.logs.iter().filter(|l| l["msg"] == "pong").count();
    assert_eq!(pongs, 3, "{:?}", run.logs);
    assert!(
        run.logs
            .iter()
            .any(|l| l["stream"] == "service:db" && l["msg"] == "db starting"),
        "the service's output is in the log under its name"
    );
    assert!(
        run.logs
            .iter()
            .any(|l| l["stream"] == "service:db" && l["msg"] == "db no newline"),
        "a service's last line without its newline is kept: {:?}",
        run.logs
    );
    let services = &run.result["usage"]["services"];
    assert!(
        services["db"]["memory_limit_bytes"] == 64 * 1024 * 1024,
        "{services}"
    );
    assert_clean(&id);
}

#[test]
fn a_service_that_exits_before_it_is_ready_fails_the_job_unstarted() {
    let Some(stack) = Stack::or_skip() else {
        return;
    };
    let config = TestConfig::new(&stack, "");
    let id = unique("services-exit");
    let mut body = job(&id, &stack.image, &["sh", "-c", "echo the job ran"]);
    body["services"] = json!([{
        "name": "db",
        "image": stack.image,
        "command": ["sh", "-c", "echo cannot open the data dir; exit 3"],
        "ready": {"tcp": 5432}
    }]);
    let run = exec(&config, &body);
    assert_eq!(run.result["status"], "failed", "{}", run.result);
    assert_eq!(
        run.result["reason"],
        "service db: exited with code 3 before it was ready"
    );
    assert!(
        run.logs
            .iter()
            .any(|l| l["msg"] == "cannot open the data dir"),
        "its last words are in the log"
    );
    assert!(!run.logs.iter().any(|l| l["msg"] == "the job ran"));
    assert_clean(&id);
}

#[test]
fn a_service_not_ready_in_time_fails_the_job() {
    let Some(stack) = Stack::or_skip() else {
        return;
    };
    let config = TestConfig::new(&stack, "");
    let id = unique("services-slow");
    let mut body = job(&id, &stack.image, &["true"]);
    body["services"] = json!([{
        "name": "slow",
        "image": stack.image,
        "command": ["sleep", "60"],
        "ready": {"command": ["test", "-e", "/never"]},
        "ready_timeout_secs": 2
    }]);
    let run = exec(&config, &body);
    assert_eq!(run.result["status"], "failed", "{}", run.result);
    assert_eq!(
        run.result["reason"],
        "service slow: not ready within ready_timeout_secs = 2"
    );
    assert_clean(&id);
}

#[test]
fn bad_services_are_rejected_naming_the_field() {
    let Some(stack) = Stack::or_skip() else {
        return;
    };
    let config = TestConfig::new(
        &stack,
        "[profiles.default]\nmax_services = 2\nservices_memory_mb = 128",
    );
    let cases = [
        (
            json!([web("db", 1), web("b", 2), web("c", 3)]),
            "services: 3 services; profile \"default\" allows at most 2",
        ),
        (
            json!([web("db", 1), web("db", 2)]),
            "services[1].name: \"db\" is named twice",
        ),
        (
            json!([web("Db", 1)]),
            "services[0].name: must match ^[a-z][a-z0-9-]{0,30}$",
        ),
        (
            json!([{"name": "db", "image": stack.image, "ready": {"tcp": 70000}}]),
            "services[0].ready.tcp: 70000 is not a port (1 to 65535)",
        ),
        (
            json!([{"name": "db", "image": stack.image, "resources": {"memory_mb": 512}}]),
            "services[0].resources.memory_mb: 512 is above profile \"default\"'s services_memory_mb of 128",
        ),
        (
            json!([{"name": "db", "image": format!("{}/ci/busybox:latest", stack.registry)}]),
            "services[0].image: tag \"latest\" is not allowed",
        ),
        (
            json!([{"name": "db", "image": stack.image, "ready": {"tcp": 1, "command": ["true"]}}]),
            "services[0].ready: must name exactly one of tcp or command",
        ),
        (
            json!([{"name": "db", "image": stack.image, "bogus": 1}]),
            "services[0].bogus: unknown field `bogus`",
        ),
        (json!([["db"]]), "services[0]: must be an object"),
    ];
    for (services, reason) in cases {
        let id = unique("services-bad");
        let mut body = job(&id, &stack.image, &["true"]);
        body["services"] = services;
        let run = exec(&config, &body);
        assert_eq!(run.result["status"], "rejected", "{}", run.result);
        let got = run.result["reason"].as_str().unwrap();
        assert!(got.starts_with(reason), "{got:?} should start {reason:?}");
    }
}

/// An agent killed with SIGKILL while a job and its service run: the next start
/// removes the job's container, its service and the sandbox by their labels, and
/// the job runs again, once.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_leaves_no_service_behind() {
    use common::agent::{AgentProcess, agent_config};
    use common::scenario::Scenario;
    use nix::sys::signal::Signal;

    let Some(s) = Scenario::new("services-crash").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let config = agent_config(
        stack,
        pool,
        &aws.endpoint,
        &unique("i-services-crash"),
        "[queue]\nvisibility_timeout_secs = 600",
    );
    let id = unique("services-crash");
    let script =
        "if [ \"$DECKHAND_ATTEMPT\" = 1 ]; then sleep 600; fi; wget -q -O- http://db:8080/ping";
    let mut body = job(&id, &stack.image, &["sh", "-c", script]);
    body["services"] = json!([web("db", 8080)]);
    aws.send_job(&pool.queue_url, &body).await;

    let mut first = AgentProcess::start(&config, "first");
    first.wait_log("Job started.", LONG).await;
    first.signal(Signal::SIGKILL);
    first.wait_exit(LONG).await;
    assert_eq!(
        leftovers(&id).len(),
        4,
        "the job's container, its workspace, the service and the sandbox: {:?}",
        leftovers(&id)
    );
    let second = AgentProcess::start(&config, "second");
    let r = aws.wait_result(pool, &id).await;
    assert_eq!(
        (r["status"].as_str(), r["attempt"].as_u64()),
        (Some("succeeded"), Some(2)),
        "{r}"
    );
    let log = aws.object(&pool.bucket, &keys::log(&id)).await.unwrap();
    assert!(String::from_utf8(log).unwrap().contains("pong"));
    aws.wait_empty(pool).await;
    assert_eq!(second.count("Job started."), 1);
    assert_clean(&id);
}
