//! A job's `image_build` against the real engine, the stack's registry and its
//! builder image (`STACK_BUILDER_IMAGE`, made by `scripts/stack up`): a
//! Dockerfile `FROM` the stack's image with a `RUN` step is built, pushed and
//! then runs as a job's image; a base or a tag the pool does not allow is
//! refused before any builder starts; what a `RUN` step can reach (no secret, no
//! credentials endpoint, no network; no keyctl, bpf, ptrace or mount); a cancel
//! and `image_build_max_mb` stop a build.

mod common;

use common::git::{GitServer, TestRepo};
use common::scenario::Scenario;
use common::*;
use serde_json::{Value, json};

fn builder_image() -> String {
    std::env::var("STACK_BUILDER_IMAGE").expect(
        "STACK_BUILDER_IMAGE is not set: scripts/stack up, then eval \"$(scripts/stack env)\"",
    )
}

/// The pool's part of a build: the builder, and the stack's registry to push to.
fn build_config(stack: &Stack, extra: &str) -> String {
    format!(
        "[images]\nbuilder = \"{}\"\n[profiles.default]\npush_registries = [\"{}\"]\n{extra}",
        builder_image(),
        stack.registry
    )
}

/// A job whose command writes `dockerfile` into the workspace, then builds it
/// into `tag`.
fn build_job(stack: &Stack, id: &str, dockerfile: &str, tag: &str) -> Value {
    let mut body = job(
        id,
        &stack.image,
        &["sh", "-c", "printf '%s' \"$DOCKERFILE\" > Dockerfile"],
    );
    body["env"] = json!({ "DOCKERFILE": dockerfile });
    body["image_build"] = json!({ "tags": [tag] });
    body
}

/// `build_job` run by `deckhand exec`, its image pushed to `repository` (with
/// its tag) on the stack's registry.
fn exec_build(
    stack: &Stack,
    config: &TestConfig,
    id: &str,
    dockerfile: &str,
    repository: &str,
) -> Exec {
    let tag = format!("{}/{repository}", stack.registry);
    exec(config, &build_job(stack, id, dockerfile, &tag))
}

/// No container of the job is left, builder included.
fn no_builder_left(id: &str) {
    assert_clean(id);
}

#[test]
fn an_image_is_built_pushed_and_runs_as_a_jobs_image() {
    let Some(stack) = Stack::or_skip() else {
        return;
    };
    let config = TestConfig::new(&stack, &build_config(&stack, ""));
    let id = unique("build");
    let repo = format!("ci/built-{}", id.to_ascii_lowercase());
    let tag = format!("{}/{repo}:1", stack.registry);
    let dockerfile =
        "ARG BASE\nFROM $BASE AS base\nRUN echo built > /hello && echo step ran\nFROM base\n";
    let mut body = build_job(&stack, &id, dockerfile, &tag);
    body["image_build"]["build_args"] = json!({ "BASE": stack.image });
    body["image_build"]["tags"] = json!([tag, format!("{}/{repo}:1.0.0", stack.registry)]);
    let run = exec(&config, &body);
    assert_eq!(
        run.result["status"], "succeeded",
        "{}\n{}",
        run.result, run.stderr
    );
    assert_eq!(run.result["exit_code"], 0);
    let images = run.result["images"]
        .as_array()
        .expect("images in the result");
    assert_eq!(images.len(), 2, "{}", run.result);
    assert_eq!(images[0]["tag"], tag.as_str());
    let digest = images[0]["digest"].as_str().unwrap_or_default();
    assert!(digest.starts_with("sha256:"), "{}", run.result);
    assert_eq!(
        images[1]["digest"], images[0]["digest"],
        "one image, two tags"
    );
    assert!(images[0]["bytes"].as_u64().unwrap() > 0);
    assert!(images[0]["build_ms"].as_u64().is_some() && images[0]["push_ms"].as_u64().is_some());
    let build = run.output("build");
    assert!(
        build.iter().any(|l| l == "step ran"),
        "the RUN step's output, stream build: {build:?}"
    );
    no_builder_left(&id);

    // The engine's copy went with the build: this one comes from the registry.
    let id = unique("run-built");
    let run = exec(&config, &job(&id, &tag, &["cat", "/hello"]));
    assert_eq!(
        run.result["status"], "succeeded",
        "{}\n{}",
        run.result, run.stderr
    );
    assert_eq!(run.output("stdout"), ["built"]);
    let pinned = format!("{}/{repo}@{digest}", stack.registry);
    let run = exec(
        &config,
        &job(&unique("run-pinned"), &pinned, &["cat", "/hello"]),
    );
    assert_eq!(run.result["status"], "succeeded", "{}", run.result);
}

