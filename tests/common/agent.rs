//! A `deckhand run` process under test: its stdout goes to a file the test reads.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use super::aws::{Aws, Pool};
use super::eventually;
use super::proxy::Proxy;
use super::{Stack, TestConfig, deckhand};

/// An agent config (plus `extra`) whose Docker socket is a proxy the test can cut.
pub async fn behind_a_docker_proxy(
    stack: &Stack,
    aws: &Aws,
    pool: &Pool,
    extra: &str,
) -> (Proxy, TestConfig) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    let proxy = Proxy::unix(&socket, Path::new("/var/run/docker.sock")).await;
    let mut extra: toml::Table = extra.parse().expect("extra config is TOML");
    super::merge(
        &mut extra,
        format!("[docker]\nsocket = \"{}\"", socket.display())
            .parse()
            .unwrap(),
    );
    let mut config = agent_config(
        stack,
        pool,
        &aws.endpoint,
        &super::unique("i-dockerproxy"),
        &toml::to_string(&extra).unwrap(),
    );
    // The socket's directory lives as long as the config.
    config.keep(dir);
    (proxy, config)
}

pub struct AgentProcess {
    child: Child,
    log: PathBuf,
}

/// A config for an agent serving `pool` through `endpoint`, plus `extra` TOML.
pub fn agent_config(
    stack: &Stack,
    pool: &Pool,
    endpoint: &str,
    instance_id: &str,
    extra: &str,
) -> TestConfig {
    // No instance id: the agent asks the metadata service (or uses the hostname).
    let instance_id = if instance_id.is_empty() {
        String::new()
    } else {
        format!("instance_id = \"{instance_id}\"")
    };
    let text = format!(
        r#"
[agent]
{instance_id}
[aws]
region = "us-east-1"
endpoint_url = "{endpoint}"
[queue]
url = "{queue}"
wait_secs = 1
visibility_timeout_secs = 30
dead_letter_url = "{dlq}"
[results]
bucket = "{bucket}"
# Tests that watch for notices point this at their own simulator; the rest must
# never reach for 169.254.169.254.
[imds]
enabled = false
"#,
        queue = pool.queue_url,
        dlq = pool.dlq_url,
        bucket = pool.bucket,
    );
    let mut config: toml::Table = text.parse().unwrap();
    super::merge(&mut config, extra.parse().expect("extra config is TOML"));
    TestConfig::new(stack, &toml::to_string(&config).unwrap())
}

impl AgentProcess {
    /// Starts `deckhand run`; its log goes to `<config dir>/<name>.log`.
    pub fn start(config: &TestConfig, name: &str) -> AgentProcess {
        Self::start_with(config, name, &[])
    }

    pub fn start_with(config: &TestConfig, name: &str, env: &[(&str, &str)]) -> AgentProcess {
        let log = config.dir.path().join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = deckhand()
            .arg("--config")
            .arg(&config.path)
            .arg("run")
            .envs(env.iter().copied())
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap();
        AgentProcess { child, log }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The address its metrics listener took (it asked for port 0).
    pub fn metrics_address(&self) -> String {
        self.logs()
            .into_iter()
            .find(|l| l["msg"] == "Serving metrics and health.")
            .expect("the listener's address is logged")["address"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Every JSON log line so far (stderr lines, if any, are skipped).
    pub fn logs(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn count(&self, msg: &str) -> usize {
        self.logs().iter().filter(|l| l["msg"] == msg).count()
    }

    pub async fn wait_log(&self, msg: &str, deadline: Duration) {
        eventually(
            &format!("log {msg:?} in {}", self.log.display()),
            deadline,
            || async { self.count(msg) > 0 },
        )
        .await;
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid()), signal).unwrap();
    }

    /// How many times the agent said it lost Docker: not receiving, a running
    /// job's wait lost, a cleanup put off.
    pub fn docker_lost_count(&self) -> usize {
        [
            "Docker is unreachable; not receiving.",
            "Lost Docker while the job runs; waiting for it to answer again.",
            "Could not remove the job's container yet; Docker does not answer.",
        ]
        .iter()
        .map(|msg| self.count(msg))
        .sum()
    }

    /// The most memory the process has held (VmHWM), in MB.
    pub fn peak_rss_mb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the agent's /proc status");
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc status");
        kb / 1024
    }

    /// The last `n` lines of its log, oldest first, under the log's path.
    pub fn tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(n);
        format!("{}:\n{}", self.log.display(), lines[from..].join("\n"))
    }

    /// Whether the process has exited: its exit status, without waiting.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits for the process to exit; its exit code.
    pub async fn wait_exit(&mut self, deadline: Duration) -> Option<i32> {
        let start = tokio::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if start.elapsed() > deadline {
                panic!(
                    "the agent did not exit within {deadline:?}; its last lines:\n{}",
                    self.tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for AgentProcess {
    /// An agent still running when its test ends (or panics) is stopped the way an
    /// operator would: two SIGTERMs (drain, then stop jobs now), so it removes its
    /// containers and hands back its messages; SIGKILL only if that hangs.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let pid = Pid::from_raw(self.pid());
        let _ = kill(pid, Signal::SIGTERM);
        std::thread::sleep(Duration::from_millis(100));
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
