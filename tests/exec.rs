//! `deckhand exec` end to end against the real Docker engine and the local registry.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

#[test]
fn a_passing_job_streams_its_output_and_succeeds() {
    let Some(stack) = Stack::or_skip() else {
        return;
    };
    let config = TestConfig::new(&stack, "");
    let id = unique("pass");
    let run = exec(
        &config,
        &job(
            &id,
            &stack.image,
            &["sh", "-c", "echo hello; echo oops >&2; echo bye"],
        ),
    );
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert_eq!(run.result["status"], "succeeded");
    assert_eq!(run.result["exit_code"], 0);
    assert_eq!(run.result["id"], id.as_str());
    assert_eq!(run.result["attempt"], 1);
    assert_eq!(run.result["version"], 1);
    assert!(
        run.result["image"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}/ci/busybox@sha256:", stack.registry)),
        "the digest that ran is recorded: {}",
        run.result["image"]
    );
    assert_eq!(run.output("stdout"), ["hello", "bye"]);
    assert_eq!(run.output("stderr"), ["oops"]);
    let line = run.logs.iter().find(|l| l["msg"] == "hello").unwrap();
    assert_eq!(line["job_id"], id.as_str());
    assert_eq!(line["level"], "info");
    assert!(line["ts"].as_str().unwrap().ends_with('Z'));
    assert_clean(&id);
}

#[test]
fn a_failing_job_reports_its_exit_code() {
    let Some(stack) = Stack::or_skip() else {
        return;
    };
    let config = TestConfig::new(&stack, "");
    let id = unique("fail");
    let run = exec(
        &config,
        &job(&id, &stack.image, &["sh", "-c", "echo failing; exit 3"]),
    );
    assert_eq!(run.code, Some(3));
    assert_eq!(run.result["status"], "failed");
    assert_eq!(run.result["exit_code"], 3);
    assert_eq!(run.result["reason"], "exited with code 3");
    assert_clean(&id);
}

#[test]
fn a_job_past_its_timeout_is_stopped() {
    let Some(stack) = Stack::or_skip() else {
        return;
    };
    let config = TestConfig::new(&stack, "");
    let id = unique("timeout");
    let mut spec = job(&id, &stack.image, &["sleep", "600"]);
    spec["timeout_secs"] = json!(2);
    let started = std::time::Instant::now();
    let run = exec(&config, &spec);
    assert_eq!(run.code, Some(124), "stderr: {}", run.stderr);
    assert_eq!(run.result["status"], "timed_out");
    assert!(
        run.result["reason"]
            .as_str()
            .unwrap()
            .contains("timeout_secs = 2"),
        "{}",
        run.result["reason"]
    );
    // sleep ignores nothing, but as PID 1 it has no SIGTERM handler: the grace
    // period (2 s in tests) ends in SIGKILL. Far below the job's own 600 s.
    assert!(started.elapsed() < Duration::from_secs(120));
    assert_clean(&id);
}

