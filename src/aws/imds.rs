//! The EC2 instance metadata service, IMDSv2 only, through aws-config's client (which
//! fetches the session token, refreshes it before it expires and fetches a new one
//! on a 401).
//!
//! Absence is `Ok(None)`: a 404 on `spot/instance-action` means "no notice", not an
//! error; only transport faults and unexpected answers are errors.

use std::time::Duration;

use aws_config::imds::client::error::ImdsError as SdkImdsError;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::config::ImdsConfig;

/// One poll must not outlast the poll interval by much; the SDK's own defaults
/// (1 s timeouts, 4 attempts) would let a slow service stall a poll for seconds.
const TIMEOUT: Duration = Duration::from_millis(800);
const ATTEMPTS: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error("instance metadata endpoint {endpoint:?} is not a valid URL: {message}")]
    Endpoint { endpoint: String, message: String },
    #[error("get {path} from the instance metadata service: {source}")]
    Get {
        path: String,
        // Boxed: the SDK's error is large and this travels up every poll.
        source: Box<SdkImdsError>,
    },
    #[error("instance metadata {path}: unexpected answer {body:?}: {message}")]
    Parse {
        path: String,
        body: String,
        message: String,
    },
}

impl ImdsError {
    /// No metadata service answers here at all: not on EC2, or blocked.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ImdsError::Get {
                source,
                ..
            } if matches!(**source, SdkImdsError::FailedToLoadToken(_) | SdkImdsError::IoError(_))
        )
    }
}

#[derive(Clone, Debug)]
pub struct Imds {
    client: aws_config::imds::Client,
}

/// Who this instance is, for every result and log line.
#[derive(Clone, Debug, PartialEq)]
pub struct Identity {
    pub instance_id: String,
    pub instance_type: String,
    pub availability_zone: String,
    /// `instance-life-cycle`: `spot`, `on-demand` (or `scheduled`); `None` where
    /// the service does not say.
    pub lifecycle: Option<String>,
}

/// `spot/instance-action`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpotAction {
    Terminate,
    Stop,
    Hibernate,
}

impl SpotAction {
    pub fn as_str(self) -> &'static str {
        match self {
            SpotAction::Terminate => "terminate",
            SpotAction::Stop => "stop",
            SpotAction::Hibernate => "hibernate",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct SpotNotice {
    pub action: SpotAction,
    /// When EC2 interrupts the instance.
    pub time: DateTime<Utc>,
}

#[derive(Deserialize)]
struct InstanceAction {
    action: SpotAction,
    time: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RebalanceNotice {
    notice_time: String,
}

impl Imds {
    pub fn new(config: &ImdsConfig) -> Result<Imds, ImdsError> {
        let client = aws_config::imds::Client::builder()
            .configure(
                &aws_config::provider_config::ProviderConfig::without_region()
                    .with_http_client(crate::tls::aws_http_client()),
            )
            .endpoint(&config.endpoint)
            .map_err(|e| ImdsError::Endpoint {
                endpoint: config.endpoint.clone(),
                message: e.to_string(),
            })?
            .connect_timeout(TIMEOUT)
            .read_timeout(TIMEOUT)
            .max_attempts(ATTEMPTS)
            .build();
        Ok(Imds { client })
    }

    /// A metadata path's text, or `None` where the service answers 404.
    pub async fn get(&self, path: &str) -> Result<Option<String>, ImdsError> {
        match self.client.get(format!("/latest/meta-data/{path}")).await {
            Ok(value) => Ok(Some(value.as_ref().to_owned())),
            Err(SdkImdsError::ErrorResponse(e)) if e.response().status().as_u16() == 404 => {
                Ok(None)
            }
            Err(source) => Err(ImdsError::Get {
                path: path.to_owned(),
                source: Box::new(source),
            }),
        }
    }

    async fn require(&self, path: &str) -> Result<String, ImdsError> {
        self.get(path).await?.ok_or_else(|| ImdsError::Parse {
            path: path.to_owned(),
            body: String::new(),
            message: "not found".into(),
        })
    }

    pub async fn identity(&self) -> Result<Identity, ImdsError> {
        Ok(Identity {
            instance_id: self.require("instance-id").await?,
            instance_type: self.require("instance-type").await?,
            availability_zone: self.require("placement/availability-zone").await?,
            lifecycle: self.get("instance-life-cycle").await?,
        })
    }

    /// The pending spot interruption, if EC2 has scheduled one.
    pub async fn spot_notice(&self) -> Result<Option<SpotNotice>, ImdsError> {
        self.get_json("spot/instance-action", |a: InstanceAction| {
            Ok(SpotNotice {
                action: a.action,
                time: parse_time(&a.time)?,
            })
        })
        .await
    }

    /// When EC2 recommended rebalancing away from this instance, if it has.
    pub async fn rebalance_notice(&self) -> Result<Option<DateTime<Utc>>, ImdsError> {
        self.get_json("events/recommendations/rebalance", |n: RebalanceNotice| {
            parse_time(&n.notice_time)
        })
        .await
    }

    /// A JSON document at `path`, converted; `None` where the service answers 404.
    async fn get_json<T: serde::de::DeserializeOwned, R>(
        &self,
        path: &str,
        convert: impl FnOnce(T) -> Result<R, String>,
    ) -> Result<Option<R>, ImdsError> {
        let Some(body) = self.get(path).await? else {
            return Ok(None);
        };
        serde_json::from_str(&body)
            .map_err(|e| e.to_string())
            .and_then(convert)
            .map(Some)
            .map_err(|message| ImdsError::Parse {
                path: path.to_owned(),
                body,
                message,
            })
    }

    /// `autoscaling/target-lifecycle-state` (`InService`, `Terminated`, …); `None`
    /// outside an Auto Scaling group.
    pub async fn lifecycle_state(&self) -> Result<Option<String>, ImdsError> {
        Ok(self
            .get("autoscaling/target-lifecycle-state")
            .await?
            .map(|s| s.trim().to_owned()))
    }
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("time {text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_formats() {
        let a: InstanceAction =
            serde_json::from_str(r#"{"action": "terminate", "time": "2026-11-27T08:02:00Z"}"#)
                .unwrap();
        assert_eq!(a.action, SpotAction::Terminate);
        assert_eq!(
            parse_time(&a.time).unwrap().to_rfc3339(),
            "2026-11-27T08:02:00+00:00"
        );
        let h: InstanceAction =
            serde_json::from_str(r#"{"action": "hibernate", "time": "2026-11-27T08:02:00Z"}"#)
                .unwrap();
        assert_eq!(h.action, SpotAction::Hibernate);
        let r: RebalanceNotice =
            serde_json::from_str(r#"{"noticeTime": "2026-11-27T08:00:00Z"}"#).unwrap();
        assert!(parse_time(&r.notice_time).is_ok());
        assert!(parse_time("yesterday").is_err());
    }
}
