//! Image references and the pool's image policy: only the internal registries, never
//! `latest`, never an unpinned name.

use std::fmt;

use crate::rules::valid_registry_host;

/// What the pool allows (`images.allowed_registries`, `images.require_digest`).
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    pub allowed_registries: &'a [String],
    pub require_digest: bool,
}

/// A parsed `host[:port]/repo[:tag][@sha256:<hex>]` reference that passed the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `host[:port]`, lower-cased.
    pub registry: String,
    /// The path inside the registry (`ci/rust`).
    pub path: String,
    pub tag: Option<String>,
    /// `sha256:<64 hex>`.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses `text` and applies `policy`; the error is the rule that was broken,
    /// worded for the person who wrote the job.
    pub fn parse(text: &str, policy: Policy<'_>) -> Result<ImageRef, String> {
        let image = Self::parse_syntax(text)?;
        if !policy.allowed_registries.contains(&image.registry) {
            return Err(format!(
                "registry {:?} is not allowed (images.allowed_registries: {})",
                image.registry,
                if policy.allowed_registries.is_empty() {
                    "none configured".to_owned()
                } else {
                    policy.allowed_registries.join(", ")
                }
            ));
        }
        if policy.require_digest && image.digest.is_none() {
            return Err(format!(
                "{text:?} is not pinned by digest and this pool requires one (images.require_digest); \
                 use {}/{}@sha256:<digest>",
                image.registry, image.path
            ));
        }
        Ok(image)
    }

    fn parse_syntax(text: &str) -> Result<ImageRef, String> {
        if text.is_empty() {
            return Err("must not be empty".into());
        }
        if text.len() > 512 || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("{text:?} is not an image reference"));
        }
        let (name, digest) = match text.split_once('@') {
            Some((name, digest)) => (name, Some(parse_digest(digest)?)),
            None => (text, None),
        };
        let Some((registry, rest)) = name.split_once('/') else {
            return Err(format!(
                "{text:?} names no registry; write it as <registry>/<repository>:<tag>"
            ));
        };
        if !looks_like_registry(registry) {
            return Err(format!(
                "{text:?} names no registry (\"{registry}\" is a Docker Hub namespace); \
                 write it as <registry>/<repository>:<tag>"
            ));
        }
        if !valid_registry_host(registry) {
            return Err(format!("registry {registry:?} is not a valid host[:port]"));
        }
        // The tag is after the last ':' of the final path component only.
        let (path, tag) = match rest.rsplit_once(':') {
            Some((path, tag)) if !tag.contains('/') => (path, Some(tag)),
            _ => (rest, None),
        };
        if !valid_repository_path(path) {
            return Err(format!(
                "repository {path:?} is not valid: lower-case letters, digits and . _ - separated by /"
            ));
        }
        if let Some(tag) = tag {
            if !valid_tag(tag) {
                return Err(format!(
                    "tag {tag:?} is not valid: 1 to 128 of [A-Za-z0-9_.-], not starting with . or -"
                ));
            }
            if tag.eq_ignore_ascii_case("latest") {
                return Err("tag \"latest\" is not allowed; pin a version or a digest".into());
            }
        } else if digest.is_none() {
            return Err(format!(
                "{text:?} has no tag (Docker would use \"latest\"); pin a version or a digest"
            ));
        }
        Ok(ImageRef {
            registry: registry.to_ascii_lowercase(),
            path: path.to_owned(),
            tag: tag.map(str::to_owned),
            digest,
        })
    }

    /// `registry/path`, the name without tag or digest.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.registry, self.path)
    }

    /// What to ask the registry for: the digest when pinned (a tag could have moved),
    /// the tag otherwise. Never empty: an empty tag makes Docker pull every tag.
    pub fn pull_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .expect("parse guarantees a tag or a digest")
    }

    /// The name Docker knows the pulled image by locally.
    pub fn local_name(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => format!("{}@{digest}", self.repository()),
            (None, Some(tag)) => format!("{}:{tag}", self.repository()),
            (None, None) => unreachable!("parse guarantees a tag or a digest"),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repository())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

fn parse_digest(text: &str) -> Result<String, String> {
    let hex = text
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("digest {text:?} is not valid: expected sha256:<64 hex digits>"))?;
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!(
            "digest {text:?} is not valid: expected sha256:<64 lower-case hex digits>"
        ));
    }
    Ok(text.to_owned())
}

