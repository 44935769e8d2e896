//! A job's inputs against moto's S3 and SQS and the real Docker engine: an
//! archive and a single file are in the workspace before the container starts;
//! an escaping entry, a device file, a missing object and an archive over the cap
//! fail the job (the producer's mistake: not retried); a bucket the profile does
//! not allow is rejected naming the field.

mod common;

use common::archives::{raw_tar, tar_gz};
use common::scenario::Scenario;
use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn an_archive_and_a_file_are_in_the_workspace_before_the_job_starts() {
    let Some(s) = Scenario::new("inputs").await else {
        return;
    };
    let bucket = s.pool.bucket.clone();
    let profile = format!("[profiles.default]\ninput_buckets = [\"{bucket}\"]");
    let (_config, _agent) = s.agent("i-inputs", &profile);
    let sources = tar_gz(&[
        ("hello.txt", "hello from the tarball\n"),
        ("lib/util.txt", "a library\n"),
    ]);
    s.aws.put(&bucket, "commits/abc123.tar.gz", sources).await;
    s.aws
        .put(&bucket, "notes/README", b"read me\n".to_vec())
        .await;
    let id = unique("inputs");
    let mut body = job(
        &id,
        &s.stack.image,
        &["sh", "-c", "cat src/hello.txt src/lib/util.txt docs/README"],
    );
    body["inputs"] = json!([
        {"source": format!("s3://{bucket}/commits/abc123.tar.gz"), "path": "src"},
        {"source": format!("s3://{bucket}/notes/README"), "path": "docs/README", "extract": false},
    ]);
    s.send_job(&body).await;
    let result = s.wait_result(&id).await;
    assert_eq!(result["status"], "succeeded", "{result}");
    assert_eq!(
        s.log(&id).await.as_deref(),
        Some("hello from the tarball\na library\nread me\n")
    );
    s.wait_empty().await;
    assert_clean(&id);
}

#[tokio::test(flavor = "multi_thread")]
async fn inputs_that_break_the_rules_fail_the_job_without_running_it() {
    let Some(s) = Scenario::new("inputs-bad").await else {
        return;
    };
    let bucket = s.pool.bucket.clone();
    let profile = format!(
        "[agent]\nslots = 2\n[profiles.default]\ninput_buckets = [\"{bucket}\"]\ninputs_max_mb = 1"
    );
    let (config, agent) = s.agent("i-inputs-bad", &profile);
    use tar::EntryType::{Char, Regular};
    let evil = raw_tar(&[
        ("ok.txt", "fine", Regular),
        ("../../evil.txt", "evil", Regular),
    ]);
    s.aws.put(&bucket, "evil.tar", evil).await;
    let device = raw_tar(&[("dev/mem", "", Char)]);
    s.aws.put(&bucket, "device.tar", device).await;
    let big = "x".repeat(1_500_000);
    s.aws
        .put(&bucket, "big.tar.gz", tar_gz(&[("big.txt", &big)]))
        .await;
    let cases = [
        (
            "escape",
            "evil.tar",
            "the entry \"../../evil.txt\" leads outside its folder",
        ),
        (
            "device",
            "device.tar",
            "the entry \"dev/mem\" is a device file or FIFO",
        ),
        ("missing", "nothing/here.tar.gz", "no such object"),
        (
            "big",
            "big.tar.gz",
            "more than 1 MB unpacked, inputs_max_mb",
        ),
    ];
    let mut ids = Vec::new();
    for (name, key, _) in &cases {
        let id = unique(name);
        let mut body = job(&id, &s.stack.image, &["sh", "-c", "echo ran"]);
        body["inputs"] = json!([{"source": format!("s3://{bucket}/{key}")}]);
        s.send_job(&body).await;
        ids.push(id);
    }
    for (id, (_, key, reason)) in ids.iter().zip(&cases) {
        let result = s.wait_result(id).await;
        assert_eq!(result["status"], "failed", "{key}: {result}");
        let said = result["reason"].as_str().unwrap();
        assert!(
            said.contains(&format!("input s3://{bucket}/{key}")),
            "{said}"
        );
        assert!(said.contains(reason), "{said}");
        assert!(result["exit_code"].is_null(), "no container ran: {result}");
        assert_clean(id);
    }
    s.wait_empty().await;
    assert_eq!(agent.count("ran"), 0, "no job's command ran");
    assert!(!std::path::Path::new("/var/lib/docker/volumes/evil.txt").exists());

    let mut body = job(&unique("elsewhere"), &s.stack.image, &["true"]);
    body["inputs"] = json!([{"source": "s3://someone-elses-bucket/src.tar.gz", "path": "/src"}]);
    let run = exec(&config, &body);
    assert_eq!(run.code, Some(65), "{}", run.stderr);
    let reason = run.result["reason"].as_str().unwrap();
    assert!(
        reason.contains("inputs[0].source: bucket \"someone-elses-bucket\" is not in profile \"default\"'s input_buckets"),
        "{reason}"
    );
    assert!(
        reason.contains("inputs[0].path: must be relative to the workdir"),
        "{reason}"
    );
}
