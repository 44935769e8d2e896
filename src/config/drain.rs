//! `[drain]`: what happens to running jobs when the host is going away.

use std::time::Duration;

use toml::Table;

use super::reader::Reader;

/// Time for the hand-back and the uploads before a spot instance goes.
pub const DEFAULT_SAFETY_MARGIN_SECS: u64 = 15;
/// How long running jobs may go on after SIGTERM before they are stopped.
pub const DEFAULT_STOP_TIMEOUT_SECS: u64 = 60;
/// Between a container's SIGTERM and its SIGKILL.
pub const DEFAULT_STOP_GRACE_SECS: u64 = 10;
/// A rebalance recommendation often comes minutes before the interruption, if
/// one comes at all.
pub const DEFAULT_REBALANCE_HORIZON_SECS: u64 = 600;

#[derive(Debug, Clone)]
pub struct DrainConfig {
    /// Running jobs on a spot notice: hand back at once, or finish if they can
    /// before the deadline.
    pub on_spot: SpotPolicy,
    pub on_rebalance: RebalancePolicy,
    /// The drain's deadline is the interruption time minus this.
    pub safety_margin: Duration,
    /// On SIGTERM, how long running jobs may go on before they are stopped and released.
    pub stop_timeout: Duration,
    /// Between a container's SIGTERM and its SIGKILL.
    pub stop_grace: Duration,
    /// Under `admit-if-fits`: after a rebalance recommendation, jobs are taken
    /// only if expected to end within this long of it; then the host drains.
    pub rebalance_horizon: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpotPolicy {
    Release,
    FinishIfPossible,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebalancePolicy {
    Ignore,
    /// Take no more jobs; finish the running ones.
    StopIntake,
    /// As on SIGTERM.
    Drain,
    /// Take only jobs expected to end before `rebalance_horizon_secs`; at the
    /// horizon, as `StopIntake`.
    AdmitIfFits,
}

impl DrainConfig {
    pub(super) fn read(r: &mut Reader<'_>, root: &mut Table) -> Self {
        let mut section = r.section(root, "drain");
        let drain = DrainConfig {
            on_spot: r.choice(
                &mut section,
                "on_spot",
                &[
                    ("release", SpotPolicy::Release),
                    ("finish-if-possible", SpotPolicy::FinishIfPossible),
                ],
                SpotPolicy::FinishIfPossible,
            ),
            on_rebalance: r.choice(
                &mut section,
                "on_rebalance",
                &[
                    ("ignore", RebalancePolicy::Ignore),
                    ("stop-intake", RebalancePolicy::StopIntake),
                    ("drain", RebalancePolicy::Drain),
                    ("admit-if-fits", RebalancePolicy::AdmitIfFits),
                ],
                RebalancePolicy::StopIntake,
            ),
            safety_margin: secs(r.int(
                &mut section,
                "safety_margin_secs",
                0..=110,
                DEFAULT_SAFETY_MARGIN_SECS,
            )),
            stop_timeout: secs(r.int(
                &mut section,
                "stop_timeout_secs",
                0..=86_400,
                DEFAULT_STOP_TIMEOUT_SECS,
            )),
            stop_grace: secs(r.int(
                &mut section,
                "stop_grace_secs",
                0..=300,
                DEFAULT_STOP_GRACE_SECS,
            )),
            rebalance_horizon: secs(r.int(
                &mut section,
                "rebalance_horizon_secs",
                0..=86_400,
                DEFAULT_REBALANCE_HORIZON_SECS,
            )),
        };
        r.finish(section);
        drain
    }
}

fn secs(secs: u64) -> Duration {
    Duration::from_secs(secs)
}
