//! The `deckhand` binary: parses the command line, sets up logging, loads the config
//! once, runs the command, and maps the outcome to an exit code. Everything else
//! lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use deckhand::config::{self, Config, Env};
use deckhand::exec::{ExecError, Executed};
use deckhand::logging::{self, LogFormat};
use deckhand::stop::{self, Stop};
use deckhand::submit::SubmitError;
use deckhand::{exit, outcome::JobResult};

#[derive(Parser)]
#[command(
    name = "deckhand",
    version,
    about = "The on-host agent of a CI worker pool on EC2 spot instances"
)]
struct Cli {
    /// The config file (default /etc/deckhand/config.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// How to write logs to stdout.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "json",
        env = "DECKHAND_LOG_FORMAT"
    )]
    log_format: LogFormat,
    /// Log filter, e.g. `info` or `deckhand=debug,info`.
    #[arg(long, global = true, default_value = "info", env = "DECKHAND_LOG")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The agent: bootstrap, then serve the queue until drained.
    Run,
    /// Validate a job and put it on the queue; with --wait, print its result.
    Submit {
        /// The job message (JSON).
        job: PathBuf,
        /// The queue URL (default: queue.url from the config).
        #[arg(long)]
        queue: Option<String>,
        /// Wait for the job's result and exit with its exit code.
        #[arg(long)]
        wait: bool,
        /// With --wait, give up after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Run one job locally through Docker with the pool's policy; print its result.
    Exec {
        /// The job message (JSON), as it would arrive on the queue.
        job: PathBuf,
    },
    /// Encrypt a secrets file with a fresh KMS data key and upload the bundle to S3.
    Seal {
        /// The KMS key (id, ARN or alias/NAME).
        #[arg(long)]
        kms_key: String,
        /// The encryption context, KEY=VALUE (repeatable), e.g. pool=ci.
        #[arg(long = "context", required = true)]
        context: Vec<String>,
        /// The secrets file: TOML of name = "value" or name = { file = "PATH" }.
        #[arg(long = "in")]
        input: PathBuf,
        /// Where the bundle goes: s3://BUCKET/KEY.
        #[arg(long)]
        out: String,
    },
    /// Validate the config and probe what the agent depends on.
    Check {
        /// Validate the config only; reach nothing.
        #[arg(long)]
        no_probe: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_masker = match logging::init(cli.log_format, &cli.log) {
        Ok(masker) => masker,
        Err(e) => {
            eprintln!("deckhand: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    let env = Env::from_process();
    let path = cli
        .config
        .clone()
        .or_else(|| env.config_path())
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH));
    // `seal` runs on an operator's machine, which may have no agent config: the
    // defaults (and AWS_* from the environment) are enough there.
    let sealing_without_config = matches!(cli.command, Command::Seal { .. })
        && cli.config.is_none()
        && env.config_path().is_none()
        && !path.exists();
    let loaded = if sealing_without_config {
        Config::parse("", &env)
    } else {
        Config::load(&path, &env)
    };
    let config = match loaded {
        Ok(config) => Arc::new(config),
        Err(e) => {
            eprintln!("deckhand: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("deckhand: start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    runtime.block_on(async move {
        let stop = Stop::new();
        tokio::select! {
            code = run(cli.command, config, &path, stop.clone(), log_masker) => code,
            // Only returns if the signal handlers cannot be installed.
            Err(e) = stop::watch_signals(stop) => {
                eprintln!("deckhand: install signal handlers: {e}");
                ExitCode::from(exit::FAILURE)
            }
        }
    })
}

async fn run(
    command: Command,
    config: Arc<Config>,
    path: &std::path::Path,
    stop: Stop,
    log_masker: deckhand::mask::SharedMasker,
) -> ExitCode {
    match command {
        Command::Run => match deckhand::agent::run(config, stop, log_masker).await {
            Ok(()) => ExitCode::from(exit::OK),
            Err(e) => {
                tracing::error!(error = %e, "Cannot start.");
                eprintln!("deckhand: {e}");
                ExitCode::from(e.exit_code())
            }
        },
        Command::Seal {
            kms_key,
            context,
            input,
            out,
        } => match seal(&config, &kms_key, &context, &input, &out).await {
            Ok(()) => {
                println!("sealed {} to {out}", input.display());
                ExitCode::from(exit::OK)
            }
            Err((code, message)) => {
                eprintln!("deckhand: {message}");
                ExitCode::from(code)
            }
        },
        Command::Submit {
            job,
            queue,
            wait,
            timeout,
        } => {
            let wait = wait.then(|| std::time::Duration::from_secs(timeout));
            match deckhand::submit::submit(config, &job, queue, wait).await {
                Ok(Some(result)) => print_result(&result),
                Ok(None) => ExitCode::from(exit::OK),
                Err(e) => {
                    eprintln!("deckhand: {e}");
                    ExitCode::from(match e {
                        SubmitError::Rejected(_) => exit::REJECTED,
                        SubmitError::ReadJob { .. } => exit::NO_INPUT,
                        SubmitError::NoQueue | SubmitError::NoBucket => exit::CONFIG,
                        SubmitError::Send(_) | SubmitError::Store(_) => exit::UNAVAILABLE,
                        SubmitError::WaitTimedOut { .. } => exit::TIMED_OUT,
                    })
                }
            }
        }
        Command::Exec { job } => match deckhand::exec::exec(config, &job, stop, log_masker).await {
            Ok(Executed::Ran(result)) => print_result(&result),
            Ok(Executed::Rejected(result)) => {
                eprintln!(
                    "deckhand: job rejected: {}",
                    result.reason.as_deref().unwrap_or("")
                );
                print_result(&result)
            }
            Err(e @ ExecError::ReadJob { .. }) => {
                eprintln!("deckhand: {e}");
                ExitCode::from(exit::NO_INPUT)
            }
            Err(e @ ExecError::Docker(_)) => {
                eprintln!("deckhand: {e}");
                ExitCode::from(exit::UNAVAILABLE)
            }
            Err(e @ ExecError::SecretsDir { .. }) => {
                eprintln!("deckhand: {e}");
                ExitCode::from(exit::CONFIG)
            }
            Err(ExecError::Secrets(e)) => {
                eprintln!("deckhand: {e}");
                ExitCode::from(if e.is_permanent() {
                    exit::CONFIG
                } else {
                    exit::UNAVAILABLE
                })
            }
        },
        Command::Check { no_probe } => {
            println!("ok    config   {}", path.display());
            if no_probe {
                return ExitCode::from(exit::OK);
            }
            let probes = deckhand::check::run(&config).await;
            for probe in &probes {
                println!("{probe}");
            }
            if probes.iter().all(|p| p.outcome.is_ok()) {
                ExitCode::from(exit::OK)
            } else {
                ExitCode::from(exit::UNAVAILABLE)
            }
        }
    }
}

/// `deckhand seal`: the error's exit code and message.
async fn seal(
    config: &Config,
    kms_key: &str,
    context: &[String],
    input: &std::path::Path,
    out: &str,
) -> Result<(), (u8, String)> {
    let usage = |message: String| (exit::CONFIG, message);
    let mut pairs = std::collections::BTreeMap::new();
    for pair in context {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| usage(format!("--context {pair:?}: expected KEY=VALUE")))?;
        pairs.insert(k.to_owned(), v.to_owned());
    }
    let (bucket, key) = out
        .strip_prefix("s3://")
        .and_then(|rest| rest.split_once('/'))
        .filter(|(b, k)| !b.is_empty() && !k.is_empty())
        .ok_or_else(|| usage(format!("--out {out:?}: expected s3://BUCKET/KEY")))?;
    let secrets =
        deckhand::secrets::read_input(input).map_err(|e| (exit::NO_INPUT, e.to_string()))?;
    let sdk = deckhand::aws::sdk_config(&config.aws).await;
    deckhand::secrets::seal(
        &deckhand::aws::kms_client(&sdk),
        &deckhand::aws::s3_client(&sdk, &config.aws),
        kms_key,
        &pairs,
        &secrets,
        &deckhand::config::BundleLocation {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        },
    )
    .await
    .map_err(|e| (exit::UNAVAILABLE, e.to_string()))
}

/// The result goes to stdout as one JSON line, after the job's own log lines.
fn print_result(result: &JobResult) -> ExitCode {
    match serde_json::to_string(result) {
        Ok(json) => println!("{json}"),
        Err(e) => eprintln!("deckhand: encode the result: {e}"),
    }
    exit::for_result(result)
}
