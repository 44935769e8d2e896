//! An image in "ECR" as the tests have it: the stack's image, labelled, pushed
//! to a repository of the test's own in the local registry (which the agent is told
//! serves ECR: `admission.ecr.registries`), and the same repository in moto,
//! holding an image of the same digest, scanned or not. moto answers a scanned
//! image with one fixed HIGH finding (`CVE-9999-9999`) unless the test gives it
//! an answer of its own ([`EcrImage::answer`], moto's
//! `/moto-api/static/ecr/scan-finding-results`). See docs/testing.md.

use serde_json::{Value, json};

use super::aws::Aws;
use super::{Stack, docker, unique};

/// A manifest moto accepts; it keeps the digest it is given, so this need not
/// be the registry's.
const MANIFEST: &str = r#"{"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json", "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1, "digest": "sha256:0000000000000000000000000000000000000000000000000000000000000000"}, "layers": []}"#;

pub struct EcrImage {
    /// `127.0.0.1:5000/test/ecr-…:1.0`, what a job names.
    pub reference: String,
    /// The repository, in the registry and in moto: `test/ecr-…`.
    pub repository: String,
    /// `sha256:…`, the registry's digest, which moto holds too.
    pub digest: String,
    endpoint: String,
}

impl EcrImage {
    /// The stack's image, with a label of its own, as
    /// `<registry>/test/<name>-…:1.0`, in moto too;
    /// `scanned`: a scan was started (moto's are `COMPLETE` at once).
    pub async fn new(stack: &Stack, aws: &Aws, name: &str, scanned: bool) -> EcrImage {
        let repository = format!("test/{}", unique(name));
        let reference = format!("{}/{repository}:1.0", stack.registry);
        // An image of its own (the stack's with a label): the agent caches
        // decisions by digest, and each test's image must have its own.
        let container = docker(&["create", "--network", &stack.network, &stack.image, "true"]);
        let container = container.trim();
        let label = format!("LABEL deckhand.test={repository}");
        docker(&["commit", "-c", &label, container, &reference]);
        docker(&["rm", container]);
        docker(&["push", "--quiet", &reference]);
        let digests = docker(&["inspect", "--format", "{{json .RepoDigests}}", &reference]);
        let digests: Vec<String> = serde_json::from_str(digests.trim()).unwrap();
        let prefix = format!("{}/{repository}@", stack.registry);
        let digest = digests
            .iter()
            .find_map(|d| d.strip_prefix(&prefix))
            .expect("a digest from the registry")
            .to_owned();
        // The agent pulls it, as it would from ECR.
        docker(&["rmi", &reference]);
        let ecr = aws_sdk_ecr::Client::new(&aws.sdk);
        ecr.create_repository()
            .repository_name(&repository)
            .send()
            .await
            .unwrap();
        ecr.put_image()
            .repository_name(&repository)
            .image_manifest(MANIFEST)
            .image_tag("1.0")
            .image_digest(&digest)
            .send()
            .await
            .unwrap();
        if scanned {
            let id = aws_sdk_ecr::types::ImageIdentifier::builder()
                .image_digest(&digest)
                .build();
            ecr.start_image_scan()
                .repository_name(&repository)
                .image_id(id)
                .send()
                .await
                .unwrap();
        }
        EcrImage {
            reference,
            repository,
            digest,
            endpoint: aws.endpoint.clone(),
        }
    }

    /// Has moto answer `DescribeImageScanFindings` about this image with
    /// `imageScanStatus` `status` and `findings` (ECR's `imageScanFindings`)
    /// from now on. `digest`: the `imageId.imageDigest` of the answer (`None`:
    /// none, which moto still matches to this repository's image).
    pub async fn answer(&self, status: &str, findings: Value, digest: Option<&str>) {
        let image_id = match digest {
            Some(digest) => json!({"imageDigest": digest}),
            None => json!({}),
        };
        let result = json!({
            "registryId": "123456789012",
            "repositoryName": self.repository,
            "imageId": image_id,
            "imageScanStatus": {"status": status, "description": "set by the test"},
            "imageScanFindings": findings,
        });
        let url = format!("{}/moto-api/static/ecr/scan-finding-results", self.endpoint);
        let body = json!({"results": [result], "region": "us-east-1"});
        let response = deckhand::tls::reqwest_builder()
            .build()
            .unwrap()
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
    }

    /// A `findingSeverityCounts` and `findings` of `n` findings of each
    /// (severity, n), named `CVE-<severity>-<i>`.
    pub fn findings(of: &[(&str, usize)]) -> Value {
        let mut counts = serde_json::Map::new();
        let mut findings = Vec::new();
        for (severity, n) in of {
            counts.insert((*severity).to_owned(), json!(n));
            findings.extend(
                (0..*n)
                    .map(|i| json!({"name": format!("CVE-{severity}-{i}"), "severity": severity})),
            );
        }
        json!({"findingSeverityCounts": counts, "findings": findings})
    }
}

impl Drop for EcrImage {
    /// The tag the agent pulled; the layers are the stack image's and stay.
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rmi", &self.reference])
            .output();
    }
}
