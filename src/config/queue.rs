//! `[queue]`: the SQS queue jobs come from.

use std::time::Duration;

use toml::Table;

use super::reader::Reader;

/// SQS's longest long poll: the fewest empty receives.
pub const DEFAULT_WAIT_SECS: u64 = 20;
/// How long a received message stays hidden; the heartbeat renews it every third.
pub const DEFAULT_VISIBILITY_TIMEOUT_SECS: u64 = 300;
/// SQS's longest visibility timeout, counted from the receive: no heartbeat can
/// hide a message past it.
pub const MAX_VISIBILITY_SECS: u64 = 43_200;

#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Required by `deckhand run`; `exec` needs no queue.
    pub url: Option<String>,
    /// Long-poll wait of one ReceiveMessage.
    pub wait: Duration,
    /// How long a received message stays hidden; heartbeats extend it while the job runs.
    pub visibility_timeout: Duration,
    pub dead_letter_url: Option<String>,
    /// Where a job goes after its profile's `escalate_after_interruptions`
    /// interruptions (an on-demand pool's queue) instead of back.
    pub escalation_url: Option<String>,
}

impl QueueConfig {
    pub(super) fn read(r: &mut Reader<'_>, root: &mut Table) -> Self {
        let mut section = r.section(root, "queue");
        let queue = QueueConfig {
            url: r.opt_url(&mut section, "url"),
            wait: Duration::from_secs(r.int(&mut section, "wait_secs", 0..=20, DEFAULT_WAIT_SECS)),
            visibility_timeout: Duration::from_secs(r.int(
                &mut section,
                "visibility_timeout_secs",
                30..=MAX_VISIBILITY_SECS,
                DEFAULT_VISIBILITY_TIMEOUT_SECS,
            )),
            dead_letter_url: r.opt_url(&mut section, "dead_letter_url"),
            escalation_url: r.opt_url(&mut section, "escalation_url"),
        };
        r.finish(section);
        queue
    }
}
