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
use std::fmt::{self, Write as _};
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
    stopped_for_disk: AtomicU64,
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

    /// The disk watchdog stopped a job.
    pub fn stopped_for_disk(&self) {
        self.stopped_for_disk.fetch_add(1, Ordering::Relaxed);
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
        self.render_gauges(&mut out, state);
        self.render_counters(&mut out);
        self.render_jobs(&mut out);
        out
    }

    /// What the agent is now: slots and containers, its dependencies, readiness,
    /// the disk, and its own version.
    fn render_gauges(&self, out: &mut String, state: &State) {
        let flag = |b: bool| u8::from(b).to_string();
        let boot_secs = self.boot_ms.load(Ordering::Relaxed) as f64 / 1000.0;
        for (name, help, value) in [
            (
                "deckhand_slots",
                "Jobs this agent runs at once (agent.slots).",
                state.slots.to_string(),
            ),
            (
                "deckhand_jobs_running",
                "Job containers running now.",
                self.running.load(Ordering::Relaxed).to_string(),
            ),
            (
                "deckhand_docker_up",
                "1 if Docker answered at its last use.",
                flag(state.docker_up),
            ),
            (
                "deckhand_queue_up",
                "1 if the job queue answered at its last use.",
                flag(state.queue_up),
            ),
            (
                "deckhand_draining",
                "1 once the agent takes no more jobs and is draining.",
                flag(state.draining),
            ),
            (
                "deckhand_ready",
                "1 once bootstrap is done and the agent serves the queue.",
                flag(self.ready.load(Ordering::Relaxed)),
            ),
            (
                "deckhand_boot_seconds",
                "Bootstrap time, secrets to ready.",
                boot_secs.to_string(),
            ),
            (
                "deckhand_disk_free_megabytes",
                "Least free space of Docker's data root and the work dir, at the last check (0 before one).",
                self.disk_free_mb.load(Ordering::Relaxed).to_string(),
            ),
            (
                "deckhand_disk_low",
                "1 while free space is below disk.min_free_mb and no job is taken.",
                flag(self.disk_low.load(Ordering::Relaxed)),
            ),
        ] {
            family(out, name, "gauge", help);
            sample(out, name, value);
        }
        family(out, "deckhand_build_info", "gauge", "The running deckhand.");
        sample(
            out,
            format_args!("deckhand_build_info{{version=\"{AGENT_VERSION}\"}}"),
            1,
        );
    }

    /// What happened since the agent started, apart from jobs.
    fn render_counters(&self, out: &mut String) {
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
                "deckhand_jobs_stopped_for_disk_total",
                "Running jobs stopped because free space fell below disk.min_free_mb.",
                &self.stopped_for_disk,
            ),
            (
                "deckhand_messages_handed_back_total",
                "Messages made visible again for another attempt (drains, errors, duplicates).",
                &self.handed_back,
            ),
        ] {
            family(out, name, "counter", help);
            sample(out, name, value.load(Ordering::Relaxed));
        }
    }

    /// Job attempts by status (every status, even at 0), then the duration
    /// histogram of each status that has ended a job.
    fn render_jobs(&self, out: &mut String) {
        // A copy: formatting must not hold up the tasks that finish jobs.
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        family(
            out,
            "deckhand_jobs_total",
            "counter",
            "Job attempts that ended, by status (interrupted and error ones run again).",
        );
        for status in Status::ALL {
            let count = jobs.get(status.as_str()).map_or(0, |d| d.count);
            let status = status.as_str();
            sample(
                out,
                format_args!("deckhand_jobs_total{{status=\"{status}\"}}"),
                count,
            );
        }
        family(
            out,
            "deckhand_job_duration_seconds",
            "histogram",
            "Wall time of jobs that ran, by status.",
        );
        for (status, durations) in &jobs {
            durations.render(out, status);
        }
    }
}

impl Durations {
    /// This status's buckets, `+Inf`, sum and count.
    fn render(&self, out: &mut String, status: &str) {
        let name = "deckhand_job_duration_seconds";
        for (bound, count) in DURATION_BUCKETS_SECS.iter().zip(self.buckets) {
            sample(
                out,
                format_args!("{name}_bucket{{status=\"{status}\",le=\"{bound}\"}}"),
                count,
            );
        }
        sample(
            out,
            format_args!("{name}_bucket{{status=\"{status}\",le=\"+Inf\"}}"),
            self.count,
        );
        sample(
            out,
            format_args!("{name}_sum{{status=\"{status}\"}}"),
            self.sum_secs,
        );
        sample(
            out,
            format_args!("{name}_count{{status=\"{status}\"}}"),
            self.count,
        );
    }
}

/// A family's `# HELP` and `# TYPE` lines, which precede its samples.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    // Writing to a String cannot fail.
    let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
}

/// One sample: the series (name and labels) and its value.
fn sample(out: &mut String, series: impl fmt::Display, value: impl fmt::Display) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "{series} {value}");
}

/// Binds `metrics.listen` (port 0: any free port; the log says which).
pub async fn bind(address: SocketAddr) -> Result<TcpListener, crate::host::http::BindError> {
    let listener = crate::host::http::bind(address, "metrics.listen").await?;
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
mod tests;
