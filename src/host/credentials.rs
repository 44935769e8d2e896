//! Per-job AWS credentials, in the ECS container-credentials format.
//!
//! A job whose profile names a `role_arn` gets `AWS_CONTAINER_CREDENTIALS_FULL_URI`
//! and its token as a file on the secrets tmpfs, named by
//! `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`, which current AWS SDKs read (never as
//! an environment variable: Docker keeps those on disk, in the container's
//! config, for as long as the container exists). The token is
//! the job's alone and lives only as long as the job: the broker answers it with
//! credentials of that role (STS AssumeRole with the instance's own credentials, a
//! session named after the job), renewed before they expire, and forgets it when
//! the job ends. The instance's own credentials never reach a job: its metadata
//! service is blocked for containers.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sts::error::DisplayErrorContext;
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::host::http::{Reply, reply};

use crate::mask::{Masker, SharedMasker};

/// Credentials this close to expiring are renewed before they are handed out.
const RENEW_BEFORE: chrono::TimeDelta = chrono::TimeDelta::minutes(5);
const PATH: &str = "/v1/credentials";

/// Hands out each running job's role credentials to that job only.
pub struct Broker {
    sts: aws_sdk_sts::Client,
    session: Duration,
    /// The address jobs are told to ask.
    uri: String,
    grants: Mutex<HashMap<String, Grant>>,
}

struct Grant {
    job_id: String,
    role_arn: String,
    /// The job's log masks the token and every secret handed out for it.
    mask: SharedMasker,
    secrets: Vec<String>,
    /// The last credentials handed out, reused until they near expiry.
    cached: Option<RoleCredentials>,
}

/// The ECS container-credentials response.
#[derive(Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
struct RoleCredentials {
    access_key_id: String,
    secret_access_key: String,
    token: String,
    expiration: String,
    role_arn: String,
    #[serde(skip)]
    expires_at: chrono::DateTime<chrono::Utc>,
}

/// What a job's container is given. Revokes the token when dropped.
pub struct Issued {
    /// `AWS_CONTAINER_CREDENTIALS_FULL_URI`.
    pub uri: String,
    broker: Arc<Broker>,
    token: String,
}

impl Issued {
    /// The job's token, for its file.
    pub fn token(&self) -> &str {
        &self.token
    }
}

impl Drop for Issued {
    fn drop(&mut self) {
        self.broker
            .grants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.token);
    }
}

impl Broker {
    /// Binds `listen` (port 0: any free port) and returns the broker and its
    /// listener; [`serve`] answers on it.
    pub async fn bind(
        sdk: &aws_config::SdkConfig,
        listen: SocketAddr,
        session: Duration,
    ) -> Result<(Arc<Broker>, TcpListener), crate::host::http::BindError> {
        let listener = crate::host::http::bind(listen, "credentials.listen").await?;
        let bound = listener.local_addr().unwrap_or(listen);
        tracing::info!(address = %bound, "Serving per-job AWS credentials.");
        let broker = Broker {
            sts: aws_sdk_sts::Client::new(sdk),
            session,
            uri: format!("http://{bound}{PATH}"),
            grants: Mutex::default(),
        };
        Ok((Arc::new(broker), listener))
    }

