//! The notifier Lambda function (runtime `provided.al2023`, binary `bootstrap`): turns
//! each login_notification event into one SNS message a person can read.
//! Settings: see `config.rs`; message format: `message.rs` and `body.rs`.

mod body;
mod config;
mod error;
mod event;
mod filter;
mod handler;
mod message;
mod publish;
#[cfg(test)]
mod testdata;
mod text;

use std::sync::Arc;

use lambda_runtime::{service_fn, LambdaEvent};
use serde_json::Value;

use crate::config::Config;
use crate::publish::SnsPublisher;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let config = Config::from_env().inspect_err(|e| eprintln!("ERROR configuration: {e}"))?;
    let sdk_config = aws_config::load_from_env().await;
    let publisher = SnsPublisher::new(
        aws_sdk_sns::Client::new(&sdk_config),
        config.topic_arn.clone(),
    );
    let state = Arc::new((config, publisher));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let state = Arc::clone(&state);
        async move { handler::handle(event.payload, &state.0, &state.1).await }
    }))
    .await
}
