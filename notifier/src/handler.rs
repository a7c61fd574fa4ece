//! One invocation: parse, filter, build the message, publish it.

use serde_json::{json, Value};

use crate::config::Config;
use crate::error::NotifierError;
use crate::event::parse;
use crate::filter::skip_reason;
use crate::message::build;
use crate::publish::Publisher;
use crate::text::show;

/// How much of a refused payload goes to the log.
const MAX_LOGGED_PAYLOAD_CHARS: usize = 2000;

/// Handles one payload. Ok: `{"published": true, "messageId": …}` or
/// `{"published": false, "skipped": reason}`. Every outcome is logged in one line.
pub async fn handle(
    payload: Value,
    config: &Config,
    publisher: &impl Publisher,
) -> Result<Value, NotifierError> {
    let logged_payload = show(&payload.to_string(), MAX_LOGGED_PAYLOAD_CHARS);
    let event = parse(payload)
        .inspect_err(|e| eprintln!("ERROR invalid payload: {e}; payload: {logged_payload}"))?;
    if let Some(reason) = skip_reason(&event, &config.filters) {
        println!("skipped {} event: {reason}", show(event.kind(), 64));
        return Ok(json!({"published": false, "skipped": reason}));
    }
    let message = build(&event, config.label.as_deref());
    match publisher.publish(&message).await {
        Ok(message_id) => {
            println!("published {message_id}: {}", message.subject);
            Ok(json!({"published": true, "messageId": message_id}))
        }
        Err(reason) => {
            eprintln!(
                "ERROR SNS publish failed: {reason}; subject: {}",
                message.subject
            );
            Err(NotifierError::Publish(reason))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Filters;
    use crate::message::Message;
    use crate::testdata::{failure_payload, login_payload};
    use std::sync::Mutex;

    /// Records what it is asked to publish; fails when `fail` is set.
    #[derive(Default)]
    struct FakePublisher {
        published: Mutex<Vec<Message>>,
        fail: bool,
    }

    impl Publisher for FakePublisher {
        async fn publish(&self, message: &Message) -> Result<String, String> {
            if self.fail {
                return Err("AuthorizationError: not allowed".into());
            }
            let mut published = self.published.lock().map_err(|e| e.to_string())?;
            published.push(message.clone());
            Ok(format!("m-{}", published.len()))
        }
    }

    fn config(skip_users: &[&str]) -> Config {
        Config {
            topic_arn: "arn:aws:sns:us-east-1:000000000000:logins".into(),
            label: Some("db-prod".into()),
            filters: Filters {
                skip_users: skip_users.iter().map(|u| u.to_string()).collect(),
                only_failures: false,
            },
        }
    }

    fn run(
        payload: Value,
        config: &Config,
        publisher: &FakePublisher,
    ) -> Result<Value, NotifierError> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| NotifierError::Publish(e.to_string()))?
            .block_on(handle(payload, config, publisher))
    }

    fn published(publisher: &FakePublisher) -> Vec<Message> {
        publisher
            .published
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default()
    }

    #[test]
    fn publishes_one_message_per_event() {
        let publisher = FakePublisher::default();
        let result = run(failure_payload(), &config(&[]), &publisher).expect("published");
        assert_eq!(result, json!({"published": true, "messageId": "m-1"}));
        let messages = published(&publisher);
        assert_eq!(messages.len(), 1);
        assert_eq!(
            messages[0].subject,
            "[db-prod] FAILED login: bob → orders from 10.0.0.5"
        );
    }

    #[test]
    fn skipped_users_are_not_published() {
        let publisher = FakePublisher::default();
        let result = run(login_payload(), &config(&["alice"]), &publisher).expect("skipped");
        assert_eq!(
            result,
            json!({"published": false, "skipped": "user alice is in SKIP_USERS"})
        );
        assert!(published(&publisher).is_empty());
    }

    #[test]
    fn invalid_payloads_are_function_errors() {
        let publisher = FakePublisher::default();
        let error = run(
            json!({"schemaVersion": 1, "event": "login"}),
            &config(&[]),
            &publisher,
        )
        .expect_err("must fail");
        assert_eq!(
            error.to_string(),
            "invalid payload: login event: missing field `status`"
        );
        let diagnostic: lambda_runtime::Diagnostic = error.into();
        assert_eq!(diagnostic.error_type, "InvalidPayload");
        assert!(published(&publisher).is_empty());
    }

    #[test]
    fn publish_failures_are_function_errors() {
        let publisher = FakePublisher {
            fail: true,
            ..FakePublisher::default()
        };
        let error = run(login_payload(), &config(&[]), &publisher).expect_err("must fail");
        let diagnostic: lambda_runtime::Diagnostic = error.into();
        assert_eq!(diagnostic.error_type, "PublishFailed");
        assert_eq!(
            diagnostic.error_message,
            "SNS publish failed: AuthorizationError: not allowed"
        );
    }
}
