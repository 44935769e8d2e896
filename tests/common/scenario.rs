//! The usual start of an agent test in one value: the stack, moto, a pool of the
//! test's own, and agents serving it.
//!
//! ```ignore
//! let Some(s) = Scenario::new("fates").await else { return };
//! let agent = s.agent("i-fates", "[agent]\nslots = 2");
//! let id = s.send("ok", &["true"]).await;
//! assert_eq!(s.wait_result(&id).await["status"], "succeeded");
//! s.wait_empty().await;
//! ```

use serde_json::Value;

use super::agent::{AgentProcess, agent_config};
use super::aws::{Aws, Pool};
use super::{Stack, TestConfig, job, unique};

pub struct Scenario {
    pub stack: Stack,
    pub aws: Aws,
    pub pool: Pool,
}

impl Scenario {
    /// A fresh pool named for `name` whose messages go to its dead-letter queue
    /// after 5 receives; `None` when the stack is absent (see [`Stack::or_skip`]).
    pub async fn new(name: &str) -> Option<Scenario> {
        Self::with_receives(name, 5).await
    }

    pub async fn with_receives(name: &str, max_receives: u32) -> Option<Scenario> {
        let stack = Stack::or_skip()?;
        let aws = Aws::new().await;
        let pool = aws.pool(name, max_receives).await;
        Some(Scenario { stack, aws, pool })
    }

    /// A config for an agent serving this pool as `instance` (a unique id is made
    /// from it), with `extra` TOML merged over the test defaults.
    pub fn config(&self, instance: &str, extra: &str) -> TestConfig {
        agent_config(
            &self.stack,
            &self.pool,
            &self.aws.endpoint,
            &unique(instance),
            extra,
        )
    }

    /// Starts an agent with [`Scenario::config`]; its log is `<instance>.log`.
    pub fn agent(&self, instance: &str, extra: &str) -> (TestConfig, AgentProcess) {
        let config = self.config(instance, extra);
        let agent = AgentProcess::start(&config, instance);
        (config, agent)
    }

    /// Sends a job of the stack's image running `command`, under a unique id made
    /// from `name`; the id.
    pub async fn send(&self, name: &str, command: &[&str]) -> String {
        let id = unique(name);
        self.send_job(&job(&id, &self.stack.image, command)).await;
        id
    }

    pub async fn send_job(&self, body: &Value) {
        self.aws.send_job(&self.pool.queue_url, body).await;
    }

    pub async fn result(&self, id: &str) -> Option<Value> {
        self.aws.result(&self.pool, id).await
    }

    pub async fn wait_result(&self, id: &str) -> Value {
        self.aws.wait_result(&self.pool, id).await
    }

    pub async fn attempt(&self, id: &str, n: u32) -> Option<Value> {
        self.aws.attempt(&self.pool, id, n).await
    }

    pub async fn log(&self, id: &str) -> Option<String> {
        self.aws.log(&self.pool, id).await
    }

    pub async fn wait_empty(&self) {
        self.aws.wait_empty(&self.pool).await;
    }
}
