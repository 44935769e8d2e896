//! Prometheus metrics and a health check over HTTP, at `metrics.listen`: what a
//! pool's monitoring scrapes from each host (jobs by outcome and duration, slots in
//! use, whether Docker and the queue answer, whether the agent is draining).
//!
//! `GET /metrics` is the text exposition format 0.0.4. `GET /healthz` (liveness) is
//! 200 while Docker and the queue answered at their last use, the rule systemd's
//! watchdog follows; a draining agent is healthy. `GET /readyz` is 200 only while
//! the agent takes work: bootstrapped, not draining, and healthy. A 503 says why.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use tokio::net::TcpListener;

use crate::host::http::Reply;

use crate::job::result::{AGENT_VERSION, Status};

/// Upper bounds of the job duration histogram: CI jobs run from seconds to hours.
const DURATION_BUCKETS_SECS: [f64; 10] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0,
];

#[derive(Debug, thiserror::Error)]
#[error("listen on {address} (metrics.listen): {source}")]
pub struct BindError {
    address: SocketAddr,
    source: std::io::Error,
}

/// The agent's counters and gauges. Cheap to update from any task.
#[derive(Default)]
pub struct Metrics {
    jobs: Mutex<BTreeMap<&'static str, Durations>>,
    received: AtomicU64,
    receive_errors: AtomicU64,
    handed_back: AtomicU64,
    running: AtomicUsize,
    boot_ms: AtomicU64,
    ready: AtomicBool,
    disk_free_mb: AtomicU64,
    disk_low: AtomicBool,
    images_removed: AtomicU64,
}

/// A histogram of one status's job durations.
#[derive(Default, Clone)]
struct Durations {
    /// Per bucket, the jobs at or under its bound (cumulative, as exposed).
    buckets: [u64; DURATION_BUCKETS_SECS.len()],
    count: u64,
    sum_secs: f64,
}

/// What the agent is, read at scrape time.
pub struct State {
    pub slots: usize,
    pub docker_up: bool,
    pub queue_up: bool,
    pub draining: bool,
}

impl Metrics {
    pub fn job_finished(&self, status: Status, duration: Duration) {
        let secs = duration.as_secs_f64();
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let stats = jobs.entry(status.as_str()).or_default();
        for (bucket, bound) in stats.buckets.iter_mut().zip(DURATION_BUCKETS_SECS) {
            if secs <= bound {
                *bucket += 1;
            }
        }
        stats.count += 1;
        stats.sum_secs += secs;
    }

    pub fn received(&self, messages: usize) {
        self.received.fetch_add(messages as u64, Ordering::Relaxed);
    }

