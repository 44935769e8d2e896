//! `deckhand cancel` against moto's S3 and SQS and the real Docker engine: a job
//! cancelled before it starts never starts, a running one is stopped within
//! `results.cancel_poll_secs` (SIGTERM, the grace, SIGKILL), and a cancel racing
//! the job's own end leaves one result.

mod common;

use std::process::Stdio;

use common::scenario::Scenario;
use common::*;

/// `deckhand cancel ID --reason REASON` with `config`: its exit code and stdout.
fn cancel(config: &TestConfig, id: &str, reason: &str) -> (Option<i32>, String) {
    let output = deckhand_with(config, &["cancel", id, "--reason", reason]);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_cancelled_before_it_starts_never_starts() {
    let Some(s) = Scenario::new("cancel-early").await else {
        return;
    };
    let config = s.config("i-cancel-early", "");
    let id = unique("early");
    assert_eq!(
        cancel(&config, &id, "wrong branch"),
        (Some(0), "cancel requested".to_owned())
    );
    let (code, again) = cancel(&config, &id, "again");
    assert_eq!(code, Some(0), "a second request is answered, not an error");
    assert!(
        again.starts_with("cancel requested (already, at "),
        "{again}"
    );
    s.send_job(&job(&id, &s.stack.image, &["sh", "-c", "echo ran"]))
        .await;
    let agent = common::agent::AgentProcess::start(&config, "i-cancel-early");

    let result = s.wait_result(&id).await;
    assert_eq!(result["status"], "cancelled", "{result}");
    assert_eq!(
        result["reason"], "cancelled: wrong branch",
        "the first reason stands"
    );
    assert!(result["exit_code"].is_null(), "{result}");
    assert!(result["log"].is_null(), "it never ran, so it has no log");
    s.wait_empty().await;
    assert_eq!(agent.count("Job started."), 0);
    assert_eq!(agent.count("ran"), 0);
    assert_clean(&id);
    assert_eq!(
        cancel(&config, &id, "late"),
        (Some(0), "already finished: cancelled".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_job_that_ignores_sigterm_is_stopped_and_recorded_cancelled() {
    let Some(s) = Scenario::new("cancel-running").await else {
        return;
    };
    let (config, agent) = s.agent("i-cancel-running", "[queue]\nvisibility_timeout_secs = 600");
    let id = unique("running");
    let stubborn = job(
        &id,
        &s.stack.image,
        &[
            "sh",
            "-c",
            "trap '' TERM; echo started; while true; do sleep 1; done",
        ],
    );
    // The producer waits for the result, as CI would.
    let submit = deckhand()
        .args(["--config", path_str(&config.path), "submit", "--wait"])
        .arg(config.job_file(&stubborn))
        .args(["--queue", &s.pool.queue_url, "--timeout", "300"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    agent.wait_log("started", LONG).await;

    assert_eq!(
        cancel(&config, &id, "superseded by a newer commit"),
        (Some(0), "cancel requested".to_owned())
    );
    let result = s.wait_result(&id).await;
    assert_eq!(result["status"], "cancelled", "{result}");
    assert_eq!(result["reason"], "cancelled: superseded by a newer commit");
    assert_eq!(
        result["exit_code"], 137,
        "SIGTERM ignored, so SIGKILL after the grace"
    );
    assert_eq!(
        s.log(&id).await.as_deref(),
        Some("started\n"),
        "its log is kept"
    );
    s.wait_empty().await;
    assert_clean(&id);

    let submitted = Exec::from_output(submit.wait_with_output().unwrap());
    assert_eq!(
        submitted.code,
        Some(143),
        "submit --wait: {}",
        submitted.stderr
    );
    assert_eq!(submitted.result["status"], "cancelled");
    assert_eq!(agent.count("Job cancelled; stopping it."), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_racing_the_jobs_end_leaves_one_result() {
    let Some(s) = Scenario::new("cancel-race").await else {
        return;
    };
    let (config, agent) = s.agent(
        "i-cancel-race",
        "[agent]\nslots = 3\n[results]\ncancel_poll_secs = 1",
    );
    // Jobs that end on their own about when the cancel lands: some are stopped,
    // some finish first; each has one result, and the message goes either way.
    let mut ids = Vec::new();
    for (n, pause) in ["0.5", "1", "1.5"].iter().enumerate() {
        let id = unique(&format!("race{n}"));
        let script = format!("echo started; sleep {pause}; echo done");
        s.send_job(&job(&id, &s.stack.image, &["sh", "-c", &script]))
            .await;
        ids.push(id);
    }
    eventually("the jobs to start", LONG, || async {
        agent.count("started") == ids.len()
    })
    .await;
    for id in &ids {
        let (code, said) = cancel(&config, id, "race");
        assert_eq!(code, Some(0), "{said}");
        assert!(
            said == "cancel requested" || said == "already finished: succeeded",
            "{said}"
        );
    }
    for id in &ids {
        let result = s.wait_result(id).await;
        let status = result["status"].as_str().unwrap().to_owned();
        assert!(
            status == "succeeded" || status == "cancelled",
            "{id}: {result}"
        );
        // Whatever landed first stands, and the command says so.
        assert_eq!(
            cancel(&config, id, "again"),
            (Some(0), format!("already finished: {status}"))
        );
        assert_clean(id);
    }
    s.wait_empty().await;
}
