//! moto, through the real AWS SDK: queues, buckets and results of a test's own.

use std::collections::HashMap;

use aws_config::BehaviorVersion;
use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::Value;

use super::{LONG, eventually, keys, unique};

pub struct Aws {
    pub endpoint: String,
    pub sqs: aws_sdk_sqs::Client,
    pub s3: aws_sdk_s3::Client,
    pub autoscaling: aws_sdk_autoscaling::Client,
    pub sdk: aws_config::SdkConfig,
}

/// An Auto Scaling group of the test's own, with the instances moto launched in it.
pub struct Group {
    pub name: String,
    pub instances: Vec<String>,
}

/// A queue with a dead-letter queue behind a redrive policy, and a results bucket,
/// all named for one test.
pub struct Pool {
    pub queue_url: String,
    pub dlq_url: String,
    pub bucket: String,
}

impl Aws {
    pub async fn new() -> Aws {
        let endpoint = std::env::var("STACK_AWS_ENDPOINT_URL").expect(
            "STACK_AWS_ENDPOINT_URL is not set: run the tests through scripts/test, or eval \"$(scripts/stack env)\" first",
        );
        Self::at(&endpoint).await
    }

    pub async fn at(endpoint: &str) -> Aws {
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .http_client(deckhand::tls::aws_http_client())
            .endpoint_url(endpoint)
            .region(aws_config::Region::new("us-east-1"))
            .load()
            .await;
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&sdk)
                .force_path_style(true)
                .build(),
        );
        Aws {
            endpoint: endpoint.to_owned(),
            sqs: aws_sdk_sqs::Client::new(&sdk),
            autoscaling: aws_sdk_autoscaling::Client::new(&sdk),
            s3,
            sdk,
        }
    }

    /// moto's `host:port`, for a proxy in front of it.
    pub fn upstream(&self) -> String {
        self.endpoint.trim_start_matches("http://").to_owned()
    }

    /// A fresh group of `desired` instances (moto launches them at once).
    pub async fn group(&self, desired: i32) -> Group {
        let name = unique("ci-pool");
        self.autoscaling
            .create_launch_configuration()
            .launch_configuration_name(&name)
            .image_id("ami-12c6146b")
            .instance_type("t3.micro")
            .send()
            .await
            .unwrap();
        self.autoscaling
            .create_auto_scaling_group()
            .auto_scaling_group_name(&name)
            .launch_configuration_name(&name)
            .min_size(0)
            .max_size(desired + 1)
            .desired_capacity(desired)
            .availability_zones("us-east-1a")
            .send()
            .await
            .unwrap();
        let instances = self.describe_group(&name).await.1;
        assert_eq!(instances.len(), desired as usize);
        Group { name, instances }
    }

    /// Whether the group holds `instance_id` protected from scale-in.
    pub async fn protected(&self, instance_id: &str) -> bool {
        self.autoscaling
            .describe_auto_scaling_instances()
            .instance_ids(instance_id)
            .send()
            .await
            .unwrap()
            .auto_scaling_instances()
            .first()
            .and_then(|i| i.protected_from_scale_in())
            .unwrap_or(false)
    }

    pub async fn put_hook(&self, group: &str, name: &str, transition: &str) {
        self.autoscaling
            .put_lifecycle_hook()
            .auto_scaling_group_name(group)
            .lifecycle_hook_name(name)
            .lifecycle_transition(transition)
            .send()
            .await
            .unwrap();
    }

    /// The group's desired capacity and its instances.
    pub async fn describe_group(&self, name: &str) -> (i32, Vec<String>) {
        let group = self
            .autoscaling
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(name)
            .send()
            .await
            .unwrap()
            .auto_scaling_groups
            .unwrap()
            .remove(0);
        let instances = group
            .instances
            .unwrap_or_default()
            .into_iter()
            .map(|i| i.instance_id.unwrap())
            .collect();
        (group.desired_capacity.unwrap(), instances)
    }

    /// An EC2 instance's state name (`running`, `terminated`…), from moto's
    /// DescribeInstances.
    pub async fn instance_state(&self, instance_id: &str) -> Option<String> {
        let ec2 = deckhand::aws::ec2::Ec2::new(&self.sdk, Some(&self.endpoint));
        let xml = ec2
            .call("DescribeInstances", &[("InstanceId.1", instance_id)])
            .await
            .unwrap();
        // <instanceState><code>48</code><name>terminated</name></instanceState>
        let state = &xml[xml.find("<instanceState>")?..];
        let name = &state[state.find("<name>")? + "<name>".len()..];
        Some(name[..name.find("</name>")?].to_owned())
    }

    /// A fresh queue, its DLQ (after `max_receives` deliveries) and a bucket.
    pub async fn pool(&self, name: &str, max_receives: u32) -> Pool {
        let base = unique(name);
        let dlq_url = self
            .create_queue(&format!("{base}-dlq"), HashMap::new())
            .await;
        let dlq_arn = self
            .sqs
            .get_queue_attributes()
            .queue_url(&dlq_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .unwrap()
            .attributes
            .unwrap()[&QueueAttributeName::QueueArn]
            .clone();
        let redrive = serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receives.to_string()});
        let queue_url = self
            .create_queue(
                &base,
                HashMap::from([(QueueAttributeName::RedrivePolicy, redrive.to_string())]),
            )
            .await;
        let bucket = base.to_lowercase().replace('_', "-");
        self.s3
            .create_bucket()
            .bucket(&bucket)
            .send()
            .await
            .unwrap();
        Pool {
            queue_url,
            dlq_url,
            bucket,
        }
    }

    /// A fresh queue of its own, with no redrive; its URL.
    pub async fn queue(&self, name: &str) -> String {
        self.create_queue(name, HashMap::new()).await
    }

    /// Sends `body` with one string message attribute, as a producer may.
    pub async fn send_with_attribute(&self, queue_url: &str, body: &str, name: &str, value: &str) {
        let value = aws_sdk_sqs::types::MessageAttributeValue::builder()
            .data_type("String")
            .string_value(value)
            .build()
            .unwrap();
        self.sqs
            .send_message()
            .queue_url(queue_url)
            .message_body(body)
            .message_attributes(name, value)
            .send()
            .await
            .unwrap();
    }

    async fn create_queue(
        &self,
        name: &str,
        attributes: HashMap<QueueAttributeName, String>,
    ) -> String {
        self.sqs
            .create_queue()
            .queue_name(name)
            .set_attributes(Some(attributes))
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap()
    }

    pub async fn send(&self, queue_url: &str, body: &str) -> String {
        self.sqs
            .send_message()
            .queue_url(queue_url)
            .message_body(body)
            .send()
            .await
            .unwrap()
            .message_id
            .unwrap()
    }

    pub async fn send_job(&self, queue_url: &str, job: &Value) -> String {
        self.send(queue_url, &job.to_string()).await
    }

    /// (visible, in flight) messages on the queue.
    pub async fn counts(&self, queue_url: &str) -> (u64, u64) {
        let attributes = self
            .sqs
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .unwrap()
            .attributes
            .unwrap();
        let get = |name: &QueueAttributeName| attributes[name].parse().unwrap();
        (
            get(&QueueAttributeName::ApproximateNumberOfMessages),
            get(&QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        )
    }

    /// Receives (and deletes) whatever is on the queue now: for reading a DLQ.
    pub async fn drain_queue(&self, queue_url: &str) -> Vec<aws_sdk_sqs::types::Message> {
        let mut all = Vec::new();
        loop {
            let messages = self
                .sqs
                .receive_message()
                .queue_url(queue_url)
                .max_number_of_messages(10)
                .message_attribute_names("All")
                .wait_time_seconds(0)
                .send()
                .await
                .unwrap()
                .messages
                .unwrap_or_default();
            if messages.is_empty() {
                return all;
            }
            for m in &messages {
                self.sqs
                    .delete_message()
                    .queue_url(queue_url)
                    .receipt_handle(m.receipt_handle().unwrap())
                    .send()
                    .await
                    .unwrap();
            }
            all.extend(messages);
        }
    }

    pub async fn put(&self, bucket: &str, key: &str, body: Vec<u8>) {
        self.s3
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(body.into())
            .send()
            .await
            .unwrap();
    }

    pub async fn object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        match self.s3.get_object().bucket(bucket).key(key).send().await {
            Ok(out) => Some(out.body.collect().await.unwrap().into_bytes().to_vec()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => None,
            Err(e) => panic!("get s3://{bucket}/{key}: {e:?}"),
        }
    }

    pub async fn json(&self, bucket: &str, key: &str) -> Option<Value> {
        self.object(bucket, key)
            .await
            .map(|bytes| serde_json::from_slice(&bytes).unwrap())
    }

    /// Waits for an object to exist; its bytes.
    pub async fn wait_object(&self, bucket: &str, key: &str) -> Vec<u8> {
        let what = format!("s3://{bucket}/{key}");
        eventually(&what, LONG, || self.object(bucket, key)).await
    }

    pub async fn wait_json(&self, bucket: &str, key: &str) -> Value {
        serde_json::from_slice(&self.wait_object(bucket, key).await).unwrap()
    }

    /// A job's terminal result, if recorded.
    pub async fn result(&self, pool: &Pool, id: &str) -> Option<Value> {
        self.json(&pool.bucket, &keys::result(id)).await
    }

    /// Waits for a job's terminal result.
    pub async fn wait_result(&self, pool: &Pool, id: &str) -> Value {
        let what = format!("a result for {id}");
        eventually(&what, LONG, || self.result(pool, id)).await
    }

    /// An interrupted or failed attempt's record.
    pub async fn attempt(&self, pool: &Pool, id: &str, n: u32) -> Option<Value> {
        self.json(&pool.bucket, &keys::attempt(id, n)).await
    }

    /// A job's whole log, as text.
    pub async fn log(&self, pool: &Pool, id: &str) -> Option<String> {
        let bytes = self.object(&pool.bucket, &keys::log(id)).await?;
        Some(String::from_utf8(bytes).unwrap())
    }

    /// Waits until the job queue holds nothing, visible or in flight.
    pub async fn wait_empty(&self, pool: &Pool) {
        eventually("the queue to be empty, nothing in flight", LONG, || async {
            self.counts(&pool.queue_url).await == (0, 0)
        })
        .await;
    }

    /// Every key under `prefix`.
    pub async fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut pages = self
            .s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            keys.extend(
                page.unwrap()
                    .contents
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|o| o.key),
            );
        }
        keys
    }
}
