//! The one pull path: the job's image and each of its services', pulled where
//! the engine lacks them, all cut short by the drain or the job's cancel.

use super::{Controls, Runner};
use crate::docker::LocalImage;
use crate::image::ImageRef;
use crate::job::Job;
use crate::job::admission::Admitted;
use crate::job::outcome::RunError;

/// The images a job's containers start from.
pub(super) struct Pulled {
    pub image: LocalImage,
    /// One per service, in the job's order.
    pub services: Vec<LocalImage>,
}

impl Runner {
    /// Every image `job` needs, each admitted (its record in `admitted`);
    /// `None` when a stop or a cancel came first. Only a pull (and the
    /// webhook's answer) is long enough to be worth cutting short, and dropping
    /// it only stops our reading of its progress.
    pub(super) async fn pull(
        &self,
        job: &Job,
        controls: &Controls<'_>,
        admitted: &mut Option<Admitted>,
    ) -> Result<Option<Pulled>, RunError> {
        let pulling = async {
            let image = self.ensure(&job.image).await?;
            let mut services = Vec::with_capacity(job.services.len());
            for service in &job.services {
                services.push(self.ensure(&service.image).await?);
            }
            let pulled = Pulled { image, services };
            self.admit(job, &pulled, admitted).await?;
            Ok(pulled)
        };
        tokio::select! {
            pulled = pulling => pulled.map(Some),
            () = controls.interrupted() => Ok(None),
        }
    }

    /// `image`, pulled with its registry's credentials if the engine lacks it,
    /// and recorded as used so the disk's collection takes it only when unused.
    pub(super) async fn ensure(&self, image: &ImageRef) -> Result<LocalImage, RunError> {
        let auth = self
            .secrets
            .registry_auth(&self.config.images.registry_auth, &image.registry)?;
        let local = self
            .docker
            .ensure_image(image, self.config.images.pull_timeout, auth.as_ref())
            .await?;
        if let Some(disk) = &self.disk {
            disk.used(&local.id);
        }
        Ok(local)
    }
}
