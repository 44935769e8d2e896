//! ECR's scan findings as an admission check: for an image in an ECR registry
//! (or a host `admission.ecr.registries` names as one), `DescribeImageScanFindings`
//! for its digest; a finding at or above the profile's `max_severity` denies,
//! and with `require_scan` so does no finished scan. ECR not answering is a
//! failure under `admission.fail`, as the webhook's is.

use std::fmt::Write as _;
use std::time::Duration;

use tokio::time::Instant;

use super::cache::Decisions;
use super::{AdmissionError, Ask, By, Verdict, failed, verdict};
use crate::aws::ecr::{EcrError, Findings, Scan, registry_of, scan_findings};
use crate::config::{AdmissionConfig, AdmissionFail, EcrRule, Severity};
use crate::image::ImageRef;
use crate::job::spec::MAX_REASON_BYTES;

/// Why ECR gave no decision on an image.
#[derive(Debug, thiserror::Error)]
pub enum EcrFailure {
    #[error(transparent)]
    Call(#[from] EcrError),
    #[error(
        "DescribeImageScanFindings {repository}@{digest}: no answer within admission.timeout_ms = {ms}"
    )]
    Timeout {
        repository: String,
        digest: String,
        ms: u128,
    },
    /// An answer that is not about the image asked for: it cannot decide.
    #[error("DescribeImageScanFindings {repository}@{digest}: {why}")]
    Answer {
        repository: String,
        digest: String,
        why: String,
    },
}

/// The ECR client and its cache of decisions; shared by every job.
pub struct EcrScans {
    client: aws_sdk_ecr::Client,
    timeout: Duration,
    decisions: Decisions,
}

/// What ECR's answer makes of the image.
#[derive(Debug, PartialEq, Eq)]
enum Judged {
    Allow(String),
    Deny(String),
    /// The answer is not one to decide on (`why`).
    Unusable(String),
}

impl EcrScans {
    pub fn new(client: aws_sdk_ecr::Client, config: &AdmissionConfig) -> EcrScans {
        EcrScans {
            client,
            timeout: config.timeout,
            decisions: Decisions::new(config.cache),
        }
    }

    /// ECR's decision on `image` (what `ask` names), from the cache when fresh.
    pub async fn check(
        &self,
        rule: EcrRule<'_>,
        fail: AdmissionFail,
        ask: &Ask<'_>,
        image: &ImageRef,
        registry_digest: Option<&str>,
    ) -> Verdict {
        let Some(registry) = registry_of(&image.registry, rule.registries) else {
            let reason = format!(
                "{} is not an ECR registry (nor in admission.ecr.registries): not asked",
                image.registry
            );
            return verdict(true, By::Ecr, Some(reason), 0, ask);
        };
        // Without the registry's digest (`ask.digest` is then the image id,
        // which ECR never saw) there is nothing to look the scan up by.
        let Some(digest) = registry_digest else {
            let (allowed, reason) = match rule.require_scan {
                true => (
                    false,
                    "no registry digest to look a scan up by; admission.ecr.require_scan is on",
                ),
                false => (
                    true,
                    "no registry digest to look a scan up by; none required",
                ),
            };
            return verdict(allowed, By::Ecr, Some(reason.to_owned()), 0, ask);
        };
        if let Some((allowed, reason)) = self.decisions.get(digest, ask.profile) {
            return verdict(allowed, By::EcrCache, reason, 0, ask);
        }
        let started = Instant::now();
        let repository = image.path.as_str();
        let asked = tokio::time::timeout(
            self.timeout,
            scan_findings(&self.client, &registry, repository, digest),
        )
        .await;
        let ms = started.elapsed().as_millis() as u64;
        let failure = |error: EcrFailure| failed(fail, AdmissionError::EcrFailed(error), ms);
        let scan = match asked {
            Err(_) => {
                return failure(EcrFailure::Timeout {
                    repository: repository.to_owned(),
                    digest: digest.to_owned(),
                    ms: self.timeout.as_millis(),
                });
            }
            Ok(Err(error)) => return failure(error.into()),
            Ok(Ok(scan)) => scan,
        };
        let (allowed, reason) = match judge(rule, digest, &scan) {
            Judged::Allow(reason) => (true, reason),
            Judged::Deny(reason) => (false, reason),
            Judged::Unusable(why) => {
                return failure(EcrFailure::Answer {
                    repository: repository.to_owned(),
                    digest: digest.to_owned(),
                    why,
                });
            }
        };
        let reason = crate::rules::bounded_text(&reason, MAX_REASON_BYTES);
        // A decision on a missing or unfinished scan is not kept: the scan may
        // finish any moment, and the job resubmitted then should see it.
        if finished(&scan) {
            self.decisions
                .put(digest, ask.profile, allowed, Some(reason.clone()));
        }
        verdict(allowed, By::Ecr, Some(reason), ms, ask)
    }
}

