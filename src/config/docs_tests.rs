//! docs/config.md states every default; these are the consts it must quote.

use std::collections::BTreeMap;

use super::defaults::*;

/// `section.key` → the default column of its row, for every key row in the doc.
fn documented_defaults() -> BTreeMap<String, String> {
    let doc = include_str!("../../docs/config.md");
    let mut section = String::new();
    let mut defaults = BTreeMap::new();
    for line in doc.lines() {
        if let Some(heading) = line.strip_prefix("### `[") {
            section = heading.trim_end_matches("]`").to_owned();
            continue;
        }
        let cells: Vec<&str> = line.split(" | ").collect();
        if section.is_empty() || cells.len() < 4 || !cells[0].starts_with("| `") {
            continue;
        }
        let key = cells[0].trim_start_matches("| ").trim_matches('`');
        defaults.insert(format!("{section}.{key}"), cells[2].to_owned());
    }
    defaults
}

#[test]
fn the_reference_states_each_default_the_code_uses() {
    let code = |text: String| format!("`{text}`");
    let quoted = |text: &str| format!("`\"{text}\"`");
    let expected = [
        ("agent.slots", code(DEFAULT_SLOTS.to_string())),
        ("agent.work_dir", code(DEFAULT_WORK_DIR.to_owned())),
        ("agent.secrets_dir", code(DEFAULT_SECRETS_DIR.to_owned())),
        (
            "agent.idle_shutdown_secs",
            code(DEFAULT_IDLE_SHUTDOWN_SECS.to_string()),
        ),
        (
            "agent.shutdown_command",
            code(format!("{DEFAULT_SHUTDOWN_COMMAND:?}")),
        ),
        ("docker.socket", code(DEFAULT_SOCKET.to_owned())),
        ("imds.endpoint", code(DEFAULT_ENDPOINT.to_owned())),
        ("imds.poll_ms", code(DEFAULT_POLL_MS.to_string())),
        ("queue.wait_secs", code(DEFAULT_WAIT_SECS.to_string())),
        (
            "queue.visibility_timeout_secs",
            code(DEFAULT_VISIBILITY_TIMEOUT_SECS.to_string()),
        ),
        ("results.prefix", quoted(DEFAULT_PREFIX)),
        (
            "results.cancel_poll_secs",
            code(DEFAULT_CANCEL_POLL_SECS.to_string()),
        ),
        (
            "results.log_flush_secs",
            code(DEFAULT_LOG_FLUSH_SECS.to_string()),
        ),
        (
            "secrets.boot_timeout_secs",
            code(DEFAULT_BOOT_TIMEOUT_SECS.to_string()),
        ),
        (
            "images.pull_timeout_secs",
            code(DEFAULT_PULL_TIMEOUT_SECS.to_string()),
        ),
        ("cache.mount", quoted(DEFAULT_MOUNT)),
        ("cache.refresh_secs", code(DEFAULT_REFRESH_SECS.to_string())),
        ("caches.prefix", quoted(DEFAULT_CACHES_PREFIX)),
        ("caches.host_max_mb", code(DEFAULT_HOST_MAX_MB.to_string())),
        (
            "profiles.NAME.cache_max_mb",
            code(DEFAULT_CACHE_MAX_MB.to_string()),
        ),
        (
            "drain.safety_margin_secs",
            code(DEFAULT_SAFETY_MARGIN_SECS.to_string()),
        ),
        (
            "drain.stop_timeout_secs",
            code(DEFAULT_STOP_TIMEOUT_SECS.to_string()),
        ),
        (
            "drain.stop_grace_secs",
            code(DEFAULT_STOP_GRACE_SECS.to_string()),
        ),
        (
            "drain.log_flush_timeout_secs",
            code(DEFAULT_LOG_FLUSH_TIMEOUT_SECS.to_string()),
        ),
        (
            "log_forwarder.max_disk_mb",
            code(DEFAULT_MAX_DISK_MB.to_string()),
        ),
        ("credentials.listen", quoted(&DEFAULT_LISTEN.to_string())),
        (
            "credentials.session_secs",
            code(DEFAULT_SESSION_SECS.to_string()),
        ),
        ("admission.timeout_ms", code(DEFAULT_TIMEOUT_MS.to_string())),
        ("admission.cache_secs", code(DEFAULT_CACHE_SECS.to_string())),
        ("admission.fail", quoted(DEFAULT_FAIL.as_str())),
        (
            "git.fetch_timeout_secs",
            code(DEFAULT_FETCH_TIMEOUT_SECS.to_string()),
        ),
        ("git.seed_max_mb", code(DEFAULT_SEED_MAX_MB.to_string())),
        (
            "profiles.NAME.source_max_mb",
            code(DEFAULT_SOURCE_MAX_MB.to_string()),
        ),
        (
            "admission.ecr.max_severity",
            quoted(DEFAULT_MAX_SEVERITY.as_str()),
        ),
        (
            "admission.ecr.require_scan",
            code(DEFAULT_REQUIRE_SCAN.to_string()),
        ),
        ("disk.min_free_mb", code(DEFAULT_MIN_FREE_MB.to_string())),
        ("disk.gc_free_mb", code(DEFAULT_GC_FREE_MB.to_string())),
        (
            "profiles.NAME.memory_mb",
            code(DEFAULT_MEMORY_MB.to_string()),
        ),
        ("profiles.NAME.cpus", code(format!("{DEFAULT_CPUS:.1}"))),
        ("profiles.NAME.pids", code(DEFAULT_PIDS.to_string())),
        (
            "profiles.NAME.timeout_secs",
            code(DEFAULT_TIMEOUT_SECS.to_string()),
        ),
        (
            "profiles.NAME.max_timeout_secs",
            code(DEFAULT_MAX_TIMEOUT_SECS.to_string()),
        ),
        ("profiles.NAME.network", quoted(DEFAULT_NETWORK)),
        (
            "profiles.NAME.artifacts_max_mb",
            code(DEFAULT_ARTIFACTS_MAX_MB.to_string()),
        ),
        (
            "profiles.NAME.max_log_mb",
            code(DEFAULT_MAX_LOG_MB.to_string()),
        ),
        (
            "profiles.NAME.inputs_max_mb",
            code(DEFAULT_INPUTS_MAX_MB.to_string()),
        ),
        (
            "profiles.NAME.artifacts_max_files",
            code(DEFAULT_ARTIFACTS_MAX_FILES.to_string()),
        ),
        (
            "profiles.NAME.max_services",
            code(DEFAULT_MAX_SERVICES.to_string()),
        ),
        (
            "profiles.NAME.services_memory_mb",
            code(DEFAULT_SERVICES_MEMORY_MB.to_string()),
        ),
        (
            "profiles.NAME.services_cpus",
            code(format!("{DEFAULT_SERVICES_CPUS:.1}")),
        ),
    ];
    let documented = documented_defaults();
    let wrong: Vec<String> = expected
        .iter()
        .filter(|(key, default)| documented.get(*key) != Some(default))
        .map(|(key, default)| {
            format!(
                "{key}: the code says {default}, docs/config.md says {:?}",
                documented.get(*key)
            )
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Every `section.key` docs/config.md has a row for (`profiles.NAME.key` for a
/// profile's).
fn documented_keys() -> std::collections::BTreeSet<String> {
    documented_defaults().into_keys().collect()
}

#[test]
fn every_key_the_reader_knows_is_in_the_reference() {
    // One profile, so its keys are asked for too.
    let text = "[profiles.NAME]\n";
    let env: super::Env = std::iter::empty::<(String, String)>().collect();
    let _ = super::Config::parse(text, &env);
    // Every profile's keys are the same: the doc names them `profiles.NAME.key`.
    let known: std::collections::BTreeSet<String> = super::reader::TAKEN
        .with(|taken| taken.borrow().clone())
        .into_iter()
        .map(|key| match key.strip_prefix("profiles.") {
            Some(rest) => format!(
                "profiles.NAME.{}",
                rest.split_once('.').map_or(rest, |r| r.1)
            ),
            None => key,
        })
        .collect();
    assert!(known.len() > 50, "{} keys", known.len());
    let documented = documented_keys();
    let missing: Vec<&String> = known.iter().filter(|k| !documented.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "keys the reader knows and docs/config.md does not list: {missing:?}"
    );
}
