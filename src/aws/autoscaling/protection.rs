//! Scale-in protection: a busy host asks its group never to pick it for a
//! scale-in, and gives the mark up when idle (`autoscaling.protect_busy`).

use super::{ScaleInError, retrying};

/// This instance's scale-in protection in its Auto Scaling group.
pub struct Protection {
    client: aws_sdk_autoscaling::Client,
    instance_id: String,
}

impl Protection {
    pub fn new(client: aws_sdk_autoscaling::Client, instance_id: &str) -> Self {
        Protection {
            client,
            instance_id: instance_id.to_owned(),
        }
    }

    /// The group the instance is in; `None` outside any.
    pub async fn group(&self) -> Result<Option<String>, ScaleInError> {
        super::group_of(&self.client, &self.instance_id)
            .await
            .map_err(|e| self.error("DescribeAutoScalingInstances", e))
    }

    /// Turns the instance's scale-in protection on or off.
    pub async fn set(&self, group: &str, protected: bool) -> Result<(), ScaleInError> {
        retrying(|| {
            self.client
                .set_instance_protection()
                .auto_scaling_group_name(group)
                .instance_ids(&self.instance_id)
                .protected_from_scale_in(protected)
                .send()
        })
        .await
        .map(drop)
        .map_err(|e| self.error("SetInstanceProtection", e))
    }

    fn error<E, R>(
        &self,
        operation: &'static str,
        error: aws_sdk_autoscaling::error::SdkError<E, R>,
    ) -> ScaleInError
    where
        E: std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        ScaleInError::AutoScaling {
            operation,
            instance_id: self.instance_id.clone(),
            source: error.into(),
        }
    }
}
