//! EC2's TerminateInstances, the one EC2 call deckhand makes: scale-in of an
//! instance that is in no Auto Scaling group.
//!
//! `aws-sdk-ec2` is one of the largest generated crates there is (minutes of build
//! time on a 2-core builder for hundreds of operations we never call), so this
//! speaks EC2's Query protocol directly: a form-encoded POST signed with SigV4 by
//! `aws-sigv4`, the signer the SDK itself uses, with credentials from the same
//! `SdkConfig` chain as every other client.

use std::time::{Duration, SystemTime};

use aws_config::SdkConfig;
use aws_credential_types::Credentials;
use aws_credential_types::provider::ProvideCredentials;
use aws_sigv4::http_request::{
    SignableBody, SignableRequest, SigningInstructions, SigningSettings,
};
use aws_sigv4::sign::v4;

/// The Query API version every current EC2 SDK sends.
const API_VERSION: &str = "2016-11-15";
const TIMEOUT: Duration = Duration::from_secs(30);
const CONTENT_TYPE: &str = "application/x-www-form-urlencoded; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum Ec2Error {
    #[error("EC2 {action}: no region configured (set aws.region)")]
    NoRegion { action: &'static str },
    #[error("EC2 {action}: no credentials: {message}")]
    Credentials {
        action: &'static str,
        message: String,
    },
    #[error("EC2 {action}: sign the request: {message}")]
    Sign {
        action: &'static str,
        message: String,
    },
    #[error("EC2 {action} at {endpoint}: {source}")]
    Transport {
        action: &'static str,
        endpoint: String,
        source: reqwest::Error,
    },
    #[error("EC2 {action}: HTTP {status} {code}: {message}")]
    Service {
        action: &'static str,
        status: u16,
        code: String,
        message: String,
    },
}

impl Ec2Error {
    /// Worth another try: throttling, EC2's own 5xx, or no answer at all.
    pub fn is_retryable(&self) -> bool {
        match self {
            Ec2Error::Transport { .. } => true,
            Ec2Error::Service { status, code, .. } => {
                *status >= 500
                    || matches!(
                        code.as_str(),
                        "RequestLimitExceeded" | "Throttling" | "ThrottlingException"
                    )
            }
            _ => false,
        }
    }
}

pub struct Ec2 {
    sdk: SdkConfig,
    endpoint: String,
    http: reqwest::Client,
}

impl Ec2 {
    /// `endpoint_url` overrides `https://ec2.<region>.amazonaws.com` (tests, VPC
    /// endpoints).
    pub fn new(sdk: &SdkConfig, endpoint_url: Option<&str>) -> Ec2 {
        let endpoint = match (endpoint_url, sdk.region()) {
            (Some(url), _) => url.trim_end_matches('/').to_owned(),
            (None, Some(region)) => format!("https://ec2.{region}.amazonaws.com"),
            // Reported by the call itself, with the action's name.
            (None, None) => String::new(),
        };
        Ec2 {
            sdk: sdk.clone(),
            endpoint,
            http: crate::tls::reqwest_builder()
                .timeout(TIMEOUT)
                .build()
                .expect("a reqwest client with rustls builds"),
        }
    }

    /// Terminates one instance; EC2 answers at once and shuts it down behind.
    pub async fn terminate_instance(&self, instance_id: &str) -> Result<(), Ec2Error> {
        self.call("TerminateInstances", &[("InstanceId.1", instance_id)])
            .await
            .map(drop)
    }

    /// One signed Query call of any EC2 action; the response body on success.
    pub async fn call(
        &self,
        action: &'static str,
        params: &[(&str, &str)],
    ) -> Result<String, Ec2Error> {
        let (region, credentials) = self.identity(action).await?;
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("Action", action)
            .append_pair("Version", API_VERSION)
            .extend_pairs(params)
            .finish();
        let url = format!("{}/", self.endpoint);
        let signature = sign(action, &region, credentials, &url, &body)?;
        self.send(action, &url, body, &signature).await
    }

