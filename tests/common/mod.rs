//! Shared by the integration tests: the local stack's endpoints, configs in temp
//! dirs, the real binary, checks against the real Docker engine, one way to wait
//! ([`eventually`]) and one place for the S3 keys of the record ([`keys`]).
//! [`scenario::Scenario`] is the usual start of a test: see docs/testing.md.
//!
//! The stack is `scripts/stack up`; `scripts/test` exports its endpoints and sets
//! `STACK_REQUIRED=1`, so there a test that finds the stack missing fails.
//! A plain `cargo test` without the stack runs the unit tests, and each of these
//! says once, on stderr, that it was skipped and how to run it: the gate that
//! counts is `scripts/test`, which runs everything.

#![allow(dead_code)]

pub mod admission;
pub mod agent;
pub mod archives;
pub mod aws;
pub mod boot;
pub mod ecr;
pub mod git;
pub mod imds;
pub mod keys;
pub mod notices;
pub mod proxy;
pub mod scenario;
pub mod sealed;
pub mod webhook;
pub mod workload;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The stack's endpoints, from `scripts/stack env`.
pub struct Stack {
    pub registry: String,
    pub image: String,
    pub image_digest: String,
    /// The network job containers use: `none` on the stack's own bridgeless dockerd,
    /// where asking for `bridge` would leave a stale sandbox record per container.
    pub network: String,
}

/// How long a test waits for what the agent does in seconds on a quiet machine:
/// generous, since a 2-core box under a full test run is anything but quiet.
pub const LONG: Duration = Duration::from_secs(120);
/// For whole fleets of work (the chaos test).
pub const VERY_LONG: Duration = Duration::from_secs(180);

impl Stack {
    /// The stack, or `None` (after one line on stderr) when its variables are
    /// absent and `STACK_REQUIRED` is not set: `let Some(stack) =
    /// Stack::or_skip() else { return };`.
    pub fn or_skip() -> Option<Stack> {
        let present = std::env::var_os("STACK_REGISTRY").is_some();
        if !present && std::env::var_os("STACK_REQUIRED").is_none() {
            // Once per test binary, and past libtest's capture (which would hide
            // it for a passing test): the reader must see how to run the rest.
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "skipped: these tests need the local stack; run scripts/test, or `scripts/stack up && eval \"$(scripts/stack env)\"` first"
                );
            });
            return None;
        }
        Some(Stack::from_env())
    }

    pub fn from_env() -> Stack {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is not set: run the tests through scripts/test, or eval \"$(scripts/stack env)\" first")
            })
        };
        Stack {
            registry: var("STACK_REGISTRY"),
            image: var("STACK_IMAGE"),
            image_digest: var("STACK_IMAGE_DIGEST"),
            network: var("STACK_NETWORK"),
        }
    }
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}-{}-{:x}-{}",
        std::process::id(),
        nanos & 0xffff_ffff,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A temp dir holding a config that allows the stack's registry, plus `extra` TOML.
pub struct TestConfig {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    /// Other directories the config names, removed with it.
    kept: Vec<tempfile::TempDir>,
}

impl TestConfig {
    /// The base test config with the TOML in `extra` merged over it, key by key.
    /// Disk watermarks are off: a test must not depend on the machine's free space
    /// (the disk test sets its own).
    pub fn new(stack: &Stack, extra: &str) -> TestConfig {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let base = format!(
            "[agent]\nwork_dir = \"{work}\"\n[images]\nallowed_registries = [\"{registry}\"]\n[drain]\nstop_grace_secs = 2\n[profiles.default]\nnetwork = \"{network}\"\n[disk]\nmin_free_mb = 0\ngc_free_mb = 0\n",
            work = dir.path().display(),
            registry = stack.registry,
            network = stack.network,
        );
        let mut config: toml::Table = base.parse().unwrap();
        merge(&mut config, extra.parse().expect("extra config is TOML"));
        // Every profile's containers go on the stack's network, not only the
        // default's: see `Stack::network`.
        if let Some(toml::Value::Table(profiles)) = config.get_mut("profiles") {
            for (_, profile) in profiles.iter_mut() {
                if let toml::Value::Table(profile) = profile {
                    profile
                        .entry("network")
                        .or_insert_with(|| toml::Value::String(stack.network.clone()));
                }
            }
        }
        std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
        TestConfig {
            dir,
            path,
            kept: Vec::new(),
        }
    }

