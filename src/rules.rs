//! The rules the config, the job and the secrets share: what a name, a path, a
//! registry host or an S3 location may be. This module imports nothing of the
//! crate, so everything above may use it without an import circle. [`git`]: a
//! remote's URL and a ref's name.

pub mod git;

/// Environment variables deckhand sets in a job's container itself: a job's `env`
/// may not start with these, and no secret may be exposed under them.
pub const RESERVED_ENV_PREFIXES: &[&str] = &["DECKHAND_", "AWS_CONTAINER_"];

/// Container paths the runtime or deckhand owns: nothing is mounted inside them.
pub const RESERVED_CONTAINER_PATHS: &[&str] = &["/proc", "/sys", "/dev", "/run/secrets"];

/// `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`: job ids and secret names, safe as S3 key
/// components and file names.
pub fn valid_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    (1..=128).contains(&bytes.len())
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `^[A-Za-z_][A-Za-z0-9_]*$`
pub fn valid_env_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && (bytes[0].is_ascii_alphabetic() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_')
}

/// The reserved prefix `name` starts with, if any.
pub fn reserved_env_prefix(name: &str) -> Option<&'static str> {
    RESERVED_ENV_PREFIXES
        .iter()
        .find(|p| name.starts_with(**p))
        .copied()
}

/// The environment variable a secret is exposed as: upper case, `.` and `-` as `_`.
pub fn secret_env_name(secret: &str) -> String {
    let mut name: String = secret
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    name
}

/// A path inside a container that deckhand may mount at: absolute, normalised, and
/// not one the runtime or deckhand itself owns.
pub fn check_container_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{:?} must be an absolute path", truncate(path, 64)));
    }
    if path.len() > 1024 || path.contains('\0') || path.contains(':') || path.contains(',') {
        return Err(format!("{:?} is not a usable path", truncate(path, 64)));
    }
    if path == "/" {
        return Err("must not be the root directory".into());
    }
    if path
        .split('/')
        .skip(1)
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!(
            "{path:?} must be normalised (no empty, . or .. components, no trailing /)"
        ));
    }
    if let Some(reserved) = RESERVED_CONTAINER_PATHS.iter().find(|r| is_under(path, r)) {
        return Err(format!("{path:?} is inside {reserved}, which is reserved"));
    }
    Ok(())
}

/// `path` is `dir` or inside it.
pub fn is_under(path: &str, dir: &str) -> bool {
    path == dir
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// `host[:port]` with a DNS name or IPv4 address.
pub fn valid_registry_host(text: &str) -> bool {
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (text, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    host_ok && port_ok
}

/// An object in S3, as `s3://BUCKET/KEY` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    pub key: String,
}

impl S3Location {
    /// `s3://BUCKET/KEY` with neither part empty.
    pub fn parse(url: &str) -> Option<S3Location> {
        let (bucket, key) = url.strip_prefix("s3://")?.split_once('/')?;
        (!bucket.is_empty() && !key.is_empty()).then(|| S3Location {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        })
    }
}

impl std::fmt::Display for S3Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// RFC 3339 in UTC to the second, as results and logs carry instants.
pub fn timestamp(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `bytes` random bytes from the OS, in hex: tokens and ids nobody may guess.
pub fn random_hex(bytes: usize) -> String {
    use aes_gcm::aead::rand_core::RngCore;
    let mut buffer = vec![0u8; bytes];
    aes_gcm::aead::OsRng.fill_bytes(&mut buffer);
    hex::encode(buffer)
}

/// The most a path inside a job's workdir may be, in bytes.
pub const MAX_WORKDIR_PATH_BYTES: usize = 1024;

/// A path a job names inside its workdir (an input's place, an artifact
/// pattern), as its segments with `.` and empty ones dropped; or the rule it
/// breaks. `what` says what goes there, for the `..` rule.
pub fn workdir_segments<'a>(path: &'a str, what: &str) -> Result<Vec<&'a str>, String> {
    if path.len() > MAX_WORKDIR_PATH_BYTES {
        return Err(format!("at most {MAX_WORKDIR_PATH_BYTES} bytes"));
    }
    if path.starts_with('/') {
        return Err("must be relative to the workdir, not absolute".to_owned());
    }
    if path.contains('\0') {
        return Err("contains a NUL byte".to_owned());
    }
    let segments: Vec<&str> = path
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    if segments.contains(&"..") {
        return Err(format!("must not contain `..`: {what} inside the workdir"));
    }
    Ok(segments)
}

