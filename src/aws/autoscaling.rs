//! Scale-in: after an idle drain (or an Auto Scaling termination), the instance
//! leaves, so the pool shrinks instead of paying for an idle host.
//!
//! `terminate` calls TerminateInstanceInAutoScalingGroup with
//! `ShouldDecrementDesiredCapacity=true`: without the decrement Auto Scaling would
//! launch a replacement at once (Buildkite's fallback forgets it and leaves pools
//! billed forever). An instance in no group is terminated through EC2 itself, and
//! only if EC2 refuses (no permission, say) does the shutdown command run, which
//! ends an instance launched with `InstanceInitiatedShutdownBehavior=terminate`.
//!
//! When Auto Scaling is the one terminating the instance, a termination lifecycle
//! hook holds it in `Terminating:Wait` until someone completes the hook, by default
//! for an hour. Once drained, deckhand completes it with `CONTINUE` so the instance
//! goes at once. Throttling is retried with backoff throughout.

use std::future::Future;
use std::time::Duration;

use aws_sdk_autoscaling::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::aws::ec2::{Ec2, Ec2Error};
use crate::backoff::{Backoff, Budget, retry};
use crate::config::{Config, OnExit};

/// How long scale-in keeps retrying a throttled or busy API.
const DEADLINE: Duration = Duration::from_secs(120);
const TERMINATING: &str = "autoscaling:EC2_INSTANCE_TERMINATING";

mod protection;
pub use protection::Protection;

#[derive(Debug, thiserror::Error)]
pub enum ScaleInError {
    #[error("{operation} for {instance_id}: {}", DisplayErrorContext(&**source))]
    AutoScaling {
        operation: &'static str,
        instance_id: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("terminate {instance_id}: {source}")]
    Ec2 {
        instance_id: String,
        source: Ec2Error,
    },
    #[error(
        "group {group} has several termination hooks ({hooks}); set agent.lifecycle_hook to the one deckhand should complete"
    )]
    AmbiguousHook { group: String, hooks: String },
    #[error("run the shutdown command {command:?}: {message}")]
    Shutdown {
        command: Vec<String>,
        message: String,
    },
}

/// The two APIs scale-in may call.
pub struct ScaleIn<'a> {
    pub config: &'a Config,
    pub autoscaling: &'a aws_sdk_autoscaling::Client,
    pub ec2: &'a Ec2,
    pub instance_id: &'a str,
}

/// Why the agent leaves, which decides what `agent.on_exit` asks of Auto Scaling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaving {
    /// No work: the pool is too big, so the group shrinks by one.
    Idle,
    /// EC2 recommends moving off this instance: the group should replace it
    /// elsewhere, so its capacity stays.
    Rebalance,
    /// Auto Scaling is already terminating this instance: asking again would
    /// decrement its capacity a second time, so its hook is completed instead.
    GroupTerminating,
}

