//! Parsing what the function is invoked with.
//!
//! Three shapes are accepted:
//! - login_notification's payload, `"schemaVersion": 1`, with `"event"` `login` or
//!   `test` (one login attempt) or `suppressed` (a summary of the logins not reported
//!   while rate limited); a kind this version does not know is kept as [`Event::Other`];
//! - the minimal `{"userName", "timestamp"}` that existing RDS (pg_tle) setups send;
//! - nothing else: anything that is not a JSON object, another schema version, or a
//!   known kind with a missing or mistyped field is a [`ParseError`] naming the reason.
//!
//! Fields this version does not know are kept in `extra` and shown, never refused.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

/// The payload version this function understands.
pub const SCHEMA_VERSION: u64 = 1;

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Login(Login),
    Suppressed(Suppressed),
    Legacy(Legacy),
    Other(Other),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseError {
    #[error("the payload is {0}, not a JSON object")]
    NotAnObject(&'static str),
    #[error("unsupported schemaVersion {0} (this function understands {SCHEMA_VERSION})")]
    UnsupportedVersion(String),
    #[error("\"event\" is missing or not a string")]
    MissingKind,
    #[error("a legacy payload (no schemaVersion) needs a string \"userName\"")]
    NotLegacy,
    #[error("{kind} event: {reason}")]
    Invalid { kind: String, reason: String },
}

/// `login` (a login attempt) or `test` (from `login_notification.send_test()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kind {
    #[default]
    Login,
    Test,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Login => "login",
            Kind::Test => "test",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "String")]
pub enum Status {
    Success,
    Failure,
    Other(String),
}

impl From<String> for Status {
    fn from(s: String) -> Self {
        match s.as_str() {
            "success" => Status::Success,
            "failure" => Status::Failure,
            _ => Status::Other(s),
        }
    }
}

impl Status {
    pub fn as_str(&self) -> &str {
        match self {
            Status::Success => "success",
            Status::Failure => "failure",
            Status::Other(s) => s,
        }
    }
}

/// The `server` object of schema version 1.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Server {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub cluster_name: Option<String>,
    pub system_identifier: Option<String>,
    pub version: Option<String>,
    pub in_recovery: Option<bool>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// The fields every schema-version-1 event has, and the ones this version does not know.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Common {
    pub timestamp: Option<String>,
    pub time: Option<String>,
    pub event_id: Option<String>,
    pub server: Option<Server>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// A `login` or `test` event.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Login {
    #[serde(skip)]
    pub kind: Kind,
    pub status: Status,
    pub user_name: String,
    pub database_name: Option<String>,
    pub remote_host: Option<String>,
    pub remote_port: Option<u16>,
    pub application_name: Option<String>,
    pub auth_method: Option<String>,
    pub ssl: Option<bool>,
    pub ssl_version: Option<String>,
    pub ssl_cipher: Option<String>,
    pub backend_pid: Option<i64>,
    #[serde(flatten)]
    pub common: Common,
}

/// A `suppressed` summary: logins not reported one by one while rate limited.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Suppressed {
    pub suppressed: u64,
    pub period_start: Option<String>,
    pub period_end: Option<String>,
    #[serde(default)]
    pub by_user: BTreeMap<String, u64>,
    #[serde(default)]
    pub by_remote_host: BTreeMap<String, u64>,
    #[serde(flatten)]
    pub common: Common,
}

/// The `{"userName", "timestamp"}` payload of RDS setups.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Legacy {
    pub user_name: String,
    pub timestamp: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// A schema-version-1 event of a kind this version does not know: shown as it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Other {
    pub kind: String,
    pub server: Option<Server>,
    pub fields: BTreeMap<String, Value>,
}

impl Event {
    /// The `server` facts, if the payload has them.
    pub fn server(&self) -> Option<&Server> {
        match self {
            Event::Login(e) => e.common.server.as_ref(),
            Event::Suppressed(e) => e.common.server.as_ref(),
            Event::Other(e) => e.server.as_ref(),
            Event::Legacy(_) => None,
        }
    }

