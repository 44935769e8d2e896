use super::stats::{Round, Verdict, judge, rounds};
use super::*;

fn round(stamp: &str, action: u64, disk: u64, main: u64) -> String {
    format!(
        "{stamp}: {{ \"name\": \"fwd\", \"origin\": \"core.action\", \"processed\": 9, \"failed\": 0 }}\n\
         {stamp}: {{ \"name\": \"fwd queue[DA]\", \"origin\": \"core.queue\", \"size\": {disk}, \"enqueued\": 0 }}\n\
         {stamp}: {{ \"name\": \"fwd queue\", \"origin\": \"core.queue\", \"size\": {action}, \"enqueued\": 7 }}\n\
         {stamp}: {{ \"name\": \"main Q\", \"origin\": \"core.queue\", \"size\": {main}, \"enqueued\": 7 }}\n"
    )
}

#[test]
fn a_round_closes_at_the_main_queue_and_reads_each_queue() {
    let text =
        round("Mon Dec  7 19:07:12 2026", 3, 40, 1) + &round("Mon Dec  7 19:07:13 2026", 0, 0, 0);
    assert_eq!(
        rounds(&text),
        [
            Round {
                main: 1,
                action: 3,
                disk: 40
            },
            Round {
                main: 0,
                action: 0,
                disk: 0
            },
        ]
    );
}

#[test]
fn the_first_round_after_the_start_does_not_count() {
    // It may have been counted before the drain began.
    assert_eq!(judge(&round("t1", 0, 0, 0)), Verdict::NoRoundYet);
    let two = round("t1", 0, 0, 0) + &round("t2", 0, 0, 0);
    assert_eq!(judge(&two), Verdict::Empty);
}

#[test]
fn the_latest_round_decides() {
    let emptying = round("t1", 5, 0, 0) + &round("t2", 2, 7, 1) + &round("t3", 0, 0, 0);
    assert_eq!(judge(&emptying), Verdict::Empty);
    let filling = round("t1", 0, 0, 0) + &round("t2", 0, 0, 0) + &round("t3", 0, 12, 0);
    assert_eq!(judge(&filling), Verdict::Queued(12));
}

#[test]
fn a_partial_line_or_round_and_other_counters_are_ignored() {
    // The read began in the middle of a line, and the last round is unfinished.
    let text = String::from("ize\": 3, \"enqueued\": 0 }\n")
        + &round("t1", 9, 9, 9)
        + &round("t2", 0, 0, 0)
        + "t3: { \"name\": \"fwd queue\", \"origin\": \"core.queue\", \"size\": 4 }\n"
        + "t3: { \"name\": \"imjournal\", \"origin\": \"imjournal\", \"submitted\": 4 }\n"
        + "garbage\n";
    assert_eq!(judge(&text), Verdict::Empty);
    assert_eq!(judge(""), Verdict::NoRoundYet);
}

fn config(kind: &str, endpoint: &str) -> LogForwarderConfig {
    LogForwarderConfig {
        kind: Some(kind.into()),
        endpoint: Some(endpoint.into()),
        ca_file: None,
        token_secret: None,
        max_disk_mb: 64,
    }
}

fn settings(config: &LogForwarderConfig) -> Result<Settings, ForwarderError> {
    Settings::new(config, &[("sink", "s3cr\"t]\n")].into_iter().collect())
}

#[test]
fn endpoints_are_host_and_port_and_nothing_else() {
    for good in [
        "logs.internal:6514",
        "10.0.0.7:514",
        "[fd00::7]:6514",
        "a-b.c:1",
    ] {
        assert!(endpoint_parts(good).is_some(), "{good}");
    }
    assert_eq!(
        endpoint_parts("[fd00::7]:6514"),
        Some(("fd00::7".into(), 6514))
    );
    for bad in [
        "logs.internal",
        "logs.internal:",
        "logs.internal:0",
        "logs.internal:65536",
        "logs.internal:+514",
        ":514",
        "logs internal:514",
        "x\":514",
        "tcp://logs:514",
        "-logs:514",
        "logs..internal:514",
        "[fd00::7:514",
        "[nope]:514",
        "fd00::7:514",
    ] {
        assert!(endpoint_parts(bad).is_none(), "{bad}");
    }
}

