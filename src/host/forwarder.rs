//! The log forwarder: rsyslog, reading the journal (imjournal) and sending every
//! line to the pool's sink over TCP or TLS, deckhand's JSON lines parsed so that
//! `job_id`, `instance_id`, `attempt` and `level` travel as fields of their own.
//!
//! deckhand only writes its configuration (on tmpfs: it holds the sink's token)
//! at boot, once the secrets are open; `deckhand-forwarder.path` then starts
//! `deckhand-forwarder.service`, which outlives deckhand so that its last lines
//! still leave. At the drain's end [`Forwarder::flush`] waits, bounded, for its
//! queues to empty, judged from rsyslog's own counters (impstats, once a second):
//! see [`stats`]. The setup is in docs/operations.md, "Log forwarding".

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::config::LogForwarderConfig;
use crate::host::secrets::Secrets;

mod rsyslog;
pub mod stats;

pub use rsyslog::render;
use stats::Verdict;

/// Where deckhand writes the forwarder's configuration and rsyslog its
/// counters: a tmpfs directory (`/usr/lib/tmpfiles.d/deckhand-forwarder.conf`
/// makes it at boot), not deckhand's own runtime directory, which goes when
/// deckhand stops while the forwarder goes on.
pub const DIR: &str = "/run/deckhand-forwarder";
/// The configuration `deckhand-forwarder.path` waits for.
pub const CONFIG_FILE: &str = "rsyslog.conf";
/// impstats' counters, a JSON object a line (trimmed by a timer).
pub const STATS_FILE: &str = "stats.json";
/// rsyslog's work directory: the journal cursor and the disk queue
/// (`StateDirectory=` of the forwarder's unit).
pub const SPOOL_DIR: &str = "/var/lib/deckhand-forwarder";

/// How a line is framed for the sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// RFC 5424 syslog, deckhand's fields as structured data.
    Rfc5424,
    /// One JSON object a line: deckhand's own, plus `host` and `unit`.
    Json,
}

/// `[log_forwarder]`, checked, with the token taken from the bundle.
#[derive(Debug)]
pub struct Settings {
    pub kind: Kind,
    /// A DNS name or an IP address (IPv6 without its brackets).
    pub host: String,
    pub port: u16,
    /// TLS when set.
    pub ca_file: Option<PathBuf>,
    pub token: Option<Zeroizing<String>>,
    pub max_disk_mb: u64,
}

/// Why forwarding is off although the user data names a forwarder. Each names
/// the key to fix.
#[derive(Debug, thiserror::Error)]
pub enum ForwarderError {
    #[error("log_forwarder.kind: is not set (rfc5424 or json)")]
    NoKind,
    #[error("log_forwarder.kind: {0:?} is not a forwarder kind (rfc5424 or json)")]
    UnknownKind(String),
    #[error("log_forwarder.endpoint: is not set (host:port of the sink)")]
    NoEndpoint,
    #[error(
        "log_forwarder.endpoint: {0:?} is not host:port (a DNS name or IP address, a port 1-65535)"
    )]
    BadEndpoint(String),
    #[error("log_forwarder.ca_file: {path:?}: {why}")]
    BadCa { path: String, why: String },
    #[error("log_forwarder.token_secret: names secret {0:?}, which is not in the bundle")]
    MissingToken(String),
    #[error(
        "log_forwarder.token_secret: secret {0:?} holds characters a syslog field cannot carry (control characters or non-ASCII)"
    )]
    BadToken(String),
    #[error("log_forwarder: this host has no forwarder installed ({0} is missing)")]
    NotInstalled(PathBuf),
    #[error("log_forwarder: cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Settings {
    /// Checks every key; the first wrong one is the error.
    pub fn new(config: &LogForwarderConfig, secrets: &Secrets) -> Result<Self, ForwarderError> {
        let kind = match config.kind.as_deref() {
            None => return Err(ForwarderError::NoKind),
            Some("rfc5424") => Kind::Rfc5424,
            Some("json") => Kind::Json,
            Some(other) => return Err(ForwarderError::UnknownKind(other.to_owned())),
        };
        let endpoint = config
            .endpoint
            .as_deref()
            .ok_or(ForwarderError::NoEndpoint)?;
        let (host, port) = endpoint_parts(endpoint)
            .ok_or_else(|| ForwarderError::BadEndpoint(endpoint.to_owned()))?;
        let ca_file = config.ca_file.as_deref().map(check_ca).transpose()?;
        let token = match &config.token_secret {
            None => None,
            Some(name) => {
                let value = secrets
                    .get(name)
                    .ok_or_else(|| ForwarderError::MissingToken(name.clone()))?;
                let token = value.expose().trim_end_matches(['\n', '\r']);
                if !token.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
                    return Err(ForwarderError::BadToken(name.clone()));
                }
                Some(Zeroizing::new(token.to_owned()))
            }
        };
        Ok(Settings {
            kind,
            host,
            port,
            ca_file,
            token,
            max_disk_mb: config.max_disk_mb,
        })
    }
}

/// `host:port`, `[v6]:port`: the host as rsyslog's `target` takes it. Only the
/// characters of names and addresses pass, so nothing can leave the quotes of
/// the configuration it goes into.
pub fn endpoint_parts(endpoint: &str) -> Option<(String, u16)> {
    let (host, port) = match endpoint.strip_prefix('[') {
        Some(rest) => {
            let (v6, port) = rest.split_once("]:")?;
            v6.parse::<std::net::Ipv6Addr>().ok()?;
            (v6, port)
        }
        None => {
            let (host, port) = endpoint.rsplit_once(':')?;
            let name_like = host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
            if !name_like || host.len() > 253 {
                return None;
            }
            (host, port)
        }
    };
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    (!port_has_sign(endpoint)).then(|| (host.to_owned(), port))
}

