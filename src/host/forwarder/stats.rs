//! "The forwarder's queue is empty", from rsyslog's own counters.
//!
//! impstats writes, once a second, one line per counter set, each
//! `<ctime>: {json}`, and the main queue's last in every round:
//!
//! ```text
//! Mon Dec  7 19:07:12 2026: { "name": "fwd queue[DA]", "origin": "core.queue", "size": 0, ... }
//! Mon Dec  7 19:07:12 2026: { "name": "fwd queue", "origin": "core.queue", "size": 0, ... }
//! Mon Dec  7 19:07:12 2026: { "name": "main Q", "origin": "core.queue", "size": 0, ... }
//! ```
//!
//! A line goes journal → imjournal → main queue → the `fwd` action's queue (in
//! memory, spilling to disk: `fwd queue[DA]`) → the sink's socket. The drain
//! reads from where the file ended when it began, drops the first round (it may
//! have been counted before), and judges the next ones: all three queues at 0
//! means every line journald had handed over by then has left for the sink.

use serde::Deserialize;

/// The main queue's counter set, the last of every round.
pub const MAIN_QUEUE: &str = "main Q";
/// The forwarding action's queue (the action is named `fwd`) and its disk part.
pub const ACTION_QUEUE: &str = "fwd queue";
pub const DISK_QUEUE: &str = "fwd queue[DA]";

/// The queue sizes of one whole round.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    pub main: u64,
    pub action: u64,
    pub disk: u64,
}

impl Round {
    pub fn queued(&self) -> u64 {
        self.main + self.action + self.disk
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No round wholly after the start yet.
    NoRoundYet,
    /// The latest such round still holds lines.
    Queued(u64),
    /// The latest such round is empty.
    Empty,
}

#[derive(Deserialize)]
struct Counter {
    name: String,
    origin: String,
    #[serde(default)]
    size: u64,
}

/// One counter line: its name and, for a queue, its size.
fn counter(line: &str) -> Option<Counter> {
    let json = &line[line.find('{')?..];
    serde_json::from_str(json).ok()
}

/// The whole rounds in `text`, in order. A round closes at the main queue's line.
pub fn rounds(text: &str) -> Vec<Round> {
    let mut rounds = Vec::new();
    let mut current = Round::default();
    for counter in text.lines().filter_map(counter) {
        if counter.origin != "core.queue" {
            continue;
        }
        match counter.name.as_str() {
            ACTION_QUEUE => current.action = counter.size,
            DISK_QUEUE => current.disk = counter.size,
            MAIN_QUEUE => {
                current.main = counter.size;
                rounds.push(std::mem::take(&mut current));
            }
            _ => {}
        }
    }
    rounds
}

/// The verdict on what was written since the drain began: the first round may
/// have started before, so only those after it count, and the latest decides.
pub fn judge(text_since_start: &str) -> Verdict {
    match rounds(text_since_start).get(1..).and_then(<[Round]>::last) {
        None => Verdict::NoRoundYet,
        Some(round) if round.queued() == 0 => Verdict::Empty,
        Some(round) => Verdict::Queued(round.queued()),
    }
}
