//! ECR's scan findings as admission, on the stack: each test pushes the stack's
//! image to a repository of its own in the local registry, which the agent is
//! told serves ECR (`admission.ecr.registries`), and holds the same repository
//! and digest in moto, scanned or not (tests/common/ecr.rs). moto answers a
//! scanned image with one HIGH finding unless the test sets its answer.
//! Findings at or above the bar reject the job once, below it runs (and the
//! next job is decided from the cache); no scan rejects it when a scan is
//! required; a service's image is held to the same rule; ECR throttled is
//! `error` (retried) failing closed and a warning failing open; hostile answers
//! (thousands of findings, a severity nobody ranks, no digest) are bounded
//! with a clear reason; with a webhook too, ECR is asked first.

mod common;

use common::admission::{assert_never_started, error_attempt, scrape};
use common::agent::{AgentProcess, agent_config};
use common::ecr::EcrImage;
use common::proxy::Proxy;
use common::scenario::Scenario;
use common::webhook::{Reply, Webhook};
use common::*;
use serde_json::{Value, json};

/// What the agent (a debug build) may hold at its peak while the answers come.
const AGENT_PEAK_RSS_MB: u64 = 128;

/// `[admission.ecr]` treating the stack's registry as ECR, with `extra` keys.
fn ecr(s: &Scenario, extra: &str) -> String {
    format!(
        "[admission.ecr]\nregistries = [\"{}\"]\n{extra}\n",
        s.stack.registry
    )
}

/// Sends a job of `image` under a unique id made from `name`, with `profile`.
async fn send(s: &Scenario, name: &str, image: &str, profile: Option<&str>) -> String {
    let id = unique(name);
    let mut body = job(&id, image, &["echo", "ran"]);
    if let Some(profile) = profile {
        body["profile"] = json!(profile);
    }
    s.send_job(&body).await;
    id
}

