use super::*;
use std::time::Duration;

fn no_env() -> Env {
    Env::from_iter(Vec::<(String, String)>::new())
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, &no_env())
}

fn issues(text: &str, env: &Env) -> Vec<String> {
    Config::parse(text, env)
        .expect_err("config should be invalid")
        .issues()
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// Exactly one issue per expected prefix, no more.
fn assert_issues(found: &[String], expected: &[&str]) {
    for want in expected {
        assert!(
            found.iter().any(|f| f.starts_with(want)),
            "missing {want:?} in {found:#?}"
        );
    }
    assert_eq!(found.len(), expected.len(), "{found:#?}");
}

#[test]
fn an_empty_file_gets_the_defaults() {
    let config = parse("").unwrap();
    assert_eq!(config.agent.slots, 1);
    assert_eq!(config.agent.work_dir, PathBuf::from("/var/lib/deckhand"));
    assert_eq!(config.agent.idle_shutdown, None);
    assert_eq!(config.docker.socket, PathBuf::from("/var/run/docker.sock"));
    assert_eq!(config.queue.wait, Duration::from_secs(20));
    assert_eq!(config.queue.visibility_timeout, Duration::from_secs(300));
    assert_eq!(config.results.prefix, "results/");
    assert_eq!(config.images.pull_timeout, Duration::from_secs(600));
    assert_eq!(config.cache.mount, "/cache");
    assert_eq!(config.drain.stop_grace, Duration::from_secs(10));
    assert_eq!(config.profiles["default"], Profile::default());
}

#[test]
fn the_documented_example_is_valid() {
    let text = include_str!("../../docs/examples/config.toml");
    let config = parse(text).unwrap_or_else(|e| panic!("docs/examples/config.toml: {e}"));
    assert!(config.profiles.contains_key("default"));
    assert!(!config.images.allowed_registries.is_empty());
}

#[test]
fn keys_are_read_with_their_units() {
    let config = parse(
        r#"
        [agent]
        slots = 4
        idle_shutdown_secs = 600
        [queue]
        url = "http://127.0.0.1:4566/000000000000/jobs"
        wait_secs = 5
        [images]
        allowed_registries = ["Registry.Internal:5000"]
        require_digest = true
        [profiles.big]
        memory_mb = 8192
        cpus = 4
        network = "none"
        "#,
    )
    .unwrap();
    assert_eq!(config.agent.slots, 4);
    assert_eq!(config.agent.idle_shutdown, Some(Duration::from_secs(600)));
    assert_eq!(config.queue.wait, Duration::from_secs(5));
    assert_eq!(config.images.allowed_registries, ["registry.internal:5000"]);
    assert!(config.images.require_digest);
    let big = &config.profiles["big"];
    assert_eq!(
        (big.memory_mb, big.cpus, big.network.as_str()),
        (8192, 4.0, "none")
    );
    assert!(
        config.profiles.contains_key("default"),
        "default is always there"
    );
}

#[test]
fn every_invalid_key_is_reported_at_once() {
    let found = issues(
        r#"
        [agent]
        slots = 0
        work_dir = "relative/dir"
        colour = "blue"
        [queue]
        wait_secs = "soon"
        url = "sqs://nope"
        [images]
        allowed_registries = ["not a host"]
        require_digest = "yes"
        [drain]
        stop_grace_secs = 301
        [profiles.default]
        network = "host"
        timeout_secs = 7200
        max_timeout_secs = 3600
        [profiles.Bad]
        [mystery]
        "#,
        &no_env(),
    );
    let expected = [
        "agent.slots: 0 is out of range (1 to 64)",
        "agent.work_dir: \"relative/dir\" must be an absolute path",
        "agent.colour: unknown key",
        "queue.url: must be an http:// or https:// URL",
        "queue.wait_secs: must be a whole number",
        "images.allowed_registries: \"not a host\" is not a registry host[:port]",
        "images.require_digest: must be true or false",
        "drain.stop_grace_secs: 301 is out of range (0 to 300)",
        "profiles.default.timeout_secs: 7200 is above max_timeout_secs (3600)",
        "profiles.default.network: \"host\" is not allowed",
        "profiles.Bad: a profile name is 1 to 64 of [a-z0-9_-]",
        "mystery: unknown section",
    ];
    assert_issues(&found, &expected);
}

#[test]
fn environment_overrides_the_file() {
    let env = Env::from_iter([
        ("DECKHAND_AGENT_SLOTS", "3"),
        ("DECKHAND_QUEUE_URL", "http://127.0.0.1:4566/000000000000/q"),
        (
            "DECKHAND_IMAGES_ALLOWED_REGISTRIES",
            "a.internal, b.internal:5000",
        ),
        ("DECKHAND_PROFILES_DEFAULT_MEMORY_MB", "512"),
        ("DECKHAND_CONFIG", "/somewhere/else.toml"),
        ("PATH", "/bin"),
    ]);
    let config = Config::parse("[agent]\nslots = 1\n", &env).unwrap();
    assert_eq!(config.agent.slots, 3);
    assert_eq!(
        config.queue.url.as_deref(),
        Some("http://127.0.0.1:4566/000000000000/q")
    );
    assert_eq!(
        config.images.allowed_registries,
        ["a.internal", "b.internal:5000"]
    );
    assert_eq!(config.profiles["default"].memory_mb, 512);
}

#[test]
fn a_bad_or_unknown_override_is_named() {
    let env = Env::from_iter([
        ("DECKHAND_AGENT_SLOTS", "many"),
        ("DECKHAND_QUEUE_URLL", "http://x"),
    ]);
    let found = issues("", &env);
    assert_eq!(
        found,
        [
            "agent.slots: must be a whole number",
            "DECKHAND_QUEUE_URLL: names no config key (overrides are DECKHAND_<SECTION>_<KEY>)",
        ]
    );
}

#[test]
fn a_webhook_needs_its_signing_key() {
    let found = issues(
        "[results]\nwebhook_url = \"https://ci.example/hook\"\n",
        &no_env(),
    );
    assert_eq!(
        found,
        ["results.webhook_secret: required when results.webhook_url is set (results are signed)"]
    );
}

#[test]
fn syntax_errors_and_missing_files_name_the_path() {
    let err = Config::load(Path::new("/nonexistent/deckhand.toml"), &no_env()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("config /nonexistent/deckhand.toml: cannot read")
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[agent\nslots = 1").unwrap();
    let err = Config::load(&path, &no_env()).unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn a_section_that_is_not_a_table_is_named() {
    let found = issues("agent = 3\n", &no_env());
    assert_eq!(found, ["agent: must be a table ([section])"]);
}

#[test]
fn bootstrap_keys_are_checked_together() {
    let found = issues(
        r#"
        [secrets]
        bucket = "pool-secrets"
        [images]
        allowed_registries = ["registry.internal"]
        warm = ["registry.internal/ci/rust:latest", "registry.internal/ci/rust:1.83"]
        warm_failure = "sometimes"
        [images.registry_auth]
        "ghcr.io" = "gh-token"
        [cache]
        source = "https://example.com/cache.tgz"
        refresh_secs = -1
        [profiles.deploy]
        secrets = ["npm-token"]
        env_secrets = ["aws-key"]
        "#,
        &no_env(),
    );
    let expected = [
        "secrets.key: required when secrets.bucket is set",
        "images.warm_failure: \"sometimes\" is not one of \"fail\", \"continue\"",
        "images.warm: \"registry.internal/ci/rust:latest\": tag \"latest\" is not allowed",
        "images.registry_auth.ghcr.io: names a registry that is not in images.allowed_registries",
        "cache.source: \"https://example.com/cache.tgz\" must be s3://<bucket>/<key>",
        "cache.refresh_secs: must be a whole number",
        "profiles.deploy.env_secrets: \"aws-key\" is not in this profile's secrets",
    ];
    assert_issues(&found, &expected);
}

#[test]
fn a_complete_bootstrap_config_is_read() {
    let config = parse(
        r#"
        [agent]
        secrets_dir = "/run/deckhand/secrets"
        [secrets]
        bucket = "pool-secrets"
        key = "pools/ci/bundle.json"
        kms_key_id = "alias/ci-pool"
        context = { pool = "ci" }
        [results]
        webhook_url = "https://ci.example/hook"
        webhook_secret = "hook-key"
        [images]
        allowed_registries = ["registry.internal"]
        warm = ["registry.internal/ci/rust:1.83"]
        warm_failure = "continue"
        registry_auth = { "registry.internal" = "registry-cred" }
        [cache]
        source = "s3://ci-cache/libs.tar.zst"
        refresh_secs = 0
        "#,
    )
    .unwrap();
    let bundle = config.secrets.bundle.unwrap();
    assert_eq!(
        (bundle.bucket.as_str(), bundle.key.as_str()),
        ("pool-secrets", "pools/ci/bundle.json")
    );
    assert_eq!(config.secrets.context["pool"], "ci");
    assert_eq!(config.secrets.kms_key_id.as_deref(), Some("alias/ci-pool"));
    assert_eq!(config.images.warm.len(), 1);
    assert_eq!(config.images.warm_failure, WarmFailure::Continue);
    assert_eq!(
        config.images.registry_auth["registry.internal"],
        "registry-cred"
    );
    let source = config.cache.source.unwrap();
    assert_eq!(
        (source.bucket.as_str(), source.key.as_str()),
        ("ci-cache", "libs.tar.zst")
    );
    assert_eq!(config.cache.refresh, None);
}

#[test]
fn a_webhook_secret_needs_a_bundle() {
    let found = issues(
        "[results]\nwebhook_url = \"https://ci.example/hook\"\nwebhook_secret = \"hook-key\"\n",
        &no_env(),
    );
    assert_eq!(
        found,
        [
            "results.webhook_secret: names a secret, and this pool has no secret bundle ([secrets] bucket and key)"
        ]
    );
}

#[test]
fn drain_and_exit_policies() {
    let config = parse(
        "[drain]\non_spot = \"release\"\non_rebalance = \"drain\"\nsafety_margin_secs = 20\n[agent]\non_exit = \"terminate\"\n[imds]\npoll_ms = 500\n",
    )
    .unwrap();
    assert_eq!(config.drain.on_spot, SpotPolicy::Release);
    assert_eq!(config.drain.on_rebalance, RebalancePolicy::Drain);
    assert_eq!(config.drain.safety_margin, Duration::from_secs(20));
    assert_eq!(config.agent.on_exit, OnExit::Terminate);
    assert_eq!(config.imds.poll, Duration::from_millis(500));
    let found = issues(
        "[drain]\non_spot = \"pray\"\n[imds]\npoll_ms = 10\n",
        &no_env(),
    );
    assert_eq!(
        found,
        [
            "imds.poll_ms: 10 is out of range (100 to 5000)",
            "drain.on_spot: \"pray\" is not one of \"release\", \"finish-if-possible\"",
        ]
    );
}

#[test]
fn env_secrets_cannot_shadow_deckhands_variables() {
    let found = issues(
        "[profiles.default]\nsecrets = [\"deckhand-job-id\"]\nenv_secrets = [\"deckhand-job-id\"]\n",
        &no_env(),
    );
    assert_eq!(
        found,
        [
            "profiles.default.env_secrets: \"deckhand-job-id\" would be the variable DECKHAND_JOB_ID, which deckhand sets itself"
        ]
    );
}

#[test]
fn metrics_and_disk_keys_are_checked() {
    let config = parse(
        "[metrics]\nlisten = \"127.0.0.1:9102\"\n[disk]\nmin_free_mb = 100\ngc_free_mb = 500",
    )
    .unwrap();
    assert_eq!(
        config.metrics.listen,
        Some("127.0.0.1:9102".parse().unwrap())
    );
    assert_eq!(
        (config.disk.min_free_mb, config.disk.gc_free_mb),
        (100, 500)
    );
    assert_eq!(parse("").unwrap().metrics.listen, None);
    assert_issues(
        &issues(
            "[metrics]\nlisten = \"localhost\"\n[disk]\nmin_free_mb = 5000\ngc_free_mb = 1000",
            &no_env(),
        ),
        &["metrics.listen", "disk.gc_free_mb"],
    );
}

#[test]
fn role_arns_and_the_credentials_address_are_checked() {
    let config = parse(
        "[credentials]\nlisten = \"127.0.0.1:0\"\nsession_secs = 900\n[profiles.deploy]\nrole_arn = \"arn:aws:iam::123456789012:role/ci/deploy\"",
    )
    .unwrap();
    assert_eq!(
        config.profiles["deploy"].role_arn.as_deref(),
        Some("arn:aws:iam::123456789012:role/ci/deploy")
    );
    assert_eq!(config.credentials.session, Duration::from_secs(900));
    assert_eq!(
        parse("").unwrap().credentials.listen,
        "169.254.170.2:51679".parse().unwrap()
    );
    assert_issues(
        &issues(
            "[credentials]\nlisten = \"nowhere\"\nsession_secs = 60\n[profiles.a]\nrole_arn = \"arn:aws:iam::123:role/x\"\n[profiles.b]\nrole_arn = \"arn:aws:s3:::bucket\"",
            &no_env(),
        ),
        &[
            "credentials.listen",
            "credentials.session_secs",
            "profiles.a.role_arn",
            "profiles.b.role_arn",
        ],
    );
}

#[test]
fn a_profile_whose_longest_job_outlives_the_queue_is_refused() {
    // 41400 + 7200 + 10 + 300 s is past SQS's 43200 s: the message would reappear
    // while the job still runs, and it would run twice.
    let found = issues("[images]\npull_timeout_secs = 7200", &no_env());
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("profiles.default.max_timeout_secs: 41400 s, with"),
        "{found:?}"
    );
    // Lowering the profile's cap is the way out.
    let text = "[images]\npull_timeout_secs = 7200\n[profiles.default]\nmax_timeout_secs = 35000";
    assert!(parse(text).is_ok());
    let found = issues("[profiles.default]\nmax_timeout_secs = 86400", &no_env());
    assert!(
        found[0].contains("86400 is out of range (1 to 41400)"),
        "{found:?}"
    );
}
