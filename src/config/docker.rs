//! `[docker]`: the engine the jobs run on.

use std::path::PathBuf;

use toml::Table;

use super::reader::Reader;

/// The Docker Engine API's usual Unix socket.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

#[derive(Debug, Clone)]
pub struct DockerConfig {
    pub socket: PathBuf,
}

impl DockerConfig {
    pub(super) fn read(r: &mut Reader<'_>, root: &mut Table) -> Self {
        let mut section = r.section(root, "docker");
        let docker = DockerConfig {
            socket: r.abs_path(&mut section, "socket", DEFAULT_SOCKET),
        };
        r.finish(section);
        docker
    }
}
