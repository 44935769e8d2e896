//! deckhand: the on-host agent of a CI worker pool on EC2 spot instances.
//!
//! It takes CI jobs from SQS and runs each in a fresh, locked-down container through
//! the Docker API, writes every log line to stdout, and drains cleanly when the host
//! is going away. The public contract (job and result JSON, config, CLI) is in
//! `docs/`; this crate is laid out one module per external system or concept:
//!
//! - [`config`]: the TOML config and its environment overrides, validated once;
//! - [`job`] and [`image`]: the job message and the image policy;
//! - [`docker`]: the Docker Engine API (bollard);
//! - [`runner`]: one job in one container, to a result;
//! - [`job_log`] and [`logging`]: job output and the agent's own logs on stdout;
//! - [`stop`]: why and how the agent stops;
//! - [`aws`], [`sqs`] and [`results`]: the SDK, the queues, and the S3 record;
//! - [`agent`]: `deckhand run`, the queue loop and its drain;
//! - [`imds`] and [`notices`]: the instance metadata, and the watcher that turns
//!   spot, rebalance and Auto Scaling notices into drains;
//! - [`autoscaling`] and [`ec2`]: scale-in after an idle drain, and the
//!   termination hook after an Auto Scaling termination;
//! - [`systemd`]: readiness and watchdog notifications;
//! - [`metrics`]: Prometheus metrics and the health check over HTTP;
//! - [`http`]: the accept loop the metrics and credentials servers share;
//! - [`disk`]: disk watermarks and the collection of unused images;
//! - [`credentials`]: per-job AWS credentials for a profile's role;
//! - [`exec`], [`submit`] and [`check`]: the `deckhand exec`, `submit` and `check`
//!   commands; [`secrets`] also holds `deckhand seal`.

pub mod agent;
pub mod autoscaling;
pub mod aws;
pub mod backoff;
pub mod cache;
pub mod check;
pub mod config;
pub mod credentials;
pub mod disk;
pub mod docker;
pub mod ec2;
pub mod exec;
pub mod exit;
pub mod http;
pub mod image;
pub mod imds;
pub mod job;
pub mod job_log;
pub mod logging;
pub mod mask;
pub mod metrics;
pub mod notices;
pub mod outcome;
pub mod results;
pub mod runner;
pub mod secrets;
pub mod sqs;
pub mod stop;
pub mod submit;
pub mod systemd;
