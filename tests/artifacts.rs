//! Artifacts against moto's S3 and SQS and the real Docker engine: globs, a
//! symlink to a host file, a file over the profile's cap, a pattern matching
//! nothing; patterns that would leave the workdir are refused naming the field;
//! `deckhand artifacts` downloads and checks them.

mod common;

use std::collections::BTreeMap;

use common::scenario::Scenario;
use common::*;
use serde_json::json;
use sha2::{Digest, Sha256};

/// The artifacts a result lists: path -> (bytes, SHA-256).
fn listed(result: &serde_json::Value) -> BTreeMap<String, (u64, String)> {
    result["artifacts"]
        .as_array()
        .expect("artifacts listed")
        .iter()
        .map(|a| {
            let path = a["path"].as_str().unwrap().to_owned();
            (
                path,
                (
                    a["bytes"].as_u64().unwrap(),
                    a["sha256"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect()
}

/// The four files the job's patterns match and that may go up.
fn expected_listing() -> BTreeMap<String, (u64, String)> {
    [
        ("dist/app.bin", "app\n"),
        ("dist/sub/lib.bin", "lib\n"),
        ("reports/a.xml", "<a/>\n"),
        ("reports/b.xml", "<b/>\n"),
    ]
    .into_iter()
    .map(|(path, content)| {
        let sha = hex::encode(Sha256::digest(content.as_bytes()));
        (path.to_owned(), (content.len() as u64, sha))
    })
    .collect()
}

/// The symlink and the file over the cap are left out, each with its reason.
fn assert_left_out(result: &serde_json::Value) {
    let left_out = result["artifacts_left_out"].as_array().unwrap();
    let reason = |path: &str| {
        left_out
            .iter()
            .find(|l| l["path"] == path)
            .map(|l| l["reason"].as_str().unwrap().to_owned())
            .unwrap_or_else(|| panic!("{path} not left out: {left_out:?}"))
    };
    assert!(
        reason("dist/passwd.bin").contains("a symlink"),
        "{left_out:?}"
    );
    assert!(
        reason("dist/big.bin").contains("artifacts_max_mb = 1 reached"),
        "{left_out:?}"
    );
    assert!(
        reason("dist/odd\u{fffd}.bin").contains("not UTF-8"),
        "{left_out:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn matched_files_are_uploaded_listed_and_checked_on_the_way_down() {
    let Some(s) = Scenario::new("artifacts").await else {
        return;
    };
    let (config, _agent) = s.agent("i-artifacts", "[profiles.default]\nartifacts_max_mb = 1");
    let id = unique("artifacts");
    let script = "mkdir -p dist/sub reports \
        && echo app > dist/app.bin && echo lib > dist/sub/lib.bin \
        && echo '<a/>' > reports/a.xml && echo '<b/>' > reports/b.xml \
        && ln -s /etc/passwd dist/passwd.bin \
        && echo odd > \"dist/odd$(printf '\\377').bin\" \
        && head -c 2000000 /dev/zero > dist/big.bin \
        && echo built; exit 3";
    let mut body = job(&id, &s.stack.image, &["sh", "-c", script]);
    body["artifacts"] = json!(["dist/**/*.bin", "reports/*.xml", "coverage/*.html"]);
    s.send_job(&body).await;

    let result = s.wait_result(&id).await;
    assert_eq!(
        result["status"], "failed",
        "a failed job's artifacts go up too: {result}"
    );
    assert_eq!(listed(&result), expected_listing(), "{result}");
    assert_eq!(result["artifacts_unmatched"], json!(["coverage/*.html"]));
    assert_left_out(&result);

    let bucket = &s.pool.bucket;
    let app = s
        .aws
        .object(bucket, &format!("{}artifacts/dist/app.bin", keys::job(&id)))
        .await;
    assert_eq!(app.as_deref(), Some(&b"app\n"[..]));
    let passwd = s
        .aws
        .object(
            bucket,
            &format!("{}artifacts/dist/passwd.bin", keys::job(&id)),
        )
        .await;
    assert!(
        passwd.is_none(),
        "a symlink is never followed to a host file"
    );

    let out = tempfile::tempdir().unwrap();
    let downloaded = deckhand_with(&config, &["artifacts", &id, "--out", path_str(out.path())]);
    assert_eq!(
        downloaded.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&downloaded.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(out.path().join("dist/sub/lib.bin")).unwrap(),
        "lib\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.path().join("reports/b.xml")).unwrap(),
        "<b/>\n"
    );
    assert!(!out.path().join("dist/passwd.bin").exists());
    s.wait_empty().await;
    assert_clean(&id);
    let staging = config.dir.path().join("artifacts");
    assert!(
        !staging.exists() || std::fs::read_dir(&staging).unwrap().next().is_none(),
        "the staged copies are removed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn patterns_that_leave_the_workdir_are_refused_naming_the_field() {
    let Some(stack) = Stack::or_skip() else {
        return;
    };
    let config = TestConfig::new(&stack, "");
    let mut body = job(&unique("escape"), &stack.image, &["true"]);
    body["artifacts"] = json!(["/etc/passwd", "dist/../../x", "ok/*.bin"]);
    let run = exec(&config, &body);
    assert_eq!(run.code, Some(65), "{}", run.stderr);
    let reason = run.result["reason"].as_str().unwrap();
    assert!(
        reason.contains("artifacts[0]: must be relative to the workdir"),
        "{reason}"
    );
    assert!(
        reason.contains("artifacts[1]: must not contain `..`"),
        "{reason}"
    );
    assert!(!reason.contains("artifacts[2]"), "{reason}");
    let many: Vec<String> = (0..65).map(|n| format!("f{n}")).collect();
    body["artifacts"] = json!(many);
    let run = exec(&config, &body);
    assert!(
        run.result["reason"]
            .as_str()
            .unwrap()
            .contains("artifacts: 65 patterns; at most 64")
    );
}
