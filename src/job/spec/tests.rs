use super::*;
use crate::config::Env;
use serde_json::json;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

pub(super) fn config() -> Config {
    let text = r#"
        [images]
        allowed_registries = ["registry.internal"]
        [cache]
        volume = "ci-cache"
        [profiles.default]
        memory_mb = 1024
        cpus = 2.0
        pids = 256
        timeout_secs = 600
        max_timeout_secs = 3600
        [profiles.offline]
        network = "none"
    "#;
    Config::parse(text, &Env::from_iter(Vec::<(String, String)>::new())).unwrap()
}

fn base() -> serde_json::Value {
    json!({"version": 1, "id": "build-812-unit", "image": "registry.internal/ci/rust:1.83"})
}

fn with(field: &str, value: serde_json::Value) -> serde_json::Value {
    let mut job = base();
    job[field] = value;
    job
}

fn parse(job: &serde_json::Value) -> Result<Job, Rejection> {
    Job::parse(job.to_string().as_bytes(), &config())
}

/// The rejection's text, which must name `field`.
fn rejected(job: serde_json::Value, field: &str) -> String {
    let rejection = parse(&job).expect_err("job should be rejected");
    let text = rejection.to_string();
    assert!(
        rejection.problems.iter().any(|p| p.field == field),
        "expected a problem with field {field:?}, got: {text}"
    );
    text
}

#[test]
fn a_minimal_job_gets_the_profile_defaults() {
    let job = parse(&base()).unwrap();
    assert_eq!(job.id, "build-812-unit");
    assert_eq!(job.profile, "default");
    assert_eq!(job.timeout, Duration::from_secs(600));
    assert_eq!(
        job.resources,
        Resources {
            memory_mb: 1024,
            cpus: 2.0,
            pids: 256
        }
    );
    assert_eq!(job.workdir, "/workspace");
    assert_eq!(job.network, "bridge");
    assert_eq!(job.command, None);
}

#[test]
fn a_full_job_is_accepted() {
    let job = parse(&json!({
        "version": 1,
        "id": "a.b_c-1",
        "image": format!("registry.internal/ci/rust:1.83@{DIGEST}"),
        "command": ["sh", "-c", "make test"],
        "env": {"RUST_LOG": "debug", "_X": "1"},
        "profile": "offline",
        "timeout_secs": 3600,
        "resources": {"memory_mb": 512, "cpus": 0.5, "pids": 64},
        "workdir": "/src/app"
    }))
    .unwrap();
    assert_eq!(job.network, "none");
    assert_eq!(job.timeout, Duration::from_secs(3600));
    assert_eq!(job.resources.memory_mb, 512);
    assert_eq!(job.workdir, "/src/app");
    assert_eq!(job.image.digest.as_deref(), Some(DIGEST));
}

#[test]
fn malformed_json_is_named() {
    let err = Job::parse(b"{not json", &config()).unwrap_err();
    assert_eq!(err.id, None);
    assert_eq!(err.problems[0].field, "body");
    assert!(err.to_string().starts_with("body: not valid JSON"), "{err}");

    let err = Job::parse(b"[1, 2]", &config()).unwrap_err();
    assert_eq!(err.to_string(), "body: must be a JSON object");
}

#[test]
fn unknown_fields_are_refused() {
    let text = rejected(with("imagee", json!("x")), "imagee");
    assert!(text.contains("unknown field `imagee`"), "{text}");
    let text = rejected(with("resources", json!({"gpus": 1})), "resources.gpus");
    assert!(text.contains("unknown field `gpus`"), "{text}");
}

#[test]
fn a_policy_refusal_is_recorded_under_the_jobs_id() {
    let err = parse(&with("image", json!("elsewhere.example/ci/rust:1.83"))).unwrap_err();
    assert_eq!(err.id.as_deref(), Some("build-812-unit"));
}

#[test]
fn a_malformed_message_never_speaks_for_the_id_it_names() {
    // Each would otherwise squat the id: the real job sent after would be deleted
    // unrun, its id already holding a terminal result.
    let squatters = [
        with("bogus", json!(1)),
        with("timeout_secs", json!("ten")),
        with("resources", json!({"gpus": 1})),
        with("version", json!(2)),
        {
            let mut job = base();
            job.as_object_mut().unwrap().remove("image");
            job
        },
    ];
    for message in squatters {
        let err = parse(&message).unwrap_err();
        assert_eq!(err.id, None, "{message} -> {err}");
    }
}

#[test]
fn missing_and_mistyped_fields_are_named() {
    let mut job = base();
    job.as_object_mut().unwrap().remove("image");
    let text = rejected(job, "body");
    assert!(text.contains("missing field `image`"), "{text}");

    let text = rejected(with("timeout_secs", json!("ten")), "timeout_secs");
    assert!(text.contains("invalid type"), "{text}");
    let text = rejected(with("env", json!({"A": 1})), "env.A");
    assert!(text.contains("invalid type"), "{text}");
}

