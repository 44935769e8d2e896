//! `[log_forwarder]`: where the host's journal is forwarded (rsyslog, set up by
//! `host/forwarder.rs`). Only the keys' types are checked here: a wrong kind,
//! endpoint or CA file turns forwarding off with an error at boot, and the host
//! still runs jobs (a log sink is not worth a pool that takes no work).

use toml::Table;

use super::reader::Reader;

/// The disk queue's bound while the sink is away.
pub const DEFAULT_MAX_DISK_MB: u64 = 512;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogForwarderConfig {
    /// `rfc5424` or `json`; unchecked here. `None` (with no endpoint): off.
    pub kind: Option<String>,
    /// `host:port` of the sink; unchecked here.
    pub endpoint: Option<String>,
    /// A PEM file of the CA that signs the sink's certificate: TLS when set.
    pub ca_file: Option<String>,
    /// The name of the bundle secret sent with every line as the sink's token.
    pub token_secret: Option<String>,
    /// The disk queue's bound, in MB, while the sink cannot be reached.
    pub max_disk_mb: u64,
}

impl LogForwarderConfig {
    pub(super) fn read(r: &mut Reader<'_>, root: &mut Table) -> Self {
        let mut section = r.section(root, "log_forwarder");
        let forwarder = LogForwarderConfig {
            kind: r.opt_string(&mut section, "kind"),
            endpoint: r.opt_string(&mut section, "endpoint"),
            ca_file: r.opt_string(&mut section, "ca_file"),
            token_secret: r.opt_string(&mut section, "token_secret"),
            max_disk_mb: r.int(
                &mut section,
                "max_disk_mb",
                1..=1_000_000,
                DEFAULT_MAX_DISK_MB,
            ),
        };
        r.finish(section);
        forwarder
    }

    /// Whether the user data names a forwarder at all.
    pub fn is_set(&self) -> bool {
        self.kind.is_some() || self.endpoint.is_some()
    }
}
