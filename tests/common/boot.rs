//! An agent that must fail to boot.

use super::agent::{AgentProcess, agent_config};
use super::aws::{Aws, Pool};
use super::*;

/// Starts an agent that must fail to boot; its exit code and stderr-ish last line.
pub async fn boot_failure(
    stack: &Stack,
    aws: &Aws,
    pool: &Pool,
    extra: &str,
) -> (Option<i32>, String) {
    let config = agent_config(stack, pool, &aws.endpoint, &unique("i-boot"), extra);
    let mut agent = AgentProcess::start(&config, "agent");
    let code = agent.wait_exit(LONG).await;
    let log = std::fs::read_to_string(agent.log_path()).unwrap();
    let last = log
        .lines()
        .rev()
        .find(|l| l.starts_with("deckhand: "))
        .unwrap_or_else(|| panic!("no one-line cause:\n{log}"))
        .to_owned();
    assert_eq!(agent.count("Ready; serving the queue."), 0, "{log}");
    (code, last)
}
