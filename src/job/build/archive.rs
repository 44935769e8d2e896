//! The builder's output, checked before the engine loads it. The archive is
//! written by a container that ran the job's `RUN` steps, so it is hostile:
//! `docker load` applies whatever names it carries (`manifest.json`'s
//! `RepoTags`, a legacy `repositories` file, an OCI index's name annotations),
//! and an archive naming the host's base image would replace it for every later
//! job on the host. It must name the build's first tag and nothing else. It is
//! opened once, without following a link, and must be a regular file within the
//! build's storage cap; the same open file is what the engine reads.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde_json::Value;

/// The most bytes read of one of the archive's name files.
const MAX_NAMES_BYTES: u64 = 1 << 20;

/// Why the archive is not loaded: a rule it breaks, or a read that failed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("the builder's archive {0}")]
    Refused(String),
    #[error("read the builder's archive {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Opens the archive at `path` and checks it names only `expected` (the
/// build's first tag, as the engine writes it: `registry/repository:tag`). The
/// file, rewound, to hand to the engine.
pub fn open_checked(path: &Path, expected: &str, max_bytes: u64) -> Result<File, ArchiveError> {
    let read = |source| ArchiveError::Read {
        path: path.display().to_string(),
        source,
    };
    let refused = |rule: String| ArchiveError::Refused(rule);
    let mut file = OpenOptions::new()
        .read(true)
        // A link (to a host file) is refused by the open itself; a FIFO would
        // block the open without O_NONBLOCK, and is refused below.
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::libc::ELOOP) {
                refused("is a link".to_owned())
            } else {
                read(e)
            }
        })?;
    let meta = file.metadata().map_err(read)?;
    if !meta.is_file() {
        return Err(refused("is not a regular file".to_owned()));
    }
    if meta.len() > max_bytes {
        return Err(refused(format!(
            "is {} bytes, over image_build_max_mb's {max_bytes}",
            meta.len()
        )));
    }
    let names = names(&mut file).map_err(|e| match e {
        Names::Io(e) => read(e),
        Names::Rule(rule) => refused(rule),
    })?;
    check_names(&names, expected).map_err(refused)?;
    file.seek(SeekFrom::Start(0)).map_err(read)?;
    Ok(file)
}

enum Names {
    Io(std::io::Error),
    Rule(String),
}

impl From<std::io::Error> for Names {
    fn from(e: std::io::Error) -> Self {
        Names::Io(e)
    }
}

/// The archive's name files, parsed.
#[derive(Debug, Default)]
struct NameFiles {
    manifest: Option<Value>,
    repositories: Option<Value>,
    index: Option<Value>,
}

fn names(file: &mut File) -> Result<NameFiles, Names> {
    let mut found = NameFiles::default();
    let mut archive = tar::Archive::new(file);
    for entry in archive.entries_with_seek()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        let slot = match path.trim_start_matches("./") {
            "manifest.json" => &mut found.manifest,
            "repositories" => &mut found.repositories,
            "index.json" => &mut found.index,
            _ => continue,
        };
        if slot.is_some() {
            return Err(Names::Rule(format!("holds {path} twice")));
        }
        if entry.size() > MAX_NAMES_BYTES {
            return Err(Names::Rule(format!(
                "holds a {path} of {} bytes, over {MAX_NAMES_BYTES}",
                entry.size()
            )));
        }
        let mut text = Vec::new();
        (&mut entry).take(MAX_NAMES_BYTES).read_to_end(&mut text)?;
        let value = serde_json::from_slice(&text)
            .map_err(|e| Names::Rule(format!("holds a {path} that is not JSON: {e}")))?;
        *slot = Some(value);
    }
    Ok(found)
}

/// Every name the files give is `expected`, and there is exactly one image.
fn check_names(found: &NameFiles, expected: &str) -> Result<(), String> {
    let manifest = found
        .manifest
        .as_ref()
        .ok_or("has no manifest.json")?
        .as_array()
        .ok_or("has a manifest.json that is not a list")?;
    if manifest.len() != 1 {
        return Err(format!(
            "lists {} images in manifest.json; a build makes one",
            manifest.len()
        ));
    }
    match &manifest[0]["RepoTags"] {
        Value::Null => {}
        Value::Array(tags) => {
            for tag in tags {
                is_expected(tag.as_str(), expected, "manifest.json's RepoTags")?;
            }
        }
        _ => return Err("has RepoTags that are not a list".to_owned()),
    }
    if let Some(repositories) = &found.repositories {
        let repositories = repositories
            .as_object()
            .ok_or("has a repositories file that is not an object")?;
        for (repository, tags) in repositories {
            let tags = tags
                .as_object()
                .ok_or("has a repositories entry that is not an object")?;
            for tag in tags.keys() {
                let name = format!("{repository}:{tag}");
                is_expected(Some(&name), expected, "the repositories file")?;
            }
        }
    }
    if let Some(index) = &found.index {
        let (_, tag) = expected.rsplit_once(':').unwrap_or((expected, ""));
        for manifest in index["manifests"].as_array().into_iter().flatten() {
            let annotations = &manifest["annotations"];
            if let Some(name) = annotations.get("io.containerd.image.name") {
                is_expected(name.as_str(), expected, "index.json")?;
            }
            if let Some(reference) = annotations.get("org.opencontainers.image.ref.name") {
                let reference = reference.as_str();
                if reference != Some(tag) {
                    is_expected(reference, expected, "index.json")?;
                }
            }
        }
    }
    Ok(())
}

fn is_expected(name: Option<&str>, expected: &str, place: &str) -> Result<(), String> {
    match name {
        Some(name) if name == expected => Ok(()),
        Some(name) => Err(format!(
            "names {:?} in {place}; it may name only {expected:?}",
            crate::rules::truncate(name, 200)
        )),
        None => Err(format!("has a name in {place} that is not a string")),
    }
}

#[cfg(test)]
mod tests;
