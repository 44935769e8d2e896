//! That jobs cannot reach the instance metadata service: its role's credentials
//! are the pool's, not a job's. The host blocks it (deckhand-imds-block.service,
//! the IMDSv2 hop limit); this probe checks the block from where a job stands. For
//! each network the profiles use, it runs this very binary (`deckhand reach`) in a
//! container with a job's hardening, against `imds.endpoint`.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use crate::config::Config;
use crate::docker::{self, ContainerSpec, Docker};

/// How long `reach` waits for a connection: a dropped SYN looks like this.
const REACH_TIMEOUT_MS: u64 = 2000;
/// How long a probe container may take, start to removal.
const PROBE_DEADLINE: Duration = Duration::from_secs(8);

/// `deckhand reach ADDRESS`, run inside a probe container: 0 when a TCP
/// connection to it opens, 1 when it does not (with the reason on stdout).
pub fn reach(address: &str, timeout: Duration) -> u8 {
    let addresses: Vec<SocketAddr> = match address.to_socket_addrs() {
        Ok(addresses) => addresses.collect(),
        Err(error) => {
            println!("unreachable: {address}: {error}");
            return 1;
        }
    };
    let mut last = None;
    for socket in addresses {
        match TcpStream::connect_timeout(&socket, timeout) {
            Ok(_) => {
                println!("reached {socket}");
                return 0;
            }
            Err(error) => last = Some(error),
        }
    }
    match last {
        Some(error) => println!("unreachable: {address}: {error}"),
        None => println!("unreachable: {address}: no address"),
    }
    1
}

/// One container per distinct profile network; fails if any reaches the service.
pub(super) async fn from_jobs(config: &Config) -> Result<String, String> {
    let target = target(&config.imds.endpoint)?;
    let exe = std::env::current_exe().map_err(|e| format!("this binary's path: {e}"))?;
    let docker = Docker::connect(&config.docker)
        .await
        .map_err(|e| e.to_string())?;
    let image = docker.probe_image().await.map_err(|e| e.to_string())?;
    let mut networks: Vec<&str> = config
        .profiles
        .values()
        .map(|p| p.network.as_str())
        .collect();
    networks.sort_unstable();
    networks.dedup();
    let mut blocked = Vec::new();
    for network in networks {
        let spec = probe_spec(&image, network, &exe, &target);
        let probed = docker
            .run_probe(&spec, PROBE_DEADLINE)
            .await
            .map_err(|e| format!("network {network}: {e}"))?;
        let said = probed.output.trim();
        match probed.code {
            Some(1) => blocked.push(network),
            Some(0) => {
                return Err(format!(
                    "jobs on network {network} reach the instance metadata service at {target} ({said}): its role's credentials are within a job's reach; install deckhand-imds-block.service"
                ));
            }
            Some(code) => {
                return Err(format!(
                    "network {network}: the probe container exited {code}: {said}"
                ));
            }
            None => {
                return Err(format!(
                    "network {network}: the probe container did not finish within {}s",
                    PROBE_DEADLINE.as_secs()
                ));
            }
        }
    }
    Ok(format!(
        "{target} is out of jobs' reach (network {})",
        blocked.join(", network ")
    ))
}

/// `host:port` of the metadata endpoint.
fn target(endpoint: &str) -> Result<String, String> {
    let url =
        reqwest::Url::parse(endpoint).map_err(|e| format!("imds.endpoint {endpoint:?}: {e}"))?;
    let host = url
        .host_str()
        .ok_or_else(|| format!("imds.endpoint {endpoint:?} names no host"))?;
    let port = url.port_or_known_default().unwrap_or(80);
    Ok(format!("{host}:{port}"))
}

/// This binary's `reach` against `target`, from a container on `network`.
fn probe_spec(image: &str, network: &str, exe: &Path, target: &str) -> ContainerSpec {
    let timeout = REACH_TIMEOUT_MS.to_string();
    docker::own_binary_spec(
        format!("deckhand-probe-{}", crate::rules::random_hex(8)),
        image.to_owned(),
        exe,
        &["reach", target, "--timeout-ms", &timeout],
        network,
        [(docker::LABEL_MANAGED.to_owned(), "true".to_owned())].into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_is_the_endpoints_host_and_port() {
        assert_eq!(
            target("http://169.254.169.254").unwrap(),
            "169.254.169.254:80"
        );
        assert_eq!(target("http://127.0.0.1:8111/").unwrap(), "127.0.0.1:8111");
        assert!(target("not a url").is_err());
    }

    #[test]
    fn reach_tells_an_open_port_from_a_closed_one() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap().to_string();
        assert_eq!(reach(&open, Duration::from_secs(2)), 0);
        drop(listener);
        assert_eq!(reach(&open, Duration::from_secs(2)), 1);
    }
}
