//! The project's IMDS simulator (`scripts/imds-sim`), one per test, on a free
//! loopback port.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

pub struct ImdsSim {
    child: Child,
    pub url: String,
    http: reqwest::Client,
}

impl ImdsSim {
    pub fn start(instance_id: &str) -> ImdsSim {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/imds-sim");
        let mut child = Command::new(script)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--instance-id",
                instance_id,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start scripts/imds-sim");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from imds-sim: {line:?}"))
            .to_owned();
        ImdsSim {
            child,
            url,
            http: deckhand::tls::reqwest_builder().build().unwrap(),
        }
    }

    pub async fn control(&self, path: &str, body: Value) -> Value {
        let response = self
            .http
            .post(format!("{}/_sim/{path}", self.url))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        serde_json::from_str(&response.text().await.unwrap()).unwrap()
    }

    /// A spot notice visible now, the interruption `interruption_in_secs` later.
    pub async fn spot(&self, action: &str, interruption_in_secs: u64) {
        self.control(
            "spot",
            json!({"action": action, "in_secs": 0, "interruption_in_secs": interruption_in_secs}),
        )
        .await;
    }

    pub async fn faults(&self, mode: &str, count: Option<u64>, delay_ms: u64) {
        self.control(
            "faults",
            json!({"mode": mode, "count": count, "delay_ms": delay_ms}),
        )
        .await;
    }

    pub async fn state(&self) -> Value {
        let text = self
            .http
            .get(format!("{}/_sim/state", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

impl Drop for ImdsSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