/// Docker's own rule: the first component is a registry if it has a `.` or a `:`, or
/// is `localhost`. Anything else would silently go to Docker Hub.
fn looks_like_registry(component: &str) -> bool {
    component.contains('.') || component.contains(':') || component == "localhost"
}

fn valid_repository_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 255
        && path.split('/').all(|component| {
            let bytes = component.as_bytes();
            !bytes.is_empty()
                && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
                && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
                && bytes.iter().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
        })
}

fn valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && !matches!(bytes[0], b'.' | b'-')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    const REGISTRIES: &[&str] = &["registry.internal", "127.0.0.1:5000"];

    fn policy(require_digest: bool) -> Policy<'static> {
        static ALLOWED: std::sync::LazyLock<Vec<String>> =
            std::sync::LazyLock::new(|| REGISTRIES.iter().map(|r| r.to_string()).collect());
        Policy {
            allowed_registries: &ALLOWED,
            require_digest,
        }
    }

    fn parse(text: &str) -> Result<ImageRef, String> {
        ImageRef::parse(text, policy(false))
    }

    #[test]
    fn accepts_tag_digest_and_both() {
        let tagged = parse("registry.internal/ci/rust:1.83").unwrap();
        assert_eq!(tagged.repository(), "registry.internal/ci/rust");
        assert_eq!(tagged.pull_reference(), "1.83");
        assert_eq!(tagged.local_name(), "registry.internal/ci/rust:1.83");

        let pinned = parse(&format!("127.0.0.1:5000/ci/busybox@{DIGEST}")).unwrap();
        assert_eq!(pinned.registry, "127.0.0.1:5000");
        assert_eq!(pinned.tag, None);
        assert_eq!(pinned.pull_reference(), DIGEST);

        let both = parse(&format!("registry.internal/ci/rust:1.83@{DIGEST}")).unwrap();
        assert_eq!(both.tag.as_deref(), Some("1.83"));
        assert_eq!(both.pull_reference(), DIGEST, "a digest wins over a tag");
        assert_eq!(
            both.to_string(),
            format!("registry.internal/ci/rust:1.83@{DIGEST}")
        );
    }

    #[test]
    fn refuses_latest_in_any_case() {
        for text in [
            "registry.internal/ci/rust:latest",
            "registry.internal/ci/rust:LATEST",
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains("\"latest\" is not allowed"), "{err}");
        }
    }

    #[test]
    fn refuses_a_missing_tag() {
        let err = parse("registry.internal/ci/rust").unwrap_err();
        assert!(err.contains("has no tag"), "{err}");
    }

    #[test]
    fn refuses_docker_hub_names() {
        for text in ["ubuntu:22.04", "library/ubuntu:22.04", "rust/ci:1"] {
            let err = parse(text).unwrap_err();
            assert!(err.contains("names no registry"), "{text}: {err}");
        }
    }

    #[test]
    fn refuses_foreign_registries() {
        let err = parse("ghcr.io/acme/tool:1.0").unwrap_err();
        assert!(err.contains("registry \"ghcr.io\" is not allowed"), "{err}");
        let err = parse("127.0.0.1:5001/ci/busybox:1").unwrap_err();
        assert!(
            err.contains("not allowed"),
            "a different port is a different registry: {err}"
        );
    }

    #[test]
    fn require_digest_refuses_tags() {
        let err = ImageRef::parse("registry.internal/ci/rust:1.83", policy(true)).unwrap_err();
        assert!(err.contains("images.require_digest"), "{err}");
        assert!(
            ImageRef::parse(&format!("registry.internal/ci/rust@{DIGEST}"), policy(true)).is_ok()
        );
    }

    #[test]
    fn refuses_malformed_parts() {
        let cases = [
            ("registry.internal/ci/rust@sha256:abc", "digest"),
            ("registry.internal/ci/rust@md5:0123", "digest"),
            ("registry.internal/CI/Rust:1", "repository"),
            ("registry.internal/ci/rust:-1", "tag"),
            ("registry.internal/ci//rust:1", "repository"),
            ("registry.internal/ci/rust:1 ", "not an image reference"),
            ("", "must not be empty"),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn registry_hosts() {
        assert!(valid_registry_host("registry.internal"));
        assert!(valid_registry_host("127.0.0.1:5000"));
        assert!(valid_registry_host("localhost:5000"));
        assert!(!valid_registry_host("registry.internal:0"));
        assert!(!valid_registry_host("registry.internal:http"));
        assert!(!valid_registry_host("-bad.host"));
        assert!(!valid_registry_host(""));
    }
}
