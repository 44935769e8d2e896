//! The AWS SDK's shared configuration: region, the emulator endpoint in tests, and
//! timeouts and retries on every call so that no AWS call can hang the agent.

pub mod autoscaling;
pub mod ec2;
pub mod ecr;
pub mod imds;
pub mod sqs;

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};

use crate::config::AwsConfig;

/// Above the longest long poll (20 s), so a receive is never cut short.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Loads the SDK config once; clients are built from it per service.
pub async fn sdk_config(config: &AwsConfig) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(crate::tls::aws_http_client())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .build(),
        )
        // The SDK's standard mode: exponential backoff with jitter. The agent's own
        // loops add longer backoff above this for outages that outlast it.
        .retry_config(RetryConfig::standard().with_max_attempts(3));
    if let Some(region) = &config.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(url) = &config.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
}

pub fn s3_client(sdk: &SdkConfig, config: &AwsConfig) -> aws_sdk_s3::Client {
    let s3 = aws_sdk_s3::config::Builder::from(sdk)
        // An emulator on localhost cannot serve virtual-hosted buckets
        // (`bucket.localhost`).
        .force_path_style(config.endpoint_url.is_some())
        // No CRC32 trailer on every upload (aws-chunked bodies): TLS and SigV4
        // already guard the bytes, and logs and artifacts are large and hot.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(s3)
}

pub fn sqs_client(sdk: &SdkConfig) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(sdk)
}

pub fn autoscaling_client(sdk: &SdkConfig) -> aws_sdk_autoscaling::Client {
    aws_sdk_autoscaling::Client::new(sdk)
}

/// For admission, inside `admission.timeout_ms`: one retry soon after, since a
/// job waits on it and the queue's own retry is the long backoff.
pub fn ecr_client(sdk: &SdkConfig) -> aws_sdk_ecr::Client {
    let ecr = aws_sdk_ecr::config::Builder::from(sdk)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(2)
                .with_initial_backoff(Duration::from_millis(100)),
        )
        .build();
    aws_sdk_ecr::Client::from_conf(ecr)
}

pub fn kms_client(sdk: &SdkConfig) -> aws_sdk_kms::Client {
    aws_sdk_kms::Client::new(sdk)
}
