//! `[images]`: which images jobs may run, and which are pulled ahead.

use std::collections::BTreeMap;
use std::time::Duration;

use toml::Table;

use super::reader::{Reader, Section};
use crate::image::{ImageRef, Policy};

/// Limit of one pull.
pub const DEFAULT_PULL_TIMEOUT_SECS: u64 = 600;

#[derive(Debug, Clone)]
pub struct ImagesConfig {
    /// `host[:port]` of every registry jobs may use.
    pub allowed_registries: Vec<String>,
    pub require_digest: bool,
    pub pull_timeout: Duration,
    /// Pulled before the agent reports ready.
    pub warm: Vec<ImageRef>,
    pub warm_failure: WarmFailure,
    /// Registry `host[:port]` to the name of a secret holding `user:password`.
    pub registry_auth: BTreeMap<String, String>,
    /// The image jobs' `image_build` runs in (buildah on Debian), by a name the
    /// engine holds; `None`: image builds are off.
    pub builder: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarmFailure {
    /// Exit 69: a host without its base images is not ready.
    Fail,
    Continue,
}

impl ImagesConfig {
    pub fn policy(&self) -> Policy<'_> {
        Policy {
            allowed_registries: &self.allowed_registries,
            require_digest: self.require_digest,
        }
    }

    pub(super) fn read(r: &mut Reader<'_>, root: &mut Table) -> Self {
        let mut section = r.section(root, "images");
        let allowed_registries = registries(r, &mut section);
        let require_digest = r.bool(&mut section, "require_digest", false);
        let pull_timeout = Duration::from_secs(r.int(
            &mut section,
            "pull_timeout_secs",
            1..=7200,
            DEFAULT_PULL_TIMEOUT_SECS,
        ));
        let mut images = ImagesConfig {
            allowed_registries,
            require_digest,
            pull_timeout,
            warm: Vec::new(),
            warm_failure: r.choice(
                &mut section,
                "warm_failure",
                &[
                    ("fail", WarmFailure::Fail),
                    ("continue", WarmFailure::Continue),
                ],
                WarmFailure::Fail,
            ),
            registry_auth: r
                .string_table(&mut section, "registry_auth")
                .into_iter()
                .map(|(registry, secret)| (registry.to_ascii_lowercase(), secret))
                .collect(),
            builder: r.opt_string(&mut section, "builder"),
        };
        if let Some(builder) = &images.builder
            && (builder.is_empty()
                || builder.len() > 512
                || builder.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            r.issue(
                "images.builder",
                &format!("{builder:?} is not an image name"),
            );
        }
        for image in r.strings(&mut section, "warm") {
            // Warm images obey the same policy as jobs' images.
            match ImageRef::parse(&image, images.policy()) {
                Ok(image) => images.warm.push(image),
                Err(rule) => r.issue("images.warm", &format!("{image:?}: {rule}")),
            }
        }
        for registry in images.registry_auth.keys() {
            if !images.allowed_registries.contains(registry) {
                r.issue(
                    &format!("images.registry_auth.{registry}"),
                    "names a registry that is not in images.allowed_registries",
                );
            }
        }
        r.finish(section);
        images
    }
}

/// `allowed_registries`, each a `host[:port]`, lower-cased.
fn registries(r: &mut Reader<'_>, section: &mut Section) -> Vec<String> {
    let key = section.key("allowed_registries");
    let registries = r.strings(section, "allowed_registries");
    for registry in &registries {
        if !crate::rules::valid_registry_host(registry) {
            r.issue(&key, &format!("{registry:?} is not a registry host[:port]"));
        }
    }
    registries
        .into_iter()
        .map(|r| r.to_ascii_lowercase())
        .collect()
}
