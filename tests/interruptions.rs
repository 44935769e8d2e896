//! Interruptions are not failures: a job handed back goes as a fresh copy that
//! carries its history, so it costs the queue's redrive nothing; each cause has its
//! budget; an exit code may ask for a retry; interruptions escalate to another
//! queue (host errors and their budget: `queue.rs`). Against moto, the real Docker engine and the IMDS simulator.

mod common;

use common::agent::{AgentProcess, agent_config};
use common::imds::ImdsSim;
use common::notices::imds_config;
use common::scenario::Scenario;
use common::*;
use serde_json::{Value, json};

/// Hands its job back at a spot notice at once, with a one-second grace.
const RELEASE: &str =
    "[queue]\nvisibility_timeout_secs = 600\n[drain]\non_spot = \"release\"\nstop_grace_secs = 1";

/// A job that sleeps on its attempts before `n` and finishes on the `n`th.
fn hangs_until_attempt(id: &str, stack: &Stack, n: u32) -> Value {
    let script = format!(
        "if [ \"$DECKHAND_ATTEMPT\" -lt {n} ]; then sleep 600; fi; echo done on attempt $DECKHAND_ATTEMPT"
    );
    job(id, &stack.image, &["sh", "-c", &script])
}

/// Starts an agent on a spot instance of its own, waits for it to start the
/// job, sends the spot notice, and waits for it to leave.
async fn interrupt_once(s: &Scenario, extra: &str) {
    let sim = ImdsSim::start(&unique("i-spot"));
    let config = agent_config(
        &s.stack,
        &s.pool,
        &s.aws.endpoint,
        "",
        &imds_config(&sim, &format!("{RELEASE}\n{extra}")),
    );
    let mut agent = AgentProcess::start(&config, "spot");
    agent.wait_log("Job started.", LONG).await;
    sim.spot("terminate", 120).await;
    assert_eq!(agent.wait_exit(LONG).await, Some(0));
}

