use super::*;
use crate::job::attempts::Attempt;

const RETRY: Duration = Duration::from_secs(20);

fn settled(fate: Fate, release_claim: bool) -> Settlement {
    Settlement {
        fate,
        release_claim,
    }
}

fn requeue(cause: Cause, delay: Duration, escalate: bool) -> Fate {
    Fate::Requeue(Requeue {
        cause,
        delay,
        escalate,
    })
}

fn ended(status: Status, recorded: bool, handed_back: bool) -> Ended {
    Ended {
        status,
        recorded,
        handed_back,
        retried: false,
        escalate: false,
    }
}

#[test]
fn before_a_job_runs_row_by_row() {
    use ClaimLookup as C;
    use Lookup as L;
    let budget = Budget::Interruptions { spent: 11, max: 10 };
    let spent = Some(budget);
    // No result and the claim is ours: run it, unless a budget is spent.
    assert_eq!(
        before_run(L::Absent, C::Acquired, RETRY, None),
        Admission::Run
    );
    assert_eq!(
        before_run(L::Absent, C::Acquired, RETRY, spent),
        Admission::Spent(budget)
    );
    // A cancel request and the claim is ours: recorded cancelled, never run.
    assert_eq!(
        before_run(L::CancelRequested, C::Acquired, RETRY, spent),
        Admission::Cancel
    );
    // ... and another agent's claim: it runs the job and sees the request.
    assert_eq!(
        before_run(L::CancelRequested, C::HeldByOther, RETRY, None),
        Admission::Skip(settled(Fate::HandBack(DEFER_VISIBILITY), false))
    );
    // result.json already there: deleted without running; a claim we just
    // took is given up.
    assert_eq!(
        before_run(L::Finished, C::Acquired, RETRY, spent),
        Admission::Skip(settled(Fate::Delete, true))
    );
    assert_eq!(
        before_run(L::Finished, C::HeldByOther, RETRY, None),
        Admission::Skip(settled(Fate::Delete, false))
    );
    // Another agent's claim, not expired: hidden for 30 s.
    assert_eq!(
        before_run(L::Absent, C::HeldByOther, RETRY, spent),
        Admission::Skip(settled(Fate::HandBack(DEFER_VISIBILITY), false))
    );
    // S3 cannot be read: given back with the retry delay.
    assert_eq!(
        before_run(L::Unreadable, C::Acquired, RETRY, None),
        Admission::Skip(settled(Fate::HandBack(RETRY), true))
    );
    assert_eq!(
        before_run(L::Unreadable, C::Unreadable, RETRY, None),
        Admission::Skip(settled(Fate::HandBack(RETRY), false))
    );
    assert_eq!(
        before_run(L::Absent, C::Unreadable, RETRY, None),
        Admission::Skip(settled(Fate::HandBack(RETRY), false))
    );
}

#[test]
fn outcomes_row_by_row() {
    // succeeded, failed, timed_out, cancelled: deleted once recorded.
    for status in [
        Status::Succeeded,
        Status::Failed,
        Status::TimedOut,
        Status::Cancelled,
    ] {
        assert_eq!(
            after_run(ended(status, true, false), RETRY),
            settled(Fate::Delete, true)
        );
        // Recorded after the drain sent its copy back: deleted, claim already gone.
        assert_eq!(
            after_run(ended(status, true, true), RETRY),
            settled(Fate::Delete, false)
        );
        // Not recorded within the deadline: left to SQS, to run again.
        assert_eq!(
            after_run(ended(status, false, false), RETRY),
            settled(Fate::Leave, true)
        );
    }
    // interrupted: a copy at once, unless the drain sent one already.
    assert_eq!(
        after_run(ended(Status::Interrupted, false, false), RETRY),
        settled(requeue(Cause::Interruption, Duration::ZERO, false), true)
    );
    let escalating = Ended {
        escalate: true,
        ..ended(Status::Interrupted, false, false)
    };
    assert_eq!(
        after_run(escalating, RETRY),
        settled(requeue(Cause::Interruption, Duration::ZERO, true), true)
    );
    assert_eq!(
        after_run(ended(Status::Interrupted, false, true), RETRY),
        settled(Fate::Leave, false)
    );
    // error: a copy after the retry delay.
    assert_eq!(
        after_run(ended(Status::Error, false, false), RETRY),
        settled(requeue(Cause::HostError, RETRY, false), true)
    );
    assert_eq!(
        after_run(ended(Status::Error, false, true), RETRY),
        settled(Fate::Leave, false)
    );
    // failed with an exit code the job retries: a copy, recorded or not.
    for recorded in [true, false] {
        let retried = Ended {
            retried: true,
            ..ended(Status::Failed, recorded, false)
        };
        assert_eq!(
            after_run(retried, RETRY),
            settled(requeue(Cause::Retry, Duration::ZERO, false), true)
        );
    }
}

