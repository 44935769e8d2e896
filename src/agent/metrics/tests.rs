use super::*;

fn state() -> State {
    State {
        slots: 2,
        docker_up: true,
        queue_up: true,
        draining: false,
    }
}

/// Every metric with a value that is not its default, so a change to any
/// line of the exposition shows up.
fn populated() -> (Metrics, State) {
    let metrics = Metrics::default();
    metrics.job_finished(Status::Succeeded, Duration::from_secs(3));
    metrics.job_finished(Status::Succeeded, Duration::from_millis(100_250));
    metrics.job_finished(Status::Failed, Duration::from_millis(500));
    metrics.job_finished(Status::TimedOut, Duration::from_secs(7300));
    metrics.received(7);
    metrics.receive_failed();
    metrics.receive_failed();
    metrics.handed_back();
    metrics.ready(Duration::from_millis(1234));
    metrics.disk(&crate::host::disk::Room {
        free_mb: 5120,
        removed: 3,
        low: Some(crate::host::disk::LowDisk {
            path: "/var/lib/docker".into(),
            free_mb: 5120,
            min_free_mb: 8192,
        }),
    });
    let state = State {
        slots: 4,
        docker_up: true,
        queue_up: false,
        draining: true,
    };
    (metrics, state)
}

/// The exposition, byte for byte: dashboards and alerts match these names,
/// labels and help texts, so any change to them must be a deliberate one.
#[test]
fn exposition_is_unchanged() {
    let (metrics, state) = populated();
    // Two jobs running, one of them sampled; a third came and went.
    let sampled = LiveUsage::default();
    sampled.set(crate::host::cgroups::Sample {
        cpu_seconds: 1.5,
        memory_bytes: 50_000_000,
        memory_peak_bytes: 60_000_000,
        memory_limit_bytes: Some(100_000_000),
    });
    let _first = metrics.running("default", 0, sampled);
    let _second = metrics.running("big", 1, LiveUsage::default());
    drop(metrics.running("default", 2, LiveUsage::default()));
    metrics.job_used(
        "default",
        &ContainerUsage {
            cpu_seconds: 2.0,
            memory_peak_bytes: 30_000_000,
            memory_limit_bytes: Some(100_000_000),
        },
    );
    let expected = EXPOSITION.replace("AGENT_VERSION", AGENT_VERSION);
    let text = metrics.render(&state);
    if text != expected {
        eprintln!("{text}");
    }
    // Series within a family come in the order of the library's hash map: the
    // lines are compared byte for byte, in any order, and the end comes last.
    let sorted = |text: &str| {
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        lines.sort();
        lines
    };
    assert_eq!(sorted(&text), sorted(&expected));
    assert!(text.ends_with("# EOF\n"));
}

