//! Jobs' caches against moto's S3 and SQS and the real Docker engine: a save
//! then an exact hit from the host tier; a prefix hit from S3 on a second agent
//! whose host tier is empty; no save from a failed or cancelled job, nor from a
//! profile that may not write; racing saves of one key leave one object; the
//! host tier evicts at its cap; a corrupt or hostile object is a miss.

mod common;

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
