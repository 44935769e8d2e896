//! Masks secret values, as written and base64-encoded, in everything deckhand
//! writes: the job's log, its result, and the agent's own stdout.

use std::borrow::Cow;
use std::sync::{Arc, RwLock};

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

pub const MASK: &str = "***";

/// Shorter values are not masked: masking every "a" or "ok" would destroy the log
/// and reveal the value anyway by where the stars appear.
pub const MIN_MASKED_LEN: usize = 4;

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
            patterns.extend(forms.into_iter().filter(|f| f.len() >= MIN_MASKED_LEN));
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
    fn overlapping_values_leave_nothing_behind() {
        let masker = Masker::new(["abcdef", "abcdefgh"]);
        assert_eq!(masker.mask("xabcdefghx"), "x***x");
    }
}