const EXPOSITION: &str = r#"# HELP deckhand_slots Jobs this agent runs at once (agent.slots).
# TYPE deckhand_slots gauge
deckhand_slots 4
# HELP deckhand_jobs_running Job containers running now.
# TYPE deckhand_jobs_running gauge
deckhand_jobs_running 2
# HELP deckhand_docker_up 1 if Docker answered at its last use.
# TYPE deckhand_docker_up gauge
deckhand_docker_up 1
# HELP deckhand_queue_up 1 if the job queue answered at its last use.
# TYPE deckhand_queue_up gauge
deckhand_queue_up 0
# HELP deckhand_draining 1 once the agent takes no more jobs and is draining.
# TYPE deckhand_draining gauge
deckhand_draining 1
# HELP deckhand_ready 1 once bootstrap is done and the agent serves the queue.
# TYPE deckhand_ready gauge
deckhand_ready 1
# HELP deckhand_boot_seconds Bootstrap time, secrets to ready.
# TYPE deckhand_boot_seconds gauge
deckhand_boot_seconds 1.234
# HELP deckhand_disk_free_bytes Least free space of Docker's data root and the work dir, at the last check (0 before one).
# TYPE deckhand_disk_free_bytes gauge
deckhand_disk_free_bytes 5120000000
# HELP deckhand_disk_low 1 while free space is below disk.min_free_mb and no job is taken.
# TYPE deckhand_disk_low gauge
deckhand_disk_low 1
# HELP deckhand_build_info The running deckhand.
# TYPE deckhand_build_info gauge
deckhand_build_info{version="AGENT_VERSION"} 1
# HELP deckhand_messages_received Job messages received from the queue.
# TYPE deckhand_messages_received counter
deckhand_messages_received_total 7
# HELP deckhand_receive_errors Receives from the queue that failed.
# TYPE deckhand_receive_errors counter
deckhand_receive_errors_total 2
# HELP deckhand_images_removed Unused images removed to make room on the disk.
# TYPE deckhand_images_removed counter
deckhand_images_removed_total 3
# HELP deckhand_jobs_stopped_for_disk Running jobs stopped because free space fell below disk.min_free_mb.
# TYPE deckhand_jobs_stopped_for_disk counter
deckhand_jobs_stopped_for_disk_total 0
# HELP deckhand_messages_handed_back Messages made visible again for another attempt (drains, errors, duplicates).
# TYPE deckhand_messages_handed_back counter
deckhand_messages_handed_back_total 1
# HELP deckhand_jobs Job attempts that ended, by status (interrupted and error ones run again).
# TYPE deckhand_jobs counter
deckhand_jobs_total{status="cancelled"} 0
deckhand_jobs_total{status="succeeded"} 2
deckhand_jobs_total{status="interrupted"} 0
deckhand_jobs_total{status="error"} 0
deckhand_jobs_total{status="failed"} 1
deckhand_jobs_total{status="timed_out"} 1
deckhand_jobs_total{status="rejected"} 0
# HELP deckhand_job_duration_seconds Wall time of jobs that ran, by status.
# TYPE deckhand_job_duration_seconds histogram
deckhand_job_duration_seconds_sum{status="succeeded"} 103.25
deckhand_job_duration_seconds_count{status="succeeded"} 2
deckhand_job_duration_seconds_bucket{le="1.0",status="succeeded"} 0
deckhand_job_duration_seconds_bucket{le="5.0",status="succeeded"} 1
deckhand_job_duration_seconds_bucket{le="15.0",status="succeeded"} 1
deckhand_job_duration_seconds_bucket{le="30.0",status="succeeded"} 1
deckhand_job_duration_seconds_bucket{le="60.0",status="succeeded"} 1
deckhand_job_duration_seconds_bucket{le="300.0",status="succeeded"} 2
deckhand_job_duration_seconds_bucket{le="900.0",status="succeeded"} 2
deckhand_job_duration_seconds_bucket{le="1800.0",status="succeeded"} 2
deckhand_job_duration_seconds_bucket{le="3600.0",status="succeeded"} 2
deckhand_job_duration_seconds_bucket{le="7200.0",status="succeeded"} 2
deckhand_job_duration_seconds_bucket{le="+Inf",status="succeeded"} 2
deckhand_job_duration_seconds_sum{status="failed"} 0.5
deckhand_job_duration_seconds_count{status="failed"} 1
deckhand_job_duration_seconds_bucket{le="1.0",status="failed"} 1
deckhand_job_duration_seconds_bucket{le="5.0",status="failed"} 1
deckhand_job_duration_seconds_bucket{le="15.0",status="failed"} 1
deckhand_job_duration_seconds_bucket{le="30.0",status="failed"} 1
deckhand_job_duration_seconds_bucket{le="60.0",status="failed"} 1
deckhand_job_duration_seconds_bucket{le="300.0",status="failed"} 1
deckhand_job_duration_seconds_bucket{le="900.0",status="failed"} 1
deckhand_job_duration_seconds_bucket{le="1800.0",status="failed"} 1
deckhand_job_duration_seconds_bucket{le="3600.0",status="failed"} 1
deckhand_job_duration_seconds_bucket{le="7200.0",status="failed"} 1
deckhand_job_duration_seconds_bucket{le="+Inf",status="failed"} 1
deckhand_job_duration_seconds_sum{status="timed_out"} 7300.0
deckhand_job_duration_seconds_count{status="timed_out"} 1
deckhand_job_duration_seconds_bucket{le="1.0",status="timed_out"} 0
deckhand_job_duration_seconds_bucket{le="5.0",status="timed_out"} 0
deckhand_job_duration_seconds_bucket{le="15.0",status="timed_out"} 0
deckhand_job_duration_seconds_bucket{le="30.0",status="timed_out"} 0
deckhand_job_duration_seconds_bucket{le="60.0",status="timed_out"} 0
deckhand_job_duration_seconds_bucket{le="300.0",status="timed_out"} 0
deckhand_job_duration_seconds_bucket{le="900.0",status="timed_out"} 0
deckhand_job_duration_seconds_bucket{le="1800.0",status="timed_out"} 0
deckhand_job_duration_seconds_bucket{le="3600.0",status="timed_out"} 0
deckhand_job_duration_seconds_bucket{le="7200.0",status="timed_out"} 0
deckhand_job_duration_seconds_bucket{le="+Inf",status="timed_out"} 1
# HELP deckhand_queue_wait_seconds Time job messages spent in the queue, from their send to their receipt here.
# TYPE deckhand_queue_wait_seconds histogram
deckhand_queue_wait_seconds_sum 0.0
deckhand_queue_wait_seconds_count 0
deckhand_queue_wait_seconds_bucket{le="0.1"} 0
deckhand_queue_wait_seconds_bucket{le="0.5"} 0
deckhand_queue_wait_seconds_bucket{le="1.0"} 0
deckhand_queue_wait_seconds_bucket{le="5.0"} 0
deckhand_queue_wait_seconds_bucket{le="15.0"} 0
deckhand_queue_wait_seconds_bucket{le="30.0"} 0
deckhand_queue_wait_seconds_bucket{le="60.0"} 0
deckhand_queue_wait_seconds_bucket{le="300.0"} 0
deckhand_queue_wait_seconds_bucket{le="900.0"} 0
deckhand_queue_wait_seconds_bucket{le="3600.0"} 0
deckhand_queue_wait_seconds_bucket{le="+Inf"} 0
# HELP deckhand_job_cpu_seconds CPU time of jobs' containers, by profile (read from their cgroups).
# TYPE deckhand_job_cpu_seconds histogram
deckhand_job_cpu_seconds_sum{profile="default"} 2.0
deckhand_job_cpu_seconds_count{profile="default"} 1
deckhand_job_cpu_seconds_bucket{le="0.1",profile="default"} 0
deckhand_job_cpu_seconds_bucket{le="0.5",profile="default"} 0
deckhand_job_cpu_seconds_bucket{le="1.0",profile="default"} 0
deckhand_job_cpu_seconds_bucket{le="5.0",profile="default"} 1
deckhand_job_cpu_seconds_bucket{le="15.0",profile="default"} 1
deckhand_job_cpu_seconds_bucket{le="60.0",profile="default"} 1
deckhand_job_cpu_seconds_bucket{le="300.0",profile="default"} 1
deckhand_job_cpu_seconds_bucket{le="900.0",profile="default"} 1
deckhand_job_cpu_seconds_bucket{le="3600.0",profile="default"} 1
deckhand_job_cpu_seconds_bucket{le="14400.0",profile="default"} 1
deckhand_job_cpu_seconds_bucket{le="+Inf",profile="default"} 1
# HELP deckhand_job_memory_peak_ratio Jobs' peak memory as a share of their memory limit, by profile.
# TYPE deckhand_job_memory_peak_ratio histogram
deckhand_job_memory_peak_ratio_sum{profile="default"} 0.3
deckhand_job_memory_peak_ratio_count{profile="default"} 1
deckhand_job_memory_peak_ratio_bucket{le="0.05",profile="default"} 0
deckhand_job_memory_peak_ratio_bucket{le="0.1",profile="default"} 0
deckhand_job_memory_peak_ratio_bucket{le="0.25",profile="default"} 0
deckhand_job_memory_peak_ratio_bucket{le="0.5",profile="default"} 1
deckhand_job_memory_peak_ratio_bucket{le="0.75",profile="default"} 1
deckhand_job_memory_peak_ratio_bucket{le="0.9",profile="default"} 1
deckhand_job_memory_peak_ratio_bucket{le="0.95",profile="default"} 1
deckhand_job_memory_peak_ratio_bucket{le="1.0",profile="default"} 1
deckhand_job_memory_peak_ratio_bucket{le="+Inf",profile="default"} 1
# HELP deckhand_running_cpu_seconds CPU time so far of the job running in each slot.
# TYPE deckhand_running_cpu_seconds gauge
deckhand_running_cpu_seconds{profile="default",slot="0"} 1.5
# HELP deckhand_running_memory_bytes Memory held now by the job running in each slot.
# TYPE deckhand_running_memory_bytes gauge
deckhand_running_memory_bytes{profile="default",slot="0"} 50000000
# EOF
"#;

