//! Properties of the job parser against its documented rules, over generated
//! input: it never panics, and nothing it accepts breaks a rule of
//! docs/interface.md ("Job message, version 1").

use proptest::prelude::*;
use serde_json::{Value, json};

use super::tests::config;
use super::*;
use crate::rules::{RESERVED_CONTAINER_PATHS, check_container_path, valid_env_name, valid_id};

/// Any JSON, a few levels deep, with strings that look like the fields' values
/// and like attacks on them.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        "[ -~]{0,40}".prop_map(Value::from),
        "(/|\\.\\./|[a-z]{1,8}/){0,4}[a-zA-Z0-9_.:@-]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[A-Za-z_]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A job of the schema's fields, each mostly plausible and now and then
/// anything at all, so that both sides of every rule are reached.
fn job_like() -> impl Strategy<Value = Value> {
    let id = prop_oneof![4 => "[A-Za-z0-9][A-Za-z0-9._-]{0,20}", 1 => "[ -~]{0,12}"];
    let image = prop_oneof![
        4 => Just("registry.internal/ci/rust:1.83".to_owned()),
        2 => "registry.internal/[a-z]{1,6}(:[A-Za-z0-9._-]{1,8})?(@sha256:[0-9a-f]{64})?",
        1 => "[ -~]{0,30}",
    ];
    let env_name = prop_oneof![4 => "[A-Z_][A-Z0-9_]{0,8}", 1 => "[ -~]{1,12}"];
    let env = prop::collection::btree_map(env_name, "[ -~]{0,12}", 0..3);
    let resources = (
        prop::option::of(prop_oneof![4 => 6u64..=1024, 1 => 0u64..5000]),
        prop::option::of(prop_oneof![4 => 0.01..2.0f64, 1 => Just(1e-10), 1 => -2.0..600.0f64]),
        prop::option::of(prop_oneof![4 => 1u64..=256, 1 => 0u64..500]),
    );
    let workdir = prop::option::of(prop_oneof![
        4 => "(/[a-z]{1,6}){1,3}",
        1 => "(/[a-z.]{0,6}){1,4}",
        1 => Just("/".to_owned()),
        1 => "[ -~]{0,16}"
    ]);
    let timeout =
        prop::option::of(prop_oneof![4 => 1u64..=3600, 1 => 0u64..5000, 1 => 41_000u64..50_000]);
    let pattern = prop_oneof![4 => "[a-z]{1,5}/\\*\\.[a-z]{1,3}", 1 => "[ -~]{0,16}"];
    let artifacts = prop::collection::vec(pattern, 0..3);
    let extra = prop::option::weighted(0.2, any_json());
    (
        id, image, env, resources, workdir, timeout, artifacts, extra,
    )
        .prop_map(
            |(id, image, env, (memory_mb, cpus, pids), workdir, timeout, artifacts, extra)| {
                let mut job = json!({"version": 1, "id": id, "image": image, "env": env,
                "artifacts": artifacts});
                let mut resources = serde_json::Map::new();
                if let Some(m) = memory_mb {
                    resources.insert("memory_mb".into(), json!(m));
                }
                if let Some(c) = cpus {
                    resources.insert("cpus".into(), json!(c));
                }
                if let Some(p) = pids {
                    resources.insert("pids".into(), json!(p));
                }
                job["resources"] = Value::Object(resources);
                if let Some(w) = workdir {
                    job["workdir"] = json!(w);
                }
                if let Some(t) = timeout {
                    job["timeout_secs"] = json!(t);
                }
                // Now and then a field of any shape, known or not.
                if let Some(Value::Object(extra)) = extra {
                    for (key, value) in extra.into_iter().take(1) {
                        job[key.to_lowercase()] = value;
                    }
                }
                job
            },
        )
}

/// Every documented rule an accepted job must keep.
fn keeps_the_rules(job: &Job, config: &Config) {
    assert!(valid_id(&job.id), "id {:?}", job.id);
    let reference = job.image.to_string();
    assert!(reference.starts_with("registry.internal/"), "{reference}");
    assert!(
        !reference.to_ascii_lowercase().ends_with(":latest"),
        "{reference}"
    );
    for (name, value) in &job.env {
        assert!(
            valid_env_name(name) && name.len() <= MAX_ENV_NAME_BYTES,
            "{name:?}"
        );
        assert!(!name.starts_with("DECKHAND_") && !name.starts_with("AWS_CONTAINER_"));
        assert!(!value.contains('\0'));
    }
    let profile = config.profile(&job.profile).expect("a known profile");
    let r = job.resources;
    assert!((6..=profile.memory_mb).contains(&r.memory_mb), "{r:?}");
    assert!(r.cpus >= MIN_CPUS && r.cpus <= profile.cpus, "{r:?}");
    assert!((1..=profile.pids).contains(&r.pids), "{r:?}");
    assert!(job.timeout.as_secs() >= 1 && job.timeout <= profile.max_timeout);
    assert!(
        check_container_path(&job.workdir).is_ok(),
        "{}",
        job.workdir
    );
    // By path, not by text: `/deva` is not under `/dev`.
    assert!(
        !RESERVED_CONTAINER_PATHS
            .iter()
            .any(|p| crate::rules::is_under(&job.workdir, p)),
        "{}",
        job.workdir
    );
    assert!(job.artifacts.len() <= MAX_PATTERNS);
    for pattern in &job.artifacts {
        let text = pattern.as_str();
        assert!(
            !text.starts_with('/') && !text.split('/').any(|s| s == ".."),
            "{text}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_bytes_are_refused_or_accepted_never_a_panic(body in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = Job::parse(&body, &config());
    }

    #[test]
    fn any_json_is_refused_with_a_field_or_keeps_every_rule(job in any_json()) {
        let config = config();
        match Job::parse(job.to_string().as_bytes(), &config) {
            Ok(job) => keeps_the_rules(&job, &config),
            Err(rejection) => {
                prop_assert!(!rejection.problems.is_empty());
                prop_assert!(rejection.to_string().len() <= MAX_REASON_BYTES);
            }
        }
    }

    #[test]
    fn a_job_like_message_is_refused_with_a_field_or_keeps_every_rule(job in job_like()) {
        let config = config();
        match Job::parse(job.to_string().as_bytes(), &config) {
            Ok(job) => keeps_the_rules(&job, &config),
            Err(rejection) => {
                let reason = rejection.to_string();
                prop_assert!(reason.len() <= MAX_REASON_BYTES);
                prop_assert!(rejection.problems.iter().all(|p| !p.field.is_empty()), "{reason}");
            }
        }
    }
}

/// The job-like generator reaches the accepting side too, or the property above
/// would hold for nothing.
#[test]
fn the_generator_makes_jobs_that_pass_as_well_as_ones_that_fail() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let config = config();
    let mut runner = TestRunner::deterministic();
    let strategy = job_like();
    let accepted = (0..1000)
        .filter(|_| {
            let job = strategy.new_tree(&mut runner).unwrap().current();
            Job::parse(job.to_string().as_bytes(), &config).is_ok()
        })
        .count();
    assert!((10..990).contains(&accepted), "{accepted} of 1000 accepted");
}