#[test]
fn rejected_is_deleted_only_once_recorded_and_dead_lettered() {
    assert_eq!(after_reject(true, true), Fate::Delete);
    assert_eq!(after_reject(true, false), Fate::Leave);
    assert_eq!(after_reject(false, true), Fate::Leave);
}

#[test]
fn the_announce_rule() {
    // A result that ends the job, when ours.
    assert!(announces(Status::Succeeded, true, true));
    assert!(!announces(Status::Succeeded, true, false));
    // An attempt retried is not the job's end.
    assert!(!announces(Status::Failed, false, true));
    assert!(!announces(Status::Error, false, true));
    // An interruption, as its copy goes.
    assert!(announces(Status::Interrupted, false, false));
    assert_eq!(record_deadline(Status::Failed), RECORD_TERMINAL_DEADLINE);
    assert!(record_deadline(Status::Interrupted) < record_deadline(Status::Error));
}

fn history(interruptions: u32, host_errors: u32, retries: u32) -> History {
    History {
        before: interruptions + host_errors + retries,
        interruptions,
        host_errors,
        retries,
        attempts: Vec::<Attempt>::new(),
    }
}

#[test]
fn budgets_are_spent_only_past_their_max() {
    let budgets = Retries::default();
    assert_eq!(spent(&history(10, 3, 0), &budgets), None);
    assert_eq!(
        spent(&history(11, 0, 0), &budgets),
        Some(Budget::Interruptions { spent: 11, max: 10 })
    );
    assert_eq!(
        spent(&history(0, 4, 0), &budgets),
        Some(Budget::HostErrors { spent: 4, max: 3 })
    );
    assert!(
        Budget::HostErrors { spent: 4, max: 3 }
            .describe()
            .contains("max_host_errors (3)")
    );
}

#[test]
fn exit_codes_are_retried_up_to_the_smaller_max() {
    let retry = RetrySpec {
        exit_codes: vec![75],
        max: 2,
    };
    let failed = |h: &History, code| retries_exit(Some(&retry), 10, h, Status::Failed, Some(code));
    assert!(failed(&history(0, 0, 0), 75));
    assert!(failed(&history(0, 0, 1), 75));
    assert!(!failed(&history(0, 0, 2), 75));
    assert!(!failed(&history(0, 0, 0), 1));
    // The profile's cap binds.
    assert!(!retries_exit(
        Some(&retry),
        0,
        &history(0, 0, 0),
        Status::Failed,
        Some(75)
    ));
    // Only a failure: a timeout is not retried.
    assert!(!retries_exit(
        Some(&retry),
        10,
        &history(0, 0, 0),
        Status::TimedOut,
        Some(75)
    ));
    assert!(!retries_exit(
        None,
        10,
        &history(0, 0, 0),
        Status::Failed,
        Some(75)
    ));
}

#[test]
fn escalation_after_the_profiles_count_when_the_pool_has_a_queue() {
    let mut budgets = Retries::default();
    assert!(!escalates(&history(5, 0, 0), &budgets, true));
    budgets.escalate_after_interruptions = 2;
    assert!(!escalates(&history(0, 0, 0), &budgets, true));
    // This interruption is the second.
    assert!(escalates(&history(1, 0, 0), &budgets, true));
    assert!(!escalates(&history(1, 0, 0), &budgets, false));
}

#[test]
fn retry_delay_doubles_up_to_the_visibility_timeout() {
    let visibility = Duration::from_secs(60);
    let delays: Vec<u64> = (1..=6)
        .map(|n| retry_visibility(n, visibility).as_secs())
        .collect();
    assert_eq!(delays, [5, 10, 20, 40, 60, 60]);
    assert_eq!(retry_visibility(0, visibility).as_secs(), 5);
    assert_eq!(retry_visibility(u32::MAX, visibility), visibility);
}