#[test]
fn version_must_be_one() {
    let text = rejected(with("version", json!(2)), "version");
    assert!(text.contains("unsupported version 2"), "{text}");
}

#[test]
fn id_pattern() {
    for bad in [
        "",
        "-lead",
        ".lead",
        "has space",
        "sl/ash",
        &"x".repeat(129),
    ] {
        let text = rejected(with("id", json!(bad)), "id");
        assert!(text.contains("does not match"), "{bad:?}: {text}");
    }
    for good in ["a", "A.b_c-9", &"x".repeat(128)] {
        assert!(parse(&with("id", json!(good))).is_ok(), "{good:?}");
    }
}

#[test]
fn image_policy() {
    let cases = [
        (
            "registry.internal/ci/rust:latest",
            "tag \"latest\" is not allowed; pin a version or a digest",
        ),
        ("registry.internal/ci/rust", "has no tag"),
        ("ghcr.io/ci/rust:1.0", "registry \"ghcr.io\" is not allowed"),
        ("rust:1.83", "names no registry"),
    ];
    for (image, rule) in cases {
        let text = rejected(with("image", json!(image)), "image");
        assert!(text.starts_with("image: "), "{text}");
        assert!(text.contains(rule), "{image}: {text}");
    }
}

#[test]
fn env_names_and_reserved_prefixes() {
    let text = rejected(with("env", json!({"1BAD": "x"})), "env.1BAD");
    assert!(
        text.contains("must match ^[A-Za-z_][A-Za-z0-9_]*$"),
        "{text}"
    );
    let text = rejected(with("env", json!({"WITH-DASH": "x"})), "env.WITH-DASH");
    assert!(text.contains("must match"), "{text}");
    let text = rejected(
        with("env", json!({"DECKHAND_JOB_ID": "x"})),
        "env.DECKHAND_JOB_ID",
    );
    assert!(
        text.contains("names starting DECKHAND_ are reserved"),
        "{text}"
    );
    let text = rejected(
        with(
            "env",
            json!({"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://x"}),
        ),
        "env.AWS_CONTAINER_CREDENTIALS_FULL_URI",
    );
    assert!(
        text.contains("names starting AWS_CONTAINER_ are reserved"),
        "{text}"
    );
    let text = rejected(with("env", json!({"NUL": "a\u{0}b"})), "env.NUL");
    assert!(text.contains("NUL byte"), "{text}");
}

#[test]
fn command_rules() {
    let text = rejected(with("command", json!([])), "command");
    assert!(text.contains("must not be empty"), "{text}");
    let text = rejected(with("command", json!("make test")), "command");
    assert!(text.contains("invalid type"), "{text}");
}

#[test]
fn secrets_need_a_profile_that_allows_them() {
    let text = rejected(with("secrets", json!(["npm-token"])), "secrets.npm-token");
    assert!(
        text.contains("not allowed by profile \"default\""),
        "{text}"
    );
}

#[test]
fn unknown_profile_lists_the_known_ones() {
    let text = rejected(with("profile", json!("gpu")), "profile");
    assert!(
        text.contains("unknown profile \"gpu\"; this pool has: default, offline"),
        "{text}"
    );
}

#[test]
fn timeout_bounds_and_profile_cap() {
    let text = rejected(with("timeout_secs", json!(0)), "timeout_secs");
    assert!(text.contains("0 is out of range (1 to 41400)"), "{text}");
    let text = rejected(with("timeout_secs", json!(86_401)), "timeout_secs");
    assert!(text.contains("out of range"), "{text}");
    let text = rejected(with("timeout_secs", json!(7200)), "timeout_secs");
    assert!(
        text.contains("above profile \"default\"'s cap of 3600"),
        "{text}"
    );
    let text = rejected(with("timeout_secs", json!(-1)), "timeout_secs");
    assert!(text.contains("invalid value"), "{text}");
}

#[test]
fn resources_may_not_exceed_the_profile() {
    let text = rejected(
        with("resources", json!({"memory_mb": 4096})),
        "resources.memory_mb",
    );
    assert!(
        text.contains("4096 is above profile \"default\"'s cap of 1024"),
        "{text}"
    );
    let text = rejected(
        with("resources", json!({"memory_mb": 2})),
        "resources.memory_mb",
    );
    assert!(text.contains("below Docker's minimum"), "{text}");
    let text = rejected(with("resources", json!({"cpus": 8.0})), "resources.cpus");
    assert!(text.contains("cap of 2"), "{text}");
    let text = rejected(with("resources", json!({"cpus": 0})), "resources.cpus");
    assert!(text.contains("below Docker's minimum of 0.01"), "{text}");
    // NanoCpus would round this to 0, which Docker reads as no limit at all.
    let text = rejected(with("resources", json!({"cpus": 1e-10})), "resources.cpus");
    assert!(text.contains("below Docker's minimum of 0.01"), "{text}");
    assert!(parse(&with("resources", json!({"cpus": 0.01}))).is_ok());
    let text = rejected(with("resources", json!({"pids": 100000})), "resources.pids");
    assert!(text.contains("cap of 256"), "{text}");
    let text = rejected(with("resources", json!({"pids": 0})), "resources.pids");
    assert!(text.contains("at least 1"), "{text}");
}

