//! What the agent tells an operator, against moto and the real Docker engine:
//! `/metrics`, `/healthz` and `/readyz` as it serves and drains, and `deckhand check`
//! on each dependency and on the metadata block from where a job stands.

mod common;

use common::agent::{AgentProcess, agent_config};
use common::scenario::Scenario;
use common::*;
use nix::sys::signal::Signal;

#[tokio::test(flavor = "multi_thread")]
async fn check_reports_each_dependency() {
    let Some(s) = Scenario::new("check").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let check = |config: &TestConfig| {
        let output = deckhand()
            .args(["--config", path_str(&config.path), "check"])
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let good = agent_config(stack, pool, &aws.endpoint, &unique("i-check"), "");
    let (code, report) = check(&good);
    assert_eq!(code, Some(0), "{report}");
    for probe in [
        "ok    config",
        "ok    docker",
        "ok    sqs",
        "ok    s3",
        "ok    disk",
    ] {
        assert!(report.contains(probe), "{probe} in {report}");
    }
    let bad = agent_config(
        stack,
        pool,
        &aws.endpoint,
        &unique("i-check"),
        &format!("[queue]\nurl = \"{}-missing\"", pool.queue_url),
    );
    let (code, report) = check(&bad);
    assert_eq!(code, Some(69), "{report}");
    assert!(report.contains("FAIL  sqs"), "{report}");
    // The agent would take no job below disk.min_free_mb (here 1 PB).
    let full = agent_config(
        stack,
        pool,
        &aws.endpoint,
        &unique("i-check"),
        "[disk]\nmin_free_mb = 1000000000\ngc_free_mb = 1000000000",
    );
    let (code, report) = check(&full);
    assert_ne!(code, Some(0), "{report}");
    assert!(report.contains("FAIL  disk"), "{report}");

    // metrics.listen: free before the agent runs, taken by something else, and
    // the agent's own /readyz once it does.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let with_metrics = agent_config(
        stack,
        pool,
        &aws.endpoint,
        &unique("i-check"),
        &format!("[metrics]\nlisten = \"127.0.0.1:{port}\""),
    );
    let (code, report) = check(&with_metrics);
    assert_eq!(code, Some(0), "{report}");
    assert!(
        report.contains(&format!("ok    metrics  127.0.0.1:{port} is free")),
        "{report}"
    );
    let agent = AgentProcess::start(&with_metrics, "agent");
    agent.wait_log("Ready; serving the queue.", LONG).await;
    let (code, report) = check(&with_metrics);
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains("/readyz answers 200: ok"), "{report}");
}

