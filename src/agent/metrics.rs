//! Prometheus metrics and a health check over HTTP, at `metrics.listen`: what a
//! pool's monitoring scrapes from each host (jobs by outcome and duration, slots in
//! use, whether Docker and the queue answer, whether the agent is draining).
//!
//! `GET /metrics` is written by prometheus-client in the OpenMetrics text
//! format, for a scraper that asks for it (`Accept: application/openmetrics-text`,
//! as Prometheus does), else in Prometheus's own text format (version 0.0.4),
//! which `promtool check metrics`, curl and older scrapers read: counters named
//! with their `_total` in `# HELP` and `# TYPE`, no `# UNIT`, no `# EOF`. Every
//! family is in base units (bytes, seconds) and has its help text. `GET /healthz` (liveness) is
//! 200 while Docker and the queue answered at their last use, the rule systemd's
//! watchdog follows; a draining agent is healthy. `GET /readyz` is 200 only while
//! the agent takes work: bootstrapped, not draining, and healthy. A 503 says why.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::job::result::{AGENT_VERSION, ContainerUsage, Status};
use crate::job::usage::LiveUsage;

/// Upper bounds of the job duration histogram: CI jobs run from seconds to hours.
const DURATION_BUCKETS_SECS: [f64; 10] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0,
];
/// Upper bounds of a message's time in the queue, from its send to its receipt:
/// under a second on a warm pool, minutes while it scales out.
const QUEUE_WAIT_BUCKETS_SECS: [f64; 10] =
    [0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 3600.0];
/// Upper bounds of the CPU seconds a job used.
const CPU_BUCKETS_SECS: [f64; 10] = [
    0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
];
/// Upper bounds of a job's peak memory as a share of its limit: where a profile's
/// `memory_mb` is too generous or too tight.
const MEMORY_SHARE_BUCKETS: [f64; 8] = [0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByStatus {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct ByProfile {
    profile: String,
}

/// A running job's place: bounded by the profiles and `agent.slots`, never a job id.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct BySlot {
    profile: String,
    slot: usize,
}

/// An admission decision: who gave it and what it was.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByDecision {
    by: &'static str,
    decision: &'static str,
}

/// Why a job's message went back to the queue as a fresh copy.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByCause {
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByVersion {
    version: &'static str,
}

/// The agent's counters, gauges and histograms, kept by prometheus-client, which
/// owns the exposition format. Cheap to update from any task.
pub struct Metrics {
    registry: Registry,
    /// Set at scrape time from [`State`].
    slots: Gauge,
    docker_up: Gauge,
    queue_up: Gauge,
    draining: Gauge,
    jobs_running: Gauge,
    ready: Gauge,
    boot_seconds: Gauge<f64, AtomicU64>,
    disk_free_bytes: Gauge,
    disk_low: Gauge,
    received: Counter,
    receive_errors: Counter,
    images_removed: Counter,
    stopped_for_disk: Counter,
    handed_back: Counter,
    requeued: Family<ByCause, Counter>,
    jobs: Family<ByStatus, Counter>,
    job_duration: Family<ByStatus, Histogram>,
    queue_wait: Histogram,
    job_cpu: Family<ByProfile, Histogram>,
    job_memory_share: Family<ByProfile, Histogram>,
    running_cpu: Family<BySlot, Gauge<f64, AtomicU64>>,
    running_memory: Family<BySlot, Gauge>,
    admission: Family<ByDecision, Counter>,
    /// The running jobs, by slot, with their latest cgroup samples: read at
    /// scrape time, for `jobs_running` too.
    live: Mutex<BTreeMap<BySlot, LiveUsage>>,
}

/// What the agent is, read at scrape time.
pub struct State {
    pub slots: usize,
    pub docker_up: bool,
    pub queue_up: bool,
    pub draining: bool,
}

