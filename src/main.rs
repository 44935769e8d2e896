//! The `deckhand` binary: parses the command line, sets up logging, loads the config
//! once, runs the command, and maps the outcome to an exit code. Everything else
//! lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use deckhand::cli::{self, exec::Executed};
use deckhand::config::{self, Config, Env};
use deckhand::exit::{self, ExitStatus};
use deckhand::host::stop::{self, Stop};
use deckhand::job::result::JobResult;
use deckhand::logging::{self, LogFormat};
use deckhand::mask::SharedMasker;

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
        /// With --wait, print the job's log as it runs.
        #[arg(long, requires = "wait")]
        follow: bool,
    },
    /// Print a job's log; with --follow, as it runs, until the job ends.
    Logs {
        /// The job's id.
        id: String,
        /// Print new output as it is uploaded, until the job ends; exit as
        /// `submit --wait` does.
        #[arg(long)]
        follow: bool,
        /// The log of this attempt (an interrupted one's, say).
        #[arg(long)]
        attempt: Option<u32>,
    },
    /// Download a finished job's artifacts, each checked against its SHA-256.
    Artifacts {
        /// The job's id.
        id: String,
        /// Where they go, as DIR/<path>.
        #[arg(long)]
        out: PathBuf,
    },
    /// Ask for a job to be cancelled: never started if it has not, stopped if it
    /// runs. Prints what it knows: already finished, or cancel requested.
    Cancel {
        /// The job's id.
        id: String,
        /// Why; it becomes part of the result's reason.
        #[arg(long)]
        reason: Option<String>,
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
    /// Inside `check`'s probe container: whether a TCP connection to ADDRESS
    /// (host:port) opens; exit 0 if it does, 1 if not.
    #[command(hide = true)]
    Reach {
        address: String,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// In a job's sandbox container: hold its network namespace until killed.
    #[command(hide = true)]
    Pause,
    /// Print the log forwarder's rsyslog configuration as `run` writes it at
    /// boot from [log_forwarder], with TOKEN-PLACEHOLDER for the token
    /// (scripts/test-packaging checks it with `rsyslogd -N1`).
    #[command(hide = true)]
    ForwarderConfig,
    /// Validate the config and probe what the agent depends on.
    Check {
        /// Validate the config only; reach nothing.
        #[arg(long)]
        no_probe: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Runs in an empty container with no config: nothing else may be needed.
    if let Command::Reach {
        address,
        timeout_ms,
    } = &cli.command
    {
        return ExitCode::from(reach(address, *timeout_ms));
    }
    if let Command::Pause = cli.command {
        // PID 1 of the sandbox: nothing to do but exist. The runner removes the
        // container with SIGKILL.
        loop {
            std::thread::park();
        }
    }
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
        Err(e) => return ExitCode::from(Stderr::default().report(e)),
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
    let code = runtime.block_on(async move {
        let stop = Stop::new();
        tokio::select! {
            code = dispatch(cli.command, config, &path, stop.clone(), log_masker) => code,
            // Only returns if the signal handlers cannot be installed.
            Err(e) = stop::watch_signals(stop) => {
                eprintln!("deckhand: install signal handlers: {e}");
                exit::FAILURE
            }
        }
    });
    ExitCode::from(code)
}

/// Runs `command` and says what the process exits with.
async fn dispatch(
    command: Command,
    config: Arc<Config>,
    path: &std::path::Path,
    stop: Stop,
    log_masker: SharedMasker,
) -> u8 {
    let stderr = Stderr(log_masker.clone());
    match command {
        Command::Run => deckhand::agent::run(config, stop, log_masker)
            .await
            .map(|()| exit::OK)
            .inspect_err(|e| tracing::error!(error = %e, "Cannot start."))
            .unwrap_or_else(|e| stderr.report(e)),
        Command::Seal {
            kms_key,
            context,
            input,
            out,
        } => cli::seal::seal(&config, &kms_key, &context, &input, &out)
            .await
            .map(|()| {
                println!("sealed {} to {out}", input.display());
                exit::OK
            })
            .unwrap_or_else(|e| stderr.report(e)),
        Command::Submit {
            job,
            queue,
            wait,
            timeout,
            follow,
        } => {
            let wait = wait.then(|| cli::submit::Wait {
                timeout: std::time::Duration::from_secs(timeout),
                follow,
            });
            cli::submit::submit(config, &job, queue, wait)
                .await
                .map(|result| result.map_or(exit::OK, |r| print_result(&r)))
                .unwrap_or_else(|e| stderr.report(e))
        }
        Command::Logs {
            id,
            follow,
            attempt,
        } => logs(config, &id, follow, attempt, &stderr).await,
        Command::Artifacts { id, out } => cli::artifacts::download(config, &id, &out)
            .await
            .map(|artifacts| print_artifacts(&artifacts))
            .unwrap_or_else(|e| stderr.report(e)),
        Command::Cancel { id, reason } => cli::cancel::cancel(config, &id, reason)
            .await
            .map(|outcome| {
                println!("{outcome}");
                exit::OK
            })
            .unwrap_or_else(|e| stderr.report(e)),
        Command::Exec { job } => match cli::exec::exec(config, &job, stop, log_masker).await {
            Ok(Executed::Ran(result)) => print_ran(&result),
            Ok(Executed::Rejected(result)) => {
                eprintln!(
                    "deckhand: job rejected: {}",
                    stderr.masked(result.reason.as_deref().unwrap_or(""))
                );
                print_result(&result)
            }
            Err(e) => stderr.report(e),
        },
        Command::Check { no_probe } => check(&config, path, no_probe).await,
        Command::ForwarderConfig => match cli::forwarder::print_config(&config) {
            Ok(()) => exit::OK,
            Err(e) => stderr.report(e),
        },
        // Handled before the config is loaded; here for the match's sake.
        Command::Reach { .. } | Command::Pause => exit::OK,
    }
}

/// `deckhand logs`: with `--follow`, a summary on stderr and the job's exit code.
async fn logs(
    config: Arc<Config>,
    id: &str,
    follow: bool,
    attempt: Option<u32>,
    stderr: &Stderr,
) -> u8 {
    match cli::logs::logs(config, id, follow, attempt).await {
        Ok(None) => exit::OK,
        Ok(Some(result)) => {
            eprintln!(
                "deckhand: {id} {}{}",
                result.status.as_str(),
                result
                    .reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            );
            result.exit_code()
        }
        Err(e) => stderr.report(e),
    }
}

/// `deckhand reach`: in `check`'s probe container, with no config.
fn reach(address: &str, timeout_ms: u64) -> u8 {
    cli::check::reach(address, std::time::Duration::from_millis(timeout_ms))
}

/// `deckhand artifacts`: one line per file downloaded and checked.
fn print_artifacts(artifacts: &[deckhand::job::artifacts::Artifact]) -> u8 {
    for artifact in artifacts {
        // The job named it: escaped, so a name cannot drive the terminal.
        println!(
            "ok    {}  {} bytes  sha256 {}",
            deckhand::rules::bounded_text(&artifact.path, 4096),
            artifact.bytes,
            artifact.sha256
        );
    }
    exit::OK
}

/// `deckhand check`: one line per probe; 69 if any failed.
async fn check(config: &Config, path: &std::path::Path, no_probe: bool) -> u8 {
    println!("ok    config   {}", path.display());
    if no_probe {
        return exit::OK;
    }
    let probes = cli::check::run(config).await;
    for probe in &probes {
        println!("{probe}");
    }
    if probes.iter().all(|p| p.outcome.is_ok()) {
        exit::OK
    } else {
        exit::UNAVAILABLE
    }
}

/// Where errors go: stderr, with every secret the process has loaded masked
/// (an error may quote a job or a response that holds one).
#[derive(Clone, Default)]
struct Stderr(SharedMasker);

impl Stderr {
    fn masked(&self, text: &str) -> String {
        match self.0.get() {
            Some(masker) => masker.mask(text).into_owned(),
            None => text.to_owned(),
        }
    }

    /// The error goes to stderr; its exit code comes from the table in `exit`.
    fn report(&self, error: impl std::fmt::Display + ExitStatus) -> u8 {
        eprintln!("deckhand: {}", self.masked(&error.to_string()));
        error.exit_code()
    }
}

/// `deckhand exec`'s result, and on stderr what the job used.
fn print_ran(result: &JobResult) -> u8 {
    if let Some(usage) = &result.usage {
        eprintln!("deckhand: used {usage}");
    }
    print_result(result)
}

/// The result goes to stdout as one JSON line, after the job's own log lines.
fn print_result(result: &JobResult) -> u8 {
    match serde_json::to_string(result) {
        Ok(json) => println!("{json}"),
        Err(e) => eprintln!("deckhand: encode the result: {e}"),
    }
    result.exit_code()
}
