//! `[results]`: the S3 record of results and where they are announced.

use std::time::Duration;

use toml::Table;

use super::reader::Reader;

/// A result lands at `<prefix><id>/result.json`.
pub const DEFAULT_PREFIX: &str = "results/";
/// How often a running job's cancel request is looked for: one S3 GET per running
/// job per period.
pub const DEFAULT_CANCEL_POLL_SECS: u64 = 2;
/// How often a running job's new output is uploaded for followers: one S3 PUT per
/// running job per period, and only when it printed something.
pub const DEFAULT_LOG_FLUSH_SECS: u64 = 5;

#[derive(Debug, Clone)]
pub struct ResultsConfig {
    pub bucket: Option<String>,
    /// Key prefix; a result lands at `<prefix><id>/result.json`.
    pub prefix: String,
    pub queue_url: Option<String>,
    pub webhook_url: Option<String>,
    /// The name of the secret (in the bundle) whose value signs webhook bodies
    /// (`X-Deckhand-Signature`).
    pub webhook_secret: Option<String>,
    /// How often a running job looks for its cancel request; `None` (0 in the
    /// file): only before it starts.
    pub cancel_poll: Option<Duration>,
    /// How often a running job's new output is uploaded as a live chunk; `None`
    /// (0 in the file): only the whole log, at the end.
    pub log_flush: Option<Duration>,
}

impl ResultsConfig {
    pub(super) fn read(r: &mut Reader<'_>, root: &mut Table) -> Self {
        let mut section = r.section(root, "results");
        let results = ResultsConfig {
            bucket: r.opt_string(&mut section, "bucket"),
            prefix: r
                .opt_string(&mut section, "prefix")
                .unwrap_or_else(|| DEFAULT_PREFIX.to_owned()),
            queue_url: r.opt_url(&mut section, "queue_url"),
            webhook_url: r.opt_url(&mut section, "webhook_url"),
            webhook_secret: r.opt_string(&mut section, "webhook_secret"),
            cancel_poll: r.period(
                &mut section,
                "cancel_poll_secs",
                0..=3600,
                DEFAULT_CANCEL_POLL_SECS,
            ),
            log_flush: r.period(
                &mut section,
                "log_flush_secs",
                0..=3600,
                DEFAULT_LOG_FLUSH_SECS,
            ),
        };
        if results.webhook_url.is_some() && results.webhook_secret.is_none() {
            r.issue(
                "results.webhook_secret",
                "required when results.webhook_url is set (results are signed)",
            );
        }
        r.finish(section);
        results
    }
}