/// What `scan`, ECR's answer about `digest`, means under `rule`. Findings at or
/// above the bar deny whatever the scan's status; a severity nobody ranks
/// denies too (it cannot be shown to be below the bar); then, with
/// `require_scan`, anything but a `COMPLETE` scan denies.
fn judge(rule: EcrRule<'_>, digest: &str, scan: &Scan) -> Judged {
    let bar = rule.max_severity;
    let findings = match scan {
        Scan::Missing { code, message } if rule.require_scan => {
            return Judged::Deny(format!(
                "no scan of the image ({code}: {message}) and admission.ecr.require_scan is on"
            ));
        }
        Scan::Missing { code, .. } => {
            return Judged::Allow(format!("no scan of the image ({code}); none required"));
        }
        Scan::Found(findings) => findings,
    };
    match findings.digest.as_deref() {
        Some(answered) if answered == digest => {}
        Some(answered) => {
            return Judged::Unusable(format!("the answer is about {answered}, not this digest"));
        }
        None => return Judged::Unusable("the answer names no image digest".into()),
    }
    let above = findings.at_or_above(bar);
    if above > 0 {
        let mut why = format!(
            "{above} finding{} at or above {} ({})",
            if above == 1 { "" } else { "s" },
            bar.as_str(),
            counts(findings)
        );
        let names: Vec<&str> = (findings.worst.iter())
            .filter(|(s, _)| *s >= bar)
            .map(|(_, name)| name.as_str())
            .collect();
        if !names.is_empty() {
            let _ = write!(why, ": {}", names.join(", "));
            if (names.len() as u64) < above {
                why.push_str(", …");
            }
        }
        return Judged::Deny(why);
    }
    if let Some((name, n)) = &findings.unknown {
        return Judged::Deny(format!(
            "{n} finding{} of severity \"{name}\", which ranks nowhere between INFORMATIONAL and CRITICAL",
            if *n == 1 { "" } else { "s" }
        ));
    }
    let status = findings.status.as_deref().unwrap_or("(none)");
    if status != "COMPLETE" {
        let description = findings.description.as_deref().unwrap_or("");
        let why = format!("the scan is {status}, not COMPLETE: {description}");
        return match rule.require_scan {
            true => Judged::Deny(format!("{why}; admission.ecr.require_scan is on")),
            false => Judged::Allow(format!("{why}; none required")),
        };
    }
    Judged::Allow(format!(
        "scan COMPLETE: nothing at or above {} ({})",
        bar.as_str(),
        counts(findings)
    ))
}

/// Whether `scan` is a `COMPLETE` one, whose findings will not change.
fn finished(scan: &Scan) -> bool {
    matches!(scan, Scan::Found(f) if f.status.as_deref() == Some("COMPLETE"))
}

/// `CRITICAL 1, HIGH 2`, most severe first; `no findings` when none.
fn counts(findings: &Findings) -> String {
    let mut parts: Vec<String> = Severity::ALL
        .iter()
        .zip(findings.counts)
        .rev()
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| format!("{} {n}", s.as_str()))
        .collect();
    if findings.unranked > 0 {
        parts.push(format!("unranked {}", findings.unranked));
    }
    if parts.is_empty() {
        return "no findings".into();
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:aa";

    fn rule(bar: Severity, require_scan: bool) -> EcrRule<'static> {
        EcrRule {
            max_severity: bar,
            require_scan,
            registries: &[],
        }
    }

    fn found(counts: [u64; 5], worst: &[(Severity, &str)]) -> Scan {
        Scan::Found(Findings {
            status: Some("COMPLETE".into()),
            digest: Some(DIGEST.into()),
            counts,
            worst: worst.iter().map(|(s, n)| (*s, (*n).to_owned())).collect(),
            ..Findings::default()
        })
    }

    #[test]
    fn findings_at_or_above_the_bar_deny_and_below_allow() {
        let scan = found(
            [0, 3, 0, 2, 1],
            &[(Severity::Critical, "CVE-1"), (Severity::High, "CVE-2")],
        );
        assert_eq!(
            judge(rule(Severity::High, true), DIGEST, &scan),
            Judged::Deny(
                "3 findings at or above HIGH (CRITICAL 1, HIGH 2, LOW 3): CVE-1, CVE-2, …".into()
            )
        );
        let scan = found([0, 3, 1, 0, 0], &[]);
        assert_eq!(
            judge(rule(Severity::High, true), DIGEST, &scan),
            Judged::Allow("scan COMPLETE: nothing at or above HIGH (MEDIUM 1, LOW 3)".into())
        );
    }

    #[test]
    fn no_scan_denies_only_when_one_is_required() {
        let missing = Scan::Missing {
            code: "ScanNotFoundException",
            message: "not scanned".into(),
        };
        assert!(matches!(
            judge(rule(Severity::High, true), DIGEST, &missing),
            Judged::Deny(_)
        ));
        assert!(matches!(
            judge(rule(Severity::High, false), DIGEST, &missing),
            Judged::Allow(_)
        ));
        let Scan::Found(mut pending) = found([0; 5], &[]) else {
            unreachable!()
        };
        pending.status = Some("IN_PROGRESS".into());
        let pending = Scan::Found(pending);
        assert!(matches!(
            judge(rule(Severity::High, true), DIGEST, &pending),
            Judged::Deny(_)
        ));
        assert!(matches!(
            judge(rule(Severity::High, false), DIGEST, &pending),
            Judged::Allow(_)
        ));
    }

    #[test]
    fn an_unknown_severity_denies_and_a_missing_or_other_digest_cannot_decide() {
        let Scan::Found(mut odd) = found([0; 5], &[]) else {
            unreachable!()
        };
        odd.unknown = Some(("APOCALYPTIC".into(), 2));
        assert_eq!(
            judge(rule(Severity::Critical, true), DIGEST, &Scan::Found(odd.clone())),
            Judged::Deny("2 findings of severity \"APOCALYPTIC\", which ranks nowhere between INFORMATIONAL and CRITICAL".into())
        );
        odd.digest = None;
        assert_eq!(
            judge(
                rule(Severity::High, true),
                DIGEST,
                &Scan::Found(odd.clone())
            ),
            Judged::Unusable("the answer names no image digest".into())
        );
        odd.digest = Some("sha256:bb".into());
        assert!(matches!(
            judge(rule(Severity::High, true), DIGEST, &Scan::Found(odd)),
            Judged::Unusable(_)
        ));
    }
}
