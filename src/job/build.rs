//! A job's `image_build`: a Dockerfile in its workspace built into an image by a
//! builder container the agent starts, then pushed to the tags it names. What is
//! checked when the message arrives lives here (paths, tags, arguments); what
//! needs the workspace (the Dockerfile's `FROM`s, where the paths really lead)
//! is checked by [`prepare`] before the builder starts. The runner's side is
//! `job::runner::build`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{Config, Profile};
use crate::image::{ImageRef, Policy};
use crate::rules::{truncate, valid_env_name, workdir_segments};

pub mod archive;
pub mod dockerfile;

/// The most tags one build pushes.
pub const MAX_TAGS: usize = 8;
/// The most build arguments one build takes.
pub const MAX_BUILD_ARGS: usize = 64;
/// The longest build argument value.
pub const MAX_BUILD_ARG_BYTES: usize = 4096;

/// The host folder a build stages the bases, its script and the image archive
/// in (bind-mounted into the builder); the disk watchdog counts it as the job's.
pub fn staging_dir(work_dir: &Path, job_container: &str) -> PathBuf {
    work_dir.join("builds").join(job_container)
}

/// The builder container of the job container `job_container`.
pub fn builder_name(job_container: &str) -> String {
    format!("{job_container}{BUILDER_SUFFIX}")
}

/// The job container a builder container builds for.
pub fn builder_of(builder: &str) -> Option<&str> {
    builder.strip_suffix(BUILDER_SUFFIX)
}

const BUILDER_SUFFIX: &str = "-build";

/// The wire form.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageBuildSpec {
    /// The build context, relative to the workdir; default the workdir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// The Dockerfile, relative to the workdir; default `Dockerfile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub build_args: BTreeMap<String, String>,
    /// The stage to build; default the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// A build that passed the message's rules.
#[derive(Debug, Clone)]
pub struct ImageBuild {
    /// Relative to the workdir, normalised (`""`: the workdir itself).
    pub context: String,
    pub dockerfile: String,
    /// Each with a tag and no digest, in a push registry.
    pub tags: Vec<ImageRef>,
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
    /// The profile's `image_build_max_mb`, in bytes: the builder's storage.
    pub max_bytes: u64,
}

/// One image built and pushed, as the result records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuiltImage {
    pub tag: String,
    /// The registry's digest of the pushed manifest.
    pub digest: Option<String>,
    pub bytes: u64,
    pub build_ms: u64,
    pub push_ms: u64,
}

/// Checks `spec` against the pool and the profile; every problem as
/// `(field, rule)`.
pub fn check(
    spec: &ImageBuildSpec,
    config: &Config,
    profile: &Profile,
    profile_name: &str,
) -> Result<ImageBuild, Vec<(String, String)>> {
    let mut problems = Vec::new();
    let mut push = |field: &str, rule: String| problems.push((field.to_owned(), rule));
    if config.images.builder.is_none() {
        push(
            "image_build",
            "image builds are off on this pool (images.builder is not set)".to_owned(),
        );
    }
    let context = relative(spec.context.as_deref().unwrap_or("."), "the build context")
        .map_err(|rule| push("image_build.context", rule))
        .unwrap_or_default();
    let dockerfile = match relative(
        spec.dockerfile.as_deref().unwrap_or("Dockerfile"),
        "the Dockerfile",
    ) {
        Ok(path) if path.is_empty() => {
            push("image_build.dockerfile", "names no file".to_owned());
            path
        }
        Ok(path) => path,
        Err(rule) => {
            push("image_build.dockerfile", rule);
            String::new()
        }
    };
    let tags = tags(&spec.tags, profile, profile_name, &mut push);
    if spec.build_args.len() > MAX_BUILD_ARGS {
        push(
            "image_build.build_args",
            format!(
                "{} arguments; at most {MAX_BUILD_ARGS}",
                spec.build_args.len()
            ),
        );
    }
    build_args(&spec.build_args, &mut push);
    if let Some(target) = &spec.target
        && !dockerfile::valid_stage_name(target)
    {
        push(
            "image_build.target",
            format!(
                "{:?} must match ^[a-z][a-z0-9._-]*$ (a stage name)",
                truncate(target, 64)
            ),
        );
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(ImageBuild {
        context,
        dockerfile,
        tags,
        build_args: spec.build_args.clone(),
        target: spec.target.clone(),
        max_bytes: profile.image_build_max_mb.saturating_mul(1_000_000),
    })
}

/// Each build argument's name and value.
fn build_args(args: &BTreeMap<String, String>, push: &mut impl FnMut(&str, String)) {
    for (name, value) in args.iter().take(MAX_BUILD_ARGS + 1) {
        let field = format!("image_build.build_args.{}", truncate(name, 64));
        if !valid_env_name(name) || name.len() > 256 {
            push(
                &field,
                "a name must match ^[A-Za-z_][A-Za-z0-9_]*$, at most 256 bytes".to_owned(),
            );
        }
        if value.contains('\0') {
            push(&field, "the value contains a NUL byte".to_owned());
        } else if value.len() > MAX_BUILD_ARG_BYTES {
            push(
                &field,
                format!("the value is at most {MAX_BUILD_ARG_BYTES} bytes"),
            );
        }
    }
}

/// A path relative to the workdir, normalised; the artifacts' rules, and no
/// control character (it goes on buildah's command line).
fn relative(path: &str, what: &str) -> Result<String, String> {
    if path.chars().any(char::is_control) {
        return Err("contains a control character".to_owned());
    }
    let segments = workdir_segments(path, &format!("{what} must be"))?;
    Ok(segments.join("/"))
}

/// 1 to [`MAX_TAGS`] tags, each once, each a full reference with a tag (never
/// `latest`) and no digest, in one of the profile's `push_registries`.
fn tags(
    tags: &[String],
    profile: &Profile,
    profile_name: &str,
    push: &mut impl FnMut(&str, String),
) -> Vec<ImageRef> {
    if tags.is_empty() || tags.len() > MAX_TAGS {
        push(
            "image_build.tags",
            format!("{} tags; 1 to {MAX_TAGS}", tags.len()),
        );
        return Vec::new();
    }
    let policy = Policy {
        allowed_registries: &profile.push_registries,
        require_digest: false,
    };
    let mut parsed: Vec<ImageRef> = Vec::new();
    for (i, text) in tags.iter().enumerate() {
        let field = format!("image_build.tags[{i}]");
        match ImageRef::parse(text, policy) {
            Ok(image) if image.digest.is_some() || image.tag.is_none() => push(
                &field,
                "a tag to push names no digest (the registry gives one back)".to_owned(),
            ),
            Ok(image) if parsed.contains(&image) => push(&field, "listed twice".to_owned()),
            Ok(image) => parsed.push(image),
            Err(rule) => push(
                &field,
                rule.replace(
                    "images.allowed_registries",
                    &format!("profile {profile_name:?}'s push_registries"),
                ),
            ),
        }
    }
    parsed
}

/// Why a build did not start: the job's own doing (`rejected`, naming the field
/// and the rule), found once its workspace exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct Refused {
    pub field: String,
    pub rule: String,
}