/// At most `max_chars` characters of `text`, with `…` where it was cut.
pub fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

/// `text` made safe to store and to pass on where it came from input: every
/// control character and Unicode noncharacter escaped (`\u{0}`; SQS refuses them
/// in a message attribute, and a NUL cuts some logs short), then cut to at most
/// `max_bytes` bytes with `…`.
pub fn bounded_text(text: &str, max_bytes: usize) -> String {
    let mut escaped = String::with_capacity(text.len().min(max_bytes + 8));
    for c in text.chars() {
        if c.is_control() || is_noncharacter(c) {
            escaped.extend(c.escape_unicode());
        } else {
            escaped.push(c);
        }
        // Enough to know it must be cut; the rest is never read.
        if escaped.len() > max_bytes {
            break;
        }
    }
    if escaped.len() <= max_bytes {
        return escaped;
    }
    let mut end = max_bytes.saturating_sub('…'.len_utf8());
    while !escaped.is_char_boundary(end) {
        end -= 1;
    }
    escaped.truncate(end);
    escaped.push('…');
    escaped
}

fn is_noncharacter(c: char) -> bool {
    let c = c as u32;
    (0xFDD0..=0xFDEF).contains(&c) || (c & 0xFFFE) == 0xFFFE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_text_escapes_and_cuts() {
        assert_eq!(
            bounded_text("a\0b\nc\u{FFFE}", 100),
            "a\\u{0}b\\u{a}c\\u{fffe}"
        );
        assert_eq!(bounded_text("plain", 100), "plain");
        let long = bounded_text(&"k".repeat(200_000), 1024);
        assert!(long.len() <= 1024 && long.ends_with('…'), "{}", long.len());
        // Never cuts inside a character.
        let wide = bounded_text(&"é".repeat(1000), 101);
        assert!(wide.len() <= 101 && wide.ends_with('…'));
        // Exactly the bound is kept whole.
        assert_eq!(bounded_text(&"x".repeat(1024), 1024), "x".repeat(1024));
    }

    #[test]
    fn secret_env_names() {
        assert_eq!(secret_env_name("npm-token"), "NPM_TOKEN");
        assert_eq!(secret_env_name("db.password"), "DB_PASSWORD");
        assert_eq!(secret_env_name("1st"), "_1ST");
    }

    #[test]
    fn s3_locations() {
        let at = S3Location::parse("s3://bucket/a/b.tar.gz").unwrap();
        assert_eq!(
            (at.bucket.as_str(), at.key.as_str()),
            ("bucket", "a/b.tar.gz")
        );
        assert_eq!(at.to_string(), "s3://bucket/a/b.tar.gz");
        for bad in [
            "s3://bucket",
            "s3:///key",
            "s3://bucket/",
            "https://b/k",
            "",
        ] {
            assert_eq!(S3Location::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn reserved_prefixes() {
        assert_eq!(reserved_env_prefix("DECKHAND_X"), Some("DECKHAND_"));
        assert_eq!(
            reserved_env_prefix("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
            Some("AWS_CONTAINER_")
        );
        assert_eq!(reserved_env_prefix("AWS_REGION"), None);
    }

    #[test]
    fn container_paths() {
        assert!(check_container_path("/work").is_ok());
        assert!(check_container_path("work").is_err());
        assert!(check_container_path("/run/secrets/x").is_err());
        assert!(check_container_path("/a/../b").is_err());
        assert!(check_container_path("/").is_err());
    }
}