/// moto's answer for an image with nothing at or above HIGH.
async fn clean(image: &EcrImage) {
    let findings = EcrImage::findings(&[("MEDIUM", 2), ("LOW", 1)]);
    image
        .answer("COMPLETE", findings, Some(&image.digest))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn findings_at_or_above_the_bar_reject_and_below_it_run_then_from_the_cache() {
    let Some(s) = Scenario::new("ecr-bar").await else {
        return;
    };
    // moto's own answer: one HIGH finding, CVE-9999-9999.
    let high = EcrImage::new(&s.stack, &s.aws, "ecr-high", true).await;
    let low = EcrImage::new(&s.stack, &s.aws, "ecr-low", true).await;
    clean(&low).await;
    let extra = format!(
        "{}[metrics]\nlisten = \"127.0.0.1:0\"\n[profiles.lax]\nadmission_ecr_max_severity = \"CRITICAL\"\n",
        ecr(&s, "")
    );
    let (_config, agent) = s.agent("i-ecr-bar", &extra);
    let denied = send(&s, "ecr-denied", &high.reference, None).await;
    let result = s.wait_result(&denied).await;
    assert_eq!(result["status"], "rejected", "{result}");
    assert_eq!(
        result["reason"],
        "admission: ecr: 1 finding at or above HIGH (HIGH 1): CVE-9999-9999"
    );
    let admitted = &result["admission"];
    assert_eq!(admitted["decision"], "denied", "{result}");
    assert_eq!(admitted["by"], "ecr", "{result}");
    assert!(admitted["ms"].is_u64(), "{result}");
    assert!(
        s.attempt(&denied, 1).await.is_none(),
        "never an error retried"
    );
    let allowed = send(&s, "ecr-allowed", &low.reference, None).await;
    let result = s.wait_result(&allowed).await;
    assert_eq!(result["status"], "succeeded", "{result}");
    assert_eq!(result["admission"]["by"], "ecr", "{result}");
    assert_eq!(
        result["admission"]["reason"], "scan COMPLETE: nothing at or above HIGH (MEDIUM 2, LOW 1)",
        "{result}"
    );
    let again = send(&s, "ecr-again", &low.reference, None).await;
    let result = s.wait_result(&again).await;
    assert_eq!(result["admission"]["by"], "ecr_cache", "{result}");
    // A profile whose bar is CRITICAL runs what HIGH's refused.
    let lax = send(&s, "ecr-lax", &high.reference, Some("lax")).await;
    let result = s.wait_result(&lax).await;
    assert_eq!(result["status"], "succeeded", "{result}");
    assert_eq!(result["admission"]["decision"], "allowed", "{result}");
    s.wait_empty().await;
    assert_never_started(&agent, &denied);
    let metrics = scrape(&agent).await;
    for series in [
        r#"deckhand_admission_decisions_total{by="ecr",decision="denied"} 1"#,
        r#"deckhand_admission_decisions_total{by="ecr",decision="allowed"} 2"#,
        r#"deckhand_admission_decisions_total{by="ecr_cache",decision="allowed"} 1"#,
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_never_scanned_is_rejected_when_a_scan_is_required() {
    let Some(s) = Scenario::new("ecr-unscanned").await else {
        return;
    };
    let unscanned = EcrImage::new(&s.stack, &s.aws, "ecr-unscanned", false).await;
    let extra = format!(
        "{}[profiles.trusting]\nadmission_ecr_require_scan = false\n",
        ecr(&s, "require_scan = true")
    );
    let (_config, agent) = s.agent("i-ecr-unscanned", &extra);
    let denied = send(&s, "ecr-noscan", &unscanned.reference, None).await;
    let result = s.wait_result(&denied).await;
    assert_eq!(result["status"], "rejected", "{result}");
    let reason = result["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("admission: ecr: no scan of the image (ScanNotFoundException: ")
            && reason.ends_with(") and admission.ecr.require_scan is on"),
        "{reason}"
    );
    let trusting = send(&s, "ecr-trusting", &unscanned.reference, Some("trusting")).await;
    let result = s.wait_result(&trusting).await;
    assert_eq!(result["status"], "succeeded", "{result}");
    assert_eq!(
        result["admission"]["reason"],
        "no scan of the image (ScanNotFoundException); none required",
        "{result}"
    );
    s.wait_empty().await;
    assert_never_started(&agent, &denied);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_image_with_findings_rejects_the_job_before_any_container() {
    let Some(s) = Scenario::new("ecr-service").await else {
        return;
    };
    let high = EcrImage::new(&s.stack, &s.aws, "ecr-svc-high", true).await;
    let low = EcrImage::new(&s.stack, &s.aws, "ecr-svc-low", true).await;
    clean(&low).await;
    let (_config, agent) = s.agent("i-ecr-service", &ecr(&s, ""));
    let id = unique("ecr-service");
    let mut body = job(&id, &low.reference, &["echo", "must not run"]);
    body["services"] = json!([{"name": "db", "image": high.reference, "command": ["sleep", "60"]}]);
    s.send_job(&body).await;
    let result = s.wait_result(&id).await;
    assert_eq!(result["status"], "rejected", "{result}");
    assert_eq!(
        result["reason"],
        "admission: ecr: service db: 1 finding at or above HIGH (HIGH 1): CVE-9999-9999"
    );
    assert_eq!(result["admission"]["decision"], "allowed", "{result}");
    let db = &result["admission"]["services"]["db"];
    assert_eq!(
        (&db["decision"], &db["by"]),
        (&json!("denied"), &json!("ecr")),
        "{result}"
    );
    s.wait_empty().await;
    assert_never_started(&agent, &id);
}

/// ECR's JSON error for a throttled call, as the proxy answers it.
fn throttled() -> String {
    let body = r#"{"__type": "ThrottlingException", "message": "Rate exceeded"}"#;
    format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.1\r\nx-amzn-ErrorType: ThrottlingException\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// An agent whose AWS calls go through a proxy that throttles the first `n`
/// `DescribeImageScanFindings`; SQS and S3 pass.
async fn behind_a_throttle(
    s: &Scenario,
    n: usize,
    extra: &str,
) -> (Proxy, AgentProcess, TestConfig) {
    // ECR's operation header; the name alone is in the result, whose PUT to S3
    // must pass.
    let marker = "AmazonEC2ContainerRegistry_V20150921.DescribeImageScanFindings";
    let (proxy, _) = Proxy::tcp_intercepting(&s.aws.upstream(), marker, n, throttled()).await;
    let config = agent_config(
        &s.stack,
        &s.pool,
        &proxy.address,
        &unique("i-ecr-throttle"),
        extra,
    );
    let agent = AgentProcess::start(&config, "agent");
    (proxy, agent, config)
}

#[tokio::test(flavor = "multi_thread")]
async fn ecr_throttled_fails_closed_as_an_error_that_comes_back() {
    let Some(s) = Scenario::new("ecr-closed").await else {
        return;
    };
    let low = EcrImage::new(&s.stack, &s.aws, "ecr-closed", true).await;
    clean(&low).await;
    // The SDK's two attempts of the first check; the queue's retry gets through.
    let (_proxy, agent, _config) = behind_a_throttle(&s, 2, &ecr(&s, "")).await;
    let id = send(&s, "ecr-closed", &low.reference, None).await;
    let attempt = error_attempt(&s, &id).await;
    assert_eq!(attempt["status"], "error", "{attempt}");
    let reason = attempt["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(
            "admission: ECR failed (admission.fail = \"closed\"): DescribeImageScanFindings "
        ) && reason.contains("ThrottlingException"),
        "{reason}"
    );
    assert_eq!(attempt["admission"]["decision"], "unchecked", "{attempt}");
    assert_eq!(attempt["admission"]["by"], "ecr", "{attempt}");
    let result = s.wait_result(&id).await;
    assert_eq!(result["status"], "succeeded", "{result}");
    assert!(result["attempt"].as_u64().unwrap() >= 2, "{result}");
    s.wait_empty().await;
    drop(agent);
}

#[tokio::test(flavor = "multi_thread")]
async fn ecr_throttled_fails_open_with_a_warning_and_the_job_runs() {
    let Some(s) = Scenario::new("ecr-open").await else {
        return;
    };
    let high = EcrImage::new(&s.stack, &s.aws, "ecr-open", true).await;
    let extra = format!("[admission]\nfail = \"open\"\n{}", ecr(&s, ""));
    let (_proxy, agent, _config) = behind_a_throttle(&s, usize::MAX, &extra).await;
    let id = send(&s, "ecr-open", &high.reference, None).await;
    let result = s.wait_result(&id).await;
    assert_eq!(result["status"], "succeeded", "{result}");
    let admitted = &result["admission"];
    assert_eq!(admitted["decision"], "unchecked", "{result}");
    assert_eq!(admitted["by"], "ecr", "{result}");
    let warned = agent.logs().into_iter().any(|l| {
        l["msg"] == "ECR's scan findings could not be read; running the job unchecked."
            && l["level"] == "warn"
            && l["job_id"] == id.as_str()
    });
    assert!(warned, "the warning, in the job's span");
    s.wait_empty().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_answers_are_each_bounded_with_a_clear_reason() {
    let Some(s) = Scenario::new("ecr-hostile").await else {
        return;
    };
    let many = EcrImage::new(&s.stack, &s.aws, "ecr-many", true).await;
    let mut findings = EcrImage::findings(&[("LOW", 5000), ("CRITICAL", 3000)]);
    findings["findings"][5000]["name"] = json!("CVE-\u{1b}[31mred");
    many.answer("COMPLETE", findings, Some(&many.digest)).await;
    let odd = EcrImage::new(&s.stack, &s.aws, "ecr-odd", true).await;
    let findings = EcrImage::findings(&[("APOCALYPTIC\u{7}", 2)]);
    odd.answer("COMPLETE", findings, Some(&odd.digest)).await;
    let nameless = EcrImage::new(&s.stack, &s.aws, "ecr-nameless", true).await;
    nameless.answer("COMPLETE", json!({}), None).await;
    let extra = format!(
        "{}[agent]\nslots = 2\n",
        ecr(&s, "max_severity = \"CRITICAL\"")
    );
    let (config, agent) = s.agent("i-ecr-hostile", &extra);
    let many_id = send(&s, "ecr-many", &many.reference, None).await;
    let odd_id = send(&s, "ecr-odd", &odd.reference, None).await;
    let nameless_id = send(&s, "ecr-nameless", &nameless.reference, None).await;
    let result = s.wait_result(&many_id).await;
    assert_eq!(result["status"], "rejected", "{result}");
    assert_eq!(
        result["reason"],
        "admission: ecr: 3000 findings at or above CRITICAL (CRITICAL 3000, LOW 5000): CVE-\\u{1b}[31mred, CVE-CRITICAL-1, CVE-CRITICAL-2, CVE-CRITICAL-3, CVE-CRITICAL-4, …"
    );
    let result = s.wait_result(&odd_id).await;
    assert_eq!(result["status"], "rejected", "{result}");
    assert_eq!(
        result["reason"],
        "admission: ecr: 2 findings of severity \"APOCALYPTIC\\u{7}\", which ranks nowhere between INFORMATIONAL and CRITICAL"
    );
    let attempt = error_attempt(&s, &nameless_id).await;
    assert_eq!(attempt["status"], "error", "{attempt}");
    let reason = attempt["reason"].as_str().unwrap();
    assert!(
        reason.ends_with(": the answer names no image digest"),
        "{reason}"
    );
    for id in [&many_id, &odd_id, &nameless_id] {
        assert_never_started(&agent, id);
    }
    let peak = agent.peak_rss_mb();
    assert!(peak <= AGENT_PEAK_RSS_MB, "the agent peaked at {peak} MB");
    drop(agent);
    let log = std::fs::read(config.dir.path().join("i-ecr-hostile.log")).unwrap();
    assert!(
        !log.contains(&0x1b) && !log.contains(&0x07),
        "a control character in the log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_webhook_too_ecr_is_asked_first_and_both_must_allow() {
    let Some(s) = Scenario::new("ecr-both").await else {
        return;
    };
    let high = EcrImage::new(&s.stack, &s.aws, "ecr-both-high", true).await;
    let low = EcrImage::new(&s.stack, &s.aws, "ecr-both-low", true).await;
    clean(&low).await;
    let webhook = Webhook::start(|_, _| Reply::Allow).await;
    let extra = format!(
        "[admission]\nwebhook_url = \"{}\"\n{}",
        webhook.url(),
        ecr(&s, "")
    );
    let (_config, _agent) = s.agent("i-ecr-both", &extra);
    let denied = send(&s, "ecr-both-denied", &high.reference, None).await;
    let result = s.wait_result(&denied).await;
    assert_eq!(result["status"], "rejected", "{result}");
    assert_eq!(result["admission"]["by"], "ecr", "{result}");
    let allowed = send(&s, "ecr-both-allowed", &low.reference, None).await;
    let result = s.wait_result(&allowed).await;
    assert_eq!(result["status"], "succeeded", "{result}");
    let admitted = &result["admission"];
    assert_eq!(admitted["by"], "webhook", "{result}");
    assert_eq!(admitted["before"][0]["by"], "ecr", "{result}");
    assert_eq!(admitted["before"][0]["decision"], "allowed", "{result}");
    let asked: Vec<Value> = webhook.asked().into_iter().map(|(q, _)| q).collect();
    assert_eq!(asked.len(), 1, "only the image ECR allowed: {asked:?}");
    assert_eq!(asked[0]["job_id"], allowed.as_str());
    s.wait_empty().await;
}
