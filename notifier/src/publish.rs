//! Publishing a message to the SNS topic: the only code that talks to AWS.
//!
//! The SDK reads its credentials (the function's role), region and endpoint
//! (`AWS_ENDPOINT_URL`, for a local emulator) from the environment.

use std::collections::HashMap;
use std::future::Future;

use aws_sdk_sns::error::DisplayErrorContext;
use aws_sdk_sns::types::MessageAttributeValue;

use crate::message::Message;

/// Somewhere a message can be published; the message id on success.
pub trait Publisher {
    fn publish(&self, message: &Message) -> impl Future<Output = Result<String, String>> + Send;
}

#[derive(Clone)]
pub struct SnsPublisher {
    client: aws_sdk_sns::Client,
    topic_arn: String,
}

impl SnsPublisher {
    pub fn new(client: aws_sdk_sns::Client, topic_arn: String) -> SnsPublisher {
        SnsPublisher { client, topic_arn }
    }
}

impl Publisher for SnsPublisher {
    async fn publish(&self, message: &Message) -> Result<String, String> {
        let attributes = message
            .attributes
            .iter()
            .map(|(name, value)| {
                let value = MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(value)
                    .build();
                value
                    .map(|value| (name.to_string(), value))
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<HashMap<_, _>, _>>()?;
        let output = self
            .client
            .publish()
            .topic_arn(&self.topic_arn)
            .subject(&message.subject)
            .message(&message.body)
            .set_message_attributes(Some(attributes))
            .send()
            .await
            .map_err(|e| DisplayErrorContext(e).to_string())?;
        Ok(output.message_id.unwrap_or_default())
    }
}
