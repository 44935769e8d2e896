//! Admission between the pull and the first container: each image the job
//! runs, the job's then each service's, put to ECR's findings and the webhook
//! its profile names.

use std::sync::Arc;

use super::Runner;
use super::pull::Pulled;
use crate::docker::LocalImage;
use crate::job::Job;
use crate::job::admission::{Admission, Admitted, Ask, Kind};
use crate::job::outcome::RunError;

impl Runner {
    /// Jobs' images are put to `admission` before they run.
    pub fn with_admission(mut self, admission: Option<Arc<Admission>>) -> Self {
        self.admission = admission;
        self
    }

    /// Checks every image of `job`; the record goes to `admitted` whatever the
    /// decision, so a refused job's result says why. Stops at the first refusal.
    pub(super) async fn admit(
        &self,
        job: &Job,
        pulled: &Pulled,
        admitted: &mut Option<Admitted>,
    ) -> Result<(), RunError> {
        let (Some(admission), Some(rule)) =
            (&self.admission, self.config.admission_for(&job.profile))
        else {
            return Ok(());
        };
        let image = job.image.to_string();
        let asked = ask(job, Kind::Job, None, &image, &pulled.image);
        let verdict = admission
            .admit(rule, &asked, &job.image, registry_digest(&pulled.image))
            .await;
        let record = admitted.insert(Admitted {
            job: verdict.checked,
            services: Default::default(),
            images: Default::default(),
        });
        if let Some(refusal) = verdict.refusal {
            return Err(refusal.into());
        }
        for (service, local) in job.services.iter().zip(&pulled.services) {
            let image = service.image.to_string();
            let asked = ask(job, Kind::Service, Some(&service.name), &image, local);
            let verdict = admission
                .admit(rule, &asked, &service.image, registry_digest(local))
                .await;
            record
                .services
                .insert(service.name.clone(), verdict.checked);
            if let Some(refusal) = verdict.refusal {
                return Err(refusal.into());
            }
        }
        Ok(())
    }
}

impl Runner {
    /// `admitted` with every reason masked: a webhook may echo what it was sent,
    /// the bearer token included.
    pub(super) fn masked(&self, admitted: Option<Admitted>) -> Option<Admitted> {
        let mut admitted = admitted?;
        let checks = std::iter::once(&mut admitted.job)
            .chain(admitted.services.values_mut())
            .chain(admitted.images.values_mut());
        for checked in checks {
            checked.each_reason(&mut |reason| *reason = self.masker.mask(reason).into_owned());
        }
        Some(admitted)
    }
}

/// What the webhook is asked about one of `job`'s images.
fn ask<'a>(
    job: &'a Job,
    kind: Kind,
    name: Option<&'a str>,
    image: &'a str,
    local: &'a LocalImage,
) -> Ask<'a> {
    Ask {
        image,
        digest: digest(local),
        job_id: &job.id,
        profile: &job.profile,
        kind,
        name,
    }
}

/// The digest the registry gave (`repo@sha256:…`), else the content-addressed
/// image id: either names exactly what will run.
fn digest(local: &LocalImage) -> &str {
    registry_digest(local).unwrap_or(local.id.as_str())
}

/// The digest the registry gave, what ECR knows the image by.
fn registry_digest(local: &LocalImage) -> Option<&str> {
    local.reference.split_once('@').map(|(_, digest)| digest)
}
