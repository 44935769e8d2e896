use super::*;

fn ended(attempt: u32, status: Status) -> Attempt {
    Attempt {
        attempt,
        instance_id: "i-0abc".into(),
        availability_zone: Some("eu-west-1a".into()),
        lifecycle: Some("spot".into()),
        status,
        reason: Some("spot interruption".into()),
        started_at: "2026-12-07T19:00:00Z".into(),
        seconds_lost: 42,
    }
}

#[test]
fn a_first_copy_has_no_history_and_counts_receives() {
    let history = History::read(None).unwrap();
    assert_eq!(history, History::default());
    assert_eq!(history.attempt(1), 1);
    assert_eq!(history.attempt(3), 3);
    // A count SQS did not give is the first delivery.
    assert_eq!(history.attempt(0), 1);
}

#[test]
fn each_cause_counts_against_its_own_budget() {
    let first = History::default();
    let second = first.next(Cause::Interruption, 1, Some(ended(1, Status::Interrupted)));
    assert_eq!(
        (second.before, second.interruptions, second.host_errors),
        (1, 1, 0)
    );
    assert_eq!(second.attempt(1), 2);
    let third = second.next(Cause::HostError, 2, Some(ended(2, Status::Error)));
    assert_eq!(
        (third.before, third.interruptions, third.host_errors),
        (2, 1, 1)
    );
    let fourth = third.next(Cause::Retry, 3, Some(ended(3, Status::Failed)));
    assert_eq!((fourth.retries, fourth.attempts.len()), (1, 3));
    // A copy redelivered by SQS (its host died without a word) still counts on.
    assert_eq!(fourth.attempt(2), 5);
    // Declined: the copy goes back as it came.
    assert_eq!(fourth.next(Cause::Declined, 4, None), fourth);
}

#[test]
fn the_attribute_round_trips() {
    let history =
        History::default().next(Cause::Interruption, 1, Some(ended(1, Status::Interrupted)));
    let text = history.to_attribute();
    assert_eq!(History::read(Some(&text)).unwrap(), history);
}

#[test]
fn the_list_keeps_the_newest() {
    let mut history = History::default();
    for n in 1..=(MAX_LISTED as u32 + 5) {
        history = history.next(Cause::Interruption, n, Some(ended(n, Status::Interrupted)));
    }
    assert_eq!(history.attempts.len(), MAX_LISTED);
    assert_eq!(history.attempts[0].attempt, 6);
    assert_eq!(history.interruptions, MAX_LISTED as u32 + 5);
    // And what it writes, it reads.
    assert_eq!(
        History::read(Some(&history.to_attribute())).unwrap(),
        history
    );
}

#[test]
fn a_hostile_attribute_is_refused_naming_the_rule() {
    let rule = |text: &str| History::read(Some(text)).unwrap_err().to_string();
    assert!(
        rule("not json").starts_with("message attribute deckhand_attempts: not deckhand's history")
    );
    // Too big: refused before it is parsed.
    let big = format!(
        "{{\"before\":1,\"interruptions\":0,\"host_errors\":0,\"retries\":0,\"pad\":\"{}\"}}",
        "x".repeat(MAX_ATTRIBUTE_BYTES)
    );
    assert!(rule(&big).contains("at most 65536"), "{}", rule(&big));
    // Unknown fields, negative or huge counts.
    assert!(
        rule(r#"{"before":1,"interruptions":0,"host_errors":0,"retries":0,"x":1}"#)
            .contains("unknown field")
    );
    assert!(
        rule(r#"{"before":-1,"interruptions":0,"host_errors":0,"retries":0}"#)
            .contains("not deckhand's history")
    );
    assert!(
        rule(r#"{"before":99999999999,"interruptions":0,"host_errors":0,"retries":0}"#)
            .contains("not deckhand's history")
    );
    // Too many entries.
    let many = History {
        attempts: vec![ended(1, Status::Interrupted); MAX_LISTED + 1],
        ..History::default()
    };
    assert!(rule(&many.to_attribute()).contains("65 attempts listed; at most 64"));
    // A control character in a name, an empty one, a long one.
    for (field, mutate) in [
        (
            "instance_id",
            Box::new(|a: &mut Attempt| a.instance_id = "i-\u{1b}[31m".into())
                as Box<dyn Fn(&mut Attempt)>,
        ),
        (
            "instance_id",
            Box::new(|a: &mut Attempt| a.instance_id = String::new()),
        ),
        (
            "availability_zone",
            Box::new(|a: &mut Attempt| a.availability_zone = Some("z".repeat(65))),
        ),
        (
            "reason",
            Box::new(|a: &mut Attempt| a.reason = Some("line\nbreak".into())),
        ),
    ] {
        let mut entry = ended(1, Status::Interrupted);
        mutate(&mut entry);
        let history = History {
            attempts: vec![entry],
            ..History::default()
        };
        let text = rule(&history.to_attribute());
        assert!(
            text.contains(&format!("attempts[0].{field}: must be")),
            "{text}"
        );
    }
}

#[test]
fn a_kept_reason_is_bounded_and_escaped() {
    let reason = Attempt::reason(Some(&format!("a\u{7}{}", "b".repeat(2000)))).unwrap();
    assert!(reason.len() <= MAX_REASON_BYTES);
    assert!(reason.starts_with("a\\u{7}b"));
}
