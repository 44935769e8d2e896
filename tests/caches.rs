//! Jobs' caches against moto's S3 and SQS and the real Docker engine: a save
//! then an exact hit from the host tier; a prefix hit from S3 on a second agent
//! whose host tier is empty; no save from a failed or cancelled job, nor from a
//! profile that may not write; racing saves of one key leave one object; the
//! host tier evicts at its cap; a corrupt or hostile object is a miss; a
//! hostile tree in the job's cache path is not saved ([`saves`]).

mod common;
#[path = "caches/saves.rs"]
mod saves;

use common::scenario::Scenario;
use common::*;
use serde_json::{Value, json};

/// The `[caches]` and profile TOML for an agent of `s` whose caches go under
/// `prefix` in the pool's bucket.
fn caches_config(s: &Scenario, prefix: &str, extra: &str) -> String {
    format!(
        "[caches]\nbucket = \"{}\"\nprefix = \"{prefix}/\"\n{extra}",
        s.pool.bucket
    )
}

fn cached_job(s: &Scenario, id: &str, script: &str, caches: Value) -> Value {
    let mut body = job(id, &s.stack.image, &["sh", "-c", script]);
    body["workdir"] = json!("/work");
    body["caches"] = caches;
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn a_saved_cache_is_restored_exactly_from_the_host_tier() {
    let Some(s) = Scenario::new("caches-exact").await else {
        return;
    };
    let prefix = unique("c");
    let (_config, _agent) = s.agent("i-caches", &caches_config(&s, &prefix, ""));
    let key = unique("deps");
    let caches = json!([{"key": key, "paths": ["target"]}]);
    let first = unique("cold");
    s.send_job(&cached_job(
        &s,
        &first,
        "mkdir -p target/sub && echo built > target/sub/out",
        caches.clone(),
    ))
    .await;
    let result = s.wait_result(&first).await;
    assert_eq!(result["status"], "succeeded", "{result}");
    let report = &result["caches"][0];
    assert_eq!(report["hit"], "miss", "{result}");
    assert_eq!(report["saved"], true, "{result}");
    let object = format!("{prefix}/default/{key}.tar.zst");
    assert!(s.aws.object(&s.pool.bucket, &object).await.is_some());

    let second = unique("warm");
    s.send_job(&cached_job(&s, &second, "cat target/sub/out", caches))
        .await;
    let result = s.wait_result(&second).await;
    assert_eq!(result["status"], "succeeded", "{result}");
    let report = &result["caches"][0];
    assert_eq!(report["hit"], "exact", "{result}");
    assert_eq!(report["tier"], "host", "{result}");
    assert_eq!(report["matched_key"], format!("default/{key}"), "{result}");
    assert_eq!(report["saved"], false, "{result}");
    assert_eq!(s.log(&second).await.as_deref(), Some("built\n"));
    s.wait_empty().await;
    assert_clean(&second);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_agent_restores_a_prefix_match_from_s3_and_a_fork_never_writes() {
    let Some(s) = Scenario::new("caches-prefix").await else {
        return;
    };
    let prefix = unique("c");
    let profiles = "[profiles.default]\ncache_paths = [\"/opt/deps\"]\n\
        [profiles.fork]\ncache_paths = [\"/opt/deps\"]\ncaches_writable = false\n\
        cache_restore_scopes = [\"default\"]\n";
    let stem = unique("deps");
    let first = unique("main");
    {
        let (_config, _agent) = s.agent("i-caches-a", &caches_config(&s, &prefix, profiles));
        let caches = json!([{"key": format!("{stem}-v1"), "paths": ["/opt/deps", "target"]}]);
        let script = "mkdir -p /opt/deps target && echo dep > /opt/deps/lib && echo obj > target/o";
        s.send_job(&cached_job(&s, &first, script, caches)).await;
        let result = s.wait_result(&first).await;
        assert_eq!(result["caches"][0]["saved"], true, "{result}");
        s.wait_empty().await;
    }
    // A new host: its tier is empty, so the cache comes from S3.
    let (_config, _agent) = s.agent("i-caches-b", &caches_config(&s, &prefix, profiles));
    let second = unique("fork");
    let caches = json!([{
        "key": format!("{stem}-v2"),
        "paths": ["/opt/deps", "target"],
        "restore_keys": ["nothing-like-it-", format!("{stem}-")],
    }]);
    let mut body = cached_job(&s, &second, "cat /opt/deps/lib target/o", caches);
    body["profile"] = json!("fork");
    s.send_job(&body).await;
    let result = s.wait_result(&second).await;
    assert_eq!(result["status"], "succeeded", "{result}");
    let report = &result["caches"][0];
    assert_eq!(report["hit"], "prefix", "{result}");
    assert_eq!(report["tier"], "s3", "{result}");
    assert_eq!(
        report["matched_key"],
        format!("default/{stem}-v1"),
        "{result}"
    );
    assert_eq!(report["saved"], false, "{result}");
    assert!(
        report["reason"]
            .as_str()
            .unwrap()
            .contains("caches_writable is false"),
        "{result}"
    );
    assert_eq!(s.log(&second).await.as_deref(), Some("dep\nobj\n"));
    let keys = s.aws.keys(&s.pool.bucket, &format!("{prefix}/")).await;
    assert_eq!(keys, [format!("{prefix}/default/{stem}-v1.tar.zst")]);
    s.wait_empty().await;
    assert_all_clean([&first, &second]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_or_cancelled_job_saves_nothing() {
    let Some(s) = Scenario::new("caches-nosave").await else {
        return;
    };
    let prefix = unique("c");
    let extra = caches_config(&s, &prefix, "[agent]\nslots = 2\n");
    let (config, agent) = s.agent("i-caches-nosave", &extra);
    let failed = unique("failed");
    let caches = |key: &str| json!([{"key": key, "paths": ["target"]}]);
    let write = "mkdir -p target && echo x > target/f";
    s.send_job(&cached_job(
        &s,
        &failed,
        &format!("{write}; exit 3"),
        caches("k-failed"),
    ))
    .await;
    let cancelled = unique("cancelled");
    let script = format!("{write}; echo cache-written; sleep 600");
    s.send_job(&cached_job(&s, &cancelled, &script, caches("k-cancelled")))
        .await;
    agent.wait_log("cache-written", LONG).await;
    let out = deckhand_with(&config, &["cancel", &cancelled, "--reason", "no"]);
    assert!(out.status.success(), "{out:?}");
    for id in [&failed, &cancelled] {
        let result = s.wait_result(id).await;
        assert_ne!(result["status"], "succeeded", "{result}");
        let report = &result["caches"][0];
        assert_eq!(report["saved"], false, "{result}");
        assert!(
            report["reason"]
                .as_str()
                .unwrap()
                .contains("did not succeed"),
            "{result}"
        );
    }
    assert!(
        s.aws
            .keys(&s.pool.bucket, &format!("{prefix}/"))
            .await
            .is_empty()
    );
    s.wait_empty().await;
    assert_all_clean([&failed, &cancelled]);
}

#[tokio::test(flavor = "multi_thread")]
async fn racing_saves_of_one_key_leave_one_object() {
    let Some(s) = Scenario::new("caches-race").await else {
        return;
    };
    let prefix = unique("c");
    let (_c1, a) = s.agent("i-caches-r1", &caches_config(&s, &prefix, ""));
    let (_c2, b) = s.agent("i-caches-r2", &caches_config(&s, &prefix, ""));
    let key = unique("shared");
    let mut ids = Vec::new();
    for (i, _) in [&a, &b].iter().enumerate() {
        let id = unique("racer");
        let script = format!("mkdir -p target && echo {i} > target/who && sleep 3");
        let caches = json!([{"key": key, "paths": ["target"]}]);
        s.send_job(&cached_job(&s, &id, &script, caches)).await;
        ids.push(id);
    }
    let mut saved = 0;
    for id in &ids {
        let result = s.wait_result(id).await;
        assert_eq!(result["status"], "succeeded", "{result}");
        if result["caches"][0]["saved"] == true {
            saved += 1;
        } else {
            let reason = result["caches"][0]["reason"].as_str().unwrap();
            assert!(reason.contains("the key exists"), "{result}");
        }
    }
    assert_eq!(saved, 1, "the first save wins, the other skips");
    let keys = s.aws.keys(&s.pool.bucket, &format!("{prefix}/")).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    s.wait_empty().await;
    assert_all_clean(&ids);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_host_tier_evicts_the_least_recently_used_past_its_cap() {
    let Some(s) = Scenario::new("caches-lru").await else {
        return;
    };
    let prefix = unique("c");
    let extra = caches_config(&s, &prefix, "host_max_mb = 1\n");
    let (_config, agent) = s.agent("i-caches-lru", &extra);
    let blob = "mkdir -p target && head -c 600000 /dev/zero > target/blob";
    let run = async |key: &str, script: &str| {
        let id = unique("lru");
        let caches = json!([{"key": key, "paths": ["target"]}]);
        s.send_job(&cached_job(&s, &id, script, caches)).await;
        let result = s.wait_result(&id).await;
        assert_eq!(result["status"], "succeeded", "{result}");
        assert_clean(&id);
        result["caches"][0].clone()
    };
    let (a, b) = (unique("a"), unique("b"));
    assert_eq!(run(&a, blob).await["saved"], true);
    assert_eq!(run(&b, blob).await["saved"], true);
    assert_eq!(agent.count("Cache evicted from the host tier."), 1);
    let again = run(&a, "test -s target/blob").await;
    assert_eq!(again["hit"], "exact", "{again}");
    assert_eq!(again["tier"], "s3", "evicted from the host: {again}");
    let warm = run(&a, "test -s target/blob").await;
    assert_eq!(warm["tier"], "host", "{warm}");
    s.wait_empty().await;
}

/// `body` at the cache's place in S3, with `sha256` in its metadata.
async fn put_cache(s: &Scenario, object: &str, body: Vec<u8>, sha256: &str) {
    s.aws
        .s3
        .put_object()
        .bucket(&s.pool.bucket)
        .key(object)
        .metadata("sha256", sha256)
        .body(body.into())
        .send()
        .await
        .unwrap();
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn zstd(tar: &[u8]) -> Vec<u8> {
    zstd::encode_all(tar, 3).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_or_hostile_object_is_a_miss_and_the_job_runs() {
    let Some(s) = Scenario::new("caches-hostile").await else {
        return;
    };
    let prefix = unique("c");
    let extra = caches_config(&s, &prefix, "[profiles.default]\ncache_max_mb = 1\n");
    let (_config, _agent) = s.agent("i-caches-hostile", &extra);
    use tar::EntryType::{Regular, Symlink};
    let good = zstd(&common::archives::raw_tar(&[(
        "work/target/ok",
        "fine",
        Regular,
    )]));
    let truncated = good[..good.len() / 2].to_vec();
    let mut link = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(Symlink);
    header.set_size(0);
    header.set_mode(0o777);
    link.append_link(&mut header, "work/target/evil", "../../../../etc")
        .unwrap();
    let link_out = zstd(&link.into_inner().unwrap());
    // A header that claims 3 MB, past cache_max_mb, over a few bytes.
    let mut huge = common::archives::raw_tar(&[("work/target/huge", "", Regular)]);
    let mut header = tar::Header::from_byte_slice(&huge[..512]).clone();
    header.set_size(3_000_000);
    header.set_cksum();
    huge[..512].copy_from_slice(header.as_bytes());
    let huge = zstd(&huge);
    let cases: [(&str, Vec<u8>, Option<&str>, &str); 4] = [
        (
            "corrupt",
            good.clone(),
            Some(&"0".repeat(64)),
            "is corrupt: its SHA-256 is",
        ),
        ("truncated", truncated, None, "is corrupt"),
        ("link", link_out, None, "leads outside its folder"),
        ("huge", huge, None, "more than 1 MB unpacked, cache_max_mb"),
    ];
    let mut ids = Vec::new();
    for (name, body, sha, _) in &cases {
        let key = unique(name);
        let sha = sha.map_or_else(|| sha256(body), str::to_owned);
        put_cache(
            &s,
            &format!("{prefix}/default/{key}.tar.zst"),
            body.clone(),
            &sha,
        )
        .await;
        let id = unique(name);
        let caches = json!([{"key": key, "paths": ["target"]}]);
        s.send_job(&cached_job(
            &s,
            &id,
            "ls target 2>/dev/null; echo ran",
            caches,
        ))
        .await;
        ids.push(id);
    }
    for (id, (name, _, _, reason)) in ids.iter().zip(&cases) {
        let result = s.wait_result(id).await;
        assert_eq!(result["status"], "succeeded", "{name}: {result}");
        let report = &result["caches"][0];
        assert_eq!(report["hit"], "miss", "{name}: {result}");
        let said = report["reason"].as_str().unwrap();
        assert!(said.contains(reason), "{name}: {said}");
        assert_eq!(s.log(id).await.as_deref(), Some("ran\n"), "{name}");
    }
    s.wait_empty().await;
    assert_all_clean(&ids);
    assert!(!std::path::Path::new("/etc/work").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_job_saves_nothing_even_when_it_exits_0() {
    let Some(s) = Scenario::new("caches-interrupted").await else {
        return;
    };
    let prefix = unique("c");
    let extra = "[queue]\nvisibility_timeout_secs = 600\n[drain]\nstop_timeout_secs = 0\n";
    let (_config, mut agent) = s.agent("i-caches-int", &caches_config(&s, &prefix, extra));
    let id = unique("interrupted");
    let script = "trap 'exit 0' TERM; mkdir -p target && echo x > target/f; \
        echo cache-written; sleep 600 & wait";
    let caches = json!([{"key": unique("k"), "paths": ["target"]}]);
    s.send_job(&cached_job(&s, &id, script, caches)).await;
    agent.wait_log("cache-written", LONG).await;
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(agent.wait_exit(LONG).await, Some(0));
    let attempt = s.attempt(&id, 1).await.expect("the attempt is recorded");
    assert_eq!(attempt["status"], "interrupted", "{attempt}");
    let report = &attempt["caches"][0];
    assert_eq!(report["saved"], false, "{attempt}");
    assert!(
        report["reason"]
            .as_str()
            .unwrap()
            .contains("did not succeed"),
        "{attempt}"
    );
    assert!(
        s.aws
            .keys(&s.pool.bucket, &format!("{prefix}/"))
            .await
            .is_empty()
    );
    assert_clean(&id);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_prewarmed_cache_is_on_the_host_before_the_agent_is_ready() {
    let Some(s) = Scenario::new("caches-prewarm").await else {
        return;
    };
    let prefix = unique("c");
    let key = unique("deps");
    let caches = json!([{"key": key, "paths": ["target"]}]);
    let first = unique("save");
    {
        let (_config, _agent) = s.agent("i-caches-p1", &caches_config(&s, &prefix, ""));
        let script = "mkdir -p target && echo warm > target/w";
        s.send_job(&cached_job(&s, &first, script, caches.clone()))
            .await;
        assert_eq!(s.wait_result(&first).await["caches"][0]["saved"], true);
        s.wait_empty().await;
    }
    let prewarm = format!("prewarm = [\"default/{key}\", \"default/not-there\"]\n");
    let (_config, agent) = s.agent("i-caches-p2", &caches_config(&s, &prefix, &prewarm));
    agent.wait_log("Ready; serving the queue.", LONG).await;
    let logs = agent.logs();
    let prewarmed: Vec<&Value> = logs
        .iter()
        .filter(|l| l["msg"] == "Cache prewarmed.")
        .collect();
    assert_eq!(prewarmed.len(), 2, "{prewarmed:?}");
    assert_eq!(prewarmed[0]["tier"], "s3", "{prewarmed:?}");
    assert!(prewarmed[1]["tier"].is_null(), "{prewarmed:?}");
    let second = unique("warm");
    s.send_job(&cached_job(&s, &second, "cat target/w", caches))
        .await;
    let result = s.wait_result(&second).await;
    assert_eq!(result["caches"][0]["tier"], "host", "{result}");
    assert_eq!(s.log(&second).await.as_deref(), Some("warm\n"));
    s.wait_empty().await;
    assert_all_clean([&first, &second]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_big_cache_goes_up_in_parts_with_its_sha256() {
    let Some(s) = Scenario::new("caches-big").await else {
        return;
    };
    let prefix = unique("c");
    let (_config, _agent) = s.agent("i-caches-big", &caches_config(&s, &prefix, ""));
    let key = unique("big");
    let id = unique("big");
    // Random bytes do not compress: the packed cache is past 64 MiB.
    let script = "mkdir -p target && head -c 70000000 /dev/urandom > target/big";
    let caches = json!([{"key": key, "paths": ["target"]}]);
    s.send_job(&cached_job(&s, &id, script, caches)).await;
    let result = s.wait_result(&id).await;
    let report = &result["caches"][0];
    assert_eq!(report["saved"], true, "{result}");
    assert!(
        report["save_bytes"].as_u64().unwrap() > 64 << 20,
        "{result}"
    );
    let object = format!("{prefix}/default/{key}.tar.zst");
    let head = s
        .aws
        .s3
        .head_object()
        .bucket(&s.pool.bucket)
        .key(&object)
        .send()
        .await
        .unwrap();
    assert!(
        head.e_tag().unwrap().contains('-'),
        "a multipart ETag: {head:?}"
    );
    let body = s.aws.object(&s.pool.bucket, &object).await.unwrap();
    assert_eq!(head.metadata().unwrap()["sha256"], sha256(&body));
    s.wait_empty().await;
    assert_clean(&id);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_slots_restoring_one_key_download_it_once() {
    let Some(s) = Scenario::new("caches-once").await else {
        return;
    };
    let prefix = unique("c");
    let key = unique("shared");
    use tar::EntryType::Regular;
    let packed = zstd(&common::archives::raw_tar(&[(
        "work/target/f",
        "from s3\n",
        Regular,
    )]));
    let object = format!("{prefix}/default/{key}.tar.zst");
    put_cache(&s, &object, packed.clone(), &sha256(&packed)).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let id = unique("once");
        let caches = json!([{"key": key, "paths": ["target"], "policy": "pull"}]);
        s.send_job(&cached_job(&s, &id, "cat target/f", caches))
            .await;
        ids.push(id);
    }
    let extra = caches_config(&s, &prefix, "[agent]\nslots = 2\n");
    let (_config, _agent) = s.agent("i-caches-once", &extra);
    let mut tiers = Vec::new();
    for id in &ids {
        let result = s.wait_result(id).await;
        assert_eq!(result["caches"][0]["hit"], "exact", "{result}");
        assert_eq!(result["caches"][0]["saved"], false, "{result}");
        tiers.push(result["caches"][0]["tier"].as_str().unwrap().to_owned());
        assert_eq!(s.log(id).await.as_deref(), Some("from s3\n"));
    }
    tiers.sort();
    assert_eq!(tiers, ["host", "s3"], "one download, then the host tier");
    s.wait_empty().await;
    assert_all_clean(&ids);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cache_that_breaks_a_rule_is_rejected_naming_its_field() {
    let Some(s) = Scenario::new("caches-rules").await else {
        return;
    };
    let config = s.config(
        "i-caches-rules",
        "[profiles.default]\ncache_paths = [\"/opt\"]",
    );
    let mut body = job(&unique("rules"), &s.stack.image, &["true"]);
    body["caches"] = json!([
        {"key": "../up", "paths": ["../x", "/etc/y"], "policy": "sometimes"},
        {"key": "ok", "paths": ["/opt/fine", "target"], "restore_keys": ["a b"]},
    ]);
    let run = exec(&config, &body);
    assert_eq!(run.code, Some(65), "{}", run.stderr);
    let reason = run.result["reason"].as_str().unwrap();
    for said in [
        "caches[0].key: \"../up\" must be 1 to 256 of [A-Za-z0-9._-]",
        "caches[0].paths[0]: must not contain `..`",
        "caches[0].paths[1]: \"/etc/y\" is not under the profile's cache_paths (/opt)",
        "caches[0].policy: \"sometimes\" must be \"pull-push\", \"pull\" or \"push\"",
        "caches[1].restore_keys[0]: \"a b\" must be",
    ] {
        assert!(reason.contains(said), "{said:?} not in {reason}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn of_two_racing_puts_of_one_key_the_first_wins_and_the_other_skips() {
    let Some(s) = Scenario::new("caches-put").await else {
        return;
    };
    let store = deckhand::host::caches::Store::new(
        s.aws.s3.clone(),
        s.pool.bucket.clone(),
        format!("{}/", unique("c")),
    );
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("1"), dir.path().join("2"));
    std::fs::write(&first, b"first").unwrap();
    std::fs::write(&second, b"second").unwrap();
    let (sha_1, sha_2) = (sha256(b"first"), sha256(b"second"));
    let (a, b) = tokio::join!(
        store.put("main", "k", &first, &sha_1),
        store.put("main", "k", &second, &sha_2),
    );
    let won = [a.unwrap(), b.unwrap()];
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
    assert!(
        !store.put("main", "k", &first, "x").await.unwrap(),
        "a third skips too"
    );
    assert!(store.exists("main", "k").await.unwrap());
    assert!(!store.exists("main", "other").await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cache_bucket_that_fails_is_a_miss_and_a_skipped_save_never_a_lost_result() {
    let Some(s) = Scenario::new("caches-down").await else {
        return;
    };
    // A bucket that is not there: every call fails, as with S3 down.
    let extra = format!("[caches]\nbucket = \"{}\"\n", unique("no-such-bucket"));
    let (_config, _agent) = s.agent("i-caches-down", &extra);
    let id = unique("down");
    let script = "mkdir -p target && echo x > target/f && echo ran";
    let caches = json!([{"key": "k", "paths": ["target"], "restore_keys": ["k-"]}]);
    s.send_job(&cached_job(&s, &id, script, caches)).await;
    let result = s.wait_result(&id).await;
    assert_eq!(result["status"], "succeeded", "{result}");
    let report = &result["caches"][0];
    assert_eq!(report["hit"], "miss", "{result}");
    assert_eq!(report["saved"], false, "{result}");
    assert!(
        report["reason"]
            .as_str()
            .unwrap()
            .contains("not saved: put s3://"),
        "{result}"
    );
    assert_eq!(s.log(&id).await.as_deref(), Some("ran\n"));
    s.wait_empty().await;
    assert_clean(&id);
}