/// The second source deckhand asks when dockerd's `State.OOMKilled` lags the
/// exit: Docker's own `oom` event for the container.
#[tokio::test]
async fn dockers_oom_event_is_found_for_a_memory_kill_only() {
    let Some(stack) = Stack::or_skip() else {
        return;
    };
    let engine = deckhand::docker::Docker::connect(&deckhand::config::DockerConfig {
        socket: "/var/run/docker.sock".into(),
    })
    .await
    .unwrap();
    let since = chrono::Utc::now().timestamp() - 1;
    let run = |name: &str, command: &[&str]| {
        let mut args = vec!["run", "--name", name, "-m", "32m", "--memory-swap", "32m"];
        args.extend(["--network", &stack.network, &stack.image]);
        args.extend(command);
        std::process::Command::new("docker")
            .args(&args)
            .output()
            .unwrap()
    };
    let (oom, fine) = (unique("oom-event"), unique("no-oom-event"));
    run(&oom, &["sh", "-c", OOM_AFTER_A_SECOND]);
    run(&fine, &["true"]);
    // A busy dockerd logs the event when it gets to it: wait for it, with a
    // generous deadline; the clean exit has its `die` event by then, and no `oom`.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut found = false;
    while !found && tokio::time::Instant::now() < deadline {
        found = engine.oom_event(&oom, since).await.unwrap();
        if !found {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let not_found = engine.oom_event(&fine, since).await.unwrap();
    docker(&["rm", "-f", &oom, &fine]);
    assert!(found, "an oom event for {oom}");
    assert!(!not_found, "no oom event for {fine}");
}

#[test]
fn a_memory_kill_is_reported_as_such() {
    let Some(stack) = Stack::or_skip() else {
        return;
    };
    let config = TestConfig::new(&stack, "");
    let id = unique("oom");
    let mut spec = job(
        &id,
        &stack.image,
        // dd allocates and fills a 256 MiB buffer: far over a 32 MB limit. After a
        // second, as a build would: containerd watches a container's cgroup for
        // OOM kills only once it has started it, and an OOM in the very first
        // milliseconds can beat that on a busy host, leaving Docker none the wiser.
        &["sh", "-c", OOM_AFTER_A_SECOND],
    );
    spec["resources"] = json!({"memory_mb": 32});
    let run = exec(&config, &spec);
    assert_eq!(run.result["status"], "failed", "{}", run.stdout);
    assert_eq!(run.result["exit_code"], 137);
    assert_eq!(run.result["reason"], "killed: out of memory (limit 32 MB)");
    assert_eq!(run.code, Some(137));
    assert_clean(&id);
}

#[test]
fn a_digest_pin_is_pulled_from_the_registry_once() {
    let Some(stack) = Stack::or_skip() else {
        return;
    };
    // A repository of this test's own, so that no other test has it locally.
    let repo = format!("{}/test/{}", stack.registry, unique("pull"));
    let tagged = format!("{repo}:1.0");
    docker(&["tag", &stack.image, &tagged]);
    docker(&["push", "--quiet", &tagged]);
    let digest_ref = docker(&["inspect", "--format", "{{json .RepoDigests}}", &tagged]);
    let digests: Vec<String> = serde_json::from_str(digest_ref.trim()).unwrap();
    let pinned = digests
        .into_iter()
        .find(|d| d.starts_with(&format!("{repo}@")))
        .expect("a digest from the registry");
    docker(&["rmi", &tagged]);

    let config = TestConfig::new(&stack, "[images]\nrequire_digest = true");
    let id = unique("digest");
    let run = exec(&config, &job(&id, &pinned, &["true"]));
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.result["image"], pinned.as_str());
    assert!(
        run.logged("Pulled image."),
        "the image was pulled: {}",
        run.stdout
    );

    let again = exec(&config, &job(&unique("digest"), &pinned, &["true"]));
    assert_eq!(again.code, Some(0));
    assert!(
        !again.logged("Pulled image."),
        "a present digest is not pulled again"
    );

    docker(&["rmi", &pinned]);
    assert_clean(&id);
}

#[test]
fn a_missing_image_is_an_error_not_a_failure() {
    let Some(stack) = Stack::or_skip() else {
        return;
    };
    let config = TestConfig::new(&stack, "");
    let id = unique("nopull");
    let image = format!("{}/ci/does-not-exist:0.0.1", stack.registry);
    let run = exec(&config, &job(&id, &image, &["true"]));
    assert_eq!(run.code, Some(69));
    assert_eq!(run.result["status"], "error");
    assert!(
        run.result["reason"]
            .as_str()
            .unwrap()
            .starts_with(&format!("pull {image}")),
        "{}",
        run.result["reason"]
    );
    assert_clean(&id);
}

#[test]
fn the_container_is_locked_down() {
    let Some(stack) = Stack::or_skip() else {
        return;
    };
    let volume = unique("cache");
    docker(&["volume", "create", &volume]);
    docker(&[
        "run",
        "--rm",
        "-v",
        &format!("{volume}:/c"),
        &stack.image,
        "sh",
        "-c",
        "echo cached > /c/libs.txt",
    ]);
    let config = TestConfig::new(&stack, &format!("[cache]\nvolume = \"{volume}\"\n"));
    let id = unique("lockdown");
    let script = r#"
        grep '^NoNewPrivs:' /proc/self/status
        grep '^CapEff:' /proc/self/status
        echo "CI=$CI JOB=$DECKHAND_JOB_ID ATTEMPT=$DECKHAND_ATTEMPT FOO=$FOO"
        echo "pwd=$(pwd) empty=$(ls -A | wc -l)"
        touch ./made && echo workspace-writable
        test -e /var/run/docker.sock && echo SOCKET-PRESENT || echo no-socket
        cat /cache/libs.txt
        touch /cache/x 2>/dev/null && echo CACHE-WRITABLE || echo cache-read-only
        cat /sys/fs/cgroup/pids.max /sys/fs/cgroup/pids/pids.max 2>/dev/null | head -1
    "#;
    let mut spec = job(&id, &stack.image, &["sh", "-c", script]);
    spec["env"] = json!({"FOO": "bar"});
    spec["resources"] = json!({"pids": 100});
    let run = exec(&config, &spec);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let out = run.output("stdout");
    let expect = [
        "NoNewPrivs:\t1",
        // CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID NET_BIND_SERVICE
        "CapEff:\t00000000000004fb",
        &format!("CI=true JOB={id} ATTEMPT=1 FOO=bar"),
        "pwd=/workspace empty=0",
        "workspace-writable",
        "no-socket",
        "cached",
        "cache-read-only",
        "100",
    ];
    assert_eq!(out, expect);
    assert_clean(&id);
    docker(&["volume", "rm", &volume]);
}

/// Jobs `exec` refuses, each with the start of the reason that names its field.
fn refusals(stack: &Stack) -> Vec<(serde_json::Value, &'static str)> {
    let base = |id: &str| job(id, &stack.image, &["true"]);
    let image = |image: &str| {
        let mut j = base("refused");
        j["image"] = json!(image);
        j
    };
    vec![
        (
            image(&format!("{}/ci/busybox:latest", stack.registry)),
            "image: tag \"latest\" is not allowed; pin a version or a digest",
        ),
        (image(&format!("{}/ci/busybox", stack.registry)), "image: "),
        (
            image("registry.example.com/ci/busybox:1.0"),
            "image: registry \"registry.example.com\" is not allowed",
        ),
        (
            {
                let mut j = base("refused");
                j["env"] = json!({"DECKHAND_JOB_ID": "x"});
                j
            },
            "env.DECKHAND_JOB_ID: names starting DECKHAND_ are reserved",
        ),
        (
            {
                let mut j = base("refused");
                j["colour"] = json!("red");
                j
            },
            "colour: unknown field `colour`",
        ),
        (
            {
                let mut j = base("refused");
                j["resources"] = json!({"memory_mb": 1_000_000});
                j
            },
            "resources.memory_mb: 1000000 is above profile \"default\"'s cap of 2048",
        ),
        (
            {
                let mut j = base("refused");
                j["timeout_secs"] = json!(100_000);
                j
            },
            "timeout_secs: 100000 is out of range",
        ),
    ]
}

#[test]
fn refusals_name_the_field_and_exit_65() {
    let Some(stack) = Stack::or_skip() else {
        return;
    };
    let config = TestConfig::new(&stack, "");
    for (spec, reason) in refusals(&stack) {
        let run = exec(&config, &spec);
        assert_eq!(run.code, Some(65), "{spec}: {}", run.stderr);
        assert_eq!(run.result["status"], "rejected");
        // A message that is not a job by the schema never speaks for the id it
        // names: it would squat it.
        let malformed = reason.starts_with("colour:");
        let id = if malformed { "unknown" } else { "refused" };
        assert_eq!(run.result["id"], id, "{spec}");
        let recorded = run.result["reason"].as_str().unwrap();
        assert!(recorded.starts_with(reason), "{spec}: {recorded}");
        assert!(
            run.stderr.contains(reason),
            "stderr names it too: {}",
            run.stderr
        );
    }

    // Not JSON at all: no id to key it by.
    let path = config.dir.path().join("garbage.json");
    std::fs::write(&path, "{\"version\": 1, \"id\": ").unwrap();
    let output = deckhand()
        .args(["--config", path_str(&config.path), "exec", path_str(&path)])
        .output()
        .unwrap();
    let run = Exec::from_output(output);
    assert_eq!(run.code, Some(65));
    assert!(
        run.result["reason"]
            .as_str()
            .unwrap()
            .starts_with("body: not valid JSON")
    );
    assert_clean("refused");
}

#[test]
fn sigterm_mid_job_interrupts_and_cleans_up() {
    let Some(stack) = Stack::or_skip() else {
        return;
    };
    let config = TestConfig::new(&stack, "");
    let id = unique("sigterm");
    let child = deckhand()
        .args(["--config", path_str(&config.path), "exec"])
        .arg(config.job_file(&job(
            &id,
            &stack.image,
            &["sh", "-c", "echo started; sleep 600"],
        )))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let filter = format!("label=deckhand.job_id={id}");
    eventually_blocking(
        "the job's container to run",
        Duration::from_secs(60),
        || {
            !docker(&["ps", "--filter", &filter, "--format", "{{.Names}}"])
                .trim()
                .is_empty()
        },
    );
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let run = Exec::from_output(child.wait_with_output().unwrap());
    assert_eq!(run.code, Some(130), "{}", run.stderr);
    assert_eq!(run.result["status"], "interrupted");
    assert_eq!(run.result["reason"], "interrupted: SIGTERM received");
    assert_clean(&id);
}

#[test]
fn invalid_config_exits_78_naming_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        "[agent]\nslots = 0\nbogus = 1\n[queue]\nwait_secs = 99\n",
    )
    .unwrap();
    let output = deckhand()
        .args(["--config", path_str(&path), "check", "--no-probe"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for key in [
        "agent.slots: 0 is out of range",
        "agent.bogus: unknown key",
        "queue.wait_secs: 99 is out of range (0 to 20)",
    ] {
        assert!(stderr.contains(key), "{key} in {stderr}");
    }
}

/// `--log` takes a level and `target=level` directives; anything else is refused
/// before the config is read, naming the filter, with exit 78.
#[test]
fn the_log_filter_is_levels_by_target() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, "").unwrap();
    let check = |filter: &str| {
        deckhand()
            .args([
                "--log",
                filter,
                "--config",
                path_str(&path),
                "check",
                "--no-probe",
            ])
            .output()
            .unwrap()
    };
    for good in [
        "info",
        "deckhand::job_output=off,info",
        "warn,deckhand=debug",
    ] {
        let output = check(good);
        assert_eq!(output.status.code(), Some(0), "{good}: {output:?}");
    }
    for bad in ["deckhand=loud", "info,=debug=x"] {
        let output = check(bad);
        assert_eq!(output.status.code(), Some(78), "{bad}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&format!("log filter {bad:?}")), "{stderr}");
    }
}

