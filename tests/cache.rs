//! The code and library cache volume, against moto's S3 and the real Docker engine:
//! extracted once, reused across a restart, swapped for new jobs while a running one
//! keeps its own; an archive that escapes the volume is refused.

mod common;

use std::path::Path;

use common::agent::AgentProcess;
use common::archives::{raw_tar, tar_gz};
use common::boot::boot_failure;
use common::scenario::Scenario;
use common::*;

fn cache_volumes(source: &str) -> Vec<String> {
    docker(&[
        "volume",
        "ls",
        "--filter",
        &format!("label=deckhand.cache.source={source}"),
        "--format",
        "{{.Name}}",
    ])
    .lines()
    .map(str::to_owned)
    .collect()
}

/// A job sees the cache's files, and cannot write there.
async fn a_job_reads_it_read_only(s: &Scenario, agent: &AgentProcess) {
    let Scenario { stack, aws, pool } = s;
    let id = unique("reads-cache");
    let script = "cat /cache/version.txt /cache/lib/dep.txt; touch /cache/x 2>/dev/null && echo WRITABLE || echo read-only";
    aws.send_job(
        &pool.queue_url,
        &job(&id, &stack.image, &["sh", "-c", script]),
    )
    .await;
    agent.wait_log("Result recorded.", LONG).await;
    let log = aws.object(&pool.bucket, &keys::log(&id)).await.unwrap();
    assert_eq!(
        String::from_utf8(log).unwrap(),
        "v1\na library\nread-only\n"
    );
}

/// Creates `name` in the workspace volume of the running job `job_id`.
fn touch_in_workspace(job_id: &str, name: &str) {
    let workspace = docker(&[
        "volume",
        "ls",
        "--filter",
        &format!("label=deckhand.job_id={job_id}"),
        "--format",
        "{{.Name}}",
    ]);
    let mountpoint = docker(&[
        "volume",
        "inspect",
        "--format",
        "{{.Mountpoint}}",
        workspace.trim(),
    ]);
    std::fs::write(Path::new(mountpoint.trim()).join(name), "").unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cache_volume_is_extracted_once_reused_and_swapped() {
    let Some(s) = Scenario::new("cache").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let key = "cache/libs.tar.gz";
    let source = format!("s3://{}/{key}", pool.bucket);
    let libs = tar_gz(&[("version.txt", "v1\n"), ("lib/dep.txt", "a library\n")]);
    aws.put(&pool.bucket, key, libs).await;
    let (config, mut first) = s.agent(
        "i-cache",
        &format!("[agent]\nslots = 2\n[cache]\nsource = \"{source}\"\nrefresh_secs = 1"),
    );
    first.wait_log("Cache extracted.", LONG).await;
    a_job_reads_it_read_only(&s, &first).await;
    first.signal(nix::sys::signal::Signal::SIGTERM);
    first.wait_exit(LONG).await;

    // A restart with the same object downloads nothing.
    let second = AgentProcess::start(&config, "second");
    second.wait_log("Ready; serving the queue.", LONG).await;
    assert_eq!(
        second.count("Cache volume is current; nothing to download."),
        1
    );
    assert_eq!(second.count("Extracting the cache archive."), 0);
    assert_eq!(cache_volumes(&source).len(), 1);

    // A job that reads the cache before and after a new version lands.
    let old_reader = unique("old-reader");
    // It reads the cache, then waits for the test to drop a file into its
    // workspace (after the swap), then reads the cache again.
    let script = "cat /cache/version.txt; while [ ! -e /workspace/go ]; do sleep 0.2; done; cat /cache/version.txt";
    aws.send_job(
        &pool.queue_url,
        &job(&old_reader, &stack.image, &["sh", "-c", script]),
    )
    .await;
    second.wait_log("Job started.", LONG).await;
    aws.put(&pool.bucket, key, tar_gz(&[("version.txt", "v2\n")]))
        .await;
    second
        .wait_log("Switched to a new cache version for new jobs.", LONG)
        .await;
    let new_reader = unique("new-reader");
    aws.send_job(
        &pool.queue_url,
        &job(&new_reader, &stack.image, &["cat", "/cache/version.txt"]),
    )
    .await;
    let wait_log = |id: String| {
        let aws = &aws;
        let bucket = pool.bucket.clone();
        async move { String::from_utf8(aws.wait_object(&bucket, &keys::log(&id)).await).unwrap() }
    };
    assert_eq!(wait_log(new_reader.clone()).await, "v2\n");
    assert_eq!(
        cache_volumes(&source).len(),
        2,
        "the old version stays while a job uses it"
    );
    touch_in_workspace(&old_reader, "go");
    assert_eq!(wait_log(old_reader.clone()).await, "v1\nv1\n");
    eventually("the old cache volume to be removed", LONG, || async {
        cache_volumes(&source).len() == 1
    })
    .await;
    drop(second);
    for volume in cache_volumes(&source) {
        docker(&["volume", "rm", &volume]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cache_archive_that_escapes_is_refused() {
    let Some(s) = Scenario::new("escape").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let key = "cache/evil.tar";
    let evil = raw_tar(&[
        ("fine.txt", "ok", tar::EntryType::Regular),
        (
            "../../../../tmp/deckhand-escaped.txt",
            "evil",
            tar::EntryType::Regular,
        ),
    ]);
    aws.put(&pool.bucket, key, evil).await;
    let source = format!("s3://{}/{key}", pool.bucket);
    let (code, line) =
        boot_failure(stack, aws, pool, &format!("[cache]\nsource = \"{source}\"")).await;
    assert_eq!(code, Some(78));
    assert!(
        line.contains("has an entry outside the volume: \"../../../../tmp/deckhand-escaped.txt\""),
        "{line}"
    );
    assert!(
        cache_volumes(&source).is_empty(),
        "the partial volume is removed"
    );
}
