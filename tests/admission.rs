//! Admission on the stack: a real webhook on 127.0.0.1 (tests/common/webhook.rs)
//! decides whether each image runs, once pulled and before any container of the
//! job is created. Allowed runs and says so in its result, and a second job of
//! the same image is decided from the cache; denied is `rejected` once with the
//! webhook's reason and no container; a service's image denied rejects the job;
//! a webhook down is `error` (retried) when the pool fails closed and a warning
//! when it fails open; hostile answers (10 MB, invalid JSON, a redirect, a hang)
//! are each bounded, with the agent under 128 MB.

mod common;

use common::admission::{assert_never_started, error_attempt, scrape};
use common::agent::agent_config;
use common::scenario::Scenario;
use common::sealed::{NPM_TOKEN, assert_no_secret, seal, secrets_config, secrets_dir};
use common::webhook::{Reply, Webhook, free_port};
use common::*;
use serde_json::{Value, json};

/// What the agent (a debug build) may hold at its peak while the answers come.
const AGENT_PEAK_RSS_MB: u64 = 128;

/// The agent's `[admission]` section asking `url`, with `extra` keys.
fn admission(url: &str, extra: &str) -> String {
    format!("[admission]\nwebhook_url = \"{url}\"\n{extra}\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allowed_image_runs_and_its_second_job_is_decided_from_the_cache() {
    let Some(s) = Scenario::new("admit-allow").await else {
        return;
    };
    let webhook = Webhook::start(|_, _| Reply::Allow).await;
    let extra = admission(&webhook.url(), "[metrics]\nlisten = \"127.0.0.1:0\"");
    let (_config, agent) = s.agent("i-admit-allow", &extra);
    let first = s.send("admitted", &["echo", "ran"]).await;
    let result = s.wait_result(&first).await;
    assert_eq!(result["status"], "succeeded", "{result}");
    let admitted = &result["admission"];
    assert_eq!(admitted["decision"], "allowed", "{result}");
    assert_eq!(admitted["by"], "webhook", "{result}");
    assert_eq!(admitted["reason"], "scanned clean", "{result}");
    assert!(admitted["ms"].is_u64(), "{result}");
    let second = s.send("admitted-again", &["echo", "ran"]).await;
    let result = s.wait_result(&second).await;
    assert_eq!(result["status"], "succeeded", "{result}");
    assert_eq!(result["admission"]["by"], "cache", "{result}");
    let asked = webhook.asked();
    assert_eq!(asked.len(), 1, "{asked:?}");
    let question = &asked[0].0;
    assert_eq!(question["job_id"], first.as_str());
    assert_eq!(question["kind"], "job");
    assert_eq!(question["profile"], "default");
    assert_eq!(question["image"], s.stack.image.as_str());
    assert!(
        question["digest"].as_str().unwrap().starts_with("sha256:"),
        "{question}"
    );
    assert_eq!(asked[0].1, None, "no token configured, none sent");
    s.wait_empty().await;
    let metrics = scrape(&agent).await;
    for series in [
        r#"deckhand_admission_decisions_total{by="webhook",decision="allowed"} 1"#,
        r#"deckhand_admission_decisions_total{by="cache",decision="allowed"} 1"#,
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denied_image_is_rejected_once_and_no_container_runs() {
    let Some(s) = Scenario::new("admit-deny").await else {
        return;
    };
    let webhook = Webhook::start(|_, _| Reply::Deny("CVE-2024-3094: critical\u{7}".into())).await;
    // No cache: a second run would ask again, so one question proves one run.
    let extra = admission(&webhook.url(), "cache_secs = 0");
    let (_config, agent) = s.agent("i-admit-deny", &extra);
    let id = s.send("denied", &["echo", "must not run"]).await;
    let result = s.wait_result(&id).await;
    assert_eq!(result["status"], "rejected", "{result}");
    assert_eq!(result["exit_code"], Value::Null, "{result}");
    let reason = result["reason"].as_str().unwrap();
    assert_eq!(
        reason, "admission: webhook: CVE-2024-3094: critical\\u{7}",
        "the webhook's reason, escaped"
    );
    assert_eq!(result["admission"]["decision"], "denied", "{result}");
    s.wait_empty().await;
    assert_eq!(webhook.asked().len(), 1, "rejected once, never retried");
    assert!(s.attempt(&id, 1).await.is_none(), "no error attempt");
    assert_never_started(&agent, &id);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_image_denied_rejects_the_job_before_any_container() {
    let Some(s) = Scenario::new("admit-service").await else {
        return;
    };
    let webhook = Webhook::start(|_, q| match q["kind"].as_str() {
        Some("service") => Reply::Deny(format!("{} is not scanned", q["name"])),
        _ => Reply::Allow,
    })
    .await;
    // The service runs the job's image: without the cache it is asked anew.
    let extra = admission(&webhook.url(), "cache_secs = 0");
    let (_config, agent) = s.agent("i-admit-service", &extra);
    let id = unique("admit-service");
    let mut body = job(&id, &s.stack.image, &["echo", "must not run"]);
    body["services"] = json!([{"name": "db", "image": s.stack.image, "command": ["sleep", "60"]}]);
    s.send_job(&body).await;
    let result = s.wait_result(&id).await;
    assert_eq!(result["status"], "rejected", "{result}");
    assert_eq!(
        result["reason"], "admission: webhook: service db: \"db\" is not scanned",
        "{result}"
    );
    assert_eq!(result["admission"]["decision"], "allowed", "{result}");
    assert_eq!(
        result["admission"]["services"]["db"]["decision"], "denied",
        "{result}"
    );
    s.wait_empty().await;
    assert_never_started(&agent, &id);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_down_fails_closed_as_an_error_that_comes_back() {
    let Some(s) = Scenario::new("admit-closed").await else {
        return;
    };
    // Nothing listens there yet.
    let port = free_port().await;
    let url = format!("http://127.0.0.1:{port}/admit");
    let (_config, _agent) = s.agent("i-admit-closed", &admission(&url, ""));
    let id = s.send("closed", &["echo", "ran"]).await;
    let attempt = error_attempt(&s, &id).await;
    assert_eq!(attempt["status"], "error", "{attempt}");
    let reason = attempt["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("admission: the webhook failed (admission.fail = \"closed\"): POST ")
            && reason.contains("Connection refused"),
        "{reason}"
    );
    assert_eq!(attempt["admission"]["decision"], "unchecked", "{attempt}");
    // The webhook comes up: the message comes back and the job runs.
    let webhook = Webhook::start_on(port, |_, _| Reply::Allow).await;
    let result = s.wait_result(&id).await;
    assert_eq!(result["status"], "succeeded", "{result}");
    assert!(result["attempt"].as_u64().unwrap() >= 2, "{result}");
    assert_eq!(webhook.asked().len(), 1);
    s.wait_empty().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_webhook_fails_open_with_a_warning_and_the_job_runs() {
    let Some(s) = Scenario::new("admit-open").await else {
        return;
    };
    let webhook = Webhook::start(|_, _| Reply::Hang).await;
    let extra = admission(&webhook.url(), "timeout_ms = 500\nfail = \"open\"");
    let (_config, agent) = s.agent("i-admit-open", &extra);
    let id = s.send("open", &["echo", "ran"]).await;
    let result = s.wait_result(&id).await;
    assert_eq!(result["status"], "succeeded", "{result}");
    let admitted = &result["admission"];
    assert_eq!(admitted["decision"], "unchecked", "{result}");
    assert!(
        admitted["reason"]
            .as_str()
            .unwrap()
            .contains("no whole answer within admission.timeout_ms = 500"),
        "{result}"
    );
    let warned = agent.logs().into_iter().any(|l| {
        l["msg"] == "Admission webhook failed; running the job unchecked."
            && l["level"] == "warn"
            && l["job_id"] == id.as_str()
    });
    assert!(warned, "the warning, in the job's span");
    s.wait_empty().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_answers_are_each_bounded_and_the_agent_stays_small() {
    let Some(s) = Scenario::new("admit-hostile").await else {
        return;
    };
    let webhook = Webhook::start(|_, q| {
        let id = q["job_id"].as_str().unwrap_or_default();
        match id.split('-').nth(1) {
            Some("huge") => Reply::Huge,
            Some("garbage") => Reply::Raw(200, "<html>not json".repeat(1000)),
            Some("redirect") => Reply::Redirect,
            _ => Reply::Hang,
        }
    })
    .await;
    let extra = format!(
        "{}[agent]\nslots = 2\n",
        admission(&webhook.url(), "timeout_ms = 1000")
    );
    let (_config, agent) = s.agent("i-admit-hostile", &extra);
    let cases = [
        ("huge", "over 65536 bytes; not reading more"),
        ("garbage", "not {\"allowed\": bool, \"reason\": string}"),
        ("redirect", "answered 302"),
        ("hang", "no whole answer within admission.timeout_ms = 1000"),
    ];
    let mut ids = Vec::new();
    for (name, _) in cases {
        ids.push(s.send(&format!("admit-{name}"), &["echo", "ran"]).await);
    }
    for (id, (name, expected)) in ids.iter().zip(cases) {
        let attempt = error_attempt(&s, id).await;
        assert_eq!(attempt["status"], "error", "{name}: {attempt}");
        let reason = attempt["reason"].as_str().unwrap();
        assert!(reason.contains(expected), "{name}: {reason}");
        assert!(reason.len() <= 1024, "{name}: {} bytes", reason.len());
        assert_never_started(&agent, id);
    }
    let peak = agent.peak_rss_mb();
    assert!(peak <= AGENT_PEAK_RSS_MB, "the agent peaked at {peak} MB");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_the_registry_refuses_by_policy_fails_the_job_once() {
    let Some(s) = Scenario::new("admit-registry").await else {
        return;
    };
    // A registry that answers its API and refuses every manifest as Xray does.
    let refusal = json!({"errors": [{"code": "DENIED",
        "message": "Download blocked by Xray policy 'block-critical': 3 critical vulnerabilities"}]});
    let registry = Webhook::start(move |path, _| match path {
        "/v2/" => Reply::Raw(200, "{}".into()),
        _ => Reply::Raw(403, refusal.to_string()),
    })
    .await;
    let host = registry.address.to_string();
    let extra = format!(
        "[images]\nallowed_registries = [\"{}\", \"{host}\"]\n",
        s.stack.registry
    );
    let (_config, agent) = s.agent("i-admit-registry", &extra);
    let id = unique("registry-policy");
    s.send_job(&job(&id, &format!("{host}/ci/scanned:1.0"), &["true"]))
        .await;
    let result = s.wait_result(&id).await;
    assert_eq!(result["status"], "failed", "{result}");
    assert_eq!(result["exit_code"], Value::Null, "{result}");
    let reason = result["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("the registry refused the image by policy: pull ")
            && reason.contains("blocked by Xray policy 'block-critical'"),
        "{reason}"
    );
    s.wait_empty().await;
    assert!(s.attempt(&id, 1).await.is_none(), "never an error retried");
    assert_never_started(&agent, &id);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_goes_as_a_bearer_and_is_masked_where_the_webhook_echoes_it() {
    let Some(s) = Scenario::new("admit-token").await else {
        return;
    };
    // A careless webhook: its reason repeats the header it was sent.
    let webhook =
        Webhook::start(|_, _| Reply::Deny(format!("token {NPM_TOKEN} may not pull"))).await;
    let bundle = tempfile::tempdir().unwrap();
    let sealed = seal(&s.aws, &s.pool, bundle.path()).await;
    let shm = secrets_dir();
    let extra = format!(
        "{}{}",
        secrets_config(&sealed, &shm, &sealed.pool_name),
        admission(&webhook.url(), "token_secret = \"npm-token\"")
    );
    let config = agent_config(
        &s.stack,
        &s.pool,
        &s.aws.endpoint,
        &unique("i-token"),
        &extra,
    );
    let agent = common::agent::AgentProcess::start(&config, "agent");
    let id = s.send("token", &["echo", "must not run"]).await;
    let result = s.wait_result(&id).await;
    assert_eq!(result["status"], "rejected", "{result}");
    let asked = webhook.asked();
    assert_eq!(
        asked[0].1.as_deref(),
        Some(format!("Bearer {NPM_TOKEN}").as_str())
    );
    assert_no_secret("the result", &result.to_string());
    let reason = result["admission"]["reason"].as_str().unwrap();
    assert!(reason.contains("may not pull"), "{reason}");
    s.wait_empty().await;
    drop(agent);
    assert_no_secret(
        "the agent's log",
        &std::fs::read_to_string(config.dir.path().join("agent.log")).unwrap(),
    );
    std::fs::remove_dir_all(&shm).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_asks_too_and_a_profile_with_an_empty_url_is_not_asked() {
    let Some(stack) = Stack::or_skip() else {
        return;
    };
    let webhook = Webhook::start(|_, _| Reply::Deny("not scanned".into())).await;
    let extra = format!(
        "{}[profiles.exempt]\nadmission_webhook_url = \"\"\n",
        admission(&webhook.url(), "")
    );
    let config = TestConfig::new(&stack, &extra);
    let denied = unique("exec-denied");
    let mut exempt = job(&unique("exec-exempt"), &stack.image, &["echo", "ran"]);
    exempt["profile"] = json!("exempt");
    let bodies = [job(&denied, &stack.image, &["echo", "ran"]), exempt];
    // exec blocks; the webhook answers on this runtime meanwhile.
    let (config, runs) = tokio::task::spawn_blocking(move || {
        let runs: Vec<Exec> = bodies.iter().map(|body| exec(&config, body)).collect();
        (config, runs)
    })
    .await
    .unwrap();
    let (denied_run, exempt_run) = (&runs[0], &runs[1]);
    assert_eq!(
        denied_run.result["status"], "rejected",
        "{}",
        denied_run.stderr
    );
    assert_eq!(denied_run.code, Some(65));
    assert_eq!(
        denied_run.result["reason"],
        "admission: webhook: not scanned"
    );
    assert_eq!(
        exempt_run.result["status"], "succeeded",
        "{}",
        exempt_run.stderr
    );
    assert!(
        exempt_run.result.get("admission").is_none(),
        "{}",
        exempt_run.result
    );
    assert_eq!(
        webhook.asked().len(),
        1,
        "only the default profile's job asked"
    );
    assert_clean(&denied);
    drop(config);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_the_bundle_lacks_stops_the_agent_with_exit_78() {
    let Some(s) = Scenario::new("admit-notoken").await else {
        return;
    };
    let bundle = tempfile::tempdir().unwrap();
    let sealed = seal(&s.aws, &s.pool, bundle.path()).await;
    let shm = secrets_dir();
    let config = format!(
        "{}{}",
        secrets_config(&sealed, &shm, &sealed.pool_name),
        admission(
            "https://scanner.internal/admit",
            "token_secret = \"no-such-secret\""
        )
    );
    let (code, line) = common::boot::boot_failure(&s.stack, &s.aws, &s.pool, &config).await;
    assert_eq!(code, Some(78), "{line}");
    assert!(
        line.contains(
            "admission.token_secret: names secret \"no-such-secret\", which is not in the bundle"
        ),
        "{line}"
    );
    std::fs::remove_dir_all(&shm).unwrap();
}
