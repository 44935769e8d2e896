//! What the admission tests (the webhook's, `tests/admission.rs`, and ECR's,
//! `tests/admission_ecr.rs`) check alike.

use serde_json::Value;

use super::agent::AgentProcess;
use super::scenario::Scenario;
use super::{LONG, assert_clean, eventually};

/// No container of `id` was ever started, and none is left.
pub fn assert_never_started(agent: &AgentProcess, id: &str) {
    let started = agent
        .logs()
        .iter()
        .filter(|l| l["job_id"] == id && l["msg"] == "Job started.")
        .count();
    assert_eq!(started, 0, "the job's container started");
    assert_clean(id);
}

/// An attempt's `error` record, once it is there.
pub async fn error_attempt(s: &Scenario, id: &str) -> Value {
    eventually(&format!("attempt 1 of {id}"), LONG, || s.attempt(id, 1)).await
}

/// The agent's /metrics, in Prometheus's text format.
pub async fn scrape(agent: &AgentProcess) -> String {
    let url = format!("http://{}/metrics", agent.metrics_address());
    deckhand::tls::install();
    reqwest::get(url).await.unwrap().text().await.unwrap()
}
