//! Properties of the config reader over generated files and environments: it
//! never panics, nothing it accepts breaks a rule of docs/config.md, and every
//! rejection names the key it is about.

use proptest::prelude::*;
use toml::{Table, Value};

use super::*;

/// Every section and key the reader knows, plus one it does not.
const KEYS: &[(&str, &[&str])] = &[
    (
        "agent",
        &[
            "slots",
            "idle_shutdown_secs",
            "instance_id",
            "shutdown_command",
            "lifecycle_hook",
            "work_dir",
            "secrets_dir",
            "bogus",
        ],
    ),
    ("aws", &["region", "endpoint_url", "bogus"]),
    (
        "queue",
        &[
            "url",
            "wait_secs",
            "visibility_timeout_secs",
            "dead_letter_url",
            "bogus",
        ],
    ),
    (
        "results",
        &[
            "bucket",
            "prefix",
            "queue_url",
            "webhook_url",
            "webhook_secret",
            "cancel_poll_secs",
            "log_flush_secs",
            "bogus",
        ],
    ),
    ("disk", &["min_free_mb", "gc_free_mb", "bogus"]),
    (
        "drain",
        &[
            "on_spot",
            "on_rebalance",
            "safety_margin_secs",
            "stop_timeout_secs",
            "stop_grace_secs",
            "log_flush_timeout_secs",
            "bogus",
        ],
    ),
    (
        "log_forwarder",
        &[
            "kind",
            "endpoint",
            "ca_file",
            "token_secret",
            "max_disk_mb",
            "bogus",
        ],
    ),
    ("imds", &["enabled", "endpoint", "poll_ms", "bogus"]),
    (
        "images",
        &[
            "allowed_registries",
            "require_digest",
            "pull_timeout_secs",
            "warm",
            "bogus",
        ],
    ),
    (
        "profiles.default",
        &[
            "memory_mb",
            "cpus",
            "pids",
            "timeout_secs",
            "max_timeout_secs",
            "network",
            "secrets",
            "env_secrets",
            "role_arn",
            "max_log_mb",
            "artifacts_max_mb",
            "input_buckets",
            "bogus",
        ],
    ),
    ("profiles.Big Build", &["memory_mb", "network"]),
];

/// Values that sit on the rules' edges, and values of every other type.
fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => prop_oneof![Just(0i64), Just(1), Just(5), Just(20), Just(64), Just(65), Just(300), Just(43_200), Just(86_400), Just(1 << 24), Just(-1), Just(i64::MAX)]
            .prop_map(Value::Integer),
        1 => any::<i64>().prop_map(Value::Integer),
        1 => prop_oneof![Just(0.0f64), Just(0.005), Just(0.01), Just(1e-10), Just(2.5), Just(512.0), Just(1e300), Just(f64::NAN)]
            .prop_map(Value::Float),
        1 => any::<bool>().prop_map(Value::Boolean),
        3 => prop_oneof![
            Just("host".to_owned()),
            Just("none".to_owned()),
            Just("container:abc".to_owned()),
            Just("http://127.0.0.1:4566".to_owned()),
            Just("ftp://x".to_owned()),
            Just("registry.internal".to_owned()),
            Just("release".to_owned()),
            Just("arn:aws:iam::123456789012:role/ci".to_owned()),
            Just("/var/lib/deckhand".to_owned()),
            "[ -~]{0,24}",
        ]
        .prop_map(Value::String),
        1 => prop::collection::vec("[ -~]{0,12}".prop_map(Value::String), 0..4).prop_map(Value::Array),
    ]
}

/// A file of known sections with some of their keys, each a generated value.
fn config_file() -> impl Strategy<Value = String> {
    let entries = prop::collection::vec((0..KEYS.len(), 0..16usize, value()), 0..24);
    entries.prop_map(|entries| {
        let mut root = Table::new();
        for (section, key, value) in entries {
            let (path, keys) = KEYS[section];
            let key = keys[key % keys.len()];
            let mut table = &mut root;
            for part in path.split('.') {
                table = table
                    .entry(part)
                    .or_insert_with(|| Value::Table(Table::new()))
                    .as_table_mut()
                    .expect("a section is a table");
            }
            table.insert(key.to_owned(), value);
        }
        toml::to_string(&root).expect("a table serializes")
    })
}

/// Now and then an override, ours or a stray one.
fn environment() -> impl Strategy<Value = Vec<(String, String)>> {
    let name = prop_oneof![
        Just("DECKHAND_AGENT_SLOTS".to_owned()),
        Just("DECKHAND_QUEUE_WAIT_SECS".to_owned()),
        Just("DECKHAND_DISK_MIN_FREE_MB".to_owned()),
        Just("DECKHAND_NOT_A_KEY".to_owned()),
        Just("DECKHAND_".to_owned()),
    ];
    prop::collection::vec((name, "[ -~]{0,12}"), 0..3)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_reader_never_panics_and_keeps_its_rules(text in config_file(), env in environment()) {
        let env = Env::from_iter(env);
        match Config::parse(&text, &env) {
            Ok(config) => {
                prop_assert!((1..=64).contains(&config.agent.slots));
                prop_assert!(config.queue.wait.as_secs() <= 20);
                prop_assert!(
                    config.disk.gc_free_mb == 0 || config.disk.gc_free_mb >= config.disk.min_free_mb
                );
                prop_assert!(config.profiles.contains_key("default"));
                for (name, profile) in &config.profiles {
                    prop_assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'));
                    prop_assert!(profile.network != "host" && !profile.network.starts_with("container:"));
                    prop_assert!(profile.memory_mb >= 6);
                    prop_assert!(profile.cpus >= 0.01 && profile.cpus <= 512.0, "cpus {}", profile.cpus);
                    prop_assert!(profile.timeout <= profile.max_timeout);
                    prop_assert!(profile.env_secrets.iter().all(|s| profile.secrets.contains(s)));
                }
                for url in [&config.queue.url, &config.aws.endpoint_url, &config.results.webhook_url]
                    .into_iter()
                    .flatten()
                {
                    prop_assert!(url.starts_with("http://") || url.starts_with("https://"), "{url}");
                }
            }
            Err(error) => {
                let text = error.to_string();
                for issue in error.issues() {
                    prop_assert!(!issue.key.is_empty() && !issue.rule.is_empty());
                    prop_assert!(text.contains(&issue.key), "{} not named in {text}", issue.key);
                }
            }
        }
    }
}

/// Both sides of the rules are reached: the property above is not vacuous.
#[test]
fn the_generator_makes_files_that_pass_as_well_as_ones_that_fail() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..400 {
        let text = config_file().new_tree(&mut runner).unwrap().current();
        match Config::parse(&text, &Env::from_iter(Vec::<(String, String)>::new())) {
            Ok(_) => accepted += 1,
            Err(_) => refused += 1,
        }
    }
    assert!(
        accepted >= 20 && refused >= 20,
        "{accepted} accepted, {refused} refused"
    );
}