    pub fn receive_failed(&self) {
        self.receive_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn handed_back(&self) {
        self.handed_back.fetch_add(1, Ordering::Relaxed);
    }

    /// A container starts (`true`) or is gone (`false`).
    pub fn running(&self, started: bool) {
        if started {
            self.running.fetch_add(1, Ordering::Relaxed);
        } else {
            self.running.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub fn ready(&self, boot: Duration) {
        self.boot_ms
            .store(boot.as_millis() as u64, Ordering::Relaxed);
        self.ready.store(true, Ordering::Relaxed);
    }

    /// A disk check before a receive.
    pub fn disk(&self, room: &crate::host::disk::Room) {
        self.disk_free_mb.store(room.free_mb, Ordering::Relaxed);
        self.disk_low.store(room.low.is_some(), Ordering::Relaxed);
        self.images_removed
            .fetch_add(room.removed as u64, Ordering::Relaxed);
    }

    /// Why the agent is not healthy, if it is not.
    fn unhealthy(state: &State) -> Option<&'static str> {
        if !state.docker_up {
            Some("Docker is unreachable")
        } else if !state.queue_up {
            Some("the job queue is unreachable")
        } else {
            None
        }
    }

    /// Why the agent takes no work now, if it does not.
    fn unready(&self, state: &State) -> Option<&'static str> {
        if state.draining {
            Some("draining")
        } else if !self.ready.load(Ordering::Relaxed) {
            Some("starting")
        } else if self.disk_low.load(Ordering::Relaxed) {
            Some("disk space is low")
        } else {
            Metrics::unhealthy(state)
        }
    }

    /// The text exposition format.
    pub fn render(&self, state: &State) -> String {
        let mut out = String::with_capacity(4096);
        let flag = |b: bool| u8::from(b);
        let mut gauge = |name: &str, help: &str, value: String| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
            );
        };
        gauge(
            "deckhand_slots",
            "Jobs this agent runs at once (agent.slots).",
            state.slots.to_string(),
        );
        gauge(
            "deckhand_jobs_running",
            "Job containers running now.",
            self.running.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            "deckhand_docker_up",
            "1 if Docker answered at its last use.",
            flag(state.docker_up).to_string(),
        );
        gauge(
            "deckhand_queue_up",
            "1 if the job queue answered at its last use.",
            flag(state.queue_up).to_string(),
        );
        gauge(
            "deckhand_draining",
            "1 once the agent takes no more jobs and is draining.",
            flag(state.draining).to_string(),
        );
        gauge(
            "deckhand_ready",
            "1 once bootstrap is done and the agent serves the queue.",
            flag(self.ready.load(Ordering::Relaxed)).to_string(),
        );
        gauge(
            "deckhand_boot_seconds",
            "Bootstrap time, secrets to ready.",
            format!("{}", self.boot_ms.load(Ordering::Relaxed) as f64 / 1000.0),
        );
        gauge(
            "deckhand_disk_free_megabytes",
            "Least free space of Docker's data root and the work dir, at the last check (0 before one).",
            self.disk_free_mb.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            "deckhand_disk_low",
            "1 while free space is below disk.min_free_mb and no job is taken.",
            flag(self.disk_low.load(Ordering::Relaxed)).to_string(),
        );
        let _ = write!(
            out,
            "# HELP deckhand_build_info The running deckhand.\n# TYPE deckhand_build_info gauge\ndeckhand_build_info{{version=\"{AGENT_VERSION}\"}} 1\n"
        );
        for (name, help, value) in [
            (
                "deckhand_messages_received_total",
                "Job messages received from the queue.",
                &self.received,
            ),
            (
                "deckhand_receive_errors_total",
                "Receives from the queue that failed.",
                &self.receive_errors,
            ),
            (
                "deckhand_images_removed_total",
                "Unused images removed to make room on the disk.",
                &self.images_removed,
            ),
            (
                "deckhand_messages_handed_back_total",
                "Messages made visible again for another attempt (drains, errors, duplicates).",
                &self.handed_back,
            ),
        ] {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                value.load(Ordering::Relaxed)
            );
        }

        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        out.push_str("# HELP deckhand_jobs_total Job attempts that ended, by status (interrupted and error ones run again).\n# TYPE deckhand_jobs_total counter\n");
        for status in Status::ALL {
            let count = jobs.get(status.as_str()).map_or(0, |d| d.count);
            let _ = writeln!(
                out,
                "deckhand_jobs_total{{status=\"{}\"}} {count}",
                status.as_str()
            );
        }
        out.push_str("# HELP deckhand_job_duration_seconds Wall time of jobs that ran, by status.\n# TYPE deckhand_job_duration_seconds histogram\n");
        for (status, d) in &jobs {
            for (bound, count) in DURATION_BUCKETS_SECS.iter().zip(d.buckets) {
                let _ = writeln!(
                    out,
                    "deckhand_job_duration_seconds_bucket{{status=\"{status}\",le=\"{bound}\"}} {count}"
                );
            }
            let _ = write!(
                out,
                "deckhand_job_duration_seconds_bucket{{status=\"{status}\",le=\"+Inf\"}} {count}\n\
                 deckhand_job_duration_seconds_sum{{status=\"{status}\"}} {sum}\n\
                 deckhand_job_duration_seconds_count{{status=\"{status}\"}} {count}\n",
                count = d.count,
                sum = d.sum_secs,
            );
        }
        out
    }
}

/// Binds `metrics.listen` (port 0: any free port; the log says which).
pub async fn bind(address: SocketAddr) -> Result<TcpListener, BindError> {
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| BindError { address, source })?;
    if let Ok(bound) = listener.local_addr() {
        tracing::info!(address = %bound, "Serving metrics and health.");
    }
    Ok(listener)
}

/// Answers scrapes until dropped.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    state: Arc<dyn Fn() -> State + Send + Sync>,
) -> Infallible {
    crate::host::http::serve(listener, "metrics", move |request| {
        let reply = respond(&request, &metrics, &state());
        async move { reply }
    })
    .await
}

