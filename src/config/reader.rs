//! The reader's primitives: each takes a key from its section (its environment
//! override first), checks it, records an issue naming the key and the rule, and
//! falls back to the default, so one pass reports every problem.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;

use toml::{Table, Value};

use super::{ENV_PREFIX, Env, Issue};

#[cfg(test)]
thread_local! {
    /// Every `section.key` the reader asked for on this thread: the keys it
    /// knows, for the test that finds each in docs/config.md.
    pub(super) static TAKEN: std::cell::RefCell<std::collections::BTreeSet<String>> =
        const { std::cell::RefCell::new(std::collections::BTreeSet::new()) };
}

/// Walks the TOML table section by section, taking each known key (or its
/// environment override), recording every problem, and reporting what is left over
/// as unknown.
pub(super) struct Reader<'a> {
    pub(super) env: &'a Env,
    pub(super) issues: &'a mut Vec<Issue>,
}

/// One table being read: its dotted path and the keys not yet taken.
pub(super) struct Section {
    pub(super) path: String,
    pub(super) table: Table,
}

impl Reader<'_> {
    // --- primitives: each takes the key from the section (env first), checks it,
    // --- records an issue and falls back to the default when it is wrong.

    pub(super) fn section(&mut self, root: &mut Table, name: &str) -> Section {
        let table = match root.remove(name) {
            None => Table::new(),
            Some(Value::Table(t)) => t,
            Some(_) => {
                self.issue(name, "must be a table ([section])");
                Table::new()
            }
        };
        Section {
            path: name.to_owned(),
            table,
        }
    }

    pub(super) fn subsection(&mut self, parent: &mut Section, name: &str) -> Section {
        let path = parent.key(name);
        let table = match parent.table.remove(name) {
            Some(Value::Table(t)) => t,
            _ => {
                self.issue(&path, "must be a table");
                Table::new()
            }
        };
        Section { path, table }
    }

    /// Reports the keys nobody took.
    pub(super) fn finish(&mut self, section: Section) {
        for key in section.table.keys() {
            self.issue(&section.key(key), "unknown key");
        }
    }

    fn take(&mut self, section: &mut Section, key: &str) -> Option<Value> {
        #[cfg(test)]
        TAKEN.with(|taken| taken.borrow_mut().insert(section.key(key)));
        let from_file = section.table.remove(key);
        match self.env.get(&section.env_name(key)) {
            Some(text) => Some(env_value(&text)),
            None => from_file,
        }
    }

    /// A period in whole seconds where 0 means never: `None`.
    pub(super) fn period(
        &mut self,
        section: &mut Section,
        key: &str,
        range: RangeInclusive<u64>,
        default: u64,
    ) -> Option<std::time::Duration> {
        match self.int(section, key, range, default) {
            0 => None,
            secs => Some(std::time::Duration::from_secs(secs)),
        }
    }

    pub(super) fn int(
        &mut self,
        section: &mut Section,
        key: &str,
        range: RangeInclusive<u64>,
        default: u64,
    ) -> u64 {
        self.number(
            section,
            key,
            range,
            default,
            "a whole number",
            |value| match value {
                Value::Integer(i) => u64::try_from(i).ok(),
                Value::String(s) => s.trim().parse().ok(),
                _ => None,
            },
        )
    }

    pub(super) fn float(
        &mut self,
        section: &mut Section,
        key: &str,
        range: RangeInclusive<f64>,
        default: f64,
    ) -> f64 {
        self.number(
            section,
            key,
            range,
            default,
            "a number",
            |value| match value {
                Value::Float(f) => Some(f),
                Value::Integer(i) => Some(i as f64),
                Value::String(s) => s.trim().parse().ok(),
                _ => None,
            },
        )
    }

    /// A number in `range`; `kind` names what a value that does not parse should be.
    fn number<T: PartialOrd + fmt::Display + Copy>(
        &mut self,
        section: &mut Section,
        key: &str,
        range: RangeInclusive<T>,
        default: T,
        kind: &str,
        parse: impl FnOnce(Value) -> Option<T>,
    ) -> T {
        let full = section.key(key);
        let Some(value) = self.take(section, key) else {
            return default;
        };
        match parse(value) {
            Some(v) if range.contains(&v) => v,
            Some(v) => {
                self.issue(
                    &full,
                    &format!("{v} is out of range ({} to {})", range.start(), range.end()),
                );
                default
            }
            None => {
                self.issue(&full, &format!("must be {kind}"));
                default
            }
        }
    }

    pub(super) fn choice<T: Copy>(
        &mut self,
        section: &mut Section,
        key: &str,
        options: &[(&str, T)],
        default: T,
    ) -> T {
        let full = section.key(key);
        let Some(text) = self.opt_string(section, key) else {
            return default;
        };
        match options.iter().find(|(name, _)| *name == text) {
            Some((_, value)) => *value,
            None => {
                let names: Vec<String> = options.iter().map(|(n, _)| format!("{n:?}")).collect();
                self.issue(
                    &full,
                    &format!("{text:?} is not one of {}", names.join(", ")),
                );
                default
            }
        }
    }

    pub(super) fn bool(&mut self, section: &mut Section, key: &str, default: bool) -> bool {
        let full = section.key(key);
        match self.take(section, key) {
            None => default,
            Some(Value::Boolean(b)) => b,
            Some(Value::String(s)) if s == "true" => true,
            Some(Value::String(s)) if s == "false" => false,
            Some(_) => {
                self.issue(&full, "must be true or false");
                default
            }
        }
    }

    /// A flag a profile may leave to the pool: `None` when not given.
    pub(super) fn opt_bool(&mut self, section: &mut Section, key: &str) -> Option<bool> {
        let full = section.key(key);
        match self.take(section, key)? {
            Value::Boolean(b) => Some(b),
            Value::String(s) if s == "true" => Some(true),
            Value::String(s) if s == "false" => Some(false),
            _ => {
                self.issue(&full, "must be true or false");
                None
            }
        }
    }

    pub(super) fn opt_string(&mut self, section: &mut Section, key: &str) -> Option<String> {
        let full = section.key(key);
        match self.take(section, key) {
            None => None,
            Some(Value::String(s)) if s.trim().is_empty() => {
                self.issue(&full, "must not be empty (leave the key out instead)");
                None
            }
            Some(Value::String(s)) => Some(s),
            Some(_) => {
                self.issue(&full, "must be a string");
                None
            }
        }
    }

    /// A string where `""` means something (a profile turning a pool setting
    /// off), so it is kept rather than refused.
    pub(super) fn opt_string_or_empty(
        &mut self,
        section: &mut Section,
        key: &str,
    ) -> Option<String> {
        let full = section.key(key);
        match self.take(section, key) {
            None => None,
            Some(Value::String(s)) => Some(s.trim().to_owned()),
            Some(_) => {
                self.issue(&full, "must be a string");
                None
            }
        }
    }

    pub(super) fn opt_url(&mut self, section: &mut Section, key: &str) -> Option<String> {
        let url = self.opt_string(section, key)?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            self.issue(&section.key(key), "must be an http:// or https:// URL");
        }
        Some(url)
    }

    pub(super) fn abs_path(&mut self, section: &mut Section, key: &str, default: &str) -> PathBuf {
        match self.opt_string(section, key) {
            None => PathBuf::from(default),
            Some(p) if p.starts_with('/') => PathBuf::from(p),
            Some(p) => {
                self.issue(
                    &section.key(key),
                    &format!("{p:?} must be an absolute path"),
                );
                PathBuf::from(default)
            }
        }
    }

    pub(super) fn container_path(
        &mut self,
        section: &mut Section,
        key: &str,
        default: &str,
    ) -> String {
        match self.opt_string(section, key) {
            None => default.to_owned(),
            Some(p) => {
                if let Err(rule) = crate::rules::check_container_path(&p) {
                    self.issue(&section.key(key), &rule);
                }
                p
            }
        }
    }

    /// An IP address and a port (`example` shows one in the rule).
    pub(super) fn opt_socket_addr(
        &mut self,
        section: &mut Section,
        key: &str,
        example: &str,
    ) -> Option<SocketAddr> {
        let text = self.opt_string(section, key)?;
        match text.parse::<SocketAddr>() {
            Ok(address) => Some(address),
            Err(_) => {
                self.issue(
                    &section.key(key),
                    &format!("{text:?} must be an IP address and a port, like \"{example}\""),
                );
                None
            }
        }
    }

    /// A table of string to string (`context = { pool = "ci" }`).
    pub(super) fn string_table(
        &mut self,
        section: &mut Section,
        key: &str,
    ) -> BTreeMap<String, String> {
        let full = section.key(key);
        match self.take(section, key) {
            None => BTreeMap::new(),
            Some(Value::Table(table)) => {
                let mut out = BTreeMap::new();
                for (k, v) in table {
                    match v {
                        Value::String(s) => {
                            out.insert(k, s);
                        }
                        _ => self.issue(&format!("{full}.{k}"), "must be a string"),
                    }
                }
                out
            }
            Some(_) => {
                self.issue(&full, "must be a table of strings");
                BTreeMap::new()
            }
        }
    }

    pub(super) fn strings(&mut self, section: &mut Section, key: &str) -> Vec<String> {
        let full = section.key(key);
        match self.take(section, key) {
            None => Vec::new(),
            Some(Value::Array(items)) => {
                let mut out = Vec::new();
                for item in items {
                    match item {
                        Value::String(s) => out.push(s),
                        _ => self.issue(&full, "must be a list of strings"),
                    }
                }
                out
            }
            Some(_) => {
                self.issue(&full, "must be a list of strings");
                Vec::new()
            }
        }
    }

    /// A list of tables (`seed = [{ repo = "…", bundle = "…" }]`).
    pub(super) fn tables(&mut self, section: &mut Section, key: &str) -> Vec<Table> {
        let full = section.key(key);
        match self.take(section, key) {
            None => Vec::new(),
            Some(Value::Array(items)) if items.iter().all(Value::is_table) => items
                .into_iter()
                .filter_map(|item| match item {
                    Value::Table(table) => Some(table),
                    _ => None,
                })
                .collect(),
            Some(_) => {
                self.issue(&full, "must be a list of tables");
                Vec::new()
            }
        }
    }

    pub(super) fn issue(&mut self, key: &str, rule: &str) {
        self.issues.push(Issue {
            key: key.to_owned(),
            rule: rule.to_owned(),
        });
    }
}

impl Section {
    pub(super) fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    pub(super) fn env_name(&self, key: &str) -> String {
        let dotted = self.key(key);
        let mut name = String::from(ENV_PREFIX);
        name.extend(dotted.chars().map(|c| match c {
            '.' | '-' => '_',
            c => c.to_ascii_uppercase(),
        }));
        name
    }
}

/// An override's text is a TOML value where it parses as one (`4`, `true`,
/// `["a", "b"]`), and a plain string otherwise (`http://…`).
fn env_value(text: &str) -> Value {
    let wrapped = format!("v = {text}");
    match wrapped.parse::<Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| Value::String(text.to_owned())),
        Err(_) if text.contains(',') && !text.contains("://") => Value::Array(
            text.split(',')
                .map(|s| Value::String(s.trim().to_owned()))
                .collect(),
        ),
        Err(_) => Value::String(text.to_owned()),
    }
}