    /// A token for `job_id` that yields `role_arn`'s credentials until dropped.
    /// The token, and each secret key and session token handed out for it, are
    /// added to `mask`, the job log's later secrets.
    pub fn issue(self: &Arc<Self>, job_id: &str, role_arn: &str, mask: SharedMasker) -> Issued {
        let token = new_token();
        mask.set(Arc::new(Masker::new([token.as_str()])));
        self.grants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                token.clone(),
                Grant {
                    job_id: job_id.to_owned(),
                    role_arn: role_arn.to_owned(),
                    mask,
                    secrets: vec![token.clone()],
                    cached: None,
                },
            );
        Issued {
            uri: self.uri.clone(),
            broker: Arc::clone(self),
            token,
        }
    }

    /// The credentials for `token`'s job, assuming its role when none are cached
    /// or they near expiry.
    async fn credentials(&self, token: &str) -> Result<RoleCredentials, Refusal> {
        let (job_id, role_arn) = {
            let grants = self.grants.lock().unwrap_or_else(|e| e.into_inner());
            let grant = grants.get(token).ok_or(Refusal::UnknownToken)?;
            if let Some(cached) = &grant.cached
                && cached.expires_at - chrono::Utc::now() > RENEW_BEFORE
            {
                return Ok(cached.clone());
            }
            (grant.job_id.clone(), grant.role_arn.clone())
        };
        let assumed = self
            .sts
            .assume_role()
            .role_arn(&role_arn)
            .role_session_name(session_name(&job_id))
            .duration_seconds(self.session.as_secs() as i32)
            .send()
            .await
            .map_err(|e| {
                let error = DisplayErrorContext(&e).to_string();
                tracing::warn!(job_id, role_arn, %error, "Could not assume the job's role.");
                Refusal::AssumeRole(error)
            })?;
        let c = assumed
            .credentials
            .ok_or_else(|| Refusal::AssumeRole("STS answered without credentials".into()))?;
        let expires_at = chrono::DateTime::from_timestamp(c.expiration.secs(), 0)
            .unwrap_or_else(chrono::Utc::now);
        let credentials = RoleCredentials {
            access_key_id: c.access_key_id,
            secret_access_key: c.secret_access_key,
            token: c.session_token,
            expiration: expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            role_arn,
            expires_at,
        };
        tracing::info!(job_id, role_arn = %credentials.role_arn, expiration = %credentials.expiration, "Assumed the job's role.");
        let mut grants = self.grants.lock().unwrap_or_else(|e| e.into_inner());
        // The job may have ended while STS answered: then nobody gets them.
        let grant = grants.get_mut(token).ok_or(Refusal::UnknownToken)?;
        // Masked before the job can have them: no line of its log shows them.
        grant.secrets.push(credentials.secret_access_key.clone());
        grant.secrets.push(credentials.token.clone());
        grant.mask.set(Arc::new(Masker::new(
            grant.secrets.iter().map(String::as_str),
        )));
        grant.cached = Some(credentials.clone());
        Ok(credentials)
    }
}

enum Refusal {
    UnknownToken,
    AssumeRole(String),
}

/// Answers credential requests until dropped.
pub async fn serve(listener: TcpListener, broker: Arc<Broker>) -> Infallible {
    crate::host::http::serve(listener, "credentials", move |request| {
        let broker = Arc::clone(&broker);
        async move { respond(&request, &broker).await }
    })
    .await
}

async fn respond(request: &Request<Incoming>, broker: &Broker) -> Reply {
    let error = |status: StatusCode, message: &str| {
        reply(
            status,
            "application/json",
            serde_json::json!({"code": status.canonical_reason(), "message": message}).to_string(),
        )
    };
    if request.method() != Method::GET {
        return error(StatusCode::METHOD_NOT_ALLOWED, "GET only");
    }
    if request.uri().path() != PATH {
        return error(StatusCode::NOT_FOUND, "credentials are at /v1/credentials");
    }
    let Some(token) = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return error(
            StatusCode::UNAUTHORIZED,
            "send AWS_CONTAINER_AUTHORIZATION_TOKEN as the Authorization header",
        );
    };
    match broker.credentials(token).await {
        Ok(credentials) => reply(
            StatusCode::OK,
            "application/json",
            serde_json::to_string(&credentials).expect("strings serialize"),
        ),
        Err(Refusal::UnknownToken) => error(
            StatusCode::FORBIDDEN,
            "unknown token: it belongs to no running job",
        ),
        Err(Refusal::AssumeRole(message)) => error(StatusCode::BAD_GATEWAY, &message),
    }
}

/// 256 random bits, hex.
fn new_token() -> String {
    crate::rules::random_hex(32)
}

/// `deckhand-<job id>`, in STS's alphabet (`[\w+=,.@-]`) and at most 64 long, so
/// CloudTrail shows which job used the role.
fn session_name(job_id: &str) -> String {
    let mut name: String = format!("deckhand-{job_id}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+=,.@_-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(64);
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names_fit_sts() {
        assert_eq!(session_name("build-812.unit"), "deckhand-build-812.unit");
        let long = session_name(&"x".repeat(128));
        assert_eq!(long.len(), 64);
        assert!(long.starts_with("deckhand-x"));
    }

    #[test]
    fn tokens_are_long_and_fresh() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