impl ScaleIn<'_> {
    /// Carries out `agent.on_exit` for an agent leaving because of `leaving`.
    pub async fn on_exit(&self, leaving: Leaving) -> Result<(), ScaleInError> {
        match self.config.agent.on_exit {
            OnExit::None => Ok(()),
            OnExit::Terminate | OnExit::Shutdown if leaving == Leaving::GroupTerminating => {
                self.complete_lifecycle_hook().await
            }
            OnExit::Shutdown => shutdown(&self.config.agent.shutdown_command).await,
            OnExit::Terminate => {
                if self.terminate_in_group(leaving == Leaving::Idle).await? {
                    return Ok(());
                }
                tracing::info!(
                    "This instance is in no Auto Scaling group; terminating it through EC2."
                );
                match self.terminate_through_ec2().await {
                    Ok(()) => Ok(()),
                    Err(error) => {
                        tracing::error!(%error, "EC2 would not terminate this instance; running the shutdown command instead.");
                        shutdown(&self.config.agent.shutdown_command).await
                    }
                }
            }
        }
    }

    /// The Auto Scaling group this instance is in, if any.
    async fn group(&self) -> Result<Option<String>, ScaleInError> {
        group_of(self.autoscaling, self.instance_id)
            .await
            .map_err(|e| self.error("DescribeAutoScalingInstances", e))
    }

    /// True once Auto Scaling accepted the termination; false if the instance is
    /// in no group. `decrement`: the group shrinks rather than replacing it.
    async fn terminate_in_group(&self, decrement: bool) -> Result<bool, ScaleInError> {
        let Some(group) = self.group().await? else {
            return Ok(false);
        };
        let result = retrying(|| {
            self.autoscaling
                .terminate_instance_in_auto_scaling_group()
                .instance_id(self.instance_id)
                .should_decrement_desired_capacity(decrement)
                .send()
        })
        .await;
        match result {
            Ok(output) => {
                let activity = output.activity.and_then(|a| a.description);
                if decrement {
                    tracing::info!(
                        group,
                        activity = activity.as_deref(),
                        "Auto Scaling is terminating this instance; desired capacity decremented."
                    );
                } else {
                    tracing::info!(
                        group,
                        activity = activity.as_deref(),
                        "Auto Scaling is terminating this instance; it will start a replacement."
                    );
                }
                Ok(true)
            }
            // It left the group since we asked.
            Err(e)
                if e.code() == Some("ValidationError")
                    && is_not_in_group(e.message().unwrap_or_default()) =>
            {
                Ok(false)
            }
            Err(e) => Err(self.error("TerminateInstanceInAutoScalingGroup", e)),
        }
    }

    async fn terminate_through_ec2(&self) -> Result<(), ScaleInError> {
        let pace = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        let budget = Budget::Until(tokio::time::Instant::now() + DEADLINE);
        retry(
            pace,
            budget,
            || self.ec2.terminate_instance(self.instance_id),
            |error, delay| {
                let again = error.is_retryable();
                if again {
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "EC2 refused for now; retrying.");
                }
                again
            },
        )
        .await
        .map_err(|source| ScaleInError::Ec2 {
            instance_id: self.instance_id.to_owned(),
            source,
        })?;
        tracing::info!("EC2 is terminating this instance.");
        Ok(())
    }

    /// Lets a terminating Auto Scaling group go on at once instead of waiting out
    /// its termination hook's heartbeat timeout.
    async fn complete_lifecycle_hook(&self) -> Result<(), ScaleInError> {
        let Some(group) = self.group().await? else {
            tracing::info!(
                "Auto Scaling no longer knows this instance; no lifecycle hook to complete."
            );
            return Ok(());
        };
        let hook = match &self.config.agent.lifecycle_hook {
            Some(hook) => hook.clone(),
            None => {
                let hooks = retrying(|| {
                    self.autoscaling
                        .describe_lifecycle_hooks()
                        .auto_scaling_group_name(&group)
                        .send()
                })
                .await
                .map_err(|e| self.error("DescribeLifecycleHooks", e))?;
                let mut names: Vec<String> = hooks
                    .lifecycle_hooks()
                    .iter()
                    .filter(|h| h.lifecycle_transition() == Some(TERMINATING))
                    .filter_map(|h| h.lifecycle_hook_name().map(str::to_owned))
                    .collect();
                match names.len() {
                    0 => {
                        tracing::info!(
                            group,
                            "The group has no termination hook; nothing to complete."
                        );
                        return Ok(());
                    }
                    1 => names.remove(0),
                    _ => {
                        return Err(ScaleInError::AmbiguousHook {
                            group,
                            hooks: names.join(", "),
                        });
                    }
                }
            }
        };
        retrying(|| {
            self.autoscaling
                .complete_lifecycle_action()
                .auto_scaling_group_name(&group)
                .lifecycle_hook_name(&hook)
                .instance_id(self.instance_id)
                .lifecycle_action_result("CONTINUE")
                .send()
        })
        .await
        .map_err(|e| self.error("CompleteLifecycleAction", e))?;
        tracing::info!(
            group,
            hook,
            "Completed the termination hook; Auto Scaling goes on at once."
        );
        Ok(())
    }

    fn error<E, R>(&self, operation: &'static str, error: SdkError<E, R>) -> ScaleInError
    where
        E: std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        ScaleInError::AutoScaling {
            operation,
            instance_id: self.instance_id.to_owned(),
            source: error.into(),
        }
    }
}

/// The Auto Scaling group `instance_id` is in, if any.
async fn group_of(
    client: &aws_sdk_autoscaling::Client,
    instance_id: &str,
) -> Result<
    Option<String>,
    SdkError<
        aws_sdk_autoscaling::operation::describe_auto_scaling_instances::DescribeAutoScalingInstancesError,
        aws_sdk_autoscaling::config::http::HttpResponse,
    >,
>{
    let instances = retrying(|| {
        client
            .describe_auto_scaling_instances()
            .instance_ids(instance_id)
            .send()
    })
    .await?;
    Ok(instances
        .auto_scaling_instances()
        .first()
        .and_then(|i| i.auto_scaling_group_name())
        .map(str::to_owned))
}

/// Runs an Auto Scaling call until it succeeds, fails for good, or `DEADLINE`
/// passes. The SDK's own three attempts are too few for a throttled account.
async fn retrying<T, E, R, F, Fut>(call: F) -> Result<T, SdkError<E, R>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SdkError<E, R>>>,
    E: ProvideErrorMetadata,
{
    let pace = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    let budget = Budget::Until(tokio::time::Instant::now() + DEADLINE);
    crate::backoff::retry(pace, budget, call, |error, delay| {
        let code = error.code().unwrap_or_default();
        let retryable = matches!(
            code,
            "Throttling"
                | "ThrottlingException"
                | "RequestLimitExceeded"
                | "ScalingActivityInProgress"
        ) || error.as_service_error().is_none();
        if retryable {
            let message = error.message().unwrap_or_default();
            tracing::warn!(%code, error = %message, retry_in_ms = delay.as_millis() as u64, "Auto Scaling refused for now; retrying.");
        }
        retryable
    })
    .await
}

fn is_not_in_group(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    message.contains("not found")
        || message.contains("not part of")
        || message.contains("invalid instance")
}

async fn shutdown(command: &[String]) -> Result<(), ScaleInError> {
    let error = |message: String| ScaleInError::Shutdown {
        command: command.to_vec(),
        message,
    };
    let (program, args) = command
        .split_first()
        .ok_or_else(|| error("empty command".into()))?;
    tracing::info!(?command, "Running the shutdown command.");
    let status = tokio::process::Command::new(program)
        .args(args)
        .status()
        .await
        .map_err(|e| error(e.to_string()))?;
    if status.success() {
        Ok(())
    } else {
        Err(error(status.to_string()))
    }
}
