//! The drain's policy and its execution on paused time: fake jobs that run for a
//! set time, obey SIGTERM after a set time (or never), and die on SIGKILL.

use std::sync::{Arc, Mutex};

use super::*;
use std::time::Duration;

const GRACE: Duration = Duration::from_secs(10);

fn drain(on_spot: SpotPolicy) -> DrainConfig {
    DrainConfig {
        on_spot,
        on_rebalance: RebalancePolicy::StopIntake,
        safety_margin: Duration::from_secs(20),
        stop_timeout: Duration::from_secs(600),
        stop_grace: GRACE,
        rebalance_horizon: Duration::from_secs(600),
    }
}

fn notice(action: SpotAction, in_secs: i64) -> SpotNotice {
    SpotNotice {
        action,
        time: Utc::now() + chrono::Duration::seconds(in_secs),
    }
}

fn spot_reason(notice: &SpotNotice) -> StopReason {
    StopReason::Spot {
        action: notice.action,
        time: notice.time,
    }
}

/// How a fake job ended, and how long after the test began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    Finished,
    Stopped,
    Killed,
}

/// How each job ended and when, after the pool began.
type Ends = Arc<Mutex<Vec<(&'static str, End, Duration)>>>;

struct Pool {
    jobs: JoinSet<()>,
    preemption: Preemption,
    began: Instant,
    ends: Ends,
}

impl Pool {
    fn new() -> Self {
        Pool {
            jobs: JoinSet::new(),
            preemption: Preemption::new(),
            began: Instant::now(),
            ends: Arc::default(),
        }
    }

    /// A job that runs for `runs_for`; on SIGTERM it exits after `exits_after`
    /// (`None`: it ignores SIGTERM and dies at SIGKILL, after the grace period).
    fn job(&mut self, name: &'static str, runs_for: Duration, exits_after: Option<Duration>) {
        let (preemption, began, ends) = (self.preemption.clone(), self.began, self.ends.clone());
        self.jobs.spawn(async move {
            let end = tokio::select! {
                () = tokio::time::sleep(runs_for) => End::Finished,
                () = preemption.stopping().cancelled() => {
                    let exit = exits_after.unwrap_or(Duration::MAX).min(GRACE);
                    tokio::select! {
                        () = tokio::time::sleep(exit) => {
                            if exits_after.is_some_and(|e| e <= GRACE) { End::Stopped } else { End::Killed }
                        }
                        () = preemption.killing().cancelled() => End::Killed,
                    }
                }
            };
            ends.lock().unwrap().push((name, end, began.elapsed()));
        });
    }

    fn ends(&self) -> Vec<(&'static str, End, u64)> {
        let mut ends: Vec<_> = self
            .ends
            .lock()
            .unwrap()
            .iter()
            .map(|(name, end, after)| (*name, *end, after.as_secs()))
            .collect();
        ends.sort();
        ends
    }
}

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test(start_paused = true)]
async fn spot_release_stops_every_job_at_once() {
    let mut pool = Pool::new();
    pool.job("long", HOUR, Some(Duration::from_secs(2)));
    let stop = Stop::new();
    stop.notice_spot(notice(SpotAction::Terminate, 120));
    wait_for_jobs(
        std::mem::take(&mut pool.jobs),
        &pool.preemption,
        &stop,
        &drain(SpotPolicy::Release),
        pool.began,
    )
    .await;
    assert_eq!(pool.ends(), [("long", End::Stopped, 2)]);
    assert!(matches!(
        pool.preemption.reason(),
        Some(StopReason::Spot { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn finish_if_possible_lets_a_short_job_finish_and_stops_a_long_one_in_time() {
    let mut pool = Pool::new();
    pool.job("short", MINUTE, None);
    pool.job("long", HOUR, None);
    let stop = Stop::new();
    stop.notice_spot(notice(SpotAction::Terminate, 120));
    let config = drain(SpotPolicy::FinishIfPossible);
    wait_for_jobs(
        std::mem::take(&mut pool.jobs),
        &pool.preemption,
        &stop,
        &config,
        pool.began,
    )
    .await;
    // Stopped at 120 - 20 (margin) - 10 (grace) = 90 s; ignoring SIGTERM, killed
    // at the end of its grace period, at the deadline.
    let ends = pool.ends();
    assert_eq!(ends[1], ("short", End::Finished, 60));
    assert_eq!(ends[0].0, "long");
    assert_eq!(ends[0].1, End::Killed);
    assert!((89..=100).contains(&ends[0].2), "{ends:?}");
}

#[tokio::test(start_paused = true)]
async fn a_hibernation_notice_stops_jobs_at_once_whatever_the_policy() {
    let mut pool = Pool::new();
    pool.job("job", HOUR, Some(Duration::ZERO));
    let stop = Stop::new();
    stop.notice_spot(notice(SpotAction::Hibernate, 120));
    let config = drain(SpotPolicy::FinishIfPossible);
    wait_for_jobs(
        std::mem::take(&mut pool.jobs),
        &pool.preemption,
        &stop,
        &config,
        pool.began,
    )
    .await;
    assert_eq!(pool.ends(), [("job", End::Stopped, 0)]);
}

#[tokio::test(start_paused = true)]
async fn a_spot_deadline_after_a_sigterm_tightens_the_stop_timeout() {
    let mut pool = Pool::new();
    pool.job("job", HOUR, Some(Duration::from_secs(1)));
    let stop = Stop::new();
    stop.begin(StopReason::Signal("SIGTERM"));
    let config = drain(SpotPolicy::FinishIfPossible);
    let notify = async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        // Terminate 120 s from now: stopped at 30 + 120 - 20 - 10 = 120 s, long
        // before the stop timeout's 600 s.
        stop.notice_spot(notice(SpotAction::Terminate, 120));
    };
    let waited = wait_for_jobs(
        std::mem::take(&mut pool.jobs),
        &pool.preemption,
        &stop,
        &config,
        pool.began,
    );
    tokio::join!(notify, waited);
    let ends = pool.ends();
    assert_eq!(ends[0].1, End::Stopped);
    assert!((119..=125).contains(&ends[0].2), "{ends:?}");
    // The first reason stands for the drain; the jobs were stopped for the notice.
    assert_eq!(stop.reason(), Some(&StopReason::Signal("SIGTERM")));
    assert!(matches!(
        pool.preemption.reason(),
        Some(StopReason::Spot { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_sigterm_waits_for_the_stop_timeout() {
    let mut pool = Pool::new();
    pool.job("short", MINUTE, None);
    pool.job("long", HOUR, Some(Duration::from_secs(3)));
    let stop = Stop::new();
    stop.begin(StopReason::Signal("SIGTERM"));
    let config = drain(SpotPolicy::Release);
    wait_for_jobs(
        std::mem::take(&mut pool.jobs),
        &pool.preemption,
        &stop,
        &config,
        pool.began,
    )
    .await;
    assert_eq!(
        pool.ends(),
        [("long", End::Stopped, 603), ("short", End::Finished, 60)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_second_signal_kills_running_jobs_at_once() {
    let mut pool = Pool::new();
    pool.job("stubborn", HOUR, None);
    let stop = Stop::new();
    stop.begin(StopReason::Signal("SIGTERM"));
    let config = drain(SpotPolicy::Release);
    let second = async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        stop.force();
    };
    let waited = wait_for_jobs(
        std::mem::take(&mut pool.jobs),
        &pool.preemption,
        &stop,
        &config,
        pool.began,
    );
    tokio::join!(second, waited);
    assert_eq!(pool.ends(), [("stubborn", End::Killed, 5)]);
}

fn seen(notice: &SpotNotice, now: Instant) -> SpotDeadline {
    SpotDeadline::new(notice.clone(), now, Utc::now())
}

#[test]
fn stop_intake_lets_jobs_finish_unless_a_notice_comes() {
    let now = Instant::now();
    let reason = StopReason::Rebalance {
        policy: RebalancePolicy::StopIntake,
    };
    let config = drain(SpotPolicy::Release);
    assert_eq!(plan(&reason, None, &config, now), JobsPlan::Finish);
    let spot = notice(SpotAction::Terminate, 120);
    assert_eq!(
        plan(&reason, Some(&seen(&spot, now)), &config, now),
        JobsPlan::StopAt {
            at: now,
            why: spot_reason(&spot)
        }
    );
}

#[test]
fn a_notice_already_past_stops_jobs_now() {
    let now = Instant::now();
    let spot = notice(SpotAction::Terminate, -30);
    let config = drain(SpotPolicy::FinishIfPossible);
    assert_eq!(
        plan(&spot_reason(&spot), Some(&seen(&spot, now)), &config, now),
        JobsPlan::StopAt {
            at: now,
            why: spot_reason(&spot)
        }
    );
}

#[test]
fn the_stop_timeout_counts_from_the_drain_not_from_now() {
    let began = Instant::now();
    let config = drain(SpotPolicy::Release);
    for reason in [
        StopReason::Signal("SIGTERM"),
        StopReason::Idle { after_secs: 60 },
        StopReason::AutoScaling,
        StopReason::Rebalance {
            policy: RebalancePolicy::Drain,
        },
    ] {
        assert_eq!(
            plan(&reason, None, &config, began),
            JobsPlan::StopAt {
                at: began + config.stop_timeout,
                why: reason.clone()
            }
        );
    }
}
