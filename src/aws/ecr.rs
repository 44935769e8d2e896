//! ECR's scan findings for one image (`DescribeImageScanFindings`), summed up
//! into what admission decides on. The answer is ECR's (or whatever stands at
//! the endpoint), so what is kept of it is bounded whatever it holds: a count
//! per severity, a few finding names, each text cut and escaped.

use aws_sdk_ecr::error::{DisplayErrorContext, SdkError};
use aws_sdk_ecr::operation::describe_image_scan_findings::{
    DescribeImageScanFindingsError, DescribeImageScanFindingsOutput,
};
use aws_sdk_ecr::types::{ImageIdentifier, ImageScanFindings};

use crate::config::Severity;
use crate::rules::bounded_text;

/// Findings asked for per call: the decision rests on ECR's counts, the listed
/// ones only name examples in the reason.
const PAGE: i32 = 100;
/// Finding names kept for the reason.
pub const MAX_NAMES: usize = 5;
/// Bytes kept of any one text of the answer.
const MAX_TEXT: usize = 256;

/// Where an image's repository lives in ECR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    /// The account of `<account>.dkr.ecr.…`; `None`: the caller's own.
    pub registry_id: Option<String>,
    /// The region of the host; `None`: the agent's.
    pub region: Option<String>,
}

/// The ECR registry `host` is, if it is one: `<account>.dkr.ecr[-fips].<region>
/// .amazonaws.com[.cn]`, or one of `aliases` (hosts serving this account's
/// repositories in the agent's region).
pub fn registry_of(host: &str, aliases: &[String]) -> Option<Registry> {
    if aliases.iter().any(|alias| alias == host) {
        return Some(Registry {
            registry_id: None,
            region: None,
        });
    }
    let rest = host
        .strip_suffix(".amazonaws.com")
        .or_else(|| host.strip_suffix(".amazonaws.com.cn"))?;
    let (account, rest) = rest.split_once(".dkr.")?;
    let region = rest
        .strip_prefix("ecr.")
        .or_else(|| rest.strip_prefix("ecr-fips."))?;
    let account_ok = account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit());
    let region_ok = !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    (account_ok && region_ok).then(|| Registry {
        registry_id: Some(account.to_owned()),
        region: Some(region.to_owned()),
    })
}

/// What ECR's answer says, bounded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    /// `imageScanStatus.status` (`COMPLETE`, `IN_PROGRESS`, …); `None`: absent.
    pub status: Option<String>,
    pub description: Option<String>,
    /// The digest the answer is about; `None`: it named none.
    pub digest: Option<String>,
    /// Per ranked severity (index of [`Severity::ALL`]): the larger of ECR's
    /// count and the findings listed.
    pub counts: [u64; 5],
    /// `UNDEFINED` and `UNTRIAGED`: ranked nowhere.
    pub unranked: u64,
    /// Findings of a severity nobody ranks, with the first such name.
    pub unknown: Option<(String, u64)>,
    /// The most severe of the listed findings' names, at most [`MAX_NAMES`].
    pub worst: Vec<(Severity, String)>,
    /// How many findings the answer listed.
    pub listed: usize,
}

impl Findings {
    /// How many findings are at or above `bar`.
    pub fn at_or_above(&self, bar: Severity) -> u64 {
        Severity::ALL
            .iter()
            .zip(self.counts)
            .filter(|(s, _)| **s >= bar)
            .map(|(_, n)| n)
            .sum()
    }
}

/// ECR's answer: findings, or no scan of the image to be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    Found(Findings),
    /// ECR has no scan of it: `ScanNotFoundException`, `ImageNotFoundException`
    /// or `RepositoryNotFoundException` (`code`), with ECR's message (bounded).
    Missing {
        code: &'static str,
        message: String,
    },
}

/// Why ECR gave no answer: unreachable, throttled, refused (IAM), or garbage.
#[derive(Debug, thiserror::Error)]
#[error("DescribeImageScanFindings {repository}@{digest}: {}", DisplayErrorContext(&**source))]
pub struct EcrError {
    pub repository: String,
    pub digest: String,
    pub source: Box<SdkError<DescribeImageScanFindingsError>>,
}