    /// Keeps `dir` for as long as the config lives.
    pub fn keep(&mut self, dir: tempfile::TempDir) {
        self.kept.push(dir);
    }

    /// Writes `job` to a file in the config's dir and returns its path.
    pub fn job_file(&self, job: &Value) -> PathBuf {
        let path = self.dir.path().join(format!("{}.json", unique("job")));
        std::fs::write(&path, job.to_string()).unwrap();
        path
    }
}

fn merge(base: &mut toml::Table, extra: toml::Table) {
    for (key, value) in extra {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(into)), toml::Value::Table(from)) => merge(into, from),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

pub fn deckhand() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_deckhand"));
    // Tests choose their config explicitly; keep the caller's overrides out.
    for (name, _) in std::env::vars() {
        if name.starts_with("DECKHAND_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// A memory hog: runs for a second, then dd allocates and fills a 256 MiB buffer
/// at once, as PID 1 (see `exec.rs`'s memory-kill test for why the second).
pub const OOM_AFTER_A_SECOND: &str = "sleep 1; exec dd if=/dev/zero of=/dev/null bs=256M count=1";

/// A deckhand command with `config`, to completion.
pub fn deckhand_with(config: &TestConfig, args: &[&str]) -> Output {
    deckhand()
        .arg("--config")
        .arg(&config.path)
        .args(args)
        .output()
        .unwrap()
}

/// `deckhand exec` of `job` with `config`, to completion.
pub fn exec(config: &TestConfig, job: &Value) -> Exec {
    let output = deckhand()
        .arg("--config")
        .arg(&config.path)
        .arg("exec")
        .arg(config.job_file(job))
        .output()
        .unwrap();
    Exec::from_output(output)
}

/// What `deckhand exec` printed: its log lines, the result, stderr and the exit code.
pub struct Exec {
    pub code: Option<i32>,
    pub logs: Vec<Value>,
    pub result: Value,
    pub stdout: String,
    pub stderr: String,
}

impl Exec {
    pub fn from_output(output: Output) -> Exec {
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let mut lines: Vec<Value> = stdout
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| {
                    panic!("stdout line is not JSON ({e}): {l}\nstderr: {stderr}")
                })
            })
            .collect();
        let result = lines
            .pop()
            .unwrap_or_else(|| panic!("no result on stdout; stderr: {stderr}"));
        Exec {
            code: output.status.code(),
            logs: lines,
            result,
            stdout,
            stderr,
        }
    }

    /// The job's output lines on `stream`, in order.
    pub fn output(&self, stream: &str) -> Vec<String> {
        self.logs
            .iter()
            .filter(|l| l["stream"] == stream)
            .map(|l| l["msg"].as_str().unwrap().to_owned())
            .collect()
    }

    pub fn logged(&self, msg: &str) -> bool {
        self.logs.iter().any(|l| l["msg"] == msg)
    }
}

pub fn job(id: &str, image: &str, command: &[&str]) -> Value {
    serde_json::json!({"version": 1, "id": id, "image": image, "command": command})
}

