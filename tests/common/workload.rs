//! The workload of the chaos test and the soak: short jobs that say which
//! attempt ran them, and the checks that each ended once, whole.

use std::collections::HashMap;

use futures_util::StreamExt;
use serde_json::Value;

use super::agent::AgentProcess;
use super::aws::{Aws, Pool};
use super::proxy::Writes;
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
/// attempt its result names. Read 16 jobs at a time: the long soak has 500.
pub async fn assert_each_succeeded_whole<'a>(
    aws: &Aws,
    pool: &Pool,
    ids: impl IntoIterator<Item = &'a String>,
) {
    let read = |(i, id): (usize, &'a String)| async move {
        let r = aws.json(&pool.bucket, &keys::result(id)).await.unwrap();
        let log = aws.object(&pool.bucket, &keys::log(id)).await.unwrap();
        (i, r, log)
    };
    let mut reads = futures_util::stream::iter(ids.into_iter().enumerate())
        .map(read)
        .buffer_unordered(16);
    while let Some((i, r, log)) = reads.next().await {
        assert_eq!(r["status"], "succeeded", "{r}");
        assert_eq!(
            String::from_utf8(log).unwrap(),
            format!("job {i} done on attempt {}\n", r["attempt"]),
            "the log of job {i} is not its result's: {r}"
        );
    }
}

/// Exactly one write of each job's `result.json` took, by what S3 answered:
/// every agent's S3 traffic passes the proxy that counted `writes`. The proof of
/// "recorded once" that holds whatever the agents got to log before a kill.
pub fn assert_each_written_once<'a>(
    writes: &Writes,
    pool: &Pool,
    ids: impl IntoIterator<Item = &'a String>,
) {
    let mut wrong = Vec::new();
    for id in ids {
        let n = writes.puts(&format!("/{}/{}", pool.bucket, keys::result(id)));
        if n != 1 {
            wrong.push(format!("{id}: {n}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "result.json written other than once (successful PUTs): {wrong:?}"
    );
}

/// What the agents' logs say of each job's terminal result: how many times it
/// was recorded (`Result recorded.`) and found already there (`Result already
/// recorded.`), across every agent process that ran.
#[derive(Debug, Default, Clone, Copy)]
pub struct Told {
    pub recorded: usize,
    pub found: usize,
    /// Found after running the job again (a warning: the claim should prevent it).
    pub ran_again: usize,
}

pub fn told<'a>(runs: impl IntoIterator<Item = &'a AgentProcess>) -> HashMap<String, Told> {
    let mut told: HashMap<String, Told> = HashMap::new();
    for run in runs {
        for line in run.logs() {
            let Some(id) = line["job_id"].as_str() else {
                continue;
            };
            // The terminal result's: an interrupted attempt, or one the host
            // could not run (`error`), is recorded under `attempt-N/`.
            let recorded = line["msg"] == "Result recorded."
                && !matches!(line["status"].as_str(), Some("interrupted" | "error"));
            let found = line["msg"] == "Result already recorded.";
            if !recorded && !found {
                continue;
            }
            let t = told.entry(id.to_owned()).or_default();
            t.recorded += usize::from(recorded);
            t.found += usize::from(found);
            t.ran_again += usize::from(found && !line["discarded_status"].is_null());
        }
    }
    told
}

/// The logs' story agrees with S3's, loosely: no job's result is said to be
/// recorded twice, and each job's is said to be recorded or found. (An agent
/// killed between writing a result and logging it says nothing; the delivery
/// that comes next finds the result and says whose it is.)
pub fn assert_each_told<'a>(
    told: &HashMap<String, Told>,
    ids: impl IntoIterator<Item = &'a String>,
) {
    for id in ids {
        let t = told.get(id).copied().unwrap_or_default();
        assert!(
            t.recorded <= 1,
            "{id}: `Result recorded.` {} times",
            t.recorded
        );
        assert!(
            t.recorded + t.found > 0,
            "{id}: neither `Result recorded.` nor `Result already recorded.` in any agent's log"
        );
    }
}
