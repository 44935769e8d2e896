//! The workload of the chaos test and the soak: short jobs that say which
//! attempt ran them, and the checks that each ended once, whole.

use std::collections::HashMap;

use serde_json::Value;

use super::agent::AgentProcess;
use super::aws::{Aws, Pool};
use super::{Stack, job, keys};

/// Job `i` of a workload: 0.2 to 1.8 s, so that at any moment some run and
/// some wait; its log is `job i done on attempt K`.
pub fn short_job(stack: &Stack, id: &str, i: usize) -> Value {
    let script = format!(
        "sleep 0.{}; echo job {i} done on attempt $DECKHAND_ATTEMPT",
        2 + (i * 7) % 17
    );
    job(id, &stack.image, &["sh", "-c", &script])
}

/// Each job (the `i`th of `ids`) succeeded, and its log is whole and from the
/// attempt its result names.
pub async fn assert_each_succeeded_whole<'a>(
    aws: &Aws,
    pool: &Pool,
    ids: impl IntoIterator<Item = &'a String>,
) {
    for (i, id) in ids.into_iter().enumerate() {
        let r = aws.json(&pool.bucket, &keys::result(id)).await.unwrap();
        assert_eq!(r["status"], "succeeded", "{r}");
        let log = aws.object(&pool.bucket, &keys::log(id)).await.unwrap();
        assert_eq!(
            String::from_utf8(log).unwrap(),
            format!("job {i} done on attempt {}\n", r["attempt"]),
        );
    }
}

/// How many times each job's `succeeded` result was recorded, across the logs of
/// every agent process that ran.
pub fn succeeded_records<'a>(
    runs: impl IntoIterator<Item = &'a AgentProcess>,
) -> HashMap<String, usize> {
    let mut recorded: HashMap<String, usize> = HashMap::new();
    for run in runs {
        for line in run.logs() {
            if line["msg"] == "Result recorded." && line["status"] == "succeeded" {
                *recorded
                    .entry(line["job_id"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
        }
    }
    recorded
}
