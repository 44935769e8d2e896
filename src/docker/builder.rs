//! The image builder's side of Docker: its hardening (the capabilities buildah
//! needs and its seccomp profile), and the images that cross into and out of it
//! as `docker save` archives. The builder has no network: its bases come in as
//! archives the engine saved, its image goes out as one the engine loads and
//! pushes with the registry's credentials, which never enter the builder.

use std::path::Path;

use bollard::query_parameters::{ImportImageOptions, PushImageOptions, TagImageOptions};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::{Docker, DockerError, RegistryAuth};

/// The builder's seccomp profile, shipped in the binary. Docker takes it inline
/// (`seccomp=<JSON>`), so no file need exist on the host.
pub const SECCOMP_PROFILE: &str = include_str!("builder-seccomp.json");

/// What buildah, as root of its container, needs to make a user namespace with
/// the full map and run `RUN` steps in it under chroot isolation: switch ids
/// (SETUID, SETGID, and SETFCAP to write uid 0's map), chroot into the stage
/// (SYS_CHROOT), and unpack layers as their owners wrote them (CHOWN, FOWNER,
/// DAC_OVERRIDE). Not SYS_ADMIN: vfs storage needs no mounts of its own.
pub const BUILDER_CAPABILITIES: [&str; 7] = [
    "SETUID",
    "SETGID",
    "SYS_CHROOT",
    "CHOWN",
    "FOWNER",
    "DAC_OVERRIDE",
    "SETFCAP",
];

/// The syscalls the profile must deny: `deckhand check` fails if it allows any.
pub const DENIED_SYSCALLS: [&str; 12] = [
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "ptrace",
    "perf_event_open",
    "process_vm_readv",
    "process_vm_writev",
    "kexec_load",
    "init_module",
    "open_by_handle_at",
    "pivot_root",
];

/// Whether `profile` parses and denies every syscall of [`DENIED_SYSCALLS`]:
/// its default action is an error and no `SCMP_ACT_ALLOW` rule names one. The
/// problem found, if any.
pub fn check_seccomp(profile: &str) -> Result<usize, String> {
    let value: serde_json::Value =
        serde_json::from_str(profile).map_err(|e| format!("not JSON: {e}"))?;
    let default = value["defaultAction"].as_str().unwrap_or_default();
    if !default.starts_with("SCMP_ACT_ERRNO") && !default.starts_with("SCMP_ACT_KILL") {
        return Err(format!(
            "defaultAction is {default:?}; an allow list must fail what it does not name"
        ));
    }
    let rules = value["syscalls"].as_array().ok_or("has no syscalls list")?;
    let mut allowed = 0;
    for rule in rules {
        if rule["action"].as_str() != Some("SCMP_ACT_ALLOW") {
            continue;
        }
        for name in rule["names"].as_array().into_iter().flatten() {
            let name = name.as_str().unwrap_or_default();
            if DENIED_SYSCALLS.contains(&name) {
                return Err(format!("allows {name}, which the builder must not have"));
            }
            allowed += 1;
        }
    }
    Ok(allowed)
}