    /// The region and the credentials to sign with, from the SDK's chain.
    async fn identity(&self, action: &'static str) -> Result<(String, Credentials), Ec2Error> {
        let region = self
            .sdk
            .region()
            .ok_or(Ec2Error::NoRegion { action })?
            .to_string();
        let provider = self
            .sdk
            .credentials_provider()
            .ok_or_else(|| Ec2Error::Credentials {
                action,
                message: "no credentials provider".into(),
            })?;
        let credentials =
            provider
                .provide_credentials()
                .await
                .map_err(|e| Ec2Error::Credentials {
                    action,
                    message: aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
                })?;
        Ok((region, credentials))
    }

    /// POSTs the signed form; the body on a 2xx, else EC2's error document read.
    async fn send(
        &self,
        action: &'static str,
        url: &str,
        body: String,
        signature: &SigningInstructions,
    ) -> Result<String, Ec2Error> {
        let mut request = self
            .http
            .post(url)
            .header("content-type", CONTENT_TYPE)
            .body(body);
        for (name, value) in signature.headers() {
            request = request.header(name, value);
        }
        let transport = |source| Ec2Error::Transport {
            action,
            endpoint: self.endpoint.clone(),
            source,
        };
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let text = response.text().await.map_err(transport)?;
        if status.is_success() {
            return Ok(text);
        }
        Err(service_error(action, status.as_u16(), &text))
    }
}

/// SigV4 for a POST of `body` to `url`: the headers to add to the request.
fn sign(
    action: &'static str,
    region: &str,
    credentials: Credentials,
    url: &str,
    body: &str,
) -> Result<SigningInstructions, Ec2Error> {
    let sign_error = |message: String| Ec2Error::Sign { action, message };
    let identity = credentials.into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("ec2")
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| sign_error(e.to_string()))?
        .into();
    let signable = SignableRequest::new(
        "POST",
        url,
        [("content-type", CONTENT_TYPE)].into_iter(),
        SignableBody::Bytes(body.as_bytes()),
    )
    .map_err(|e| sign_error(e.to_string()))?;
    let (instructions, _signature) = aws_sigv4::http_request::sign(signable, &params)
        .map_err(|e| sign_error(e.to_string()))?
        .into_parts();
    Ok(instructions)
}

/// An error answer as its code and message; the body itself when it is not an
/// error document (a proxy's page), cut short.
fn service_error(action: &'static str, status: u16, text: &str) -> Ec2Error {
    Ec2Error::Service {
        action,
        status,
        code: element(text, "Code").unwrap_or("unknown").to_owned(),
        message: element(text, "Message")
            .unwrap_or(text.trim())
            .chars()
            .take(500)
            .collect(),
    }
}

/// The text of the first `<name>` element: EC2's error documents are flat and
/// small, `<Response><Errors><Error><Code>…</Code><Message>…</Message>`.
fn element<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let start = xml.find(&format!("<{name}>"))? + name.len() + 2;
    let len = xml[start..].find(&format!("</{name}>"))?;
    Some(&xml[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_documents_yield_code_and_message() {
        let xml = "<?xml version=\"1.0\"?><Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>x</RequestID></Response>";
        assert_eq!(element(xml, "Code"), Some("RequestLimitExceeded"));
        assert_eq!(element(xml, "Message"), Some("Request limit exceeded."));
        assert_eq!(element(xml, "Missing"), None);
    }

    #[test]
    fn throttling_and_server_errors_are_retried_denials_are_not() {
        let service = |status, code: &str| Ec2Error::Service {
            action: "TerminateInstances",
            status,
            code: code.into(),
            message: String::new(),
        };
        assert!(service(503, "Unavailable").is_retryable());
        assert!(service(400, "RequestLimitExceeded").is_retryable());
        assert!(!service(403, "UnauthorizedOperation").is_retryable());
        assert!(!service(400, "InvalidInstanceID.NotFound").is_retryable());
    }
}
