//! `[cache]`: the code/library cache mounted read-only into every job.

use std::time::Duration;

use toml::Table;

use super::reader::Reader;
use crate::rules::S3Location;

/// Where jobs see the cache.
pub const DEFAULT_MOUNT: &str = "/cache";
/// How often to look for a new version of `source`; 0: only at boot.
pub const DEFAULT_REFRESH_SECS: u64 = 300;

#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// A Docker volume mounted read-only into every job, if set.
    pub volume: Option<String>,
    /// An archive in S3 extracted into a volume of its own and mounted read-only.
    pub source: Option<S3Location>,
    pub mount: String,
    /// How often to look for a new version of `source`; `None`: only at boot.
    pub refresh: Option<Duration>,
}

impl CacheConfig {
    pub(super) fn read(r: &mut Reader<'_>, root: &mut Table) -> Self {
        let mut section = r.section(root, "cache");
        let cache = CacheConfig {
            volume: r.opt_string(&mut section, "volume"),
            source: r.opt_string(&mut section, "source").and_then(|url| {
                let location = S3Location::parse(&url);
                if location.is_none() {
                    r.issue(
                        "cache.source",
                        &format!("{url:?} must be s3://<bucket>/<key>"),
                    );
                }
                location
            }),
            mount: r.container_path(&mut section, "mount", DEFAULT_MOUNT),
            refresh: r.period(
                &mut section,
                "refresh_secs",
                0..=86_400,
                DEFAULT_REFRESH_SECS,
            ),
        };
        if cache.volume.is_some() && cache.source.is_some() {
            r.issue("cache.volume", "set cache.volume or cache.source, not both");
        }
        r.finish(section);
        cache
    }
}