impl EcrError {
    /// ECR's error code (`ThrottlingException`, `AccessDeniedException`), if it
    /// answered one.
    pub fn code(&self) -> Option<&str> {
        use aws_sdk_ecr::error::ProvideErrorMetadata;
        self.source.code()
    }
}

/// The scan findings of `repository@digest` in `registry`: one page, summed up.
pub async fn scan_findings(
    client: &aws_sdk_ecr::Client,
    registry: &Registry,
    repository: &str,
    digest: &str,
) -> Result<Scan, EcrError> {
    let mut call = client
        .describe_image_scan_findings()
        .set_registry_id(registry.registry_id.clone())
        .repository_name(repository)
        .image_id(ImageIdentifier::builder().image_digest(digest).build())
        .max_results(PAGE)
        .customize();
    if let Some(region) = &registry.region {
        call = call.config_override(
            aws_sdk_ecr::config::Builder::default()
                .region(aws_sdk_ecr::config::Region::new(region.clone())),
        );
    }
    match call.send().await {
        Ok(answer) => Ok(Scan::Found(sum_up(&answer))),
        Err(error) => missing(&error).ok_or_else(|| EcrError {
            repository: repository.to_owned(),
            digest: digest.to_owned(),
            source: Box::new(error),
        }),
    }
}

/// The errors that mean "no scan of this image", as opposed to "no answer".
fn missing(error: &SdkError<DescribeImageScanFindingsError>) -> Option<Scan> {
    let service = error.as_service_error()?;
    let code = match service {
        DescribeImageScanFindingsError::ScanNotFoundException(_) => "ScanNotFoundException",
        DescribeImageScanFindingsError::ImageNotFoundException(_) => "ImageNotFoundException",
        DescribeImageScanFindingsError::RepositoryNotFoundException(_) => {
            "RepositoryNotFoundException"
        }
        _ => return None,
    };
    use aws_sdk_ecr::error::ProvideErrorMetadata;
    let message = bounded_text(service.message().unwrap_or_default(), MAX_TEXT);
    Some(Scan::Missing { code, message })
}

fn sum_up(answer: &DescribeImageScanFindingsOutput) -> Findings {
    let status = answer.image_scan_status();
    let mut findings = Findings {
        status: status
            .and_then(|s| s.status())
            .map(|s| bounded_text(s.as_str(), MAX_TEXT)),
        description: status
            .and_then(|s| s.description())
            .map(|d| bounded_text(d, MAX_TEXT)),
        digest: answer
            .image_id()
            .and_then(|id| id.image_digest())
            .map(|d| bounded_text(d, MAX_TEXT)),
        ..Findings::default()
    };
    if let Some(scan) = answer.image_scan_findings() {
        tally(&mut findings, scan);
    }
    findings
}

/// ECR's counts, raised to what the listed findings show where those are more
/// (an answer may list findings and leave the counts out).
fn tally(findings: &mut Findings, scan: &ImageScanFindings) {
    let mut counted = Tally::default();
    for (severity, n) in scan.finding_severity_counts().into_iter().flatten() {
        counted.add(severity.as_str(), u64::try_from(*n).unwrap_or(0), None);
    }
    let mut listed = Tally::default();
    let basic = scan
        .findings()
        .iter()
        .map(|f| (f.severity().map(|s| s.as_str()), f.name()));
    let enhanced = scan.enhanced_findings().iter().map(|f| {
        let id = f
            .package_vulnerability_details()
            .and_then(|d| d.vulnerability_id());
        (f.severity(), id.or(f.title()))
    });
    for (severity, name) in basic.chain(enhanced) {
        findings.listed += 1;
        listed.add(severity.unwrap_or("UNDEFINED"), 1, name);
    }
    for i in 0..Severity::ALL.len() {
        findings.counts[i] = counted.ranked[i].max(listed.ranked[i]);
    }
    findings.unranked = counted.unranked.max(listed.unranked);
    findings.unknown = match (counted.unknown, listed.unknown) {
        (Some((name, a)), Some((_, b))) => Some((name, a.max(b))),
        (one, other) => one.or(other),
    };
    findings.worst = listed.worst;
}

