//! What operators' tools read of an agent, against a live one (moto, the real
//! Docker engine) and Prometheus's own `promtool`: a scrape in the text format
//! passes `promtool check metrics` (base units, help on every family), the
//! scraper that asks for OpenMetrics gets it, and every metric that
//! monitoring/dashboard.json and monitoring/alerts.yml name is one the agent
//! serves.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use common::scenario::Scenario;
use common::*;

/// GET /metrics with `accept`: its content type and body.
async fn scrape(address: &str, accept: Option<&str>) -> (String, String) {
    let client = deckhand::tls::reqwest_builder().build().unwrap();
    let mut request = client.get(format!("http://{address}/metrics"));
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.unwrap();
    let kind = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    (kind, response.text().await.unwrap())
}

/// `promtool check metrics` on `text`: its exit status and what it said.
fn promtool_check(text: &str) -> Option<(bool, String)> {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(_) if std::env::var_os("STACK_REQUIRED").is_none() => return None,
        Err(e) => panic!("promtool (Debian's prometheus package): {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    Some((output.status.success(), said))
}

/// Every `deckhand_…` name in `text`.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (at, _) in text.match_indices("deckhand_") {
        let name: String = text[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        names.insert(name);
    }
    names
}

/// The sample names a scrape holds.
fn served(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_scrape_passes_promtool_and_serves_what_dashboards_and_alerts_name() {
    let Some(s) = Scenario::new("monitoring").await else {
        return;
    };
    let (_config, agent) = s.agent(
        "i-monitoring",
        "[agent]\nslots = 2\n[metrics]\nlisten = \"127.0.0.1:0\"",
    );
    agent.wait_log("Ready; serving the queue.", LONG).await;
    let address = agent.metrics_address();
    // One job done (its histograms; its usage read from its own cgroup parent
    // however short it ran), one running (its slot's series).
    let done = s.send("monitoring-done", &["echo", "done"]).await;
    assert_eq!(s.wait_result(&done).await["status"], "succeeded");
    let running = unique("monitoring-running");
    let mut body = job(&running, &s.stack.image, &["sh", "-c", "sleep 30"]);
    body["timeout_secs"] = serde_json::json!(3);
    s.send_job(&body).await;
    eventually("a running job's memory in the scrape", LONG, || async {
        scrape(&address, None)
            .await
            .1
            .contains("deckhand_running_memory_bytes{")
    })
    .await;

    let (kind, text) = scrape(&address, None).await;
    assert_eq!(kind, "text/plain; version=0.0.4; charset=utf-8");
    if let Some((passed, said)) = promtool_check(&text) {
        assert!(passed && said.trim().is_empty(), "promtool: {said}\n{text}");
    }
    let served = served(&text);
    let mut named = names_in(include_str!("../monitoring/dashboard.json"));
    named.extend(names_in(include_str!("../monitoring/alerts.yml")));
    assert!(named.len() >= 15, "{named:?}");
    let unserved: Vec<_> = named.difference(&served).collect();
    assert!(
        unserved.is_empty(),
        "named by the dashboard or the alerts, not served: {unserved:?}\n{text}"
    );

    let prometheus = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let (kind, open) = scrape(&address, Some(prometheus)).await;
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    assert!(open.ends_with("# EOF\n"));
    s.wait_result(&running).await;
    s.wait_empty().await;
    assert_clean(&running);
}
