//! `[imds]`: the instance metadata service and its watchers.

use std::time::Duration;

use toml::Table;

use super::reader::Reader;

/// EC2's link-local metadata address.
pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
/// A spot notice gives two minutes; a second of delay costs little.
pub const DEFAULT_POLL_MS: u64 = 1000;

#[derive(Debug, Clone)]
pub struct ImdsConfig {
    /// Off EC2 (or in tests without a simulator) the watchers are off.
    pub enabled: bool,
    pub endpoint: String,
    pub poll: Duration,
}

impl ImdsConfig {
    pub(super) fn read(r: &mut Reader<'_>, root: &mut Table) -> Self {
        let mut section = r.section(root, "imds");
        let imds = ImdsConfig {
            enabled: r.bool(&mut section, "enabled", true),
            endpoint: r
                .opt_url(&mut section, "endpoint")
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned()),
            poll: Duration::from_millis(r.int(
                &mut section,
                "poll_ms",
                100..=5000,
                DEFAULT_POLL_MS,
            )),
        };
        r.finish(section);
        imds
    }
}