fn statuses(result: &Value) -> Vec<&str> {
    result["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn interrupted_more_often_than_max_receive_count_it_still_succeeds() {
    // The queue dead-letters a message on its second receive.
    let Some(s) = Scenario::with_receives("reclaimed", 1).await else {
        return;
    };
    let id = unique("reclaimed");
    s.send_job(&hangs_until_attempt(&id, &s.stack, 4)).await;
    for _ in 0..3 {
        interrupt_once(&s, "").await;
    }
    let (_config, _rescuer) = s.agent("i-rescuer", "");
    let done = s.wait_result(&id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempt"], 4);
    assert_eq!(done["receive_count"], 1, "each copy was received once");
    assert_eq!(
        statuses(&done),
        ["interrupted", "interrupted", "interrupted", "succeeded"]
    );
    let attempts = done["attempts"].as_array().unwrap();
    for (n, attempt) in attempts.iter().enumerate() {
        assert_eq!(attempt["attempt"], n as u64 + 1, "{attempt}");
        assert!(attempt["started_at"].is_string());
    }
    for interrupted in &attempts[..3] {
        assert!(
            interrupted["instance_id"]
                .as_str()
                .unwrap()
                .starts_with("i-spot-")
        );
        assert_eq!(interrupted["lifecycle"], "spot");
        assert_eq!(interrupted["availability_zone"], "us-east-1a");
        assert!(
            interrupted["reason"]
                .as_str()
                .unwrap()
                .starts_with("interrupted: spot interruption notice"),
            "{interrupted}"
        );
    }
    // The rescuer is off EC2: no zone, no lifecycle, and its work was not lost.
    assert!(attempts[3]["lifecycle"].is_null());
    assert_eq!(attempts[3]["seconds_lost"], 0);
    // Each interrupted attempt says where its copy went.
    let first = s.attempt(&id, 1).await.unwrap();
    assert_eq!(first["requeued"]["queue"], s.pool.queue_url.as_str());
    assert_eq!(first["requeued"]["cause"], "interruption");
    assert_eq!(first["requeued"]["escalated"], false);
    s.wait_empty().await;
    assert!(s.aws.drain_queue(&s.pool.dlq_url).await.is_empty());
    assert_clean(&id);
}

#[tokio::test(flavor = "multi_thread")]
async fn past_max_interruptions_the_job_ends_once_naming_the_budget() {
    let Some(s) = Scenario::new("budget").await else {
        return;
    };
    let profile = "[profiles.default]\nmax_interruptions = 1";
    let id = unique("budget");
    s.send_job(&hangs_until_attempt(&id, &s.stack, 99)).await;
    interrupt_once(&s, profile).await;
    interrupt_once(&s, profile).await;
    let (_config, last) = s.agent("i-last", profile);
    let done = s.wait_result(&id).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["budget"], "interruptions");
    assert!(done["exit_code"].is_null());
    assert_eq!(
        done["reason"],
        "interrupted 2 times, past the profile's max_interruptions (1); not run again"
    );
    assert_eq!(done["attempt"], 3);
    assert_eq!(statuses(&done), ["interrupted", "interrupted"]);
    s.wait_empty().await;
    assert_eq!(
        last.count("Job started."),
        0,
        "the last delivery never ran it"
    );
    assert!(s.aws.drain_queue(&s.pool.dlq_url).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn escalation_sends_the_job_to_the_other_queue_and_not_back() {
    let Some(s) = Scenario::new("escalate").await else {
        return;
    };
    let on_demand = s.aws.queue(&unique("on-demand")).await;
    let results = s.aws.queue(&unique("results")).await;
    let sim = ImdsSim::start(&unique("i-spot"));
    let extra = format!(
        "[results]\nqueue_url = \"{results}\"\n\
         [queue]\nvisibility_timeout_secs = 600\nescalation_url = \"{on_demand}\"\n\
         [drain]\non_spot = \"release\"\nstop_grace_secs = 1\n\
         [profiles.default]\nescalate_after_interruptions = 1"
    );
    let config = agent_config(
        &s.stack,
        &s.pool,
        &s.aws.endpoint,
        "",
        &imds_config(&sim, &extra),
    );
    let id = unique("escalate");
    s.send_job(&hangs_until_attempt(&id, &s.stack, 99)).await;
    let mut agent = AgentProcess::start(&config, "spot");
    agent.wait_log("Job started.", LONG).await;
    sim.spot("terminate", 120).await;
    assert_eq!(agent.wait_exit(LONG).await, Some(0));

    let interrupted = eventually("the interrupted attempt", LONG, || s.attempt(&id, 1)).await;
    assert_eq!(interrupted["requeued"]["queue"], on_demand.as_str());
    assert_eq!(interrupted["requeued"]["escalated"], true);
    assert_eq!(s.aws.counts(&s.pool.queue_url).await, (0, 0), "not back");
    let copies = s.aws.drain_queue(&on_demand).await;
    assert_eq!(copies.len(), 1);
    let copy = &copies[0];
    assert_eq!(
        serde_json::from_str::<Value>(copy.body().unwrap()).unwrap()["id"],
        id.as_str()
    );
    let history: Value = serde_json::from_str(
        copy.message_attributes().unwrap()["deckhand_attempts"]
            .string_value()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(history["interruptions"], 1);
    assert_eq!(history["before"], 1);
    assert_eq!(history["attempts"][0]["status"], "interrupted");
    // The interruption was announced as its copy went.
    let announced = s.aws.drain_queue(&results).await;
    assert_eq!(announced.len(), 1);
    let announced: Value = serde_json::from_str(announced[0].body().unwrap()).unwrap();
    assert_eq!(announced["status"], "interrupted");
    assert_eq!(announced["id"], id.as_str());
    assert_eq!(announced["requeued"]["escalated"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_codes_the_job_names_are_retried_each_attempt_recorded() {
    let Some(s) = Scenario::new("retry").await else {
        return;
    };
    let (_config, _agent) = s.agent("i-retry", "");
    // Exits 75 on its first two attempts, then succeeds.
    let flaky = unique("flaky");
    let mut body = job(
        &flaky,
        &s.stack.image,
        &["sh", "-c", "[ \"$DECKHAND_ATTEMPT\" -ge 3 ] || exit 75"],
    );
    body["retry"] = json!({"exit_codes": [75], "max": 2});
    s.send_job(&body).await;
    // Always exits 75; one retry only.
    let hopeless = unique("hopeless");
    let mut body = job(&hopeless, &s.stack.image, &["sh", "-c", "exit 75"]);
    body["retry"] = json!({"exit_codes": [75], "max": 1});
    s.send_job(&body).await;
    // Exits 3, which it did not list: no retry.
    let other = unique("other");
    let mut body = job(&other, &s.stack.image, &["sh", "-c", "exit 3"]);
    body["retry"] = json!({"exit_codes": [75], "max": 2});
    s.send_job(&body).await;

    let done = s.wait_result(&flaky).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempt"], 3);
    assert_eq!(statuses(&done), ["failed", "failed", "succeeded"]);
    for n in 1..=2 {
        let retried = s.attempt(&flaky, n).await.unwrap();
        assert_eq!(retried["status"], "failed");
        assert_eq!(retried["exit_code"], 75);
        assert_eq!(retried["requeued"]["cause"], "retry");
    }
    let given_up = s.wait_result(&hopeless).await;
    assert_eq!(given_up["status"], "failed");
    assert_eq!(given_up["attempt"], 2);
    assert!(given_up.get("requeued").is_none(), "{given_up}");
    let not_listed = s.wait_result(&other).await;
    assert_eq!(not_listed["attempt"], 1);
    assert_eq!(not_listed["exit_code"], 3);
    s.wait_empty().await;
    assert_all_clean(&[flaky, hopeless, other]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_history_attribute_rejects_the_job_naming_the_rule() {
    let Some(s) = Scenario::new("hostile-history").await else {
        return;
    };
    let (_config, _agent) = s.agent("i-hostile", "");
    let entry = |instance_id: &str| {
        json!({"before": 1, "interruptions": 1, "host_errors": 0, "retries": 0, "attempts": [
            {"attempt": 1, "instance_id": instance_id, "availability_zone": null, "lifecycle": null,
             "status": "interrupted", "reason": null, "started_at": "2026-12-07T19:00:00Z", "seconds_lost": 1}
        ]})
        .to_string()
    };
    let cases = [
        (
            entry("i-\u{1b}[31mred"),
            "attempts[0].instance_id: must be 1 to 64 bytes of printable text",
        ),
        ("x".repeat(70_000), "70000 bytes; at most 65536"),
        ("[]".to_owned(), "not deckhand's history"),
    ];
    for (attribute, rule) in cases {
        let id = unique("hostile");
        let body = job(&id, &s.stack.image, &["true"]).to_string();
        s.aws
            .send_with_attribute(&s.pool.queue_url, &body, "deckhand_attempts", &attribute)
            .await;
        let rejected = s.wait_result(&id).await;
        assert_eq!(rejected["status"], "rejected");
        let reason = rejected["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("message attribute deckhand_attempts: "),
            "{reason}"
        );
        assert!(reason.contains(rule), "{reason}");
        assert!(!reason.contains('\u{1b}'), "{reason}");
    }
    s.wait_empty().await;
}

/// A producer whose message already carries SQS's 10 attributes leaves no room
/// for the history: the interrupted job goes back by visibility instead (which
/// costs a receive) and is still never lost; its attributes reach the next
/// delivery as they came.
#[tokio::test(flavor = "multi_thread")]
async fn a_message_with_ten_attributes_of_its_own_is_handed_back_instead() {
    let Some(s) = Scenario::new("ten-attributes").await else {
        return;
    };
    let id = unique("crowded");
    let body = hangs_until_attempt(&id, &s.stack, 2).to_string();
    let mut send = s
        .aws
        .sqs
        .send_message()
        .queue_url(&s.pool.queue_url)
        .message_body(body);
    for n in 0..10 {
        let value = aws_sdk_sqs::types::MessageAttributeValue::builder()
            .data_type("String")
            .string_value(format!("value {n}"))
            .build()
            .unwrap();
        send = send.message_attributes(format!("producer_{n}"), value);
    }
    send.send().await.unwrap();
    interrupt_once(&s, "").await;
    let (_config, rescuer) = s.agent("i-rescuer", "");
    let done = s.wait_result(&id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    // The same copy, received twice: SQS counted the hand-back.
    assert_eq!(done["receive_count"], 2);
    assert_eq!(done["attempt"], 2);
    assert_eq!(rescuer.count("Job started."), 1);
    s.wait_empty().await;
    assert!(s.aws.drain_queue(&s.pool.dlq_url).await.is_empty());
    assert_clean(&id);
}
