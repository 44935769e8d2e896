//! The job queue (and the other queues deckhand writes to), through the SQS API.
//!
//! Messages are only ever deleted after their outcome is recorded; everything else
//! returns them to the queue, either at once (visibility 0) or when SQS's visibility
//! timeout runs out.

use std::time::Duration;

use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName};

#[derive(Debug, thiserror::Error)]
pub enum SqsError {
    #[error("receive from {queue_url}: {}", DisplayErrorContext(&**source))]
    Receive {
        queue_url: String,
        source: Box<aws_sdk_sqs::Error>,
    },
    #[error(
        "delete message {message_id} from {queue_url}: {}",
        DisplayErrorContext(&**source)
    )]
    Delete {
        queue_url: String,
        message_id: String,
        source: Box<aws_sdk_sqs::Error>,
    },
    #[error(
        "change visibility of message {message_id} on {queue_url}: {}",
        DisplayErrorContext(&**source)
    )]
    ChangeVisibility {
        queue_url: String,
        message_id: String,
        source: Box<aws_sdk_sqs::Error>,
    },
    #[error("send to {queue_url}: {}", DisplayErrorContext(&**source))]
    Send {
        queue_url: String,
        source: Box<aws_sdk_sqs::Error>,
    },
}

/// One queue, by URL.
#[derive(Clone, Debug)]
pub struct Queue {
    client: aws_sdk_sqs::Client,
    url: String,
}

/// A received message: the job body and what is needed to delete or release it.
#[derive(Clone, Debug)]
pub struct Received {
    pub message_id: String,
    pub receipt: String,
    pub body: String,
    /// SQS's `ApproximateReceiveCount`: 1 on the first delivery.
    pub receive_count: u32,
    /// SQS's `SentTimestamp` (milliseconds since the epoch), when it gave one.
    pub sent_at_ms: Option<i64>,
    /// Its message attributes, the producer's and deckhand's own, as sent: a
    /// copy sent back to the queue carries them all.
    pub attributes: Vec<(String, MessageAttributeValue)>,
}

/// SQS's most message attributes on one message.
pub const MAX_ATTRIBUTES: usize = 10;
/// SQS's longest `DelaySeconds`.
pub const MAX_DELAY: Duration = Duration::from_secs(900);

/// A string message attribute.
pub fn text_attribute(value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .expect("data_type is set")
}

impl Queue {
    pub fn new(client: aws_sdk_sqs::Client, url: impl Into<String>) -> Self {
        Queue {
            client,
            url: url.into(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Long-polls for up to `max` messages (1 to 10), hidden for `visibility`.
    /// Dropping the future is safe: a message SQS handed to a dropped call comes
    /// back after its visibility timeout.
    pub async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Received>, SqsError> {
        let output = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .wait_time_seconds(wait.as_secs() as i32)
            .visibility_timeout(visibility.as_secs() as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| SqsError::Receive {
                queue_url: self.url.clone(),
                source: Box::new(e.into()),
            })?;
        Ok(output
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| {
                let receive_count = m
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(1);
                let sent_at_ms = m
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
                    .and_then(|t| t.parse().ok());
                let mut attributes: Vec<_> = m
                    .message_attributes
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
                attributes.sort_by(|a, b| a.0.cmp(&b.0));
                Some(Received {
                    message_id: m.message_id?,
                    receipt: m.receipt_handle?,
                    body: m.body.unwrap_or_default(),
                    receive_count,
                    sent_at_ms,
                    attributes,
                })
            })
            .collect())
    }

    pub async fn delete(&self, message: &Received) -> Result<(), SqsError> {
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(&message.receipt)
            .send()
            .await
            .map(drop)
            .map_err(|e| SqsError::Delete {
                queue_url: self.url.clone(),
                message_id: message.message_id.clone(),
                source: Box::new(e.into()),
            })
    }

    /// Hides the message for `visibility` from now; zero makes it receivable at once.
    pub async fn set_visibility(
        &self,
        message_id: &str,
        receipt: &str,
        visibility: Duration,
    ) -> Result<(), SqsError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .visibility_timeout(visibility.as_secs() as i32)
            .send()
            .await
            .map(drop)
            .map_err(|e| SqsError::ChangeVisibility {
                queue_url: self.url.clone(),
                message_id: message_id.to_owned(),
                source: Box::new(e.into()),
            })
    }

    /// Sends `body` with string message attributes; returns the new message's id.
    pub async fn send(&self, body: &str, attributes: &[(&str, &str)]) -> Result<String, SqsError> {
        let attributes: Vec<_> = attributes
            .iter()
            .map(|(name, value)| ((*name).to_owned(), text_attribute(value)))
            .collect();
        self.send_delayed(body, &attributes, Duration::ZERO).await
    }

    /// Sends `body` with these message attributes, receivable after `delay` (at
    /// most [`MAX_DELAY`]); returns the new message's id.
    pub async fn send_delayed(
        &self,
        body: &str,
        attributes: &[(String, MessageAttributeValue)],
        delay: Duration,
    ) -> Result<String, SqsError> {
        let mut request = self
            .client
            .send_message()
            .queue_url(&self.url)
            .message_body(body);
        if !delay.is_zero() {
            request = request.delay_seconds(delay.min(MAX_DELAY).as_secs() as i32);
        }
        for (name, value) in attributes {
            request = request.message_attributes(name, value.clone());
        }
        let output = request.send().await.map_err(|e| SqsError::Send {
            queue_url: self.url.clone(),
            source: Box::new(e.into()),
        })?;
        Ok(output.message_id.unwrap_or_default())
    }
}