#[test]
fn a_base_outside_the_allowed_registries_is_rejected_before_the_build() {
    let Some(stack) = Stack::or_skip() else {
        return;
    };
    let config = TestConfig::new(&stack, &build_config(&stack, ""));
    let tag = format!("{}/ci/never:1", stack.registry);
    for (dockerfile, rule) in [
        (
            "FROM docker.io/library/alpine:3.19\nRUN true\n".to_owned(),
            "image_build.dockerfile: line 1: \"docker.io/library/alpine:3.19\": registry \"docker.io\" is not allowed",
        ),
        (
            format!("FROM {}\nCOPY --from=alpine:3 /x /x\n", stack.image),
            "image_build.dockerfile: line 2: \"alpine:3\": \"alpine:3\" names no registry",
        ),
        (
            format!("FROM {}:latest\n", stack.image.rsplit_once(':').unwrap().0),
            "tag \"latest\" is not allowed",
        ),
    ] {
        let id = unique("build-base");
        let run = exec(&config, &build_job(&stack, &id, &dockerfile, &tag));
        assert_eq!(run.result["status"], "rejected", "{}", run.result);
        let reason = run.result["reason"].as_str().unwrap();
        assert!(reason.contains(rule), "{reason}");
        assert!(run.output("build").is_empty(), "no builder started");
        no_builder_left(&id);
    }
}

#[test]
fn a_forbidden_tag_or_hostile_field_is_rejected_by_name() {
    let Some(stack) = Stack::or_skip() else {
        return;
    };
    let config = TestConfig::new(&stack, &build_config(&stack, ""));
    let ok_tag = format!("{}/ci/x:1", stack.registry);
    let cases = [
        (
            json!({"tags": [format!("{}/ci/x:latest", stack.registry)]}),
            "image_build.tags[0]: tag \"latest\" is not allowed",
        ),
        (
            json!({"tags": ["elsewhere.example/ci/x:1"]}),
            "image_build.tags[0]: registry \"elsewhere.example\" is not allowed (profile \"default\"'s push_registries",
        ),
        (
            json!({"tags": [ok_tag], "context": "../.."}),
            "image_build.context: must not contain `..`",
        ),
        (
            json!({"tags": [ok_tag], "dockerfile": "/etc/passwd"}),
            "image_build.dockerfile: must be relative",
        ),
        (
            json!({"tags": [ok_tag], "extra": 1}),
            "image_build.extra: unknown field `extra`",
        ),
        (json!([ok_tag]), "image_build: must be an object"),
    ];
    for (build, rule) in cases {
        let id = unique("build-tag");
        let mut body = job(&id, &stack.image, &["true"]);
        body["image_build"] = build;
        let run = exec(&config, &body);
        assert_eq!(run.result["status"], "rejected", "{}", run.result);
        let reason = run.result["reason"].as_str().unwrap();
        assert!(reason.contains(rule), "expected {rule:?} in {reason}");
    }
}

/// A static probe of the syscalls a build must not have (tests/image_build/probe.c).
fn probe_binary() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("probe.c");
    std::fs::write(&source, include_str!("image_build/probe.c")).unwrap();
    let out = dir.path().join("probe");
    let status = std::process::Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&out)
        .arg(&source)
        .status()
        .expect("gcc (scripts/stack up installs it)");
    assert!(status.success());
    std::fs::read(out).unwrap()
}

/// A repository holding the probe and a Dockerfile that runs it, after a step
/// that prints what a build step can see and reach.
fn probe_repo(stack: &Stack) -> (GitServer, TestRepo) {
    let server = GitServer::from_env();
    let repo = TestRepo::new(&server, "build-probe");
    let dockerfile = format!(
        "FROM {}\nCOPY probe /probe\n\
         RUN env | sort; ls /run/secrets 2>&1; echo \"interfaces: $(ls /sys/class/net)\"; \
         wget -q -T 3 -O- http://169.254.170.2:51679/ 2>&1 || echo no credentials endpoint; \
         wget -q -T 3 -O- http://{}/v2/ 2>&1 || echo no registry either\n\
         RUN chmod +x /probe && /probe\n",
        stack.image, stack.registry
    );
    repo.commit(
        &[
            ("Dockerfile", dockerfile.as_bytes()),
            ("probe", &probe_binary()),
        ],
        "a probe",
    );
    (server, repo)
}

