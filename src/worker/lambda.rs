//! The Lambda client and one delivery with timeout, retries and backoff.
//!
//! Everything here runs on tokio threads and never calls into PostgreSQL: it receives plain
//! values (the [`Target`], a payload as bytes) and reports through the shared-memory
//! counters, which are Rust atomics.

use crate::queue::Stats;
use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_lambda::config::endpoint::{DefaultResolver, Params, ResolveEndpoint};
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_http_client::{tls, Connector};
use aws_smithy_runtime_api::client::http::HttpConnector;
use aws_smithy_runtime_api::client::identity::Identity;
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::byte_stream::ByteStream;
use aws_smithy_types::error::display::DisplayErrorContext;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

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

/// The Invoke client. The AWS SDK's configuration loader supplies the credential chain and
/// the region, and its endpoint rules pick the URL once per connect; each invocation is
/// then one request signed with SigV4 (`aws-sigv4`, the signer the SDK itself uses) on the
/// SDK's own HTTPS connector (connection pool, rustls). The generated client's per-call
/// machinery (runtime plugins, interceptors, endpoint rules and identity lookups rebuilt for
/// every request) cost 100-300 µs of CPU per event, more than the rest of the delivery put
/// together (BENCHMARKS.md, finding 4).
pub struct Lambda {
    connector: Connector,
    credentials: SharedCredentialsProvider,
    identity: Mutex<Option<Identity>>,
    refresh: tokio::sync::Mutex<()>,
    region: String,
    /// `{endpoint}/2015-03-31/functions/{FunctionName}/invocations`, label percent-encoded:
    /// as text for the signer, and parsed once for the requests.
    uri: String,
    parsed_uri: http::Uri,
    target: Target,
}

/// Cached credentials are refreshed this long before they expire.
const CREDENTIALS_REFRESH_MARGIN: Duration = Duration::from_secs(300);
const USER_AGENT: &str = concat!("login_notification/", env!("CARGO_PKG_VERSION"));

