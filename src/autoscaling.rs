//! Scale-in: after an idle drain (or an Auto Scaling termination), the instance
//! removes itself, so the pool shrinks instead of paying for an idle host.
//!
//! `terminate` calls TerminateInstanceInAutoScalingGroup with
//! `ShouldDecrementDesiredCapacity=true`: without the decrement Auto Scaling would
//! launch a replacement at once (Buildkite's fallback forgets it and leaves pools
//! billed forever). Throttling is retried with backoff. An instance in no group falls
//! back to the configured shutdown command, which terminates an instance launched
//! with `InstanceInitiatedShutdownBehavior=terminate`.

use std::time::Duration;

use aws_sdk_autoscaling::error::{DisplayErrorContext, ProvideErrorMetadata};

use crate::backoff::Backoff;
use crate::config::{Config, OnExit};

/// How long scale-in keeps retrying a throttled or busy Auto Scaling API.
const DEADLINE: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum ScaleInError {
    #[error("terminate {instance_id} in its Auto Scaling group: {message}")]
    Terminate {
        instance_id: String,
        message: String,
    },
    #[error("run the shutdown command {command:?}: {message}")]
    Shutdown {
        command: Vec<String>,
        message: String,
    },
}

/// Carries out `agent.on_exit` for this instance. `group_terminating` says Auto
/// Scaling is already terminating it: asking again would decrement the group's
/// capacity a second time.
pub async fn on_exit(
    config: &Config,
    client: &aws_sdk_autoscaling::Client,
    instance_id: &str,
    group_terminating: bool,
) -> Result<(), ScaleInError> {
    match config.agent.on_exit {
        OnExit::None => Ok(()),
        OnExit::Terminate if group_terminating => {
            tracing::info!("Auto Scaling is already terminating this instance; nothing to do.");
            Ok(())
        }
        OnExit::Shutdown => shutdown(&config.agent.shutdown_command).await,
        OnExit::Terminate => match terminate_in_group(client, instance_id).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                tracing::warn!(
                    "This instance is in no Auto Scaling group; running the shutdown command instead."
                );
                shutdown(&config.agent.shutdown_command).await
            }
            Err(e) => Err(e),
        },
    }
}

/// True once Auto Scaling accepted the termination; false if the instance is in no
/// group.
async fn terminate_in_group(
    client: &aws_sdk_autoscaling::Client,
    instance_id: &str,
) -> Result<bool, ScaleInError> {
    let give_up = tokio::time::Instant::now() + DEADLINE;
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    loop {
        let result = client
            .terminate_instance_in_auto_scaling_group()
            .instance_id(instance_id)
            .should_decrement_desired_capacity(true)
            .send()
            .await;
        let error = match result {
            Ok(output) => {
                let activity = output.activity.and_then(|a| a.description);
                tracing::info!(
                    activity = activity.as_deref(),
                    "Auto Scaling is terminating this instance; desired capacity decremented."
                );
                return Ok(true);
            }
            Err(e) => e,
        };
        let code = error.code().unwrap_or_default().to_owned();
        let message = error.message().unwrap_or_default().to_owned();
        if code == "ValidationError" && is_not_in_group(&message) {
            return Ok(false);
        }
        let retryable = matches!(
            code.as_str(),
            "Throttling"
                | "ThrottlingException"
                | "RequestLimitExceeded"
                | "ScalingActivityInProgress"
        ) || error.as_service_error().is_none();
        let delay = backoff.next_delay();
        if !retryable || tokio::time::Instant::now() + delay > give_up {
            return Err(ScaleInError::Terminate {
                instance_id: instance_id.to_owned(),
                message: DisplayErrorContext(&error).to_string(),
            });
        }
        tracing::warn!(%code, error = %message, retry_in_ms = delay.as_millis() as u64, "Auto Scaling refused for now; retrying.");
        tokio::time::sleep(delay).await;
    }
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