/// The result says what the job used, read from its cgroup (v1 here) while it
/// ran: CPU seconds of a busy loop, the peak of memory it held, its limit.
#[test]
fn the_result_reports_what_the_job_used() {
    let Some(stack) = Stack::or_skip() else {
        return;
    };
    let config = TestConfig::new(&stack, "[profiles.default]\nmemory_mb = 128");
    let id = unique("usage");
    // ~1 s of CPU, then 24 MB held in a shell variable for 2 s (sampled each second).
    let script = "end=$(($(date +%s) + 2)); while [ $(date +%s) -lt $end ]; do :; done; \
                  x=$(head -c 24000000 /dev/zero | tr '\\0' a); sleep 2; echo ${#x}";
    let run = exec(&config, &job(&id, &stack.image, &["sh", "-c", script]));
    assert_eq!(run.result["status"], "succeeded", "{}", run.stderr);
    let usage = &run.result["usage"]["job"];
    let cpu = usage["cpu_seconds"].as_f64().unwrap();
    assert!(cpu > 0.5, "a busy second or more: {usage}");
    let peak = usage["memory_peak_bytes"].as_u64().unwrap();
    assert!(peak > 24_000_000, "the 24 MB it held: {usage}");
    assert_eq!(usage["memory_limit_bytes"], 128 * 1024 * 1024);
    assert!(
        run.stderr.contains("used "),
        "exec prints the usage: {}",
        run.stderr
    );
}