/// Findings by severity, as they come.
#[derive(Default)]
struct Tally {
    ranked: [u64; 5],
    unranked: u64,
    unknown: Option<(String, u64)>,
    worst: Vec<(Severity, String)>,
}

impl Tally {
    fn add(&mut self, severity: &str, n: u64, name: Option<&str>) {
        let Some(ranked) = Severity::parse(severity) else {
            if matches!(severity, "UNDEFINED" | "UNTRIAGED") {
                self.unranked = self.unranked.saturating_add(n);
            } else {
                let (_, count) = self
                    .unknown
                    .get_or_insert_with(|| (bounded_text(severity, MAX_TEXT), 0));
                *count = count.saturating_add(n);
            }
            return;
        };
        let i = Severity::ALL.iter().position(|s| *s == ranked).unwrap_or(0);
        self.ranked[i] = self.ranked[i].saturating_add(n);
        let Some(name) = name else { return };
        // Keep the MAX_NAMES most severe, the first listed of a rank first.
        let at = self.worst.iter().position(|(s, _)| *s < ranked);
        if at.is_some() || self.worst.len() < MAX_NAMES {
            let at = at.unwrap_or(self.worst.len());
            self.worst
                .insert(at, (ranked, bounded_text(name, MAX_TEXT)));
            self.worst.truncate(MAX_NAMES);
        }
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_ecr::types::{FindingSeverity, ImageScanFinding};

    use super::*;

    #[test]
    fn ecr_hosts_and_aliases_are_ecr_and_others_are_not() {
        let aliases = ["127.0.0.1:5000".to_owned()];
        assert_eq!(
            registry_of("123456789012.dkr.ecr.eu-west-1.amazonaws.com", &aliases),
            Some(Registry {
                registry_id: Some("123456789012".into()),
                region: Some("eu-west-1".into())
            })
        );
        assert!(registry_of("123456789012.dkr.ecr-fips.us-east-1.amazonaws.com", &[]).is_some());
        assert!(registry_of("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn", &[]).is_some());
        assert_eq!(
            registry_of("127.0.0.1:5000", &aliases),
            Some(Registry {
                registry_id: None,
                region: None
            })
        );
        for other in [
            "127.0.0.1:5001",
            "public.ecr.aws",
            "12345.dkr.ecr.us-east-1.amazonaws.com",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com.evil.example",
            "123456789012.dkr.ecr..amazonaws.com",
        ] {
            assert_eq!(registry_of(other, &aliases), None, "{other}");
        }
    }

    fn finding(severity: &str, name: &str) -> ImageScanFinding {
        ImageScanFinding::builder()
            .severity(FindingSeverity::from(severity))
            .name(name)
            .build()
    }

    #[test]
    fn thousands_of_findings_keep_counts_and_five_names_most_severe_first() {
        let mut scan = ImageScanFindings::builder()
            .finding_severity_counts(FindingSeverity::Medium, 2)
            .finding_severity_counts(FindingSeverity::from("APOCALYPTIC\u{7}"), 3);
        for i in 0..5000 {
            scan = scan.findings(finding("LOW", &format!("CVE-LOW-{i}")));
        }
        scan = scan
            .findings(finding("CRITICAL", "CVE-CRIT\u{1b}[31m"))
            .findings(finding("UNDEFINED", "CVE-U"));
        let mut findings = Findings::default();
        tally(&mut findings, &scan.build());
        assert_eq!(findings.listed, 5002);
        assert_eq!(findings.counts, [0, 5000, 2, 0, 1]);
        assert_eq!(findings.unranked, 1);
        assert_eq!(findings.unknown, Some(("APOCALYPTIC\\u{7}".into(), 3)));
        assert_eq!(findings.worst.len(), MAX_NAMES);
        assert_eq!(
            findings.worst[0],
            (Severity::Critical, "CVE-CRIT\\u{1b}[31m".into())
        );
        assert_eq!(findings.worst[1], (Severity::Low, "CVE-LOW-0".into()));
        assert_eq!(findings.at_or_above(Severity::Medium), 3);
        assert_eq!(findings.at_or_above(Severity::High), 1);
    }
}