/// Runs the docker CLI (tests check the engine independently of deckhand).
pub fn docker(args: &[&str]) -> String {
    let output = Command::new("docker").args(args).output().unwrap();
    assert!(
        output.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Containers and volumes deckhand left for `job_id`.
pub fn leftovers(job_id: &str) -> Vec<String> {
    let filter = format!("label=deckhand.job_id={job_id}");
    let mut names: Vec<String> =
        docker(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"])
            .lines()
            .map(|l| format!("container {l}"))
            .collect();
    names.extend(
        docker(&["volume", "ls", "--filter", &filter, "--format", "{{.Name}}"])
            .lines()
            .map(|l| format!("volume {l}")),
    );
    names
}

/// How long an attempt's workspace may outlive its result: the agent removes
/// it after recording the result (interface.md, "Container").
const WORKSPACE_REMOVAL: Duration = Duration::from_secs(60);

/// Nothing of `job_id`'s is left, within [`WORKSPACE_REMOVAL`] of its result.
pub fn assert_clean(job_id: &str) {
    until_nothing_left(&format!("for {job_id}"), || leftovers(job_id));
}

/// [`assert_clean`] for many jobs, in two asks of Docker instead of two each.
pub fn assert_all_clean<'a>(job_ids: impl IntoIterator<Item = &'a String>) {
    let ours: std::collections::HashSet<&str> = job_ids.into_iter().map(String::as_str).collect();
    // `{{.Label "deckhand.job_id"}} {{.Names}}` (a volume's is `.Name`).
    let list = |what: &[&str], name: &str| {
        let format = format!("{{{{.Label \"deckhand.job_id\"}}}} {{{{.{name}}}}}");
        let mut args = what.to_vec();
        args.extend(["--filter", "label=deckhand.job_id", "--format", &format]);
        docker(&args)
    };
    until_nothing_left("(job id, container or volume)", || {
        let (containers, volumes) = (
            list(&["ps", "-a"], "Names"),
            list(&["volume", "ls"], "Name"),
        );
        containers
            .lines()
            .chain(volumes.lines())
            .filter(|l| l.split(' ').next().is_some_and(|id| ours.contains(id)))
            .map(str::to_owned)
            .collect()
    });
}

/// Polls `left` until it is empty, failing with what it still holds past
/// [`WORKSPACE_REMOVAL`].
fn until_nothing_left(what: &str, mut left: impl FnMut() -> Vec<String>) {
    let start = Instant::now();
    loop {
        let now = left();
        if now.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < WORKSPACE_REMOVAL,
            "left behind {what}: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What a polled condition gives: `true` or `Some(value)` when it holds.
pub trait Ready {
    type Value;
    fn ready(self) -> Option<Self::Value>;
}

impl Ready for bool {
    type Value = ();
    fn ready(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Ready for Option<T> {
    type Value = T;
    fn ready(self) -> Option<T> {
        self
    }
}

/// Polls `condition` every 100 ms until it holds (`true`, or `Some(value)`, which
/// it returns); panics naming `what` after `deadline`. The one way tests wait:
/// never sleep-then-assert.
pub async fn eventually<F, Fut, R>(what: &str, deadline: Duration, condition: F) -> R::Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = R>,
    R: Ready,
{
    within(deadline, condition)
        .await
        .unwrap_or_else(|| panic!("timed out after {deadline:?} waiting for {what}"))
}

/// [`eventually`], but `None` once `deadline` has passed, for a caller that has
/// more to say about what it found than that it waited.
pub async fn within<F, Fut, R>(deadline: Duration, mut condition: F) -> Option<R::Value>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = R>,
    R: Ready,
{
    let start = tokio::time::Instant::now();
    loop {
        if let Some(value) = condition().await.ready() {
            return Some(value);
        }
        if start.elapsed() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A test's own time limit, inside the one nextest gives it
/// (`.config/nextest.toml`): its waits give up with their own message, naming
/// what they waited for, before nextest would end the test without a word.
pub struct Budget {
    end: tokio::time::Instant,
}

impl Budget {
    pub fn new(limit: Duration) -> Budget {
        Budget {
            end: tokio::time::Instant::now() + limit,
        }
    }

    /// The deadline of a wait that needs at most `own`: that, or less, so that
    /// `reserve` is left for the steps after it.
    pub fn deadline(&self, own: Duration, reserve: Duration) -> Duration {
        let left = self
            .end
            .saturating_duration_since(tokio::time::Instant::now());
        own.min(left.saturating_sub(reserve))
    }
}

/// [`eventually`] for the tests that run without a runtime (`exec` and the
/// packaging checks, which only start processes).
pub fn eventually_blocking(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}