/// A job that ends before the first sample (0.1 s) is measured too: its
/// container has a cgroup parent of its own (the cgroupfs driver, as here), read
/// after its exit, then removed.
#[test]
fn a_job_shorter_than_the_first_sample_has_its_usage() {
    let Some(stack) = Stack::or_skip() else {
        return;
    };
    let config = TestConfig::new(&stack, "[profiles.default]\nmemory_mb = 128");
    let id = unique("blink");
    let script = "x=$(head -c 24000000 /dev/zero | tr '\\0' a); echo ${#x}";
    let run = exec(&config, &job(&id, &stack.image, &["sh", "-c", script]));
    assert_eq!(run.result["status"], "succeeded", "{}", run.stderr);
    let usage = &run.result["usage"]["job"];
    assert!(usage["cpu_seconds"].as_f64().unwrap() > 0.0, "{usage}");
    let peak = usage["memory_peak_bytes"].as_u64().unwrap();
    assert!(peak > 24_000_000, "the 24 MB it held: {usage}");
    assert_eq!(usage["memory_limit_bytes"], 128 * 1024 * 1024);
    // Its parent is gone from every hierarchy.
    let mut left = Vec::new();
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let Ok(parents) = std::fs::read_dir(hierarchy.path().join("deckhand")) else {
            continue;
        };
        left.extend(
            parents
                .flatten()
                .map(|p| p.path())
                .filter(|p| p.to_string_lossy().contains(&id)),
        );
    }
    assert!(left.is_empty(), "{left:?}");
    assert_clean(&id);
}