    /// The event kind as the payload names it (`login` for a legacy payload).
    pub fn kind(&self) -> &str {
        match self {
            Event::Login(e) => e.kind.as_str(),
            Event::Suppressed(_) => "suppressed",
            Event::Legacy(_) => "login",
            Event::Other(e) => &e.kind,
        }
    }
}

pub fn parse(payload: Value) -> Result<Event, ParseError> {
    let mut fields = match payload {
        Value::Object(fields) => fields,
        other => return Err(ParseError::NotAnObject(json_type(&other))),
    };
    let Some(version) = fields.remove("schemaVersion") else {
        return parse_legacy(fields);
    };
    if version.as_u64() != Some(SCHEMA_VERSION) {
        return Err(ParseError::UnsupportedVersion(version.to_string()));
    }
    let kind = match fields.remove("event") {
        Some(Value::String(kind)) => kind,
        _ => return Err(ParseError::MissingKind),
    };
    match kind.as_str() {
        "login" => parse_login(fields, Kind::Login),
        "test" => parse_login(fields, Kind::Test),
        "suppressed" => typed(fields, &kind).map(Event::Suppressed),
        _ => {
            let server = fields
                .get("server")
                .and_then(|s| Server::deserialize(s).ok());
            Ok(Event::Other(Other {
                kind,
                server,
                fields: fields.into_iter().collect(),
            }))
        }
    }
}

fn parse_login(fields: Map<String, Value>, kind: Kind) -> Result<Event, ParseError> {
    let login: Login = typed(fields, kind.as_str())?;
    Ok(Event::Login(Login { kind, ..login }))
}

fn parse_legacy(fields: Map<String, Value>) -> Result<Event, ParseError> {
    if !fields.get("userName").is_some_and(Value::is_string) {
        return Err(ParseError::NotLegacy);
    }
    typed(fields, "legacy").map(Event::Legacy)
}

