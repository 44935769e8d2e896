//! The result of a job, version 1, as interface.md defines it.

use serde::{Deserialize, Serialize};

use crate::job::artifacts::{Artifact, LeftOut};
use crate::job::attempts::Attempt;

pub use crate::job::status::Status;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub version: u32,
    pub id: String,
    pub status: Status,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
    pub attempt: u32,
    pub instance_id: String,
    pub agent_version: String,
    /// The image that actually ran, by digest where the registry gave one.
    pub image: Option<String>,
    pub started_at: String,
    pub finished_at: String,
    pub duration_ms: u64,
    /// Where the whole log was stored, if it was.
    pub log: Option<String>,
    /// The files uploaded for the job's `artifacts` patterns; absent when it named
    /// none (an addition to v1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<Vec<Artifact>>,
    /// Patterns that matched no file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts_unmatched: Vec<String>,
    /// Files matched but not uploaded (past a cap, not a regular file, an upload
    /// that failed), and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts_left_out: Vec<LeftOut>,
    /// What its containers used; absent when none ran (an addition to v1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// The admission webhook's decisions on its images; absent when none was
    /// asked (an addition to v1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission: Option<crate::job::admission::Admitted>,
    /// The git commit checked out for its `source`; absent when it named none
    /// (an addition to v1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<crate::job::source::SourceReport>,
    /// What became of each of its `caches`; absent when it named none (an
    /// addition to v1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caches: Vec<crate::job::caches::CacheReport>,
    /// Each image its `image_build` pushed; absent when it built none (an
    /// addition to v1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<crate::job::build::BuiltImage>,
    /// SQS's `ApproximateReceiveCount` of the delivery that made this result;
    /// `attempt` is deckhand's own count, across the copies of the message.
    /// `0` (left out): no SQS delivery (`deckhand exec`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub receive_count: u32,
    /// Every attempt of the job that ended, oldest first, this one last; empty
    /// for a job that never ran.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
    /// The budget whose end ended the job: `interruptions` or `host_errors`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<String>,
    /// This attempt did not end the job: where its message went, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requeued: Option<Requeued>,
}

/// Where an attempt that did not end its job sent the job's next copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requeued {
    /// The queue's URL: the job queue, or `queue.escalation_url`.
    pub queue: String,
    /// `interruption`, `host_error` or `retry`.
    pub cause: String,
    /// Sent to the escalation queue (`escalate_after_interruptions`).
    pub escalated: bool,
    /// Receivable after this long.
    pub delay_secs: u64,
}

/// What a job's containers used, read from their cgroups while they ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// `None`: the job's container ended before its first sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<ContainerUsage>,
    /// Each service container's, by its name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub services: std::collections::BTreeMap<String, ContainerUsage>,
}

/// One container's use: CPU time and peak memory up to its last sample (taken
/// every second, more often in its first), and its memory limit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ContainerUsage {
    pub cpu_seconds: f64,
    pub memory_peak_bytes: u64,
    /// `null`: no limit.
    pub memory_limit_bytes: Option<u64>,
}

impl Usage {
    /// The job's last sample and its services'; `None` when none was taken.
    pub fn measured(
        job: Option<crate::host::cgroups::Sample>,
        services: std::collections::HashMap<String, crate::host::cgroups::Sample>,
    ) -> Option<Usage> {
        let services: std::collections::BTreeMap<_, _> = services
            .into_iter()
            .map(|(name, sample)| (name, sample.into()))
            .collect();
        (job.is_some() || !services.is_empty()).then(|| Usage {
            job: job.map(Into::into),
            services,
        })
    }
}

impl std::fmt::Display for Usage {
    /// `1.02 CPU s, peak 25.1 MB of 128.0 MB; service db: ...`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.job {
            Some(job) => write!(f, "{job}")?,
            None => write!(
                f,
                "nothing measured (the job ended before its first sample)"
            )?,
        }
        for (name, usage) in &self.services {
            write!(f, "; service {name}: {usage}")?;
        }
        Ok(())
    }
}

impl std::fmt::Display for ContainerUsage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mb = |bytes: u64| bytes as f64 / 1e6;
        write!(
            f,
            "{:.2} CPU s, peak {:.1} MB",
            self.cpu_seconds,
            mb(self.memory_peak_bytes)
        )?;
        match self.memory_limit_bytes {
            Some(limit) => write!(f, " of {:.1} MB", mb(limit)),
            None => write!(f, " (no limit)"),
        }
    }
}

impl From<crate::host::cgroups::Sample> for ContainerUsage {
    fn from(sample: crate::host::cgroups::Sample) -> Self {
        ContainerUsage {
            // Milliseconds are what a sample a second apart can tell.
            cpu_seconds: (sample.cpu_seconds * 1000.0).round() / 1000.0,
            memory_peak_bytes: sample.memory_peak_bytes,
            memory_limit_bytes: sample.memory_limit_bytes,
        }
    }
}

impl JobResult {
    /// Whether this result ends the job: terminal, and no retry follows.
    pub fn is_final(&self) -> bool {
        self.status.is_terminal() && self.requeued.is_none()
    }

    /// The record of a job refused before it ran.
    pub fn rejected(id: String, reason: String, attempt: u32, instance_id: &str) -> JobResult {
        JobResult::never_ran(Status::Rejected, id, reason, attempt, instance_id)
    }

    /// The record of a job cancelled before it started.
    pub fn cancelled(id: String, reason: String, attempt: u32, instance_id: &str) -> JobResult {
        JobResult::never_ran(Status::Cancelled, id, reason, attempt, instance_id)
    }

    /// The record of a job a budget ended before this attempt ran: `failed`,
    /// naming the budget.
    pub fn spent(
        id: String,
        reason: String,
        budget: &str,
        attempt: u32,
        instance_id: &str,
    ) -> JobResult {
        let mut result = JobResult::never_ran(Status::Failed, id, reason, attempt, instance_id);
        result.budget = Some(budget.to_owned());
        result
    }

    /// Bounds and escapes the reason, whoever wrote it (idempotent): every
    /// reason reaches S3, the results queue and the webhook so.
    pub fn bound_reason(&mut self) {
        if let Some(reason) = &self.reason {
            self.reason = Some(crate::rules::bounded_text(
                reason,
                crate::job::spec::MAX_REASON_BYTES,
            ));
        }
    }

    fn never_ran(
        status: Status,
        id: String,
        reason: String,
        attempt: u32,
        instance_id: &str,
    ) -> JobResult {
        let now = timestamp(chrono::Utc::now());
        JobResult {
            version: crate::job::spec::VERSION,
            id,
            status,
            exit_code: None,
            reason: Some(reason),
            attempt,
            instance_id: instance_id.to_owned(),
            agent_version: AGENT_VERSION.to_owned(),
            image: None,
            started_at: now.clone(),
            finished_at: now,
            duration_ms: 0,
            log: None,
            artifacts: None,
            artifacts_unmatched: Vec::new(),
            artifacts_left_out: Vec::new(),
            usage: None,
            admission: None,
            source: None,
            caches: Vec::new(),
            images: Vec::new(),
            receive_count: attempt,
            attempts: Vec::new(),
            budget: None,
            requeued: None,
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

pub use crate::rules::timestamp;
