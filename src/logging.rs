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
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

use crate::mask::SharedMasker;

/// The target job output is logged under, so filters can tell it apart.
pub const JOB_OUTPUT_TARGET: &str = "deckhand::job_output";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// Installs the global subscriber. `filter` is a level and `target=level`
/// directives, such as `info` or `deckhand=debug,info` (targets, not
/// `EnvFilter`'s span and field matching: that needs the regex engines, half a
/// megabyte of the binary, for filters no operator of the agent asked for).
/// Every line is masked with what the returned handle is given once secrets are
/// loaded.
pub fn init(format: LogFormat, filter: &str) -> Result<SharedMasker, String> {
    let filter: Targets = filter
        .parse()
        .map_err(|e| format!("log filter {filter:?}: {e}"))?;
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
        let Some(span) = ctx.span(id) else { return };
        // One guard: the extensions' lock is not reentrant.
        let mut extensions = span.extensions_mut();
        if let Some(fields) = extensions.get_mut::<Fields>() {
            values.record(fields);
            // Rendered again at the next line.
            extensions.remove::<Rendered>();
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let masker = self.masker.get();
        let mask = |value: &mut Value| {
            if let (Some(masker), Value::String(text)) = (&masker, value)
                && let std::borrow::Cow::Owned(masked) = masker.mask(text)
            {
                *text = masked;
            }
        };
        let mut own = Fields::default();
        event.record(&mut own);
        let mut msg = Value::from("");
        own.0.retain(|(name, value)| {
            if *name == "message" {
                msg = value.clone();
            }
            *name != "message"
        });
        // Values are masked before they are escaped into JSON, where a secret
        // with a quote or a backslash would no longer match. A job's (or
        // service's) output line was masked where it was read (`JobLog`),
        // against these same secrets and the job's own: a second pass would cost
        // as much again on a log flood.
        if event.metadata().target() != JOB_OUTPUT_TARGET {
            mask(&mut msg);
        }
        own.0.iter_mut().for_each(|(_, v)| mask(v));
        let level = *event.metadata().level();
        let context = match self.format {
            LogFormat::Json => spans_json(event, &ctx, &own, masker.as_ref()),
            LogFormat::Text => None,
        };
        let line = match context {
            Some(context) => json_line_with(level, &msg, &context, &own),
            None => {
                // Names repeat between spans or the event: the inner one wins,
                // in the outer one's place.
                let mut fields = Fields::default();
                if let Some(scope) = ctx.event_scope(event) {
                    for span in scope.from_root() {
                        if let Some(span_fields) = span.extensions().get::<Fields>() {
                            for (name, value) in &span_fields.0 {
                                let mut value = value.clone();
                                mask(&mut value);
                                fields.set(name, value);
                            }
                        }
                    }
                }
                for (name, value) in own.0 {
                    fields.set(name, value);
                }
                match self.format {
                    LogFormat::Json => json_line(level, &msg, &fields),
                    LogFormat::Text => text_line(level, &msg, &fields),
                }
            }
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

/// A span's own fields as JSON (`,"job_id":"…","attempt":2`), masked, rendered
/// once and kept in its extensions until a field changes or the masker does: a
/// job's output line would otherwise clone, mask and escape them all again.
struct Rendered {
    /// The masker it was masked with (its address), if any.
    masker: Option<usize>,
    json: String,
}

/// The JSON of the fields of every span around `event`, from the rendering each
/// keeps; `None` when a name repeats (between spans or with the event's own),
/// which the slow path sorts out.
fn spans_json<S>(
    event: &Event<'_>,
    ctx: &Context<'_, S>,
    own: &Fields,
    masker: Option<&std::sync::Arc<crate::mask::Masker>>,
) -> Option<String>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let masker_id = masker.map(|m| std::sync::Arc::as_ptr(m) as usize);
    let mut names: Vec<&'static str> = own.0.iter().map(|(name, _)| *name).collect();
    let mut json = String::new();
    let Some(scope) = ctx.event_scope(event) else {
        return Some(json);
    };
    for span in scope.from_root() {
        let stale = {
            let extensions = span.extensions();
            let Some(fields) = extensions.get::<Fields>() else {
                continue;
            };
            for (name, _) in &fields.0 {
                if names.contains(name) {
                    return None;
                }
                names.push(name);
            }
            match extensions.get::<Rendered>() {
                Some(rendered) if rendered.masker == masker_id => {
                    json.push_str(&rendered.json);
                    None
                }
                _ => Some(render(fields, masker)),
            }
        };
        if let Some(rendered) = stale {
            json.push_str(&rendered);
            span.extensions_mut().replace(Rendered {
                masker: masker_id,
                json: rendered,
            });
        }
    }
    Some(json)
}

/// A span's fields as JSON, masked.
fn render(fields: &Fields, masker: Option<&std::sync::Arc<crate::mask::Masker>>) -> String {
    let mut rendered = String::new();
    for (name, value) in &fields.0 {
        match (masker, value) {
            (Some(masker), Value::String(text)) => {
                push_field(
                    &mut rendered,
                    name,
                    &Value::from(masker.mask(text).as_ref()),
                );
            }
            _ => push_field(&mut rendered, name, value),
        }
    }
    rendered
}

fn push_field(line: &mut String, name: &str, value: &Value) {
    line.push(',');
    line.push_str(&Value::from(name).to_string());
    line.push(':');
    line.push_str(&value.to_string());
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
    json_line_with(level, msg, "", fields)
}

/// As [`json_line`], the spans' fields already rendered (`context`), then the
/// event's own.
fn json_line_with(level: Level, msg: &Value, context: &str, own: &Fields) -> String {
    let mut line = String::with_capacity(128 + context.len());
    line.push_str("{\"ts\":\"");
    line.push_str(&now());
    line.push_str("\",\"level\":\"");
    line.push_str(level_name(level));
    line.push_str("\",\"msg\":");
    line.push_str(&msg.to_string());
    line.push_str(context);
    for (name, value) in &own.0 {
        push_field(&mut line, name, value);
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

    #[test]
    fn span_fields_are_rendered_once_masked_and_follow_changes() {
        let masker = SharedMasker::default();
        let layer = StdoutLayer {
            format: LogFormat::Json,
            masker: masker.clone(),
        };
        let subscriber = tracing_subscriber::registry().with(layer);
        let text = tracing::subscriber::with_default(subscriber, || {
            BATCH.with(|b| *b.borrow_mut() = Some(Vec::new()));
            let span = tracing::info_span!("job", job_id = "build-hunter2", attempt = 1);
            let _entered = span.enter();
            tracing::info!("first");
            // Secrets loaded after the span was rendered: rendered again.
            masker.set(std::sync::Arc::new(crate::mask::Masker::new(["hunter2"])));
            tracing::info!("second");
            span.record("attempt", 2);
            tracing::info!(stream = "stdout", "third");
            // A name the span has too: the event's wins, in the span's place.
            tracing::info!(attempt = 9, "fourth");
            BATCH.with(|b| b.borrow_mut().take().unwrap())
        });
        let text = String::from_utf8(text).unwrap();
        let lines: Vec<serde_json::Map<String, Value>> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let field = |n: usize, k: &str| lines[n][k].clone();
        assert_eq!(field(0, "job_id"), "build-hunter2");
        assert_eq!(field(1, "job_id"), "build-***");
        assert_eq!(field(1, "attempt"), 1);
        assert_eq!(field(2, "attempt"), 2);
        assert_eq!(field(2, "stream"), "stdout");
        assert_eq!(field(3, "attempt"), 9);
        assert_eq!(field(3, "job_id"), "build-***");
        // In order: the spans' fields, then the event's.
        let third = text.lines().nth(2).unwrap();
        let at = |key: &str| third.find(&format!("\"{key}\":")).unwrap();
        assert!(at("ts") < at("level") && at("level") < at("msg"), "{third}");
        assert!(
            at("msg") < at("job_id") && at("job_id") < at("attempt"),
            "{third}"
        );
        assert!(at("attempt") < at("stream"), "{third}");
    }
}