#[test]
fn durations_fill_cumulative_buckets() {
    let metrics = Metrics::default();
    metrics.job_finished(Status::Succeeded, Duration::from_secs(3));
    metrics.job_finished(Status::Succeeded, Duration::from_secs(100));
    metrics.job_finished(Status::Failed, Duration::from_millis(500));
    let text = metrics.render(&state());
    for line in [
        "deckhand_jobs_total{status=\"succeeded\"} 2",
        "deckhand_jobs_total{status=\"failed\"} 1",
        "deckhand_jobs_total{status=\"timed_out\"} 0",
        "deckhand_job_duration_seconds_bucket{le=\"1.0\",status=\"succeeded\"} 0",
        "deckhand_job_duration_seconds_bucket{le=\"5.0\",status=\"succeeded\"} 1",
        "deckhand_job_duration_seconds_bucket{le=\"60.0\",status=\"succeeded\"} 1",
        "deckhand_job_duration_seconds_bucket{le=\"300.0\",status=\"succeeded\"} 2",
        "deckhand_job_duration_seconds_bucket{le=\"+Inf\",status=\"succeeded\"} 2",
        "deckhand_job_duration_seconds_sum{status=\"succeeded\"} 103.0",
        "deckhand_job_duration_seconds_count{status=\"failed\"} 1",
        "deckhand_slots 2",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
}

#[test]
fn every_sample_has_help_and_type() {
    let metrics = Metrics::default();
    metrics.job_finished(Status::TimedOut, Duration::from_secs(1800));
    let text = metrics.render(&state());
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    for sample in text.lines().filter(|l| !l.starts_with('#')) {
        let name = sample.split(['{', ' ']).next().unwrap();
        let family = name
            .strip_suffix("_bucket")
            .or_else(|| name.strip_suffix("_sum"))
            .or_else(|| name.strip_suffix("_count"))
            .or_else(|| name.strip_suffix("_total"))
            .filter(|f| families.contains(f))
            .unwrap_or(name);
        assert!(families.contains(&family), "{sample}: no # TYPE");
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "{family}: no # HELP"
        );
    }
}