/// GET `path` from the agent's metrics listener: status and body.
async fn scrape(address: &str, path: &str) -> (u16, String) {
    deckhand::tls::install();
    let response = reqwest::get(format!("http://{address}{path}"))
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// One job of each ending is counted (succeeded, failed, rejected), and the gauges
/// say a ready, idle agent.
async fn finished_jobs_are_counted(s: &Scenario, address: &str) {
    let Scenario { stack, aws, pool } = s;
    let (ok, failed, latest) = (unique("ok"), unique("failed"), unique("latest"));
    aws.send_job(&pool.queue_url, &job(&ok, &stack.image, &["true"]))
        .await;
    aws.send_job(
        &pool.queue_url,
        &job(&failed, &stack.image, &["sh", "-c", "exit 3"]),
    )
    .await;
    let untagged = format!("{}/ci/busybox:latest", stack.registry);
    aws.send_job(&pool.queue_url, &job(&latest, &untagged, &["true"]))
        .await;
    for id in [&ok, &failed, &latest] {
        aws.wait_result(pool, id).await;
    }
    eventually("three jobs counted", LONG, || async {
        let (_, text) = scrape(address, "/metrics").await;
        sample(&text, "deckhand_jobs_total{status=\"rejected\"}") == Some(1.0)
            && sample(&text, "deckhand_jobs_total{status=\"failed\"}") == Some(1.0)
            && sample(&text, "deckhand_jobs_total{status=\"succeeded\"}") == Some(1.0)
    })
    .await;
    let (status, text) = scrape(address, "/metrics").await;
    assert_eq!(status, 200);
    for (name, value) in [
        ("deckhand_messages_received_total", 3.0),
        ("deckhand_jobs_total{status=\"timed_out\"}", 0.0),
        (
            "deckhand_job_duration_seconds_count{status=\"succeeded\"}",
            1.0,
        ),
        ("deckhand_jobs_running", 0.0),
        ("deckhand_slots", 1.0),
        ("deckhand_ready", 1.0),
        ("deckhand_docker_up", 1.0),
        ("deckhand_draining", 0.0),
    ] {
        assert_eq!(sample(&text, name), Some(value), "{name} in\n{text}");
    }
}

/// The running job is counted, and its cgroup sampled.
async fn a_running_job_is_sampled(address: &str) {
    eventually("the running job counted", LONG, || async {
        sample(
            &scrape(address, "/metrics").await.1,
            "deckhand_jobs_running",
        ) == Some(1.0)
    })
    .await;
    // Its cgroup, sampled: by profile and slot, never by job id.
    eventually(
        "the running job's memory, by profile and slot",
        LONG,
        || async {
            let text = scrape(address, "/metrics").await.1;
            sample(
                &text,
                "deckhand_running_memory_bytes{profile=\"default\",slot=\"0\"}",
            )
            .is_some_and(|bytes| bytes > 0.0)
                && sample(
                    &text,
                    "deckhand_running_cpu_seconds{profile=\"default\",slot=\"0\"}",
                )
                .is_some()
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_and_health_say_what_the_agent_does() {
    let Some(s) = Scenario::new("metrics").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let (_config, mut agent) = s.agent("i-metrics", "[metrics]\nlisten = \"127.0.0.1:0\"\n[queue]\nvisibility_timeout_secs = 600\n[drain]\nstop_timeout_secs = 600");
    agent.wait_log("Ready; serving the queue.", LONG).await;
    let address = agent.metrics_address();
    assert_eq!(scrape(&address, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(scrape(&address, "/readyz").await, (200, "ok\n".into()));

    finished_jobs_are_counted(&s, &address).await;

    let long = unique("long");
    aws.send_job(
        &pool.queue_url,
        &job(&long, &stack.image, &["sleep", "600"]),
    )
    .await;
    agent.wait_log("Job started.", LONG).await;
    a_running_job_is_sampled(&address).await;
    // Draining, the job still running (stop_timeout_secs 600): a load balancer or
    // an operator's probe learns that this host takes no more work.
    agent.signal(Signal::SIGTERM);
    eventually("readyz to say draining", LONG, || async {
        scrape(&address, "/readyz").await == (503, "draining\n".into())
    })
    .await;
    assert_eq!(
        scrape(&address, "/healthz").await,
        (200, "ok\n".into()),
        "draining is healthy"
    );
    assert_eq!(scrape(&address, "/nowhere").await.0, 404);
    let post = deckhand::tls::reqwest_builder()
        .build()
        .unwrap()
        .post(format!("http://{address}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status().as_u16(), 405);

    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait_exit(LONG).await, Some(0));
    assert_eq!(aws.counts(&pool.queue_url).await, (1, 0), "handed back");
    assert_clean(&long);
}

/// The host answers the metadata service; a job, probed from a container on the
/// profiles' network with a job's hardening, does not reach it.
#[tokio::test(flavor = "multi_thread")]
async fn check_probes_the_metadata_block_from_where_a_job_stands() {
    let Some(s) = Scenario::new("check-imds").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let sim = common::imds::ImdsSim::start(&unique("i-check-imds"));
    let config = agent_config(
        stack,
        pool,
        &aws.endpoint,
        &unique("i-check-imds"),
        &format!("[imds]\nenabled = true\nendpoint = \"{}\"", sim.url),
    );
    let output = deckhand()
        .args(["--config", path_str(&config.path), "check"])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{report}");
    assert!(report.contains("ok    imds     i-check-imds"), "{report}");
    let port = sim.url.rsplit(':').next().unwrap().trim_end_matches('/');
    assert!(
        report.contains(&format!(
            "ok    imds-block 127.0.0.1:{port} is out of jobs' reach (network {})",
            stack.network
        )),
        "{report}"
    );
    let left = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", "name=deckhand-probe-"])
        .output()
        .unwrap();
    assert!(left.stdout.is_empty(), "the probe container is removed");
}