impl Lambda {
    /// Builds the client: the default credential chain (environment, profile, web identity,
    /// ECS/EC2 roles), our region and endpoint (else the SDK's endpoint rules for the
    /// region, FIPS and dual-stack settings included). Retries are ours, to count them and
    /// to bound each attempt.
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
        let Some(region) = config.region().map(|r| r.as_ref().to_owned()) else {
            return Err(
                "no AWS region: set login_notification.region, use a function ARN, \
                        or set AWS_REGION for the server"
                    .into(),
            );
        };
        let credentials = config
            .credentials_provider()
            .ok_or_else(|| "the AWS configuration has no credentials provider".to_string())?;
        let params = Params::builder()
            .region(region.clone())
            .set_use_fips(config.use_fips())
            .set_use_dual_stack(config.use_dual_stack())
            .set_endpoint(config.endpoint_url().map(str::to_owned))
            .build()
            .map_err(|e| format!("invalid endpoint parameters: {e}"))?;
        let endpoint = DefaultResolver::new()
            .resolve_endpoint(&params)
            .await
            .map_err(|e| {
                format!(
                    "cannot resolve the Lambda endpoint: {}",
                    DisplayErrorContext(&*e)
                )
            })?;
        let uri = invoke_uri(endpoint.url(), &target.function_name);
        let parsed_uri = uri
            .parse::<http::Uri>()
            .map_err(|e| format!("invalid Lambda endpoint {uri:?}: {e}"))?;
        let connector = Connector::builder()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::AwsLc,
            ))
            .build();
        Ok(Lambda {
            connector,
            credentials,
            identity: Mutex::new(None),
            refresh: tokio::sync::Mutex::new(()),
            region,
            uri,
            parsed_uri,
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

    /// Credentials from the cache, or from the chain when missing or about to expire.
    async fn identity(&self) -> Result<Identity, DeliveryError> {
        if let Some(identity) = self.cached_identity() {
            return Ok(identity);
        }
        let _single_flight = self.refresh.lock().await;
        if let Some(identity) = self.cached_identity() {
            return Ok(identity);
        }
        match self.credentials.provide_credentials().await {
            Ok(credentials) => {
                let identity = Identity::from(credentials);
                *lock(&self.identity) = Some(identity.clone());
                Ok(identity)
            }
            Err(e) => Err(DeliveryError::Retryable(format!(
                "cannot load AWS credentials: {}",
                DisplayErrorContext(&e)
            ))),
        }
    }

    fn cached_identity(&self) -> Option<Identity> {
        let cached = lock(&self.identity);
        let identity = cached.as_ref()?;
        match identity.expiration() {
            Some(expiry) if expiry <= SystemTime::now() + CREDENTIALS_REFRESH_MARGIN => None,
            _ => Some(identity.clone()),
        }
    }

    async fn invoke(&self, payload: &[u8]) -> Result<(), DeliveryError> {
        let identity = self.identity().await?;
        let request = self.signed_request(payload, &identity, SystemTime::now())?;
        let response = self.connector.call(request).await.map_err(|e| {
            DeliveryError::Retryable(format!("dispatch failure: {}", DisplayErrorContext(&e)))
        })?;
        let status = response.status().as_u16();
        let function_error = response
            .headers()
            .get("x-amz-function-error")
            .map(str::to_owned);
        let error_type = response
            .headers()
            .get("x-amzn-errortype")
            .map(str::to_owned);
        // Read the whole answer, so that the connection goes back to the pool.
        let body = ByteStream::new(response.into_body())
            .collect()
            .await
            .map_err(|e| {
                DeliveryError::Retryable(format!(
                    "reading the answer (HTTP {status}): {}",
                    DisplayErrorContext(&e)
                ))
            })?
            .into_bytes();
        if !(200..300).contains(&status) {
            return Err(service_error(status, error_type.as_deref(), &body));
        }
        match function_error {
            Some(kind) => Err(DeliveryError::Permanent(format!(
                "the function failed (X-Amz-Function-Error: {kind})"
            ))),
            None => Ok(()),
        }
    }

    /// The Invoke request for `payload`, signed with SigV4 at `time`.
    fn signed_request(
        &self,
        payload: &[u8],
        identity: &Identity,
        time: SystemTime,
    ) -> Result<HttpRequest, DeliveryError> {
        let content_length = payload.len().to_string();
        let headers = [
            ("content-type", "application/octet-stream"),
            ("content-length", content_length.as_str()),
            (
                "x-amz-invocation-type",
                match self.target.invocation {
                    InvocationKind::Event => "Event",
                    InvocationKind::RequestResponse => "RequestResponse",
                },
            ),
        ];
        let unsignable = |e: &dyn std::fmt::Display| {
            DeliveryError::Permanent(format!("cannot sign the request: {e}"))
        };
        let params = v4::SigningParams::builder()
            .identity(identity)
            .region(&self.region)
            .name("lambda")
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| unsignable(&e))?
            .into();
        let signable = SignableRequest::new(
            "POST",
            self.uri.as_str(),
            headers.iter().copied(),
            SignableBody::Bytes(payload),
        )
        .map_err(|e| unsignable(&e))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| unsignable(&e))?
            .into_parts();
        let mut builder = http::Request::builder()
            .method("POST")
            .uri(self.parsed_uri.clone())
            .header("user-agent", USER_AGENT);
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        let mut request = builder
            .body(SdkBody::from(payload.to_vec()))
            .map_err(|e| unsignable(&e))?;
        instructions.apply_to_request_http1x(&mut request);
        HttpRequest::try_from(request).map_err(|e| unsignable(&e))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `{endpoint}/2015-03-31/functions/{FunctionName}/invocations`: the function name (or
/// ARN, with its qualifier) is one path label, every byte but `A-Za-z0-9-._~`
/// percent-encoded, as the SDK encodes it.
fn invoke_uri(endpoint: &str, function_name: &str) -> String {
    let mut uri = endpoint.trim_end_matches('/').to_owned();
    uri.push_str("/2015-03-31/functions/");
    for b in function_name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            uri.push(char::from(b));
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push_str("/invocations");
    uri
}

/// An error answer of the Lambda API: the error code from `x-amzn-ErrorType` (else the
/// JSON body's `__type`/`code`), its message from the body. Throttling (429) and 5xx may
/// pass on retry; other 4xx (unknown function, access denied, bad request) will not.
fn service_error(status: u16, error_type: Option<&str>, body: &[u8]) -> DeliveryError {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |names: &[&str]| -> Option<String> {
        let json = json.as_ref()?;
        names
            .iter()
            .find_map(|name| json.get(*name).and_then(|v| v.as_str()).map(str::to_owned))
    };
    let code = error_type
        .map(|t| t.split(':').next().unwrap_or(t).to_owned())
        .or_else(|| field(&["__type", "code"]))
        .map(|c| c.rsplit('#').next().unwrap_or(&c).to_owned())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "error".to_owned());
    let message =
        field(&["message", "Message", "errorMessage"]).unwrap_or_else(|| "no message".to_owned());
    let text = format!("{code} (HTTP {status}): {message}");
    match status {
        429 | 500..=599 => DeliveryError::Retryable(text),
        _ => DeliveryError::Permanent(text),
    }
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
    fn the_function_name_is_one_encoded_path_label() {
        assert_eq!(
            invoke_uri("https://lambda.eu-west-1.amazonaws.com", "notifier"),
            "https://lambda.eu-west-1.amazonaws.com/2015-03-31/functions/notifier/invocations"
        );
        assert_eq!(
            invoke_uri(
                "http://127.0.0.1:4566/",
                "arn:aws:lambda:us-east-1:123456789012:function:my-fn_1.x:prod"
            ),
            "http://127.0.0.1:4566/2015-03-31/functions/\
             arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012%3Afunction%3Amy-fn_1.x%3Aprod/invocations"
        );
        assert_eq!(
            invoke_uri("http://h", "a/b c"),
            "http://h/2015-03-31/functions/a%2Fb%20c/invocations"
        );
    }

    #[test]
    fn error_answers_are_named_and_classified() {
        let e = service_error(
            404,
            Some("ResourceNotFoundException:http://internal.amazon.com/"),
            br#"{"Type":"User","Message":"Function not found: arn:aws:lambda:x"}"#,
        );
        assert!(!e.retryable());
        assert_eq!(
            e.to_string(),
            "ResourceNotFoundException (HTTP 404): Function not found: arn:aws:lambda:x"
        );
        let e = service_error(
            429,
            None,
            br#"{"__type":"com.amazon#TooManyRequestsException","message":"Rate exceeded"}"#,
        );
        assert!(e.retryable());
        assert_eq!(
            e.to_string(),
            "TooManyRequestsException (HTTP 429): Rate exceeded"
        );
        let e = service_error(503, None, b"<html>bad gateway</html>");
        assert!(e.retryable());
        assert_eq!(e.to_string(), "error (HTTP 503): no message");
        assert!(!service_error(400, Some("InvalidRequestContentException"), b"").retryable());
        assert!(!service_error(301, None, b"").retryable());
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
