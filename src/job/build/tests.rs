use std::collections::BTreeMap;

use serde_json::json;

use super::{ImageBuildSpec, check, prepare};
use crate::config::{Config, Env};

fn config(builder: bool) -> Config {
    let text = format!(
        r#"
        [images]
        allowed_registries = ["registry.internal"]
        {}
        [profiles.default]
        push_registries = ["push.internal:5000"]
        image_build_max_mb = 512
        "#,
        if builder {
            r#"builder = "deckhand-builder:1""#
        } else {
            ""
        }
    );
    Config::parse(&text, &Env::from_iter(Vec::<(String, String)>::new())).unwrap()
}

fn spec(value: serde_json::Value) -> ImageBuildSpec {
    serde_json::from_value(value).unwrap()
}

/// Every problem of `value`, as `field: rule`.
fn problems(value: serde_json::Value) -> Vec<String> {
    let config = config(true);
    let profile = config.profile("default").unwrap();
    check(&spec(value), &config, profile, "default")
        .map(|_| Vec::new())
        .unwrap_or_else(|p| p.into_iter().map(|(f, r)| format!("{f}: {r}")).collect())
}

#[test]
fn a_build_gets_its_defaults_and_the_profile_cap() {
    let config = config(true);
    let profile = config.profile("default").unwrap();
    let build = check(
        &spec(json!({"tags": ["push.internal:5000/ci/app:1"]})),
        &config,
        profile,
        "default",
    )
    .unwrap();
    assert_eq!(build.context, "");
    assert_eq!(build.dockerfile, "Dockerfile");
    assert_eq!(build.max_bytes, 512_000_000);
    assert_eq!(build.tags[0].to_string(), "push.internal:5000/ci/app:1");
}

#[test]
fn each_hostile_field_is_refused_by_name() {
    let tag = "push.internal:5000/ci/app:1";
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (json!({"tags": []}), "image_build.tags: 0 tags; 1 to 8"),
        (
            json!({"tags": (0..9).map(|i| format!("push.internal:5000/a:{i}")).collect::<Vec<_>>()}),
            "image_build.tags: 9 tags; 1 to 8",
        ),
        (
            json!({"tags": ["push.internal:5000/ci/app:latest"]}),
            "image_build.tags[0]: tag \"latest\" is not allowed",
        ),
        (
            json!({"tags": ["push.internal:5000/ci/app"]}),
            "image_build.tags[0]: \"push.internal:5000/ci/app\" has no tag",
        ),
        (
            json!({"tags": ["registry.internal/ci/app:1"]}),
            "push_registries",
        ),
        (
            json!({"tags": [tag, tag]}),
            "image_build.tags[1]: listed twice",
        ),
        (
            json!({"tags": [format!("push.internal:5000/ci/app:1@sha256:{}", "a".repeat(64))]}),
            "image_build.tags[0]: a tag to push names no digest",
        ),
        (
            json!({"tags": [tag], "context": "/etc"}),
            "image_build.context: must be relative",
        ),
        (
            json!({"tags": [tag], "context": "a/../../x"}),
            "image_build.context: must not contain `..`",
        ),
        (
            json!({"tags": [tag], "dockerfile": "a\nb"}),
            "image_build.dockerfile: contains a control character",
        ),
        (
            json!({"tags": [tag], "dockerfile": "."}),
            "image_build.dockerfile: names no file",
        ),
        (
            json!({"tags": [tag], "dockerfile": "x".repeat(2000)}),
            "image_build.dockerfile: at most 1024 bytes",
        ),
        (
            json!({"tags": [tag], "target": "Bad Stage"}),
            "image_build.target:",
        ),
        (
            json!({"tags": [tag], "build_args": {"A-B": "1"}}),
            "image_build.build_args.A-B: a name must match",
        ),
        (
            json!({"tags": [tag], "build_args": {"A": "\u{0}"}}),
            "image_build.build_args.A: the value contains a NUL byte",
        ),
        (
            json!({"tags": [tag], "build_args": {"A": "x".repeat(5000)}}),
            "image_build.build_args.A: the value is at most 4096 bytes",
        ),
        (
            json!({"tags": [tag], "build_args": (0..65).map(|i| (format!("A{i}"), "1".to_owned())).collect::<BTreeMap<_, _>>()}),
            "image_build.build_args: 65 arguments; at most 64",
        ),
    ];
    for (value, expected) in cases {
        let found = problems(value.clone());
        assert!(
            found.iter().any(|p| p.contains(expected)),
            "{value}: expected {expected:?} in {found:?}"
        );
    }
}

#[test]
fn a_pool_without_a_builder_refuses_builds() {
    let config = config(false);
    let profile = config.profile("default").unwrap();
    let refused = check(
        &spec(json!({"tags": ["push.internal:5000/ci/app:1"]})),
        &config,
        profile,
        "default",
    )
    .unwrap_err();
    assert_eq!(refused[0].0, "image_build");
    assert!(refused[0].1.contains("images.builder is not set"));
}

