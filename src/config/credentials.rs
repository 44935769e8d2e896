//! `[credentials]`: the per-job AWS credentials endpoint.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use toml::Table;

use super::reader::Reader;

/// ECS's link-local credentials address, which AWS SDKs accept over plain HTTP.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(169, 254, 170, 2)), 51679);
/// Each job's role session; renewed 5 minutes before it ends.
pub const DEFAULT_SESSION_SECS: u64 = 3600;

#[derive(Debug, Clone)]
pub struct CredentialsConfig {
    /// Where `deckhand run` serves per-job credentials, and the address jobs are
    /// given. AWS SDKs accept only a loopback or the ECS link-local address over
    /// plain HTTP; the host puts 169.254.170.2 on `lo`, which a job's network
    /// reaches through the host.
    pub listen: SocketAddr,
    /// How long each job's role session lasts before it is renewed.
    pub session: Duration,
}

impl Default for CredentialsConfig {
    fn default() -> Self {
        CredentialsConfig {
            listen: DEFAULT_LISTEN,
            session: Duration::from_secs(DEFAULT_SESSION_SECS),
        }
    }
}

impl CredentialsConfig {
    pub(super) fn read(r: &mut Reader<'_>, root: &mut Table) -> Self {
        let mut section = r.section(root, "credentials");
        let credentials = CredentialsConfig {
            listen: r
                .opt_socket_addr(&mut section, "listen", "169.254.170.2:51679")
                .unwrap_or(DEFAULT_LISTEN),
            session: Duration::from_secs(r.int(
                &mut section,
                "session_secs",
                900..=43_200,
                DEFAULT_SESSION_SECS,
            )),
        };
        r.finish(section);
        credentials
    }
}
