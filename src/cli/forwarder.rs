//! `deckhand forwarder-config`: the log forwarder's configuration as `run`
//! writes it at boot, with a placeholder for the token (no bundle is opened),
//! so that packaging checks and operators can run `rsyslogd -N1` on it.

use std::path::Path;

use crate::config::Config;
use crate::host::forwarder::{self, ForwarderError, Settings};
use crate::host::secrets::Secrets;

/// Stands in for the token's value.
pub const TOKEN_PLACEHOLDER: &str = "TOKEN-PLACEHOLDER";

pub fn print_config(config: &Config) -> Result<(), ForwarderError> {
    let wanted = &config.log_forwarder;
    if !wanted.is_set() {
        println!("# [log_forwarder] names no forwarder: forwarding is off.");
        return Ok(());
    }
    let secrets: Secrets = wanted
        .token_secret
        .iter()
        .map(|name| (name.clone(), TOKEN_PLACEHOLDER.to_owned()))
        .collect();
    let settings = Settings::new(wanted, &secrets)?;
    let stats = Path::new(forwarder::DIR).join(forwarder::STATS_FILE);
    print!(
        "{}",
        forwarder::render(&settings, &stats, Path::new(forwarder::SPOOL_DIR))
    );
    Ok(())
}