#[test]
fn workdir_rules() {
    let cases = [
        ("relative", "must be an absolute path"),
        ("/", "must not be the root directory"),
        ("/a/../etc", "must be normalised"),
        ("/a//b", "must be normalised"),
        ("/proc/self", "inside /proc, which is reserved"),
        ("/run/secrets", "inside /run/secrets"),
        ("/cache/x", "inside the cache mount /cache"),
        ("/a:b", "not a usable path"),
    ];
    for (workdir, rule) in cases {
        let text = rejected(with("workdir", json!(workdir)), "workdir");
        assert!(text.contains(rule), "{workdir}: {text}");
    }
}

#[test]
fn every_problem_is_reported_together() {
    let err = parse(&json!({
        "version": 1,
        "id": "ok-id",
        "image": "registry.internal/ci/rust:latest",
        "env": {"DECKHAND_X": "1"},
        "timeout_secs": 0,
        "workdir": "rel"
    }))
    .unwrap_err();
    let fields: Vec<&str> = err.problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        ["image", "env.DECKHAND_X", "timeout_secs", "workdir"]
    );
}

#[test]
fn a_secret_listed_twice_is_named() {
    let text = rejected(
        with("secrets", json!(["npm-token", "npm-token"])),
        "secrets.npm-token",
    );
    assert!(text.contains("listed twice"), "{text}");
}

#[test]
fn a_rejection_is_bounded_and_escaped_whatever_it_echoes() {
    let huge_key = "K".repeat(200_000);
    let mut job = base();
    job["env"] = json!({ huge_key.clone(): "v", "NUL\u{0}KEY": "v" });
    let err = parse(&job).unwrap_err();
    let reason = err.to_string();
    assert!(reason.len() <= MAX_REASON_BYTES, "{} bytes", reason.len());
    assert!(!reason.chars().any(char::is_control), "{reason:?}");
    assert!(reason.starts_with("env."), "{reason}");

    let mut squatter = base();
    squatter[&huge_key] = json!(1);
    let reason = parse(&squatter).unwrap_err().to_string();
    assert!(reason.len() <= MAX_REASON_BYTES, "{} bytes", reason.len());
}

#[test]
fn retry_and_expected_secs_name_their_rule_and_are_capped() {
    // Too many codes, a code that is success, a code past 255.
    let many: Vec<i64> = (1..=17).collect();
    let text = rejected(
        with("retry", json!({"exit_codes": many, "max": 1})),
        "retry.exit_codes",
    );
    assert!(text.contains("17 codes; list 1 to 16"), "{text}");
    let text = rejected(
        with("retry", json!({"exit_codes": [], "max": 1})),
        "retry.exit_codes",
    );
    assert!(text.contains("0 codes"), "{text}");
    for code in [0, 256, -1] {
        let text = rejected(
            with("retry", json!({"exit_codes": [code], "max": 1})),
            "retry.exit_codes",
        );
        assert!(
            text.contains(&format!("{code} is not an exit code that fails")),
            "{text}"
        );
    }
    let text = rejected(
        with("retry", json!({"exit_codes": [75], "max": 0})),
        "retry.max",
    );
    assert!(text.contains("must be at least 1"), "{text}");
    // Unknown keys and a max past u32 are the schema's.
    rejected(
        with(
            "retry",
            json!({"exit_codes": [75], "max": 1, "forever": true}),
        ),
        "retry.forever",
    );
    rejected(
        with(
            "retry",
            json!({"exit_codes": [75], "max": 5_000_000_000u64}),
        ),
        "retry.max",
    );
    // The profile's max_retries (default 2) caps what a job asks.
    let job = parse(&with("retry", json!({"exit_codes": [75], "max": 9}))).unwrap();
    assert_eq!(job.retry.unwrap().max, 2);
    // expected_secs: 1 to the job's timeout.
    for secs in [0, 1_000_000] {
        let text = rejected(with("expected_secs", json!(secs)), "expected_secs");
        assert!(text.contains("out of range"), "{text}");
    }
    let job = parse(&with("expected_secs", json!(30))).unwrap();
    assert_eq!(job.expected, Some(Duration::from_secs(30)));
}
