//! `[disk]`: the free-space watermarks.

use toml::Table;

use super::reader::Reader;

/// Below this much free space no job is taken.
pub const DEFAULT_MIN_FREE_MB: u64 = 2048;
/// Below this, unused images the agent ran are collected.
pub const DEFAULT_GC_FREE_MB: u64 = 10240;

#[derive(Debug, Clone)]
pub struct DiskConfig {
    /// Below this much free space (Docker's data root or the work dir) no job
    /// starts; 0 never stops intake.
    pub min_free_mb: u64,
    /// Below this, unused images the agent ran are removed; 0 never collects.
    pub gc_free_mb: u64,
}

impl Default for DiskConfig {
    fn default() -> Self {
        DiskConfig {
            min_free_mb: DEFAULT_MIN_FREE_MB,
            gc_free_mb: DEFAULT_GC_FREE_MB,
        }
    }
}

impl DiskConfig {
    pub(super) fn read(r: &mut Reader<'_>, root: &mut Table) -> Self {
        let mut section = r.section(root, "disk");
        let disk = DiskConfig {
            min_free_mb: r.int(
                &mut section,
                "min_free_mb",
                0..=1_000_000_000,
                DEFAULT_MIN_FREE_MB,
            ),
            gc_free_mb: r.int(
                &mut section,
                "gc_free_mb",
                0..=1_000_000_000,
                DEFAULT_GC_FREE_MB,
            ),
        };
        // 0 never collects, so it has no order to keep.
        if disk.gc_free_mb != 0 && disk.gc_free_mb < disk.min_free_mb {
            r.issue(
                "disk.gc_free_mb",
                &format!(
                    "{} is below disk.min_free_mb = {}: images must be collected before intake stops",
                    disk.gc_free_mb, disk.min_free_mb
                ),
            );
        }
        r.finish(section);
        disk
    }
}