/// What the builder is handed, checked against the workspace and the pool.
#[derive(Debug)]
pub struct Prepared {
    /// Every base the Dockerfile names, passed by the image policy.
    pub bases: Vec<ImageRef>,
    /// The context and the Dockerfile relative to the workspace's root, links
    /// resolved: the builder mounts the workspace elsewhere than the job did.
    pub context: String,
    pub dockerfile: String,
}

/// Reads the Dockerfile under `root` (the workspace volume's folder on this
/// host) and checks where `context` and `dockerfile` lead (inside the
/// workspace, through any link), then every base against the pool's policy.
pub fn prepare(build: &ImageBuild, root: &Path, config: &Config) -> Result<Prepared, Refused> {
    let refuse = |field: &str, rule: String| Refused {
        field: format!("image_build.{field}"),
        rule,
    };
    // Once: every path below is judged against the same real root.
    let root = &root
        .canonicalize()
        .map_err(|e| refuse("context", format!("the workspace: {e}")))?;
    let context = inside(root, &build.context).map_err(|rule| refuse("context", rule))?;
    if !context.is_dir() {
        return Err(refuse(
            "context",
            format!("{:?} is not a folder in the workspace", build.context),
        ));
    }
    let dockerfile = inside(root, &build.dockerfile).map_err(|rule| refuse("dockerfile", rule))?;
    let text = read_dockerfile(&dockerfile, &build.dockerfile)
        .map_err(|rule| refuse("dockerfile", rule))?;
    let parsed =
        dockerfile::parse(&text, &build.build_args).map_err(|rule| refuse("dockerfile", rule))?;
    if let Some(target) = &build.target
        && !parsed.stages.contains(target)
    {
        return Err(refuse(
            "target",
            format!("the Dockerfile has no stage {target:?}"),
        ));
    }
    let mut bases = Vec::new();
    for base in parsed.bases {
        let at = |rule: String| {
            refuse(
                "dockerfile",
                format!(
                    "line {}: {:?}: {rule}",
                    base.line,
                    truncate(&base.image, 128)
                ),
            )
        };
        let image = ImageRef::parse(&base.image, config.images.policy()).map_err(at)?;
        if image.digest.is_some() {
            // The builder gets each base by name from an archive the engine
            // saved; buildah then knows it by no registry digest, and the build
            // would fail later and less clearly.
            return Err(at(
                "a base pinned by digest is not supported yet; name it by tag".to_owned(),
            ));
        }
        bases.push(image);
    }
    let under = |path: &Path| {
        path.strip_prefix(root)
            .unwrap_or(Path::new(""))
            .to_string_lossy()
            .into_owned()
    };
    Ok(Prepared {
        bases,
        context: under(&context),
        dockerfile: under(&dockerfile),
    })
}

/// The Dockerfile at `path` (`named` so in the job), a file within
/// [`dockerfile::MAX_DOCKERFILE_BYTES`].
fn read_dockerfile(path: &Path, named: &str) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{named:?}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{named:?} is not a file"));
    }
    if meta.len() > dockerfile::MAX_DOCKERFILE_BYTES as u64 {
        return Err(format!(
            "{} bytes; at most {}",
            meta.len(),
            dockerfile::MAX_DOCKERFILE_BYTES
        ));
    }
    std::fs::read(path).map_err(|e| format!("{named:?}: {e}"))
}

/// `relative` under `root` (a real path), every link resolved, still under `root`.
fn inside(root: &Path, relative: &str) -> Result<PathBuf, String> {
    let path = root.join(relative);
    let real = path
        .canonicalize()
        .map_err(|_| format!("{relative:?} is not in the workspace"))?;
    if !real.starts_with(root) {
        return Err(format!("{relative:?} leads out of the workspace (a link)"));
    }
    Ok(real)
}

#[cfg(test)]
mod tests;
