//! deckhand: the on-host agent of a CI worker pool on EC2 spot instances.
//!
//! It takes CI jobs from SQS and runs each in a fresh, locked-down container through
//! the Docker API, writes every log line to stdout, and drains cleanly when the host
//! is going away. The public contract (job and result JSON, config, CLI) is in
//! `docs/`; `docs/architecture.md` walks the layout. From the bottom of the import
//! graph up:
//!
//! - [`rules`], [`backoff`], [`exit`]: rules shared by the config and the job,
//!   retry pacing, and every exit code;
//! - [`config`]: the TOML config and its environment overrides, validated once;
//! - [`docker`] and [`aws`]: one module per external system (Docker; the SDK, SQS,
//!   the S3 record of results, Auto Scaling, EC2, instance metadata);
//! - [`job`]: the job message, the image policy, one container's life, its log and
//!   its result;
//! - [`host`]: the host's duties (stop and notices, disk, cache, secrets,
//!   credentials, systemd);
//! - [`agent`]: `deckhand run`: boot, the serve loop, each message's delivery and
//!   fate, the drain, recovery and health;
//! - [`cli`]: the other commands; [`logging`]: the agent's own stdout.

pub mod agent;
pub mod aws;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod docker;
pub mod exit;
pub mod host;
pub mod image;
pub mod job;
pub mod logging;
pub mod mask;
pub mod record;
pub mod rules;
pub mod tls;