/// A job counted as running, in its slot, until dropped.
pub struct Running<'a> {
    metrics: &'a Metrics,
    key: BySlot,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.metrics
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut metrics = Metrics {
            registry: Registry::with_prefix("deckhand"),
            slots: Gauge::default(),
            docker_up: Gauge::default(),
            queue_up: Gauge::default(),
            draining: Gauge::default(),
            jobs_running: Gauge::default(),
            ready: Gauge::default(),
            boot_seconds: Gauge::default(),
            disk_free_bytes: Gauge::default(),
            disk_low: Gauge::default(),
            received: Counter::default(),
            receive_errors: Counter::default(),
            images_removed: Counter::default(),
            stopped_for_disk: Counter::default(),
            handed_back: Counter::default(),
            requeued: Family::default(),
            jobs: Family::default(),
            job_duration: Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS_SECS)),
            queue_wait: Histogram::new(QUEUE_WAIT_BUCKETS_SECS),
            job_cpu: Family::new_with_constructor(|| Histogram::new(CPU_BUCKETS_SECS)),
            job_memory_share: Family::new_with_constructor(|| Histogram::new(MEMORY_SHARE_BUCKETS)),
            running_cpu: Family::default(),
            running_memory: Family::default(),
            admission: Family::default(),
            live: Mutex::default(),
        };
        metrics.register();
        // Every status is exposed from the start, at 0: an alert on a rate needs
        // the series before the first job of that status.
        for status in Status::ALL {
            let _ = metrics.jobs.get_or_create(&ByStatus {
                status: status.as_str(),
            });
        }
        metrics
    }

    /// What the agent is now: gauges.
    fn register(&mut self) {
        // The library ends each help text with a period of its own.
        let r = &mut self.registry;
        r.register(
            "slots",
            "Jobs this agent runs at once (agent.slots)",
            self.slots.clone(),
        );
        r.register(
            "jobs_running",
            "Job containers running now",
            self.jobs_running.clone(),
        );
        r.register(
            "docker_up",
            "1 if Docker answered at its last use",
            self.docker_up.clone(),
        );
        r.register(
            "queue_up",
            "1 if the job queue answered at its last use",
            self.queue_up.clone(),
        );
        r.register(
            "draining",
            "1 once the agent takes no more jobs and is draining",
            self.draining.clone(),
        );
        r.register(
            "ready",
            "1 once bootstrap is done and the agent serves the queue",
            self.ready.clone(),
        );
        r.register(
            "boot_seconds",
            "Bootstrap time, secrets to ready",
            self.boot_seconds.clone(),
        );
        r.register(
            "disk_free_bytes",
            "Least free space of Docker's data root and the work dir, at the last check (0 before one)",
            self.disk_free_bytes.clone(),
        );
        r.register(
            "disk_low",
            "1 while free space is below disk.min_free_mb and no job is taken",
            self.disk_low.clone(),
        );
        let build_info = Family::<ByVersion, Gauge>::default();
        build_info
            .get_or_create(&ByVersion {
                version: AGENT_VERSION,
            })
            .set(1);
        r.register("build_info", "The running deckhand", build_info);
        self.register_counts();
    }

    /// What happened since the agent started: counters and histograms.
    fn register_counts(&mut self) {
        let r = &mut self.registry;
        // Counters: the library adds `_total` to the sample's name.
        r.register(
            "messages_received",
            "Job messages received from the queue",
            self.received.clone(),
        );
        r.register(
            "receive_errors",
            "Receives from the queue that failed",
            self.receive_errors.clone(),
        );
        r.register(
            "images_removed",
            "Unused images removed to make room on the disk",
            self.images_removed.clone(),
        );
        r.register(
            "jobs_stopped_for_disk",
            "Running jobs stopped because free space fell below disk.min_free_mb",
            self.stopped_for_disk.clone(),
        );
        r.register(
            "messages_handed_back",
            "Messages made visible again for another attempt (drains, errors, duplicates)",
            self.handed_back.clone(),
        );
        r.register(
            "messages_requeued",
            "Jobs sent back to the queue as a fresh copy, which costs the queue's redrive nothing, by cause (interruption, host_error, retry, declined)",
            self.requeued.clone(),
        );
        r.register(
            "jobs",
            "Job attempts that ended, by status (interrupted and error ones run again)",
            self.jobs.clone(),
        );
        r.register(
            "job_duration_seconds",
            "Wall time of jobs that ran, by status",
            self.job_duration.clone(),
        );
        r.register(
            "queue_wait_seconds",
            "Time job messages spent in the queue, from their send to their receipt here",
            self.queue_wait.clone(),
        );
        r.register(
            "job_cpu_seconds",
            "CPU time of jobs' containers, by profile (read from their cgroups)",
            self.job_cpu.clone(),
        );
        r.register(
            "job_memory_peak_ratio",
            "Jobs' peak memory as a share of their memory limit, by profile",
            self.job_memory_share.clone(),
        );
        r.register(
            "running_cpu_seconds",
            "CPU time so far of the job running in each slot",
            self.running_cpu.clone(),
        );
        r.register(
            "running_memory_bytes",
            "Memory held now by the job running in each slot",
            self.running_memory.clone(),
        );
        r.register(
            "admission_decisions",
            "Images put to admission, by who decided (webhook, cache, ecr, ecr_cache) and what (allowed, denied, unchecked)",
            self.admission.clone(),
        );
    }

    pub fn job_finished(&self, status: Status, duration: Duration) {
        let status = ByStatus {
            status: status.as_str(),
        };
        self.jobs.get_or_create(&status).inc();
        self.job_duration
            .get_or_create(&status)
            .observe(duration.as_secs_f64());
    }

    /// What a finished job's container used, under its profile.
    pub fn job_used(&self, profile: &str, usage: &ContainerUsage) {
        let profile = ByProfile {
            profile: profile.to_owned(),
        };
        self.job_cpu
            .get_or_create(&profile)
            .observe(usage.cpu_seconds);
        if let Some(limit) = usage.memory_limit_bytes.filter(|&l| l > 0) {
            self.job_memory_share
                .get_or_create(&profile)
                .observe(usage.memory_peak_bytes as f64 / limit as f64);
        }
    }

    /// Each check of each image of a job: by the webhook, ECR, or either's cache.
    pub fn admitted(&self, admitted: &crate::job::admission::Admitted) {
        for checked in admitted.checks() {
            let (by, decision) = (checked.by.as_str(), checked.decision.as_str());
            self.admission
                .get_or_create(&ByDecision { by, decision })
                .inc();
        }
    }

    /// A message spent `waited` in the queue before this agent received it.
    pub fn queue_waited(&self, waited: Duration) {
        self.queue_wait.observe(waited.as_secs_f64());
    }

    pub fn received(&self, messages: usize) {
        self.received.inc_by(messages as u64);
    }

    pub fn receive_failed(&self) {
        self.receive_errors.inc();
    }

    pub fn handed_back(&self) {
        self.handed_back.inc();
    }

    pub fn requeued(&self, cause: crate::job::attempts::Cause) {
        let cause = ByCause {
            cause: cause.as_str(),
        };
        self.requeued.get_or_create(&cause).inc();
    }

    /// A job's container runs in `slot` under `profile` until the value is
    /// dropped; `live` carries its latest CPU and memory sample.
    pub fn running(&self, profile: &str, slot: usize, live: LiveUsage) -> Running<'_> {
        let key = BySlot {
            profile: profile.to_owned(),
            slot,
        };
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), live);
        Running { metrics: self, key }
    }

    pub fn ready(&self, boot: Duration) {
        self.boot_seconds.set(boot.as_secs_f64());
        self.ready.set(1);
    }

    /// A disk check before a receive.
    pub fn disk(&self, room: &crate::host::disk::Room) {
        self.disk_free_bytes
            .set(i64::try_from(room.free_mb.saturating_mul(1_000_000)).unwrap_or(i64::MAX));
        self.disk_low.set(i64::from(room.low.is_some()));
        self.images_removed.inc_by(room.removed as u64);
    }

    /// The disk watchdog stopped a job.
    pub fn stopped_for_disk(&self) {
        self.stopped_for_disk.inc();
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
        } else if self.ready.get() == 0 {
            Some("starting")
        } else if self.disk_low.get() == 1 {
            Some("disk space is low")
        } else {
            Metrics::unhealthy(state)
        }
    }

    /// The exposition in `format`, with the gauges read at scrape time brought
    /// up to date first.
    pub fn render_as(&self, state: &State, format: Format) -> String {
        let open = self.render(state);
        match format {
            Format::OpenMetrics => open,
            Format::Prometheus => prometheus_text(&open),
        }
    }

    /// The exposition (OpenMetrics text), with the gauges read at scrape time
    /// brought up to date first.
    pub fn render(&self, state: &State) -> String {
        self.slots.set(state.slots as i64);
        self.docker_up.set(i64::from(state.docker_up));
        self.queue_up.set(i64::from(state.queue_up));
        self.draining.set(i64::from(state.draining));
        // Only the slots running a job now: a finished job's series goes.
        self.running_cpu.clear();
        self.running_memory.clear();
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        self.jobs_running.set(live.len() as i64);
        for (slot, live) in live.iter() {
            if let Some(sample) = live.get() {
                self.running_cpu.get_or_create(slot).set(sample.cpu_seconds);
                self.running_memory
                    .get_or_create(slot)
                    .set(i64::try_from(sample.memory_bytes).unwrap_or(i64::MAX));
            }
        }
        let mut out = String::with_capacity(8192);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The two exposition formats a scraper may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/openmetrics-text; version=1.0.0`
    OpenMetrics,
    /// `text/plain; version=0.0.4`
    Prometheus,
}

impl Format {
    /// What the `Accept` header asks for: OpenMetrics when it is named (with a
    /// weight above 0), Prometheus's text otherwise.
    pub fn accepted(accept: Option<&str>) -> Format {
        let named = accept.unwrap_or_default().split(',').any(|choice| {
            let mut parts = choice.split(';').map(str::trim);
            let kind = parts.next().unwrap_or_default();
            let refused = parts.any(|p| matches!(p, "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
            kind.eq_ignore_ascii_case("application/openmetrics-text") && !refused
        });
        if named {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

mod serve;
use serve::prometheus_text;
pub use serve::{bind, serve};

#[cfg(test)]
mod tests;
