//! `[metrics]`: the Prometheus and health listener.

use std::net::SocketAddr;

use toml::Table;

use super::reader::Reader;

#[derive(Debug, Clone, Default)]
pub struct MetricsConfig {
    /// Where `deckhand run` serves `/metrics` and `/healthz`; `None`: nowhere.
    pub listen: Option<SocketAddr>,
}

impl MetricsConfig {
    pub(super) fn read(r: &mut Reader<'_>, root: &mut Table) -> Self {
        let mut section = r.section(root, "metrics");
        let metrics = MetricsConfig {
            listen: r.opt_socket_addr(&mut section, "listen", "127.0.0.1:9102"),
        };
        r.finish(section);
        metrics
    }
}
