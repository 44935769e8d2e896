//! The forwarder's rsyslog configuration, rendered from [`Settings`].
//!
//! One ruleset: deckhand's lines (JSON on its stdout, the journal's MESSAGE)
//! are parsed with mmjsonparse into `$.d`; other units' lines get `msg`
//! only. One action, `fwd` (its counters are what the drain reads), with a
//! linked-list queue that spills to a bounded disk queue while the sink is
//! away and is saved at shutdown. RFC 5424 lines carry deckhand's four fields
//! as the `deckhand@32473` structured data element (32473 is the enterprise
//! number RFC 5612 sets aside for examples: a pool that has its own may change
//! it with the sink's parsing); the token, when set, as `auth@32473`.

use std::fmt::Write as _;
use std::path::Path;

use super::{Kind, Settings};

/// The fields that travel as fields of their own.
pub const FIELDS: [&str; 4] = ["job_id", "instance_id", "attempt", "level"];

/// A RainerScript string literal's content.
fn quoted(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

/// An RFC 5424 PARAM-VALUE's content (§6.3.3): `"`, `\` and `]` escaped.
fn sd_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace(']', "\\]")
}

/// The configuration text; `stats` is impstats' file, `spool` rsyslog's work
/// directory (the journal cursor, the disk queue).
pub fn render(settings: &Settings, stats: &Path, spool: &Path) -> String {
    let mut out = String::new();
    out.push_str(
        "# Written by deckhand at boot from [log_forwarder] (docs/operations.md,\n\
         # \"Log forwarding\"). On tmpfs only: it may hold the sink's token.\n",
    );
    let tls = settings.ca_file.as_ref().map_or(String::new(), |ca| {
        format!(
            " defaultNetstreamDriver=\"gtls\" defaultNetstreamDriverCAFile=\"{}\"",
            quoted(&ca.to_string_lossy())
        )
    });
    let _ = writeln!(
        out,
        "global(workDirectory=\"{}\" maxMessageSize=\"64k\"{tls})",
        quoted(&spool.to_string_lossy())
    );
    // The cursor is saved every 100 lines and at stop, so a restart resumes
    // where it was; no rate limit (job output comes in bursts).
    out.push_str(
        "module(load=\"imjournal\" StateFile=\"imjournal.state\" PersistStateInterval=\"100\" \
         Ratelimit.Interval=\"0\" IgnorePreviousMessages=\"off\")\n\
         module(load=\"mmjsonparse\")\n",
    );
    let _ = writeln!(
        out,
        "module(load=\"impstats\" interval=\"1\" format=\"json\" log.syslog=\"off\" log.file=\"{}\")",
        quoted(&stats.to_string_lossy())
    );
    out.push_str(&templates());
    out.push_str(&fields(settings));
    out.push_str(&action(settings));
    out
}

fn templates() -> String {
    "template(name=\"deckhand_rfc5424\" type=\"string\" \
     string=\"<%PRI%>1 %TIMESTAMP:::date-rfc3339% %HOSTNAME% %APP-NAME% %PROCID% - %$.sd% %$.msg%\")\n\
     template(name=\"deckhand_json\" type=\"string\" string=\"%$.d%\")\n"
        .to_owned()
}

/// Parsing, and the structured data or JSON object each line leaves with.
fn fields(settings: &Settings) -> String {
    let mut out = String::from(
        "# deckhand's lines are bare JSON objects (no @cee: cookie).\n\
         action(type=\"mmjsonparse\" cookie=\"\" container=\"$.d\")\n\
         if $parsesuccess != \"OK\" then {\n  unset $.d;\n  set $.d!msg = $msg;\n  set $.d!level = $syslogseverity-text;\n}\n\
         set $.d!host = $hostname;\nset $.d!unit = $!_SYSTEMD_UNIT;\n\
         set $.d!ident = $app-name;\nset $.msg = $msg;\n",
    );
    match settings.kind {
        Kind::Json => {
            if let Some(token) = &settings.token {
                let _ = writeln!(out, "set $.d!token = \"{}\";", quoted(token));
            }
        }
        Kind::Rfc5424 => {
            // RainerScript's replace() escapes each value for its SD-PARAM.
            let esc = |v: &str| {
                format!(
                    "replace(replace(replace({v}, \"\\\\\", \"\\\\\\\\\"), \"\\\"\", \"\\\\\\\"\"), \"]\", \"\\\\]\")"
                )
            };
            out.push_str("set $.sd = \"[deckhand@32473\";\n");
            for field in FIELDS {
                let _ = writeln!(
                    out,
                    "if $.d!{field} != \"\" then set $.sd = $.sd & \" {field}=\\\"\" & {} & \"\\\"\";",
                    esc(&format!("$.d!{field}"))
                );
            }
            out.push_str("set $.sd = $.sd & \"]\";\n");
            if let Some(token) = &settings.token {
                let _ = writeln!(
                    out,
                    "set $.sd = \"[auth@32473 token=\\\"{}\\\"]\" & $.sd;",
                    quoted(&sd_value(token))
                );
            }
        }
    }
    out
}

/// The one action, its disk-assisted queue bounded by `max_disk_mb`.
fn action(settings: &Settings) -> String {
    let template = match settings.kind {
        Kind::Rfc5424 => "deckhand_rfc5424",
        Kind::Json => "deckhand_json",
    };
    let tls = match &settings.ca_file {
        Some(_) => format!(
            "\n       StreamDriver=\"gtls\" StreamDriverMode=\"1\" StreamDriverAuthMode=\"x509/name\" StreamDriverPermittedPeers=\"{}\"",
            quoted(&settings.host)
        ),
        None => String::new(),
    };
    // Retried for ever, every 2 s at first (rsyslog backs off from there); the
    // queue holds 100k lines in memory, then goes to disk up to the bound, and
    // what is still queued at stop is saved there for the next start.
    format!(
        "action(type=\"omfwd\" name=\"fwd\" target=\"{host}\" port=\"{port}\" protocol=\"tcp\" template=\"{template}\"{tls}\n       \
         action.resumeRetryCount=\"-1\" action.resumeInterval=\"2\"\n       \
         queue.type=\"LinkedList\" queue.size=\"100000\" queue.filename=\"fwd\" queue.maxDiskSpace=\"{mb}m\"\n       \
         queue.saveOnShutdown=\"on\" queue.timeoutShutdown=\"5000\" queue.timeoutEnqueue=\"0\")\n",
        host = quoted(&settings.host),
        port = settings.port,
        mb = settings.max_disk_mb,
    )
}