#[test]
fn exec_keeps_a_jobs_caches_in_the_host_tier_as_the_agent_does() {
    let Some(stack) = Stack::or_skip() else {
        return;
    };
    // No `[caches] bucket`: the host tier only, under this config's work_dir.
    let config = TestConfig::new(&stack, "");
    let key = unique("deps");
    let cached = |id: &str, script: &str| {
        let mut body = job(id, &stack.image, &["sh", "-c", script]);
        body["workdir"] = json!("/work");
        body["caches"] = json!([{"key": key, "paths": ["target"]}]);
        body
    };
    let cold = unique("exec-cold");
    let run = exec(
        &config,
        &cached(&cold, "mkdir -p target && echo built > target/out"),
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let report = &run.result["caches"][0];
    assert_eq!(report["hit"], "miss", "{}", run.result);
    assert_eq!(report["saved"], true, "{}", run.result);
    let kept = config.dir.path().join("caches/tier/default").join(&key);
    assert!(
        kept.join("tree/work/target/out").is_file(),
        "not in the host tier"
    );

    let warm = unique("exec-warm");
    let run = exec(&config, &cached(&warm, "cat target/out"));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let report = &run.result["caches"][0];
    assert_eq!(report["hit"], "exact", "{}", run.result);
    assert_eq!(report["tier"], "host", "{}", run.result);
    assert_eq!(run.output("stdout"), ["built"]);

    // While another process holds the tier (an agent on this host), exec runs
    // the job without caches and says why.
    let lock = std::fs::File::open(config.dir.path().join("caches/lock")).unwrap();
    let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
    let busy = unique("exec-busy");
    let run = exec(&config, &cached(&busy, "test ! -e target/out"));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.result["caches"][0]["hit"], "miss", "{}", run.result);
    assert!(
        run.stdout.contains("held by another deckhand process"),
        "{}",
        run.stdout
    );
    drop(held);
    assert_all_clean(&[cold, warm, busy]);
}
