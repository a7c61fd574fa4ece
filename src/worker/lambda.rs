//! The Lambda client and one delivery with timeout, retries and backoff.
//!
//! Everything here runs on tokio threads and never calls into PostgreSQL: it receives plain
//! values (the [`Target`], a payload as bytes) and reports through the shared-memory
//! counters, which are Rust atomics.

use crate::queue::Stats;
use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_lambda::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use aws_sdk_lambda::Client;
use aws_smithy_runtime_api::http::Response as HttpResponse;
use std::time::Duration;

/// How long loading the AWS configuration (region chain) may take before we give up.
const CONFIG_LOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// First retry delay; doubled per attempt, capped, with jitter.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvocationKind {
    Event,
    RequestResponse,
}

/// Where and how to deliver: read from the settings on the main thread, then owned here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub function_name: String,
    /// Explicit region (setting or ARN); `None` = the SDK's default chain.
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub invocation: InvocationKind,
    pub timeout: Duration,
    pub max_retries: u32,
}

impl std::fmt::Display for Target {
    /// The effective configuration for the log. Never includes credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "function_name={:?} region={} endpoint_url={} invocation_type={} timeout={}ms max_retries={}",
            self.function_name,
            self.region.as_deref().unwrap_or("(sdk default)"),
            self.endpoint_url.as_deref().unwrap_or("(aws default)"),
            match self.invocation {
                InvocationKind::Event => "event",
                InvocationKind::RequestResponse => "request_response",
            },
            self.timeout.as_millis(),
            self.max_retries
        )
    }
}

/// Why one attempt failed, and whether another attempt may succeed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("{0}")]
    Retryable(String),
    #[error("{0}")]
    Permanent(String),
}

impl DeliveryError {
    pub fn retryable(&self) -> bool {
        matches!(self, DeliveryError::Retryable(_))
    }
}

pub struct Lambda {
    client: Client,
    target: Target,
}

impl Lambda {
    /// Builds the client: the default credential chain (environment, profile, web identity,
    /// ECS/EC2 roles), our region and endpoint, and no SDK retries (we retry ourselves, to
    /// count them and to bound each attempt).
    pub async fn connect(target: Target) -> Result<Lambda, String> {
        let mut loader =
            aws_config::defaults(BehaviorVersion::latest()).retry_config(RetryConfig::disabled());
        if let Some(region) = &target.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(url) = &target.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let config = tokio::time::timeout(CONFIG_LOAD_TIMEOUT, loader.load())
            .await
            .map_err(|_| "timed out loading the AWS configuration".to_string())?;
        if config.region().is_none() {
            return Err(
                "no AWS region: set login_notification.region, use a function ARN, \
                        or set AWS_REGION for the server"
                    .into(),
            );
        }
        Ok(Lambda {
            client: Client::new(&config),
            target,
        })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Delivers one payload: up to `1 + max_retries` attempts, each bounded by `timeout`,
    /// with exponential backoff between them. Counts each retry in `stats.retried`.
    pub async fn deliver(&self, payload: &[u8], stats: &Stats) -> Result<(), DeliveryError> {
        let mut attempt = 0;
        loop {
            match self.attempt(payload).await {
                Err(e) if e.retryable() && attempt < self.target.max_retries => {
                    Stats::count(&stats.retried);
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// One attempt, bounded by the per-attempt timeout.
    pub async fn attempt(&self, payload: &[u8]) -> Result<(), DeliveryError> {
        match tokio::time::timeout(self.target.timeout, self.invoke(payload)).await {
            Ok(result) => result,
            Err(_) => Err(DeliveryError::Retryable(format!(
                "no answer within {} ms",
                self.target.timeout.as_millis()
            ))),
        }
    }

    async fn invoke(&self, payload: &[u8]) -> Result<(), DeliveryError> {
        let invocation = match self.target.invocation {
            InvocationKind::Event => InvocationType::Event,
            InvocationKind::RequestResponse => InvocationType::RequestResponse,
        };
        let out = self
            .client
            .invoke()
            .function_name(&self.target.function_name)
            .invocation_type(invocation)
            .payload(Blob::new(payload))
            .send()
            .await
            .map_err(classify)?;
        match out.function_error() {
            Some(kind) => Err(DeliveryError::Permanent(format!(
                "the function failed (X-Amz-Function-Error: {kind})"
            ))),
            None => Ok(()),
        }
    }
}

/// Throttling, 5xx, timeouts and network failures may pass on retry; other 4xx (unknown
/// function, access denied, bad request) will not.
fn classify<E>(err: SdkError<E, HttpResponse>) -> DeliveryError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match &err {
        SdkError::ServiceError(service) => {
            let status = service_status(&err);
            let inner = service.err();
            let text = format!(
                "{} (HTTP {}): {}",
                inner.code().unwrap_or("error"),
                status.map_or("?".to_string(), |s| s.to_string()),
                inner.message().unwrap_or("no message")
            );
            match status {
                Some(429) | Some(500..=599) => DeliveryError::Retryable(text),
                _ => DeliveryError::Permanent(text),
            }
        }
        SdkError::ConstructionFailure(_) => {
            DeliveryError::Permanent(format!("{}", DisplayErrorContext(&err)))
        }
        _ => DeliveryError::Retryable(format!("{}", DisplayErrorContext(&err))),
    }
}

fn service_status<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

/// 100 ms, 200 ms, 400 ms … capped at 5 s, each with up to 50% random jitter.
fn backoff(attempt: u32) -> Duration {
    let base = BACKOFF_BASE
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_MAX);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    base + base.mul_f64(f64::from(nanos % 1000) / 2000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(
            backoff(0) >= Duration::from_millis(100) && backoff(0) < Duration::from_millis(151)
        );
        assert!(backoff(2) >= Duration::from_millis(400));
        assert!(backoff(30) <= BACKOFF_MAX.mul_f64(1.5));
    }

    #[test]
    fn effective_configuration_is_readable() {
        let t = Target {
            function_name: "notifier".into(),
            region: None,
            endpoint_url: Some("http://127.0.0.1:4566".into()),
            invocation: InvocationKind::Event,
            timeout: Duration::from_millis(5000),
            max_retries: 3,
        };
        assert_eq!(
            t.to_string(),
            "function_name=\"notifier\" region=(sdk default) endpoint_url=http://127.0.0.1:4566 \
             invocation_type=event timeout=5000ms max_retries=3"
        );
    }
}