#[test]
fn each_bad_setting_names_its_key() {
    let secrets = Secrets::default();
    let cases = [
        (
            LogForwarderConfig {
                kind: None,
                ..config("x", "h:1")
            },
            "log_forwarder.kind",
        ),
        (config("splunk", "h:1"), "log_forwarder.kind: \"splunk\""),
        (
            LogForwarderConfig {
                endpoint: None,
                ..config("json", "h:1")
            },
            "log_forwarder.endpoint",
        ),
        (config("json", "h"), "log_forwarder.endpoint: \"h\""),
        (
            LogForwarderConfig {
                ca_file: Some("/nonexistent/ca.pem".into()),
                ..config("json", "h:1")
            },
            "log_forwarder.ca_file: \"/nonexistent/ca.pem\": does not exist",
        ),
        (
            LogForwarderConfig {
                ca_file: Some("ca.pem".into()),
                ..config("json", "h:1")
            },
            "must be an absolute path",
        ),
        (
            LogForwarderConfig {
                token_secret: Some("nope".into()),
                ..config("json", "h:1")
            },
            "log_forwarder.token_secret: names secret \"nope\"",
        ),
    ];
    for (config, expected) in cases {
        let error = Settings::new(&config, &secrets).unwrap_err().to_string();
        assert!(error.contains(expected), "{error:?} lacks {expected:?}");
    }
}

#[test]
fn a_ca_file_must_be_the_file_itself_and_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let link = dir.path().join("link.pem");
    std::os::unix::fs::symlink(&ca, &link).unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "hello").unwrap();
    let with_ca = |path: &Path| LogForwarderConfig {
        ca_file: Some(path.to_string_lossy().into_owned()),
        ..config("rfc5424", "logs.internal:6514")
    };
    let ok = settings(&with_ca(&ca)).unwrap();
    assert_eq!(ok.ca_file.as_deref(), Some(ca.as_path()));
    let text = render(&ok, Path::new("/run/s.json"), Path::new("/var/lib/f"));
    assert!(text.contains("StreamDriver=\"gtls\""), "{text}");
    assert!(text.contains(&format!(
        "defaultNetstreamDriverCAFile=\"{}\"",
        ca.display()
    )));
    for (path, why) in [
        (&link, "symbolic link"),
        (&junk, "no PEM"),
        (&dir.path().to_path_buf(), "not a regular file"),
    ] {
        let error = settings(&with_ca(path)).unwrap_err().to_string();
        assert!(
            error.contains("log_forwarder.ca_file") && error.contains(why),
            "{error}"
        );
    }
}