#[test]
fn a_build_step_has_no_secret_no_network_and_no_keyctl_bpf_ptrace_or_mount() {
    let Some(stack) = Stack::or_skip() else {
        return;
    };
    let (server, repo) = probe_repo(&stack);
    let config = TestConfig::new(
        &stack,
        &build_config(&stack, &format!("git_remotes = {}", server.remotes())),
    );
    let id = unique("build-probe");
    // No command: the build is the whole job.
    let body = json!({
        "version": 1, "id": id, "image": stack.image,
        "source": {"repo": repo.daemon_url(), "ref": "main"},
        "image_build": {"tags": [format!("{}/ci/probe-{}:1", stack.registry, id.to_ascii_lowercase())]},
    });
    let run = exec(&config, &body);
    let build = run.output("build");
    assert_eq!(
        run.result["status"], "succeeded",
        "{}\n{build:#?}",
        run.result
    );
    assert!(
        run.result["exit_code"].is_null(),
        "no container of the job's ran"
    );
    // EPERM: seccomp's errno for keyctl, bpf and ptrace, the kernel's for a
    // mount or an unshare without CAP_SYS_ADMIN (buildah drops it for RUN).
    // add_key answered ENOSYS on the test host's kernel: refused, whoever did.
    for refused in [
        "keyctl",
        "bpf",
        "ptrace",
        "mount",
        "mount-proc",
        "unshare-mount",
    ] {
        let line = format!("probe {refused}: Operation not permitted");
        assert!(build.contains(&line), "{line:?} in {build:#?}");
    }
    assert!(
        build
            .iter()
            .any(|l| l.starts_with("probe add_key: ") && !l.ends_with("ALLOWED")),
        "{build:#?}"
    );
    assert!(
        build.contains(&"interfaces: lo".to_owned()),
        "loopback only: {build:#?}"
    );
    assert!(
        build.iter().any(|l| l.contains("no credentials endpoint")),
        "{build:#?}"
    );
    assert!(
        build.iter().any(|l| l.contains("no registry either")),
        "{build:#?}"
    );
    assert!(
        !build
            .iter()
            .any(|l| l.starts_with("AWS_") || l.starts_with("DECKHAND_")),
        "no credentials or agent variables: {build:#?}"
    );
    assert!(
        build
            .iter()
            .any(|l| l.contains("/run/secrets") && l.contains("No such file")),
        "{build:#?}"
    );
    no_builder_left(&id);
}

#[test]
fn a_build_past_max_mb_fails_with_the_key() {
    let Some(stack) = Stack::or_skip() else {
        return;
    };
    let config = TestConfig::new(&stack, &build_config(&stack, "image_build_max_mb = 48"));
    let id = unique("build-full");
    let dockerfile = format!(
        "FROM {}\nRUN dd if=/dev/zero of=/big bs=1M count=200\n",
        stack.image
    );
    let run = exec_build(&stack, &config, &id, &dockerfile, "ci/full:1");
    assert_eq!(run.result["status"], "failed", "{}", run.result);
    let reason = run.result["reason"].as_str().unwrap();
    assert!(reason.contains("image_build_max_mb = 48"), "{reason}");
    assert!(run.result.get("images").is_none(), "{}", run.result);
    no_builder_left(&id);
}

