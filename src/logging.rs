//! Logs, the agent's and its jobs', to stdout: one JSON object per line with `ts`,
//! `level`, `msg` and the fields of every enclosing span (`job_id`, …), or a line of
//! text for people (`--log-format text`).
//!
//! A small layer of our own rather than tracing-subscriber's JSON formatter: the
//! interface fixes flat keys (`msg`, `job_id`, `stream`) that the stock formatter
//! nests under `fields` and `spans`.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer};

use crate::mask::SharedMasker;

/// The target job output is logged under, so filters can tell it apart.
pub const JOB_OUTPUT_TARGET: &str = "deckhand::job_output";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// Installs the global subscriber. `filter` is an `EnvFilter` directive such as
/// `info` or `deckhand=debug,info`. Every line is masked with what the returned
/// handle is given once secrets are loaded.
pub fn init(format: LogFormat, filter: &str) -> Result<SharedMasker, String> {
    let filter = EnvFilter::try_new(filter).map_err(|e| format!("log filter {filter:?}: {e}"))?;
    let masker = SharedMasker::default();
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(StdoutLayer {
            format,
            masker: masker.clone(),
        });
    tracing::subscriber::set_global_default(subscriber).map_err(|e| e.to_string())?;
    Ok(masker)
}

struct StdoutLayer {
    format: LogFormat,
    masker: SharedMasker,
}

thread_local! {
    /// Lines logged inside [`batched`] on this thread, written when it ends.
    static BATCH: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

/// Runs `f` and writes every line it logs to stdout in one write when it
/// returns. A chunk of a job's output is often thousands of lines, and a
/// write(2) each (stdout flushes at every newline) costs more than all the rest
/// of logging them. `f` must not wait: its lines appear only once it is done.
pub fn batched<T>(f: impl FnOnce() -> T) -> T {
    /// Writes the batch on the way out, even if `f` panics.
    struct Flush;
    impl Drop for Flush {
        fn drop(&mut self) {
            if let Some(lines) = BATCH.with(|b| b.borrow_mut().take())
                && !lines.is_empty()
            {
                let _ = std::io::stdout().lock().write_all(&lines);
            }
        }
    }
    let outermost = BATCH.with(|b| {
        let mut batch = b.borrow_mut();
        if batch.is_some() {
            return false;
        }
        *batch = Some(Vec::new());
        true
    });
    let _flush = outermost.then_some(Flush);
    f()
}

/// Fields recorded on a span, kept in its extensions.
#[derive(Default)]
struct Fields(Vec<(&'static str, Value)>);

impl Fields {
    fn set(&mut self, name: &'static str, value: Value) {
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field.name(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field.name(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.set(field.name(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field.name(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field.name(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.set(field.name(), Value::from(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.set(field.name(), Value::from(format!("{value:?}")));
    }
}

impl<S> Layer<S> for StdoutLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<Fields>()
        {
            values.record(fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(span_fields) = span.extensions().get::<Fields>() {
                    for (name, value) in &span_fields.0 {
                        fields.set(name, value.clone());
                    }
                }
            }
        }
        let mut own = Fields::default();
        event.record(&mut own);
        let mut msg = Value::from("");
        for (name, value) in own.0 {
            if name == "message" {
                msg = value;
            } else {
                fields.set(name, value);
            }
        }
        if let Some(masker) = self.masker.get() {
            // Values are masked before they are escaped into JSON, where a secret
            // with a quote or a backslash would no longer match.
            let mask = |value: &mut Value| {
                if let Value::String(text) = value
                    && let std::borrow::Cow::Owned(masked) = masker.mask(text)
                {
                    *text = masked;
                }
            };
            // A job's (or service's) output line was masked where it was read
            // (`JobLog`), against these same secrets and the job's own: a second
            // pass would cost as much again on a log flood.
            if event.metadata().target() != JOB_OUTPUT_TARGET {
                mask(&mut msg);
            }
            fields.0.iter_mut().for_each(|(_, v)| mask(v));
        }
        let line = match self.format {
            LogFormat::Json => json_line(*event.metadata().level(), &msg, &fields),
            LogFormat::Text => text_line(*event.metadata().level(), &msg, &fields),
        };
        let batched = BATCH.with(|b| match b.borrow_mut().as_mut() {
            Some(lines) => {
                lines.extend_from_slice(line.as_bytes());
                true
            }
            None => false,
        });
        if !batched {
            // stdout is the log: if it is gone there is nowhere left to report that.
            let _ = std::io::stdout().lock().write_all(line.as_bytes());
        }
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

/// `ts`, `level` and `msg` first, in that order, then the context fields.
fn json_line(level: Level, msg: &Value, fields: &Fields) -> String {
    let mut line = String::with_capacity(128);
    line.push_str("{\"ts\":\"");
    line.push_str(&now());
    line.push_str("\",\"level\":\"");
    line.push_str(level_name(level));
    line.push_str("\",\"msg\":");
    line.push_str(&msg.to_string());
    for (name, value) in &fields.0 {
        line.push(',');
        line.push_str(&Value::from(*name).to_string());
        line.push(':');
        line.push_str(&value.to_string());
    }
    line.push_str("}\n");
    line
}

fn text_line(level: Level, msg: &Value, fields: &Fields) -> String {
    let mut line = format!("{} {:>5} ", now(), level_name(level).to_uppercase());
    match msg {
        Value::String(s) => line.push_str(s),
        other => line.push_str(&other.to_string()),
    }
    for (name, value) in &fields.0 {
        match value {
            Value::String(s) => {
                let _ = write!(line, " {name}={s:?}");
            }
            other => {
                let _ = write!(line, " {name}={other}");
            }
        }
    }
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_keys_come_first_and_flat() {
        let mut fields = Fields::default();
        fields.set("job_id", Value::from("build-1"));
        fields.set("stream", Value::from("stdout"));
        let line = json_line(Level::INFO, &Value::from("hello \"world\""), &fields);
        let parsed: serde_json::Map<String, Value> = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["level"], "info");
        assert_eq!(parsed["msg"], "hello \"world\"");
        assert_eq!(parsed["job_id"], "build-1");
        assert_eq!(parsed["stream"], "stdout");
        assert!(line.starts_with("{\"ts\":\""));
        assert!(line.ends_with("}\n"));
    }

    #[test]
    fn inner_fields_override_outer() {
        let mut fields = Fields::default();
        fields.set("attempt", Value::from(1));
        fields.set("attempt", Value::from(2));
        assert_eq!(fields.0, vec![("attempt", Value::from(2))]);
    }
}
