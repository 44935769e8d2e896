//! `deckhand run` on SIGTERM, against moto and the real Docker engine: running jobs
//! released at once or let finish within the stop timeout, a second SIGTERM skips
//! the wait, and a message that lands in the last long poll is handed back.

mod common;

use common::scenario::Scenario;
use common::*;
use nix::sys::signal::Signal;

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_releases_running_jobs_at_once() {
    let Some(s) = Scenario::new("sigterm").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let (_config, mut agent) = s.agent("i-sigterm", "[agent]\nslots = 2\n[queue]\nvisibility_timeout_secs = 600\n[drain]\nstop_timeout_secs = 0\nstop_grace_secs = 0");
    let ids = [unique("long"), unique("long")];
    for id in &ids {
        aws.send_job(&pool.queue_url, &job(id, &stack.image, &["sleep", "600"]))
            .await;
    }
    eventually("both jobs to run", LONG, || async {
        agent.count("Job started.") == 2
    })
    .await;
    assert_eq!(aws.counts(&pool.queue_url).await, (0, 2));

    let signalled = tokio::time::Instant::now();
    agent.signal(Signal::SIGTERM);
    eventually("both messages to be visible again", LONG, || async {
        aws.counts(&pool.queue_url).await == (2, 0)
    })
    .await;
    let released_after = signalled.elapsed();
    assert_eq!(agent.wait_exit(LONG).await, Some(0));
    eprintln!(
        "released {} messages {released_after:?} after SIGTERM",
        ids.len()
    );
    for id in &ids {
        let r = aws
            .json(&pool.bucket, &keys::attempt(id, 1))
            .await
            .expect("the interrupted attempt is recorded");
        assert_eq!(r["status"], "interrupted");
        assert_eq!(r["reason"], "interrupted: SIGTERM received");
        assert!(aws.result(pool, id).await.is_none());
        assert_clean(id);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_running_jobs_finish_within_the_stop_timeout() {
    let Some(s) = Scenario::new("finish").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let (_config, mut agent) = s.agent("i-finish", "[drain]\nstop_timeout_secs = 120");
    let id = unique("short");
    aws.send_job(
        &pool.queue_url,
        &job(&id, &stack.image, &["sh", "-c", "sleep 2; echo made it"]),
    )
    .await;
    agent.wait_log("Job started.", LONG).await;
    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait_exit(LONG).await, Some(0));
    let r = aws.result(pool, &id).await.expect("finished before exit");
    assert_eq!(r["status"], "succeeded");
    assert_eq!(aws.counts(&pool.queue_url).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_sigterm_skips_the_wait() {
    let Some(s) = Scenario::new("twice").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let (_config, mut agent) = s.agent("i-twice", "[queue]\nvisibility_timeout_secs = 600\n[drain]\nstop_timeout_secs = 3600\nstop_grace_secs = 300");
    let id = unique("stubborn");
    aws.send_job(&pool.queue_url, &job(&id, &stack.image, &["sleep", "600"]))
        .await;
    agent.wait_log("Job started.", LONG).await;
    agent.signal(Signal::SIGTERM);
    agent
        .wait_log("Stopped receiving; waiting for running jobs.", LONG)
        .await;
    agent.signal(Signal::SIGTERM);
    // Without the second signal this would take the hour of stop_timeout_secs.
    assert_eq!(agent.wait_exit(LONG).await, Some(0));
    assert_eq!(
        aws.counts(&pool.queue_url).await,
        (1, 0),
        "handed back, not lost"
    );
    assert_clean(&id);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_that_lands_in_the_last_long_poll_is_handed_back() {
    let Some(s) = Scenario::new("lastpoll").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    // A long poll and a long visibility timeout: a message lost to an abandoned
    // poll would stay hidden for ten minutes.
    let (_config, mut agent) = s.agent(
        "i-lastpoll",
        "[queue]\nwait_secs = 20\nvisibility_timeout_secs = 600",
    );
    agent.wait_log("Ready; serving the queue.", LONG).await;
    agent.signal(Signal::SIGTERM);
    // Sent after the drain began: only the poll already waiting at SQS can take it.
    aws.send_job(
        &pool.queue_url,
        &job(&unique("late"), &stack.image, &["true"]),
    )
    .await;
    assert_eq!(agent.wait_exit(LONG).await, Some(0));
    assert_eq!(agent.count("Job started."), 0);
    assert_eq!(
        aws.counts(&pool.queue_url).await,
        (1, 0),
        "visible at once, not hidden"
    );
}
