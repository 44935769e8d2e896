//! Recovery at boot: the containers a previous run of this agent left (a crash,
//! `kill -9`) are removed with their workspaces, and their messages handed back at
//! once through the receipt kept in their labels, so the jobs start again elsewhere
//! without waiting for their visibility timeouts. Image builds' staging
//! folders go too.

use std::time::Duration;

use tracing::Instrument;

use crate::agent::Agent;
use crate::agent::delivery::LABEL_RECEIPT;
use crate::agent::fate::{Fate, Settlement};
use crate::aws::sqs::Received;
use crate::docker;

impl Agent {
    pub(super) async fn recover(&self) {
        // Image builds' staging folders (saved bases, the built archive) of the
        // earlier run: no job runs yet, so every one is left over.
        let builds = self.config.agent.work_dir.join("builds");
        if let Err(error) = std::fs::remove_dir_all(&builds)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(%error, dir = %builds.display(), "Could not remove image builds left by an earlier run.");
        }
        let orphans = match self.sweeper.sweep_all().await {
            Ok(orphans) => orphans,
            Err(error) => {
                tracing::warn!(%error, "Could not look for containers left by an earlier run.");
                return;
            }
        };
        for orphan in orphans {
            let job_id = orphan
                .labels
                .get(docker::LABEL_JOB_ID)
                .cloned()
                .unwrap_or_default();
            let span = tracing::info_span!("job", job_id = %job_id, container = %orphan.name);
            async {
                let Some(receipt) = orphan.labels.get(LABEL_RECEIPT) else {
                    return;
                };
                let message = Received {
                    message_id: format!("(orphan of {job_id})"),
                    receipt: receipt.clone(),
                    body: String::new(),
                    receive_count: 0,
                    sent_at_ms: None,
                    attributes: Vec::new(),
                };
                let settlement = Settlement {
                    fate: Fate::HandBack(Duration::ZERO),
                    release_claim: true,
                };
                self.settle(&message, &job_id, settlement, None).await;
            }
            .instrument(span)
            .await;
        }
    }
}
