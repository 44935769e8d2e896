//! Images: made present (pulled when absent), resolved to what will run, listed
//! by use and removed to make room.

use std::collections::HashSet;
use std::time::Duration;

use bollard::query_parameters::{CreateImageOptions, RemoveImageOptions};
use futures_util::StreamExt;

use crate::image::ImageRef;

use super::{Docker, DockerError, is_not_found};

/// An image that is present locally, resolved to exactly what will run.
#[derive(Debug, Clone)]
pub struct LocalImage {
    /// The content-addressed image id; containers are created from this, so the
    /// digest recorded is the one that ran even if a tag moves meanwhile.
    pub id: String,
    /// `registry/repo@sha256:…` when the registry gave a digest, else the name.
    pub reference: String,
    /// The image's `USER`, if it sets one.
    pub user: Option<String>,
}

/// `user:password` for a registry, from a named secret.
#[derive(Clone)]
pub struct RegistryAuth {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RegistryAuth({}:***)", self.username)
    }
}

impl Docker {
    /// Makes `image` present locally and resolves it. A pinned digest that is already
    /// here is never pulled again; a tag is pulled only when absent (tags other than
    /// `latest` are treated as immutable releases).
    pub async fn ensure_image(
        &self,
        image: &ImageRef,
        pull_timeout: Duration,
        auth: Option<&RegistryAuth>,
    ) -> Result<LocalImage, DockerError> {
        if let Some(local) = self.resolve_image(image).await? {
            tracing::debug!(image = %image, "Image present; not pulling.");
            return Ok(local);
        }
        let started = tokio::time::Instant::now();
        tokio::time::timeout(pull_timeout, self.pull(image, auth))
            .await
            .map_err(|_| DockerError::PullTimeout {
                image: image.to_string(),
                secs: pull_timeout.as_secs(),
            })??;
        let local = self
            .resolve_image(image)
            .await?
            .ok_or_else(|| DockerError::Pull {
                image: image.to_string(),
                message: "the pull finished but the image is not present".into(),
            })?;
        tracing::info!(
            image = %image,
            digest = %local.reference,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Pulled image."
        );
        Ok(local)
    }

    async fn resolve_image(&self, image: &ImageRef) -> Result<Option<LocalImage>, DockerError> {
        let name = image.local_name();
        let inspect = match self.client.inspect_image(&name).await {
            Ok(inspect) => inspect,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(source) => {
                return Err(DockerError::InspectImage {
                    image: name,
                    source,
                });
            }
        };
        let Some(id) = inspect.id else {
            return Ok(None);
        };
        let user = inspect
            .config
            .and_then(|c| c.user)
            .filter(|u| !u.is_empty());
        let prefix = format!("{}@", image.repository());
        let reference = inspect
            .repo_digests
            .unwrap_or_default()
            .into_iter()
            .find(|d| d.starts_with(&prefix))
            .unwrap_or(name);
        Ok(Some(LocalImage {
            id,
            reference,
            user,
        }))
    }

    async fn pull(&self, image: &ImageRef, auth: Option<&RegistryAuth>) -> Result<(), DockerError> {
        let options = CreateImageOptions {
            from_image: Some(image.repository()),
            tag: Some(image.pull_reference().to_owned()),
            ..Default::default()
        };
        let credentials = auth.map(|auth| bollard::auth::DockerCredentials {
            username: Some(auth.username.clone()),
            password: Some(auth.password.clone()),
            serveraddress: Some(image.registry.clone()),
            ..Default::default()
        });
        let mut progress = self.client.create_image(Some(options), None, credentials);
        let mut last_status = String::new();
        while let Some(item) = progress.next().await {
            let info = item.map_err(|e| DockerError::Pull {
                image: image.to_string(),
                message: e.to_string(),
            })?;
            if let Some(detail) = info.error_detail {
                return Err(DockerError::Pull {
                    image: image.to_string(),
                    message: detail.message.unwrap_or_else(|| "unknown error".into()),
                });
            }
            // Layer-level progress repeats many times a second; log each change of
            // phase per layer once.
            if let Some(status) = info.status {
                let line = match &info.id {
                    Some(id) => format!("{id}: {status}"),
                    None => status,
                };
                if line != last_status
                    && !line.contains("Downloading")
                    && !line.contains("Extracting")
                {
                    tracing::info!(image = %image, progress = %line, "Pulling image.");
                    last_status = line;
                }
            }
        }
        Ok(())
    }

    /// The image ids of every container on the engine, running or not.
    pub async fn container_images(&self) -> Result<HashSet<String>, DockerError> {
        let containers = self.list_all(None, false).await?;
        Ok(containers.into_iter().filter_map(|c| c.image_id).collect())
    }

    /// Removes an image by id with all its tags. Docker refuses (409) while a
    /// container uses it.
    pub async fn remove_image(&self, id: &str) -> Result<(), DockerError> {
        let options = RemoveImageOptions {
            force: true,
            noprune: false,
            ..Default::default()
        };
        self.client
            .remove_image(id, Some(options), None)
            .await
            .map(drop)
            .map_err(|source| DockerError::RemoveImage {
                image: id.to_owned(),
                source,
            })
    }
}