fn respond(request: &Request<Incoming>, metrics: &Metrics, state: &State) -> Reply {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let body = if request.method() == Method::HEAD {
            Bytes::new()
        } else {
            Bytes::from(body)
        };
        crate::host::http::reply(status, content_type, body)
    };
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET or HEAD only\n".into(),
        );
    }
    let probe = |why: Option<&str>| match why {
        None => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        Some(why) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("{why}\n"),
        ),
    };
    match request.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(state),
        ),
        "/healthz" => probe(Metrics::unhealthy(state)),
        "/readyz" => probe(metrics.unready(state)),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "/metrics, /healthz or /readyz\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
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
        metrics.running(true);
        metrics.running(true);
        metrics.running(true);
        metrics.running(false);
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
        let expected = EXPOSITION.replace("AGENT_VERSION", AGENT_VERSION);
        assert_eq!(metrics.render(&state), expected);
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
# HELP deckhand_disk_free_megabytes Least free space of Docker's data root and the work dir, at the last check (0 before one).
# TYPE deckhand_disk_free_megabytes gauge
deckhand_disk_free_megabytes 5120
# HELP deckhand_disk_low 1 while free space is below disk.min_free_mb and no job is taken.
# TYPE deckhand_disk_low gauge
deckhand_disk_low 1
# HELP deckhand_build_info The running deckhand.
# TYPE deckhand_build_info gauge
deckhand_build_info{version="AGENT_VERSION"} 1
# HELP deckhand_messages_received_total Job messages received from the queue.
# TYPE deckhand_messages_received_total counter
deckhand_messages_received_total 7
# HELP deckhand_receive_errors_total Receives from the queue that failed.
# TYPE deckhand_receive_errors_total counter
deckhand_receive_errors_total 2
# HELP deckhand_images_removed_total Unused images removed to make room on the disk.
# TYPE deckhand_images_removed_total counter
deckhand_images_removed_total 3
# HELP deckhand_messages_handed_back_total Messages made visible again for another attempt (drains, errors, duplicates).
# TYPE deckhand_messages_handed_back_total counter
deckhand_messages_handed_back_total 1
# HELP deckhand_jobs_total Job attempts that ended, by status (interrupted and error ones run again).
# TYPE deckhand_jobs_total counter
deckhand_jobs_total{status="succeeded"} 2
deckhand_jobs_total{status="failed"} 1
deckhand_jobs_total{status="timed_out"} 1
deckhand_jobs_total{status="rejected"} 0
deckhand_jobs_total{status="interrupted"} 0
deckhand_jobs_total{status="error"} 0
# HELP deckhand_job_duration_seconds Wall time of jobs that ran, by status.
# TYPE deckhand_job_duration_seconds histogram
deckhand_job_duration_seconds_bucket{status="failed",le="1"} 1
deckhand_job_duration_seconds_bucket{status="failed",le="5"} 1
deckhand_job_duration_seconds_bucket{status="failed",le="15"} 1
deckhand_job_duration_seconds_bucket{status="failed",le="30"} 1
deckhand_job_duration_seconds_bucket{status="failed",le="60"} 1
deckhand_job_duration_seconds_bucket{status="failed",le="300"} 1
deckhand_job_duration_seconds_bucket{status="failed",le="900"} 1
deckhand_job_duration_seconds_bucket{status="failed",le="1800"} 1
deckhand_job_duration_seconds_bucket{status="failed",le="3600"} 1
deckhand_job_duration_seconds_bucket{status="failed",le="7200"} 1
deckhand_job_duration_seconds_bucket{status="failed",le="+Inf"} 1
deckhand_job_duration_seconds_sum{status="failed"} 0.5
deckhand_job_duration_seconds_count{status="failed"} 1
deckhand_job_duration_seconds_bucket{status="succeeded",le="1"} 0
deckhand_job_duration_seconds_bucket{status="succeeded",le="5"} 1
deckhand_job_duration_seconds_bucket{status="succeeded",le="15"} 1
deckhand_job_duration_seconds_bucket{status="succeeded",le="30"} 1
deckhand_job_duration_seconds_bucket{status="succeeded",le="60"} 1
deckhand_job_duration_seconds_bucket{status="succeeded",le="300"} 2
deckhand_job_duration_seconds_bucket{status="succeeded",le="900"} 2
deckhand_job_duration_seconds_bucket{status="succeeded",le="1800"} 2
deckhand_job_duration_seconds_bucket{status="succeeded",le="3600"} 2
deckhand_job_duration_seconds_bucket{status="succeeded",le="7200"} 2
deckhand_job_duration_seconds_bucket{status="succeeded",le="+Inf"} 2
deckhand_job_duration_seconds_sum{status="succeeded"} 103.25
deckhand_job_duration_seconds_count{status="succeeded"} 2
deckhand_job_duration_seconds_bucket{status="timed_out",le="1"} 0
deckhand_job_duration_seconds_bucket{status="timed_out",le="5"} 0
deckhand_job_duration_seconds_bucket{status="timed_out",le="15"} 0
deckhand_job_duration_seconds_bucket{status="timed_out",le="30"} 0
deckhand_job_duration_seconds_bucket{status="timed_out",le="60"} 0
deckhand_job_duration_seconds_bucket{status="timed_out",le="300"} 0
deckhand_job_duration_seconds_bucket{status="timed_out",le="900"} 0
deckhand_job_duration_seconds_bucket{status="timed_out",le="1800"} 0
deckhand_job_duration_seconds_bucket{status="timed_out",le="3600"} 0
deckhand_job_duration_seconds_bucket{status="timed_out",le="7200"} 0
deckhand_job_duration_seconds_bucket{status="timed_out",le="+Inf"} 1
deckhand_job_duration_seconds_sum{status="timed_out"} 7300
deckhand_job_duration_seconds_count{status="timed_out"} 1
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
            "deckhand_job_duration_seconds_bucket{status=\"succeeded\",le=\"1\"} 0",
            "deckhand_job_duration_seconds_bucket{status=\"succeeded\",le=\"5\"} 1",
            "deckhand_job_duration_seconds_bucket{status=\"succeeded\",le=\"60\"} 1",
            "deckhand_job_duration_seconds_bucket{status=\"succeeded\",le=\"300\"} 2",
            "deckhand_job_duration_seconds_bucket{status=\"succeeded\",le=\"+Inf\"} 2",
            "deckhand_job_duration_seconds_sum{status=\"succeeded\"} 103",
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
}