/// `u16::from_str` takes a leading `+`.
fn port_has_sign(endpoint: &str) -> bool {
    endpoint
        .rsplit(':')
        .next()
        .is_some_and(|p| p.starts_with('+'))
}

/// The CA file must be an absolute path to a regular file (not a link: the
/// user data names the file it means) holding a PEM certificate.
fn check_ca(path: &str) -> Result<PathBuf, ForwarderError> {
    let bad = |why: &str| ForwarderError::BadCa {
        path: path.to_owned(),
        why: why.to_owned(),
    };
    if !path.starts_with('/') {
        return Err(bad("must be an absolute path"));
    }
    if path
        .chars()
        .any(|c| c.is_control() || c == '"' || c == '\\')
    {
        return Err(bad("holds a quote, a backslash or a control character"));
    }
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(bad("does not exist")),
        Err(e) => return Err(bad(&format!("cannot be read: {e}"))),
    };
    if meta.file_type().is_symlink() {
        return Err(bad("is a symbolic link; name the file itself"));
    }
    if !meta.is_file() {
        return Err(bad("is not a regular file"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(&format!("cannot be read: {e}")))?;
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(bad("holds no PEM certificate"));
    }
    Ok(PathBuf::from(path))
}

/// The forwarder deckhand configured at boot, for the drain to wait on.
#[derive(Debug, Clone)]
pub struct Forwarder {
    stats: PathBuf,
}

/// What [`Forwarder::flush`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flushed {
    pub waited: Duration,
    pub emptied: bool,
    /// Lines still queued in the last counters read (`None`: none read).
    pub queued: Option<u64>,
}

/// Writes the forwarder's configuration into `dir` (or removes it when the user
/// data names no forwarder). `Ok(None)`: forwarding is off.
pub fn configure(
    config: &LogForwarderConfig,
    secrets: &Secrets,
    dir: &Path,
) -> Result<Option<Forwarder>, ForwarderError> {
    let path = dir.join(CONFIG_FILE);
    if !config.is_set() {
        remove(&path);
        return Ok(None);
    }
    let settings = Settings::new(config, secrets).inspect_err(|_| remove(&path))?;
    if !dir.is_dir() {
        return Err(ForwarderError::NotInstalled(dir.to_owned()));
    }
    let text = Zeroizing::new(render(
        &settings,
        &dir.join(STATS_FILE),
        Path::new(SPOOL_DIR),
    ));
    let unchanged =
        std::fs::read(&path).is_ok_and(|old| Zeroizing::new(old).as_slice() == text.as_bytes());
    if !unchanged {
        write_private(&path, text.as_bytes())
            .map_err(|source| ForwarderError::Write { path, source })?;
    }
    Ok(Some(Forwarder {
        stats: dir.join(STATS_FILE),
    }))
}

fn remove(path: &Path) {
    if let Err(error) = std::fs::remove_file(path)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(%error, path = %path.display(), "Could not remove the log forwarder's configuration.");
    }
}

/// 0600 from the start (it holds the token), then renamed into place whole.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// How often the drain reads the counters (rsyslog writes them once a second).
const POLL: Duration = Duration::from_millis(200);

impl Forwarder {
    pub fn new(stats: PathBuf) -> Self {
        Forwarder { stats }
    }

    /// Waits at most `timeout` for a round of counters, written wholly after
    /// the call, in which every queue between the journal and the sink is
    /// empty.
    pub async fn flush(&self, timeout: Duration) -> Flushed {
        let started = Instant::now();
        let mut offset = file_len(&self.stats).await;
        let mut seen = String::new();
        let mut queued = None;
        loop {
            match read_from(&self.stats, offset).await {
                Some(Read::More(text)) => {
                    offset += text.len() as u64;
                    seen.push_str(&text);
                }
                // Trimmed by its timer: what comes now is newer still.
                Some(Read::Shrunk) => offset = 0,
                None => {}
            }
            match stats::judge(&seen) {
                Verdict::Empty => {
                    return Flushed {
                        waited: started.elapsed(),
                        emptied: true,
                        queued: Some(0),
                    };
                }
                Verdict::Queued(n) => queued = Some(n),
                Verdict::NoRoundYet => {}
            }
            if started.elapsed() >= timeout {
                return Flushed {
                    waited: started.elapsed(),
                    emptied: false,
                    queued,
                };
            }
            tokio::time::sleep(POLL.min(timeout.saturating_sub(started.elapsed()))).await;
        }
    }
}

enum Read {
    More(String),
    Shrunk,
}

async fn file_len(path: &Path) -> u64 {
    tokio::fs::metadata(path).await.map_or(0, |m| m.len())
}

/// What the file holds past `offset`, in whole lines only.
async fn read_from(path: &Path, offset: u64) -> Option<Read> {
    let mut file = tokio::fs::File::open(path).await.ok()?;
    let len = file.metadata().await.ok()?.len();
    if len < offset {
        return Some(Read::Shrunk);
    }
    file.seek(std::io::SeekFrom::Start(offset)).await.ok()?;
    let mut bytes = Vec::new();
    file.take(len - offset).read_to_end(&mut bytes).await.ok()?;
    let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    bytes.truncate(whole);
    Some(Read::More(String::from_utf8_lossy(&bytes).into_owned()))
}

#[cfg(test)]
mod tests;