/// A workspace with `files` (path, content) and a build of it.
fn workspace(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, content) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    dir
}

fn prepared(dir: &std::path::Path, value: serde_json::Value) -> Result<super::Prepared, String> {
    let config = config(true);
    let profile = config.profile("default").unwrap();
    let build = check(&spec(value), &config, profile, "default").unwrap();
    prepare(&build, dir, &config).map_err(|refused| refused.to_string())
}

#[test]
fn bases_are_checked_against_the_image_policy_before_the_build() {
    let tag = json!(["push.internal:5000/ci/app:1"]);
    let dir = workspace(&[("Dockerfile", "FROM registry.internal/ci/base:1\nRUN true\n")]);
    let ok = prepared(dir.path(), json!({"tags": tag})).unwrap();
    assert_eq!(ok.bases[0].to_string(), "registry.internal/ci/base:1");
    assert_eq!(
        (ok.context.as_str(), ok.dockerfile.as_str()),
        ("", "Dockerfile")
    );

    for (text, rule) in [
        (
            "FROM docker.io/library/alpine:3\n",
            "image_build.dockerfile: line 1: \"docker.io/library/alpine:3\": registry \"docker.io\" is not allowed",
        ),
        ("FROM alpine:3\n", "names no registry"),
        (
            "FROM registry.internal/ci/base:latest\n",
            "\"latest\" is not allowed",
        ),
        ("FROM registry.internal/ci/base\n", "has no tag"),
        (
            "ARG R=evil.example\nFROM $R/x:1\n",
            "registry \"evil.example\" is not allowed",
        ),
        ("FROM scratch\nCOPY --from=evil.example/x:1 / /\n", "line 2"),
        (
            "FROM registry.internal/ci/base@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n",
            "a base pinned by digest is not supported yet",
        ),
    ] {
        let dir = workspace(&[("Dockerfile", text)]);
        let refused = prepared(dir.path(), json!({"tags": tag})).unwrap_err();
        assert!(refused.contains(rule), "{text:?}: {refused}");
    }
}

#[test]
fn paths_that_lead_out_of_the_workspace_are_refused() {
    let tag = json!(["push.internal:5000/ci/app:1"]);
    let outside = workspace(&[("Dockerfile", "FROM registry.internal/a:1\n")]);
    let dir = workspace(&[("sub/Dockerfile", "FROM registry.internal/a:1\n")]);
    std::os::unix::fs::symlink(
        outside.path().join("Dockerfile"),
        dir.path().join("Dockerfile"),
    )
    .unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("ctx")).unwrap();
    let refused = prepared(dir.path(), json!({"tags": tag})).unwrap_err();
    assert!(
        refused.starts_with("image_build.dockerfile: \"Dockerfile\" leads out of the workspace"),
        "{refused}"
    );
    let refused = prepared(
        dir.path(),
        json!({"tags": tag, "context": "ctx", "dockerfile": "sub/Dockerfile"}),
    )
    .unwrap_err();
    assert!(
        refused.starts_with("image_build.context: \"ctx\" leads out"),
        "{refused}"
    );
    let refused = prepared(dir.path(), json!({"tags": tag, "dockerfile": "nope"})).unwrap_err();
    assert!(refused.contains("is not in the workspace"), "{refused}");
    let refused = prepared(dir.path(), json!({"tags": tag, "dockerfile": "sub"})).unwrap_err();
    assert!(refused.contains("is not a file"), "{refused}");
    let refused = prepared(
        dir.path(),
        json!({"tags": tag, "dockerfile": "sub/Dockerfile", "target": "nope"}),
    )
    .unwrap_err();
    assert!(
        refused.starts_with("image_build.target: the Dockerfile has no stage"),
        "{refused}"
    );
    let huge = workspace(&[("Dockerfile", &"#".repeat(2 << 20))]);
    let refused = prepared(huge.path(), json!({"tags": tag})).unwrap_err();
    assert!(refused.contains("at most 1048576"), "{refused}");
}

#[test]
fn a_dockerfile_too_big_or_a_fifo_is_refused_before_it_is_read() {
    let tag = json!(["push.internal:5000/ci/app:1"]);
    let dir = workspace(&[]);
    // Sparse: its size is what counts, and nothing of it is read.
    let big = std::fs::File::create(dir.path().join("Dockerfile")).unwrap();
    big.set_len(super::dockerfile::MAX_DOCKERFILE_BYTES as u64 + 1)
        .unwrap();
    let refused = prepared(dir.path(), json!({"tags": tag})).unwrap_err();
    assert!(
        refused.starts_with("image_build.dockerfile: 1048577 bytes; at most 1048576"),
        "{refused}"
    );
    // A FIFO would hang the agent's read.
    let fifo = dir.path().join("Pipe");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let refused = prepared(dir.path(), json!({"tags": tag, "dockerfile": "Pipe"})).unwrap_err();
    assert!(refused.contains("\"Pipe\" is not a file"), "{refused}");
}
