//! `[agent]`: the agent process itself.

use std::path::PathBuf;
use std::time::Duration;

use toml::Table;

use super::reader::Reader;

/// Jobs that run at once.
pub const DEFAULT_SLOTS: u64 = 1;
/// Scratch space on disk (spooled logs, cache markers).
pub const DEFAULT_WORK_DIR: &str = "/var/lib/deckhand";
/// Where job secret files go; a tmpfs.
pub const DEFAULT_SECRETS_DIR: &str = "/run/deckhand/secrets";
/// 0: never stop for idleness.
pub const DEFAULT_IDLE_SHUTDOWN_SECS: u64 = 0;
/// What `on_exit = "shutdown"` runs.
pub const DEFAULT_SHUTDOWN_COMMAND: [&str; 3] = ["shutdown", "-h", "now"];

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// How many jobs run at once.
    pub slots: usize,
    /// Scratch space for the agent (spooled logs, cache markers). Never holds
    /// secrets.
    pub work_dir: PathBuf,
    /// Where each job's secret files are written; must be on tmpfs.
    pub secrets_dir: PathBuf,
    /// Stop after this long without a job; `None` never does.
    pub idle_shutdown: Option<Duration>,
    /// Overrides the instance id that results and logs carry (off EC2, or in tests).
    pub instance_id: Option<String>,
    /// What to do with the instance after an idle, rebalance or Auto Scaling
    /// drain.
    pub on_exit: OnExit,
    /// The command `on_exit = "shutdown"` runs (and `terminate` falls back to when
    /// EC2 refuses to terminate the instance).
    pub shutdown_command: Vec<String>,
    /// The Auto Scaling termination hook to complete once drained. `None`: the
    /// group's one `autoscaling:EC2_INSTANCE_TERMINATING` hook, if it has exactly one.
    pub lifecycle_hook: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExit {
    None,
    /// TerminateInstanceInAutoScalingGroup (decrementing the desired capacity
    /// after an idle drain); TerminateInstances for an instance in no group.
    Terminate,
    Shutdown,
}

impl AgentConfig {
    pub(super) fn read(r: &mut Reader<'_>, root: &mut Table) -> Self {
        let mut section = r.section(root, "agent");
        let agent = AgentConfig {
            slots: r.int(&mut section, "slots", 1..=64, DEFAULT_SLOTS) as usize,
            work_dir: r.abs_path(&mut section, "work_dir", DEFAULT_WORK_DIR),
            secrets_dir: r.abs_path(&mut section, "secrets_dir", DEFAULT_SECRETS_DIR),
            idle_shutdown: r.period(
                &mut section,
                "idle_shutdown_secs",
                0..=604_800,
                DEFAULT_IDLE_SHUTDOWN_SECS,
            ),
            instance_id: r.opt_string(&mut section, "instance_id"),
            on_exit: r.choice(
                &mut section,
                "on_exit",
                &[
                    ("none", OnExit::None),
                    ("terminate", OnExit::Terminate),
                    ("shutdown", OnExit::Shutdown),
                ],
                OnExit::None,
            ),
            shutdown_command: {
                let command = r.strings(&mut section, "shutdown_command");
                if command.is_empty() {
                    DEFAULT_SHUTDOWN_COMMAND.map(String::from).to_vec()
                } else {
                    command
                }
            },
            lifecycle_hook: r.opt_string(&mut section, "lifecycle_hook"),
        };
        r.finish(section);
        agent
    }
}