#[test]
fn a_dockerfile_error_fails_once_with_its_reason() {
    let Some(stack) = Stack::or_skip() else {
        return;
    };
    let config = TestConfig::new(&stack, &build_config(&stack, ""));
    let id = unique("build-err");
    let dockerfile = format!("FROM {}\nRUN echo about to fail; exit 3\n", stack.image);
    let run = exec_build(&stack, &config, &id, &dockerfile, "ci/err:1");
    assert_eq!(run.result["status"], "failed", "{}", run.result);
    let reason = run.result["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("the image build failed: Error: building at STEP"),
        "{reason}"
    );
    assert_eq!(run.result["exit_code"], 0, "the command's own exit");
    no_builder_left(&id);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_a_build() {
    let Some(s) = Scenario::new("build-cancel").await else {
        return;
    };
    let extra = format!(
        "[queue]\nvisibility_timeout_secs = 600\n{}",
        build_config(&s.stack, "")
    );
    let (config, agent) = s.agent("i-build-cancel", &extra);
    let id = unique("build-cancel");
    let dockerfile = format!("FROM {}\nRUN echo building; sleep 600\n", s.stack.image);
    s.send_job(&build_job(
        &s.stack,
        &id,
        &dockerfile,
        &format!("{}/ci/cancelled:1", s.stack.registry),
    ))
    .await;
    agent.wait_log("Image build started.", LONG).await;
    let output = deckhand_with(&config, &["cancel", &id, "--reason", "not needed"]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result = s.wait_result(&id).await;
    assert_eq!(result["status"], "cancelled", "{result}");
    assert_eq!(result["reason"], "cancelled: not needed");
    s.wait_empty().await;
    no_builder_left(&id);
}

#[test]
fn a_build_past_the_jobs_timeout_is_stopped_timed_out() {
    let Some(stack) = Stack::or_skip() else {
        return;
    };
    let config = TestConfig::new(&stack, &build_config(&stack, ""));
    let id = unique("build-slow");
    let dockerfile = format!("FROM {}\nRUN echo building; sleep 600\n", stack.image);
    let mut body = build_job(
        &stack,
        &id,
        &dockerfile,
        &format!("{}/ci/slow:1", stack.registry),
    );
    body["timeout_secs"] = json!(8);
    let started = std::time::Instant::now();
    let run = exec(&config, &body);
    assert_eq!(run.result["status"], "timed_out", "{}", run.result);
    assert!(started.elapsed() < LONG, "stopped, not waited for");
    assert!(run.output("build").iter().any(|l| l == "building"));
    no_builder_left(&id);
}

#[test]
fn a_registry_that_refuses_the_push_fails_the_job_with_its_reason() {
    let Some(stack) = Stack::or_skip() else {
        return;
    };
    // The registry behind htpasswd, with no registry_auth for it: refused.
    let auth_registry = std::env::var("STACK_AUTH_REGISTRY").unwrap();
    let extra = format!(
        "[images]\nbuilder = \"{}\"\n[profiles.default]\npush_registries = [\"{auth_registry}\"]\n",
        builder_image()
    );
    let config = TestConfig::new(&stack, &extra);
    let id = unique("build-refused");
    let dockerfile = format!("FROM {}\nRUN true\n", stack.image);
    let run = exec(
        &config,
        &build_job(
            &stack,
            &id,
            &dockerfile,
            &format!("{auth_registry}/ci/refused:1"),
        ),
    );
    assert_eq!(run.result["status"], "failed", "{}", run.result);
    let reason = run.result["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!(
            "the registry refused the push of {auth_registry}/ci/refused:1: "
        )),
        "{reason}"
    );
    no_builder_left(&id);
}

#[test]
fn a_builder_that_cannot_start_is_an_error() {
    let Some(stack) = Stack::or_skip() else {
        return;
    };
    let extra = format!(
        "[images]\nbuilder = \"deckhand-builder:absent\"\n[profiles.default]\npush_registries = [\"{}\"]\n",
        stack.registry
    );
    let config = TestConfig::new(&stack, &extra);
    let id = unique("build-nobuilder");
    let dockerfile = format!("FROM {}\nRUN true\n", stack.image);
    let run = exec_build(&stack, &config, &id, &dockerfile, "ci/x:1");
    assert_eq!(run.result["status"], "error", "{}", run.result);
    let reason = run.result["reason"].as_str().unwrap();
    assert!(
        reason.contains("images.builder \"deckhand-builder:absent\" is not on this host"),
        "{reason}"
    );
    no_builder_left(&id);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_drain_stops_a_build_and_hands_the_job_back() {
    let Some(s) = Scenario::new("build-drain").await else {
        return;
    };
    let extra = format!(
        "[queue]\nvisibility_timeout_secs = 600\n[drain]\nstop_timeout_secs = 0\nstop_grace_secs = 0\n{}",
        build_config(&s.stack, "")
    );
    let (_config, mut agent) = s.agent("i-build-drain", &extra);
    let id = unique("build-drain");
    let dockerfile = format!("FROM {}\nRUN echo building; sleep 600\n", s.stack.image);
    let tag = format!("{}/ci/drained:1", s.stack.registry);
    s.send_job(&build_job(&s.stack, &id, &dockerfile, &tag))
        .await;
    agent.wait_log("Image build started.", LONG).await;
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(agent.wait_exit(LONG).await, Some(0));
    let attempt = s
        .attempt(&id, 1)
        .await
        .expect("the interrupted attempt is recorded");
    assert_eq!(attempt["status"], "interrupted", "{attempt}");
    assert_eq!(attempt["reason"], "interrupted: SIGTERM received");
    no_builder_left(&id);
}
