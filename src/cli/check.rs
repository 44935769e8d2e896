//! `deckhand check`: the config is valid (it was loaded to get here), then one probe
//! per dependency the agent needs, each a line of a readable report. Run it on a
//! fresh host (or from userdata) before trusting it with jobs.

use std::fmt;
use std::time::Duration;

use crate::aws::imds::Imds;
use crate::config::Config;
use crate::docker::Docker;

mod metadata_block;

pub use metadata_block::reach;

/// Below this much free space in the work dir, jobs' spooled logs may not fit.
/// What the disk probe wants when `disk.min_free_mb` is 0.
const MIN_FREE_BYTES: u64 = 1 << 30;
/// A probe that takes longer than this is a failure: the agent would hang on it.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Probe {
    pub name: &'static str,
    pub outcome: Result<String, String>,
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Ok(detail) => write!(f, "ok    {:<8} {detail}", self.name),
            Err(problem) => write!(f, "FAIL  {:<8} {problem}", self.name),
        }
    }
}

/// Runs every probe that the config makes relevant; each is bounded in time.
pub async fn run(config: &Config) -> Vec<Probe> {
    let sdk = crate::aws::sdk_config(&config.aws).await;
    let s3 = crate::aws::s3_client(&sdk, &config.aws);
    let mut probes = vec![probe("docker", docker(config)).await];
    probes.extend(target_issues(config));
    if let Some(url) = &config.queue.url {
        let sqs = crate::aws::sqs_client(&sdk);
        probes.push(probe("sqs", queue(&sqs, url)).await);
    }
    if let Some(bucket) = &config.results.bucket {
        probes.push(probe("s3", results_bucket(&s3, bucket)).await);
    }
    if config.secrets.bundle.is_some() {
        let kms = crate::aws::kms_client(&sdk);
        probes.push(probe("kms", secret_bundle(config, &s3, &kms)).await);
    }
    if config.imds.enabled {
        probes.push(probe("imds", imds(config)).await);
        probes.push(probe("imds-block", metadata_block::from_jobs(config)).await);
    }
    if let Some(address) = config.metrics.listen {
        probes.push(probe("metrics", metrics(address)).await);
    }
    if config.profiles.values().any(|p| p.role_arn.is_some()) {
        probes.push(probe("credentials", credentials(config.credentials.listen)).await);
    }
    if config.log_forwarder.is_set() {
        probes.push(probe("forwarder", log_forwarder(config)).await);
    }
    if let Some(image) = &config.images.builder {
        probes.push(probe("builder", builder(config, image)).await);
    }
    probes.push(probe("disk", disk(config)).await);
    probes
}

/// The image builder: its seccomp profile (shipped in this binary) parses and
/// denies what it must, and its image is on the engine (it is never pulled).
async fn builder(config: &Config, image: &str) -> Result<String, String> {
    let allowed = crate::docker::check_seccomp(crate::docker::SECCOMP_PROFILE)
        .map_err(|problem| format!("the builder's seccomp profile {problem}"))?;
    let docker = Docker::connect(&config.docker)
        .await
        .map_err(|e| e.to_string())?;
    match docker.image_id(image).await.map_err(|e| e.to_string())? {
        Some(_) => Ok(format!(
            "{image} is here; seccomp allows {allowed} calls and denies {}",
            crate::docker::DENIED_SYSCALLS.join(", ")
        )),
        None => Err(format!(
            "images.builder {image:?} is not on this engine (it is never pulled: build it on the host)"
        )),
    }
}

/// `[log_forwarder]` as the boot will judge it (the token's presence is the
/// kms probe's bundle; here a stand-in), then a TCP connection to the sink.
async fn log_forwarder(config: &Config) -> Result<String, String> {
    let wanted = &config.log_forwarder;
    let stand_in: crate::host::secrets::Secrets = wanted
        .token_secret
        .iter()
        .map(|name| (name.clone(), "stand-in"))
        .collect();
    let settings =
        crate::host::forwarder::Settings::new(wanted, &stand_in).map_err(|e| e.to_string())?;
    let address = (settings.host.as_str(), settings.port);
    tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| format!("{}:{}: cannot connect: {e}", settings.host, settings.port))?;
    let tls = if settings.ca_file.is_some() {
        "TLS"
    } else {
        "plain TCP"
    };
    Ok(format!(
        "{}:{} accepts connections ({tls})",
        settings.host, settings.port
    ))
}

/// What the config lacks to run the agent (a queue, a results bucket), one failed
/// probe per missing key, named after the service it is for.
fn target_issues(config: &Config) -> Vec<Probe> {
    let Err(error) = config.run_targets() else {
        return Vec::new();
    };
    error
        .issues()
        .iter()
        .map(|issue| Probe {
            name: if issue.key.starts_with("queue.") {
                "sqs"
            } else {
                "s3"
            },
            outcome: Err(issue.to_string()),
        })
        .collect()
}