/// Deserializes `fields` as `T`; the error names the offending field's path.
fn typed<T: DeserializeOwned>(fields: Map<String, Value>, kind: &str) -> Result<T, ParseError> {
    serde_path_to_error::deserialize(Value::Object(fields)).map_err(|e| ParseError::Invalid {
        kind: kind.to_string(),
        reason: match e.path().to_string().as_str() {
            "." => e.inner().to_string(),
            path => format!("{path}: {}", e.inner()),
        },
    })
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::{login_payload, suppressed_payload};
    use serde_json::json;

    #[test]
    fn login_payload_of_the_extension() {
        let Ok(Event::Login(login)) = parse(login_payload()) else {
            panic!("not a login")
        };
        assert_eq!(login.kind, Kind::Login);
        assert_eq!(login.status, Status::Success);
        assert_eq!(login.user_name, "alice");
        assert_eq!(login.database_name.as_deref(), Some("orders"));
        assert_eq!(login.remote_port, Some(51234));
        assert_eq!(login.ssl, Some(true));
        let server = login.common.server.expect("server");
        assert_eq!(server.cluster_name.as_deref(), Some("main"));
        assert_eq!(
            server.system_identifier.as_deref(),
            Some("7312345678901234567")
        );
        assert!(login.common.extra.is_empty() && server.extra.is_empty());
    }

    #[test]
    fn failure_test_and_unix_socket_logins() {
        let mut payload = login_payload();
        payload["event"] = json!("test");
        payload["status"] = json!("failure");
        payload["remoteHost"] = json!("[local]");
        payload["remotePort"] = Value::Null;
        payload["applicationName"] = Value::Null;
        let Ok(Event::Login(login)) = parse(payload) else {
            panic!("not a login")
        };
        assert_eq!((login.kind, login.status), (Kind::Test, Status::Failure));
        assert_eq!((login.remote_port, login.application_name), (None, None));
    }

    #[test]
    fn unknown_fields_are_kept() {
        let mut payload = login_payload();
        payload["eventId"] = json!("01J9");
        payload["mood"] = json!({"happy": true});
        payload["server"]["zone"] = json!("eu-west-1a");
        let Ok(Event::Login(login)) = parse(payload) else {
            panic!("not a login")
        };
        assert_eq!(login.common.event_id.as_deref(), Some("01J9"));
        assert_eq!(
            login.common.extra.get("mood"),
            Some(&json!({"happy": true}))
        );
        assert_eq!(
            login.common.server.expect("server").extra.get("zone"),
            Some(&json!("eu-west-1a"))
        );
    }

    #[test]
    fn suppressed_summary() {
        let Ok(Event::Suppressed(summary)) = parse(suppressed_payload()) else {
            panic!("not a summary")
        };
        assert_eq!(summary.suppressed, 240);
        assert_eq!(summary.by_user.get("alice"), Some(&120));
        assert_eq!(summary.by_remote_host.get("10.0.0.5"), Some(&200));
        assert_eq!(summary.common.event_id.as_deref(), Some("e-42"));
    }

    #[test]
    fn legacy_rds_payload() {
        let event = parse(json!({"userName": "alice", "timestamp": "2026-12-03 15:38:41"}));
        let Ok(Event::Legacy(legacy)) = event else {
            panic!("not legacy: {event:?}")
        };
        assert_eq!(legacy.user_name, "alice");
        assert_eq!(legacy.timestamp.as_deref(), Some("2026-12-03 15:38:41"));
        assert_eq!(
            parse(json!({"userName": "bob"})).map(|e| e.kind().to_string()),
            Ok("login".into())
        );
    }

    #[test]
    fn unknown_kind_is_kept_with_its_fields() {
        let event = parse(
            json!({"schemaVersion": 1, "event": "logout", "userName": "alice",
                                 "server": {"host": "db1", "clusterName": "main"}}),
        );
        let Ok(Event::Other(other)) = event else {
            panic!("not other: {event:?}")
        };
        assert_eq!(other.kind, "logout");
        assert_eq!(other.fields.get("userName"), Some(&json!("alice")));
        assert_eq!(
            other.server.and_then(|s| s.cluster_name).as_deref(),
            Some("main")
        );
    }

    #[test]
    fn refusals_name_the_reason() {
        let error = |payload: Value| {
            parse(payload)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert_eq!(
            error(json!("login")),
            "the payload is a string, not a JSON object"
        );
        assert_eq!(error(json!(null)), "the payload is null, not a JSON object");
        assert_eq!(
            error(json!([1])),
            "the payload is an array, not a JSON object"
        );
        assert!(error(json!({"schemaVersion": 2, "event": "login"}))
            .contains("unsupported schemaVersion 2"));
        assert!(error(json!({"schemaVersion": "1"})).contains("unsupported schemaVersion \"1\""));
        assert_eq!(
            error(json!({"schemaVersion": 1})),
            "\"event\" is missing or not a string"
        );
        assert!(error(json!({"hello": "world"})).contains("legacy"));
        assert!(error(json!({"userName": 5})).contains("legacy"));

        let mut payload = login_payload();
        payload.as_object_mut().map(|p| p.remove("userName"));
        assert_eq!(error(payload), "login event: missing field `userName`");
        let mut payload = login_payload();
        payload["remotePort"] = json!(-1);
        assert!(error(payload).starts_with("login event: remotePort: invalid value"));
        let mut payload = login_payload();
        payload["server"]["inRecovery"] = json!("no");
        let message = error(payload);
        assert!(
            message.contains("invalid type: string \"no\", expected a boolean"),
            "{message}"
        );
        let mut summary = suppressed_payload();
        summary["byUser"]["alice"] = json!(-3);
        assert!(error(summary).starts_with("suppressed event: byUser.alice: invalid value"));
    }

    #[test]
    fn hostile_strings_parse_as_they_are() {
        let mut payload = login_payload();
        payload["userName"] = json!("al\nice\u{202E}\u{0}");
        let Ok(Event::Login(login)) = parse(payload) else {
            panic!("not a login")
        };
        assert_eq!(login.user_name, "al\nice\u{202E}\u{0}");
    }
}
