//! Masks secret values, as written, base64-encoded (whole, or wrapped at 76
//! columns as `base64` prints it), JSON-escaped and URL-encoded, in everything
//! deckhand writes: the job's log, its result, the agent's own stdout and the
//! CLI's errors.

use std::borrow::Cow;
use std::sync::{Arc, RwLock};

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

pub const MASK: &str = "***";

/// Shorter values are not masked: masking every "a" or "ok" would destroy the log
/// and reveal the value anyway by where the stars appear.
pub const MIN_MASKED_LEN: usize = 4;
/// The column `base64` (coreutils, busybox) and MIME wrap at.
const BASE64_WRAP: usize = 76;
/// The shortest piece of a wrapped encoding masked on its own: the last line of
/// one is often only a few characters, which would mask unrelated text.
const MIN_WRAPPED_PIECE: usize = 16;

/// Finds every form of every secret in one pass over a line.
#[derive(Debug)]
pub struct Masker {
    matcher: Option<AhoCorasick>,
}

impl Masker {
    /// Masks `values` and their base64 forms. Multi-line values (a key file) are
    /// masked line by line, since logs are read a line at a time.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Masker {
        let mut patterns: Vec<String> = Vec::new();
        for value in values {
            let trimmed = value.trim_end_matches('\n');
            let mut forms = vec![
                trimmed.to_owned(),
                STANDARD.encode(trimmed),
                STANDARD.encode(format!("{trimmed}\n")),
                URL_SAFE_NO_PAD.encode(trimmed),
            ];
            // base64 of a value often ends in padding that a longer encoding does
            // not have; the unpadded body still identifies it.
            forms.push(STANDARD.encode(trimmed).trim_end_matches('=').to_owned());
            forms.extend(trimmed.lines().map(|l| l.trim().to_owned()));
            forms.extend(escaped_forms(trimmed));
            patterns.extend(forms.into_iter().filter(|f| f.len() >= MIN_MASKED_LEN));
            patterns.extend(wrapped_base64(trimmed));
        }
        patterns.sort();
        patterns.dedup();
        let matcher = (!patterns.is_empty()).then(|| {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&patterns)
                .expect("literal patterns always build")
        });
        Masker { matcher }
    }

    pub fn none() -> Masker {
        Masker { matcher: None }
    }

    pub fn mask<'t>(&self, text: &'t str) -> Cow<'t, str> {
        match &self.matcher {
            Some(matcher) if matcher.is_match(text) => {
                Cow::Owned(matcher.replace_all(text, &[MASK].repeat(matcher.patterns_len())))
            }
            _ => Cow::Borrowed(text),
        }
    }
}

/// The value as it appears inside a JSON string (quotes, backslashes, newlines
/// escaped) and URL-encoded (a password in a URL), where those differ from it.
fn escaped_forms(value: &str) -> Vec<String> {
    let json = serde_json::to_string(value).expect("a string always serialises");
    let json = json[1..json.len() - 1].to_owned();
    let url: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
    let url_spaces = url.replace('+', "%20");
    [json, url, url_spaces]
        .into_iter()
        .filter(|form| form != value)
        .collect()
}

/// The lines `base64` prints for the value (with and without a trailing
/// newline, as `echo` adds one), when its encoding is longer than one line:
/// each line of the output is masked on its own, as the log is read.
fn wrapped_base64(value: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    for encoded in [
        STANDARD.encode(value),
        STANDARD.encode(format!("{value}\n")),
    ] {
        if encoded.len() <= BASE64_WRAP {
            continue;
        }
        pieces.extend(
            encoded
                .as_bytes()
                .chunks(BASE64_WRAP)
                .map(|line| String::from_utf8_lossy(line).into_owned())
                .filter(|line| line.len() >= MIN_WRAPPED_PIECE),
        );
    }
    pieces
}

/// The masker the log layer applies to every line, set once secrets are loaded.
#[derive(Clone, Debug, Default)]
pub struct SharedMasker(Arc<RwLock<Option<Arc<Masker>>>>);

impl SharedMasker {
    pub fn set(&self, masker: Arc<Masker>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(masker);
    }

    pub fn get(&self) -> Option<Arc<Masker>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_plain_and_base64_forms() {
        let masker = Masker::new(["hunter22-secret", "tok"]);
        assert_eq!(masker.mask("password=hunter22-secret!"), "password=***!");
        let b64 = STANDARD.encode("hunter22-secret");
        assert_eq!(masker.mask(&format!("enc {b64} end")), "enc *** end");
        let b64_nl = STANDARD.encode("hunter22-secret\n");
        assert_eq!(masker.mask(&b64_nl), "***");
        assert_eq!(
            masker.mask("tok is too short to mask"),
            "tok is too short to mask"
        );
        assert!(matches!(masker.mask("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn masks_each_line_of_a_multi_line_value() {
        let key = "-----BEGIN KEY-----\nAAAABBBBCCCC\nDDDDEEEE\n-----END KEY-----\n";
        let masker = Masker::new([key]);
        assert_eq!(masker.mask("AAAABBBBCCCC"), "***");
        assert_eq!(masker.mask("  DDDDEEEE"), "  ***");
    }

    #[test]
    fn masks_json_escaped_and_url_encoded_forms() {
        let secret = "p@ss \"word\"\\x";
        let masker = Masker::new([secret]);
        let json = serde_json::json!({ "password": secret }).to_string();
        assert_eq!(masker.mask(&json), r#"{"password":"***"}"#);
        assert_eq!(
            masker.mask("https://u:p%40ss+%22word%22%5Cx@host/"),
            "https://u:***@host/"
        );
        assert_eq!(
            masker.mask("https://u:p%40ss%20%22word%22%5Cx@host/"),
            "https://u:***@host/"
        );
        let multi_line = "line one\nline two";
        let masker = Masker::new([multi_line]);
        assert_eq!(
            masker.mask(r#"{"key":"line one\nline two"}"#),
            r#"{"key":"***"}"#
        );
    }

    #[test]
    fn masks_base64_wrapped_at_76_columns_line_by_line() {
        let secret = "a-service-account-key-that-is-long-enough-to-wrap-0123456789-abcdefghij";
        let masker = Masker::new([secret]);
        for encoded in [
            STANDARD.encode(secret),
            STANDARD.encode(format!("{secret}\n")),
        ] {
            assert!(encoded.len() > 76);
            for line in encoded.as_bytes().chunks(76) {
                let line = std::str::from_utf8(line).unwrap();
                if line.len() >= MIN_WRAPPED_PIECE {
                    assert_eq!(masker.mask(line), "***", "{line}");
                }
            }
        }
    }

    #[test]
    fn overlapping_values_leave_nothing_behind() {
        let masker = Masker::new(["abcdef", "abcdefgh"]);
        assert_eq!(masker.mask("xabcdefghx"), "x***x");
    }
}