#[test]
fn the_token_is_escaped_for_its_field_and_the_config() {
    let config = LogForwarderConfig {
        token_secret: Some("sink".into()),
        ..config("rfc5424", "logs.internal:6514")
    };
    let text = render(
        &settings(&config).unwrap(),
        Path::new("/run/s.json"),
        Path::new("/var/lib/f"),
    );
    // s3cr"t] → SD value s3cr\"t\] → in a RainerScript string s3cr\\\"t\\]
    assert!(
        text.contains(r#"[auth@32473 token=\"s3cr\\\"t\\]\"]"#),
        "{text}"
    );
    assert!(!text.contains("StreamDriver"), "no CA: plain TCP");
    let control: Secrets = [("sink", "a\u{7}b")].into_iter().collect();
    let error = Settings::new(&config, &control).unwrap_err().to_string();
    assert!(error.contains("log_forwarder.token_secret"), "{error}");
}

#[test]
fn the_rendering_keeps_deckhands_fields_and_bounds_the_disk_queue() {
    let text = render(
        &settings(&config("rfc5424", "logs.internal:6514")).unwrap(),
        Path::new("/run/s.json"),
        Path::new("/var/lib/f"),
    );
    for field in super::rsyslog::FIELDS {
        assert!(
            text.contains(&format!(" {field}=")),
            "{field} missing from {text}"
        );
    }
    for needle in [
        "name=\"fwd\"",
        "target=\"logs.internal\"",
        "port=\"6514\"",
        "queue.maxDiskSpace=\"64m\"",
        "queue.filename=\"fwd\"",
        "log.file=\"/run/s.json\"",
        "workDirectory=\"/var/lib/f\"",
        "template=\"deckhand_rfc5424\"",
    ] {
        assert!(text.contains(needle), "{needle} missing from {text}");
    }
    let json = render(
        &settings(&config("json", "10.0.0.7:514")).unwrap(),
        Path::new("/s"),
        Path::new("/f"),
    );
    assert!(
        json.contains("template=\"deckhand_json\"") && !json.contains("set $.sd"),
        "{json}"
    );
}

#[test]
fn configure_writes_a_private_file_and_removes_it_when_off() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = Secrets::default();
    let on = config("rfc5424", "logs.internal:6514");
    let forwarder = configure(&on, &secrets, dir.path()).unwrap();
    assert!(forwarder.is_some());
    let path = dir.path().join(CONFIG_FILE);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    assert!(configure(&config("bogus", "h:1"), &secrets, dir.path()).is_err());
    assert!(
        !path.exists(),
        "a wrong setting leaves no forwarder configured"
    );
    configure(&on, &secrets, dir.path()).unwrap();
    assert!(
        configure(&LogForwarderConfig::default(), &secrets, dir.path())
            .unwrap()
            .is_none()
    );
    assert!(!path.exists());
    let missing = dir.path().join("absent");
    let error = configure(&on, &secrets, &missing).unwrap_err();
    assert!(matches!(error, ForwarderError::NotInstalled(_)), "{error}");
}

#[tokio::test]
async fn flush_waits_for_a_whole_empty_round_written_after_it_began() {
    let dir = tempfile::tempdir().unwrap();
    let stats = dir.path().join(STATS_FILE);
    // Before the flush: an empty round, which must not count.
    std::fs::write(&stats, round("t0", 0, 0, 0)).unwrap();
    let forwarder = Forwarder::new(stats.clone());
    let writer = async {
        let append = |text: String| {
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&stats)
                .unwrap();
            f.write_all(text.as_bytes()).unwrap();
        };
        append(round("t1", 4, 0, 0));
        tokio::time::sleep(Duration::from_millis(300)).await;
        append(round("t2", 1, 0, 0));
        tokio::time::sleep(Duration::from_millis(300)).await;
        append(round("t3", 0, 0, 0));
    };
    let (flushed, ()) = tokio::join!(forwarder.flush(Duration::from_secs(30)), writer);
    assert!(flushed.emptied, "{flushed:?}");
    assert!(flushed.waited >= Duration::from_millis(500), "{flushed:?}");
}

#[tokio::test]
async fn flush_gives_up_at_its_timeout_and_says_what_was_queued() {
    let dir = tempfile::tempdir().unwrap();
    let stats = dir.path().join(STATS_FILE);
    let forwarder = Forwarder::new(stats.clone());
    let writer = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        std::fs::write(&stats, round("t1", 3, 0, 0) + &round("t2", 3, 0, 0)).unwrap();
    };
    let (flushed, ()) = tokio::join!(forwarder.flush(Duration::from_millis(700)), writer);
    assert!(!flushed.emptied);
    assert_eq!(flushed.queued, Some(3));
    assert!(
        flushed.waited >= Duration::from_millis(700) && flushed.waited < Duration::from_secs(5)
    );
    // No counters at all (the forwarder never started): not emptied, nothing read.
    let silent = Forwarder::new(dir.path().join("none.json"));
    let flushed = silent.flush(Duration::from_millis(300)).await;
    assert_eq!((flushed.emptied, flushed.queued), (false, None));
}