#[test]
fn probes_say_why_not() {
    let metrics = Metrics::default();
    assert_eq!(metrics.unready(&state()), Some("starting"));
    assert_eq!(Metrics::unhealthy(&state()), None);
    metrics.ready(Duration::from_millis(20));
    assert_eq!(metrics.unready(&state()), None);
    let down = State {
        docker_up: false,
        ..state()
    };
    assert_eq!(Metrics::unhealthy(&down), Some("Docker is unreachable"));
    assert_eq!(metrics.unready(&down), Some("Docker is unreachable"));
    let draining = State {
        draining: true,
        ..state()
    };
    assert_eq!(metrics.unready(&draining), Some("draining"));
    assert_eq!(
        Metrics::unhealthy(&draining),
        None,
        "a draining agent is alive"
    );
}

#[test]
fn the_scraper_gets_the_format_it_asks_for() {
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    assert_eq!(Format::accepted(Some(prometheus)), Format::OpenMetrics);
    assert_eq!(Format::accepted(None), Format::Prometheus);
    assert_eq!(Format::accepted(Some("*/*")), Format::Prometheus);
    assert_eq!(
        Format::accepted(Some("text/plain, application/openmetrics-text;q=0")),
        Format::Prometheus
    );
}

#[test]
fn the_prometheus_text_names_counters_with_their_total_and_has_no_eof() {
    let metrics = Metrics::default();
    metrics.received(3);
    metrics.job_finished(Status::Succeeded, Duration::from_secs(3));
    let text = metrics.render_as(&state(), Format::Prometheus);
    assert!(
        text.contains(
            "# HELP deckhand_messages_received_total Job messages received from the queue.\n"
        ),
        "{text}"
    );
    assert!(text.contains("# TYPE deckhand_messages_received_total counter\n"));
    assert!(text.contains("\ndeckhand_messages_received_total 3\n"));
    assert!(text.contains("# TYPE deckhand_jobs_total counter\n"));
    assert!(!text.contains("# EOF"));
    assert!(!text.contains("# UNIT"));
    // Gauges and histograms keep their names.
    assert!(text.contains("# TYPE deckhand_slots gauge\n"));
    assert!(text.contains("# TYPE deckhand_job_duration_seconds histogram\n"));
}