impl Docker {
    /// `docker save` of `image` into the file `to`.
    pub async fn save_image(&self, image: &str, to: &Path) -> Result<(), DockerError> {
        let failed = |message: String| DockerError::Transfer {
            what: format!("save {image} to {}", to.display()),
            message,
        };
        let mut file = tokio::fs::File::create(to)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let mut stream = self.client.export_image(image);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| failed(e.to_string()))?;
            file.write_all(&chunk)
                .await
                .map_err(|e| failed(e.to_string()))?;
        }
        file.flush().await.map_err(|e| failed(e.to_string()))
    }

    /// `docker load` of the archive open in `file` (read from `from`).
    pub async fn load_image(&self, file: std::fs::File, from: &Path) -> Result<(), DockerError> {
        let failed = |message: String| DockerError::Transfer {
            what: format!("load {}", from.display()),
            message,
        };
        let file = tokio::fs::File::from_std(file);
        let body = tokio_util::io::ReaderStream::new(file);
        let options = ImportImageOptions {
            quiet: true,
            ..Default::default()
        };
        let mut progress = self.client.import_image_stream(options, body, None);
        while let Some(step) = progress.next().await {
            let info = step.map_err(|e| failed(e.to_string()))?;
            if let Some(detail) = info.error_detail {
                return Err(failed(detail.message.unwrap_or_default()));
            }
        }
        Ok(())
    }

    /// Names the image `image` also `repository:tag`.
    pub async fn tag_image(
        &self,
        image: &str,
        repository: &str,
        tag: &str,
    ) -> Result<(), DockerError> {
        let options = TagImageOptions {
            repo: Some(repository.to_owned()),
            tag: Some(tag.to_owned()),
        };
        self.client
            .tag_image(image, Some(options))
            .await
            .map_err(|e| DockerError::Transfer {
                what: format!("tag {image} as {repository}:{tag}"),
                message: e.to_string(),
            })
    }

    /// Pushes `repository:tag` with `auth`; the registry's digest of it. A
    /// refusal is [`DockerError::Push`], with the registry's reason.
    pub async fn push_image(
        &self,
        registry: &str,
        repository: &str,
        tag: &str,
        auth: Option<&RegistryAuth>,
    ) -> Result<Option<String>, DockerError> {
        let pushed = format!("{repository}:{tag}");
        let options = PushImageOptions {
            tag: Some(tag.to_owned()),
            ..Default::default()
        };
        let credentials = auth.map(|auth| bollard::auth::DockerCredentials {
            username: Some(auth.username.clone()),
            password: Some(auth.password.clone()),
            serveraddress: Some(registry.to_owned()),
            ..Default::default()
        });
        let mut progress = self
            .client
            .push_image(repository, Some(options), credentials);
        let mut digest = None;
        while let Some(step) = progress.next().await {
            let info = step.map_err(|e| DockerError::Push {
                image: pushed.clone(),
                message: e.to_string(),
            })?;
            if let Some(detail) = info.error_detail {
                return Err(DockerError::Push {
                    image: pushed,
                    message: detail.message.unwrap_or_else(|| "unknown error".into()),
                });
            }
            // The last status line: "<tag>: digest: sha256:… size: N".
            if let Some(found) = info
                .status
                .as_deref()
                .and_then(|s| s.split_once("digest: "))
                .and_then(|(_, rest)| rest.split_whitespace().next())
            {
                digest = Some(found.to_owned());
            }
        }
        Ok(digest)
    }

    /// The id of the local image `image`; `None` when the engine lacks it.
    pub async fn image_id(&self, image: &str) -> Result<Option<String>, DockerError> {
        match self.client.inspect_image(image).await {
            Ok(inspect) => Ok(inspect.id),
            Err(e) if super::is_not_found(&e) => Ok(None),
            Err(source) => Err(DockerError::InspectImage {
                image: image.to_owned(),
                source,
            }),
        }
    }

    /// The size in bytes of the local image `image`.
    pub async fn image_bytes(&self, image: &str) -> Result<u64, DockerError> {
        let inspect =
            self.client
                .inspect_image(image)
                .await
                .map_err(|source| DockerError::InspectImage {
                    image: image.to_owned(),
                    source,
                })?;
        Ok(inspect.size.unwrap_or(0).max(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::{SECCOMP_PROFILE, check_seccomp};

    #[test]
    fn the_shipped_profile_denies_what_it_must() {
        let allowed = check_seccomp(SECCOMP_PROFILE).expect("the shipped profile passes");
        assert!(allowed > 300, "{allowed}");
    }

    #[test]
    fn a_profile_that_allows_a_denied_call_or_everything_fails() {
        let permissive = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[]}"#;
        assert!(
            check_seccomp(permissive)
                .unwrap_err()
                .contains("defaultAction")
        );
        let keyctl = r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read","keyctl"],"action":"SCMP_ACT_ALLOW"}]}"#;
        assert_eq!(
            check_seccomp(keyctl).unwrap_err(),
            "allows keyctl, which the builder must not have"
        );
        assert!(check_seccomp("{").unwrap_err().starts_with("not JSON"));
    }
}
