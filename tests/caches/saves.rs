//! Saves of a job's tree that the job made hostile.

use super::*;

/// A save reads the job's tree as hostile: a link out of a cache path, or a
/// FIFO in it, is not saved (the job still succeeds, its result says why, and
/// the agent never blocks on the FIFO); a path reached through a link in the
/// workspace is Docker's to resolve, in the container's view, and is saved.
#[tokio::test(flavor = "multi_thread")]
async fn a_save_refuses_a_link_out_or_a_fifo_and_a_path_behind_a_link_is_saved() {
    let Some(s) = Scenario::new("caches-hostile-save").await else {
        return;
    };
    let prefix = unique("c");
    let (_config, _agent) = s.agent("i-caches", &caches_config(&s, &prefix, ""));
    let hostile = [
        (
            "ln -s /etc/shadow target/shadow",
            "target/shadow",
            "a link out of it",
        ),
        ("ln -s ../../.. target/up", "target/up", "a link out of it"),
        (
            "mkfifo target/pipe",
            "target/pipe",
            "a device file, FIFO or socket",
        ),
    ];
    let mut ids = Vec::new();
    for (make, entry, why) in hostile {
        let id = unique("hostile");
        let caches = json!([{"key": unique("deps"), "paths": ["target"]}]);
        let script = format!("mkdir -p target && echo built > target/out && {make}");
        s.send_job(&cached_job(&s, &id, &script, caches)).await;
        let result = s.wait_result(&id).await;
        assert_eq!(result["status"], "succeeded", "{result}");
        let report = &result["caches"][0];
        assert_eq!(report["saved"], false, "{result}");
        let reason = report["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains(&format!("\"{entry}\"")) && reason.contains(why),
            "{make}: {reason}"
        );
        ids.push(id);
    }

    let id = unique("behind");
    let key = unique("deps");
    let caches = json!([{"key": key, "paths": ["link/deps"]}]);
    let script =
        "mkdir -p /tmp/real/deps && echo kept > /tmp/real/deps/out && ln -s /tmp/real link";
    s.send_job(&cached_job(&s, &id, script, caches)).await;
    let result = s.wait_result(&id).await;
    assert_eq!(result["caches"][0]["saved"], true, "{result}");
    let object = format!("{prefix}/default/{key}.tar.zst");
    assert!(s.aws.object(&s.pool.bucket, &object).await.is_some());
    ids.push(id);
    s.wait_empty().await;
    assert_all_clean(&ids);
}