/// That the queue answers, and how many messages wait in it.
async fn queue(sqs: &aws_sdk_sqs::Client, url: &str) -> Result<String, String> {
    use aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages;
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(ApproximateNumberOfMessages)
        .send()
        .await
        .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(&e).to_string())?;
    let waiting = out
        .attributes
        .and_then(|a| a.get(&ApproximateNumberOfMessages).cloned())
        .unwrap_or_default();
    Ok(format!("{url} ({waiting} waiting)"))
}

async fn results_bucket(s3: &aws_sdk_s3::Client, bucket: &str) -> Result<String, String> {
    s3.head_bucket()
        .bucket(bucket)
        .send()
        .await
        .map_err(|e| aws_sdk_s3::error::DisplayErrorContext(&e).to_string())
        .map(|_| format!("results bucket {bucket}"))
}

/// Opening the bundle proves s3:GetObject and kms:Decrypt with the pool's context;
/// the secrets are dropped (and zeroed) at once.
async fn secret_bundle(
    config: &Config,
    s3: &aws_sdk_s3::Client,
    kms: &aws_sdk_kms::Client,
) -> Result<String, String> {
    match crate::host::secrets::load(&config.secrets, s3, kms).await {
        Ok(Some(secrets)) => Ok(format!("secret bundle opens ({} secrets)", secrets.len())),
        Ok(None) => Ok("no secret bundle".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// That the instance metadata service answers, and what instance this is.
async fn imds(config: &Config) -> Result<String, String> {
    let imds = Imds::new(&config.imds).map_err(|e| e.to_string())?;
    let id = imds.identity().await.map_err(|e| e.to_string())?;
    Ok(format!(
        "{} ({}, {})",
        id.instance_id, id.instance_type, id.availability_zone
    ))
}

/// On a host whose agent runs, that it answers there (401 to a request without a
/// token); before it runs, that the address can be bound, which fails when the
/// host lacks it (169.254.170.2 is put on `lo` by deckhand-imds-block.service).
async fn credentials(address: std::net::SocketAddr) -> Result<String, String> {
    let url = format!("http://{address}/v1/credentials");
    crate::tls::install();
    match reqwest::get(&url).await {
        Ok(response) if response.status() == reqwest::StatusCode::UNAUTHORIZED => {
            Ok(format!("{url} is served"))
        }
        Ok(response) => Err(format!(
            "{url} answers {}: not deckhand's credentials",
            response.status().as_u16()
        )),
        Err(_) => tokio::net::TcpListener::bind(address)
            .await
            .map(|_| format!("{address} is free for deckhand run"))
            .map_err(|e| format!("{address} (credentials.listen): {e}")),
    }
}

/// On a host whose agent runs, what its `/readyz` says; before it runs, that the
/// address can be bound.
async fn metrics(address: std::net::SocketAddr) -> Result<String, String> {
    let url = format!("http://{address}/readyz");
    crate::tls::install();
    match reqwest::get(&url).await {
        Ok(response) => {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            let detail = format!("{url} answers {}: {}", status.as_u16(), body.trim());
            if status.is_success() {
                Ok(detail)
            } else {
                Err(detail)
            }
        }
        Err(_) => tokio::net::TcpListener::bind(address)
            .await
            .map(|_| format!("{address} is free for deckhand run"))
            .map_err(|e| format!("{address} (metrics.listen): {e}")),
    }
}

async fn probe(
    name: &'static str,
    work: impl std::future::Future<Output = Result<String, String>>,
) -> Probe {
    let outcome = tokio::time::timeout(PROBE_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {}s", PROBE_TIMEOUT.as_secs())));
    Probe { name, outcome }
}

async fn docker(config: &Config) -> Result<String, String> {
    let docker = Docker::connect(&config.docker)
        .await
        .map_err(|e| e.to_string())?;
    docker.ping().await.map_err(|e| e.to_string())?;
    Ok(format!("{} answers", config.docker.socket.display()))
}

async fn disk(config: &Config) -> Result<String, String> {
    let dir = &config.agent.work_dir;
    // The work dir may not exist yet on a fresh host: its nearest existing parent
    // is the filesystem it will be on.
    let existing = dir.ancestors().find(|p| p.exists()).unwrap_or(dir);
    let free = crate::host::disk::free_bytes(existing).map_err(|e| e.to_string())?;
    let detail = format!("{} has {:.1} GB free", dir.display(), free as f64 / 1e9);
    // Below disk.min_free_mb the agent would take no job.
    let needed = match config.disk.min_free_mb {
        0 => MIN_FREE_BYTES,
        mb => mb * 1_000_000,
    };
    if free < needed {
        Err(format!(
            "{detail}; at least {:.1} GB are needed",
            needed as f64 / 1e9
        ))
    } else {
        Ok(detail)
    }
}
