//! `[autoscaling]`: what the agent asks of its Auto Scaling group while it runs.

use toml::Table;

use super::reader::Reader;

#[derive(Debug, Clone, Copy, Default)]
pub struct AutoscalingConfig {
    /// Scale-in protection on while any job runs, off when idle, so the group
    /// never picks a busy host to remove.
    pub protect_busy: bool,
}

impl AutoscalingConfig {
    pub(super) fn read(r: &mut Reader<'_>, root: &mut Table) -> Self {
        let mut section = r.section(root, "autoscaling");
        let autoscaling = AutoscalingConfig {
            protect_busy: r.bool(&mut section, "protect_busy", false),
        };
        r.finish(section);
        autoscaling
    }
}
