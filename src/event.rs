//! The login event: the fixed-size record the hook copies into shared memory, and the JSON
//! payload the worker builds from it. Pure Rust — no PostgreSQL calls — so it is unit-tested
//! with plain `#[test]`s.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use std::borrow::Cow;

/// `NAMEDATALEN`: role, database and application names are at most 63 bytes plus NUL.
pub const NAME_LEN: usize = 64;
/// `remote_host` is always numeric (an IPv6 address with a zone fits in 64 bytes) or `[local]`.
pub const HOST_LEN: usize = 64;
/// Authentication method names (`scram-sha-256` is the longest today).
pub const METHOD_LEN: usize = 24;
/// TLS protocol version (`TLSv1.3`) and cipher suite name (`TLS_AES_256_GCM_SHA384`).
pub const SSL_FIELD_LEN: usize = 64;

/// Payload schema version; bump on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// A string of at most `N` bytes, stored inline so the event can live in shared memory.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct FixedStr<const N: usize> {
    len: u16,
    bytes: [u8; N],
}

impl<const N: usize> FixedStr<N> {
    pub const EMPTY: Self = FixedStr {
        len: 0,
        bytes: [0; N],
    };

    /// Copies `src`, truncated to `N` bytes. The cut never splits a UTF-8 sequence, so a
    /// valid UTF-8 input stays valid.
    pub fn new(src: &[u8]) -> Self {
        let mut end = src.len().min(N);
        if end < src.len() {
            while end > 0 && (src[end] & 0xC0) == 0x80 {
                end -= 1;
            }
        }
        let mut bytes = [0u8; N];
        bytes[..end].copy_from_slice(&src[..end]);
        FixedStr {
            len: end as u16,
            bytes,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len).min(N)]
    }

    /// The exact text where it is valid UTF-8, a lossy conversion otherwise.
    pub fn to_str_lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(self.as_bytes())
    }
}

impl<const N: usize> std::fmt::Debug for FixedStr<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.to_str_lossy())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum EventKind {
    Login,
    Test,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Login => "login",
            EventKind::Test => "test",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum AuthStatus {
    Success,
    Failure,
}

impl AuthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthStatus::Success => "success",
            AuthStatus::Failure => "failure",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct SslInfo {
    pub version: Option<FixedStr<SSL_FIELD_LEN>>,
    pub cipher: Option<FixedStr<SSL_FIELD_LEN>>,
}

/// What the hook knows about one login, copied by value into the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct LoginEvent {
    pub kind: EventKind,
    pub status: AuthStatus,
    pub user_name: FixedStr<NAME_LEN>,
    pub database_name: FixedStr<NAME_LEN>,
    pub remote_host: FixedStr<HOST_LEN>,
    pub remote_port: Option<u16>,
    pub application_name: Option<FixedStr<NAME_LEN>>,
    pub auth_method: FixedStr<METHOD_LEN>,
    /// `None` when the connection does not use TLS.
    pub ssl: Option<SslInfo>,
    pub backend_pid: i32,
    /// When the hook ran: microseconds since the Unix epoch, UTC.
    pub time_us: i64,
}

impl LoginEvent {
    /// An all-empty event, used to initialise queue slots.
    pub const EMPTY: LoginEvent = LoginEvent {
        kind: EventKind::Login,
        status: AuthStatus::Success,
        user_name: FixedStr::EMPTY,
        database_name: FixedStr::EMPTY,
        remote_host: FixedStr::EMPTY,
        remote_port: None,
        application_name: None,
        auth_method: FixedStr::EMPTY,
        ssl: None,
        backend_pid: 0,
        time_us: 0,
    };
}

/// Facts about the server, gathered by the sender (not the hook) and added to each payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerInfo {
    pub host: String,
    pub port: i32,
    pub cluster_name: Option<String>,
    pub system_identifier: u64,
    pub version: String,
    pub in_recovery: bool,
}

/// Microseconds since the Unix epoch, now. Never panics (a clock before 1970 gives 0).
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn utc(time_us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(time_us).unwrap_or(DateTime::UNIX_EPOCH)
}

/// `2026-12-03 15:38:41`: the format existing RDS-side Lambdas expect.
pub fn legacy_timestamp(time_us: i64) -> String {
    utc(time_us).format("%Y-%m-%d %H:%M:%S").to_string()
}

/// `2026-12-03T15:38:41.123456Z`: RFC 3339, UTC, microseconds.
pub fn rfc3339(time_us: i64) -> String {
    utc(time_us).to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn opt_str<const N: usize>(s: &Option<FixedStr<N>>) -> Value {
    s.as_ref()
        .map_or(Value::Null, |s| Value::from(s.to_str_lossy()))
}

/// The JSON document sent to Lambda (and returned by `send_test`).
pub fn payload(ev: &LoginEvent, server: &ServerInfo) -> Value {
    json!({
        "schemaVersion": SCHEMA_VERSION,
        "event": ev.kind.as_str(),
        "status": ev.status.as_str(),
        "userName": ev.user_name.to_str_lossy(),
        "databaseName": ev.database_name.to_str_lossy(),
        "remoteHost": ev.remote_host.to_str_lossy(),
        "remotePort": ev.remote_port,
        "applicationName": opt_str(&ev.application_name),
        "authMethod": ev.auth_method.to_str_lossy(),
        "ssl": ev.ssl.is_some(),
        "sslVersion": ev.ssl.as_ref().map_or(Value::Null, |s| opt_str(&s.version)),
        "sslCipher": ev.ssl.as_ref().map_or(Value::Null, |s| opt_str(&s.cipher)),
        "backendPid": ev.backend_pid,
        "timestamp": legacy_timestamp(ev.time_us),
        "time": rfc3339(ev.time_us),
        "server": {
            "host": server.host,
            "port": server.port,
            "clusterName": server.cluster_name,
            "systemIdentifier": server.system_identifier.to_string(),
            "version": server.version,
            "inRecovery": server.in_recovery,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> ServerInfo {
        ServerInfo {
            host: "db1".into(),
            port: 5432,
            cluster_name: None,
            system_identifier: 7_312_345_678_901_234_567,
            version: "15.20".into(),
            in_recovery: false,
        }
    }

    fn event() -> LoginEvent {
        LoginEvent {
            kind: EventKind::Login,
            status: AuthStatus::Success,
            user_name: FixedStr::new(b"alice"),
            database_name: FixedStr::new(b"orders"),
            remote_host: FixedStr::new(b"127.0.0.1"),
            remote_port: Some(51234),
            application_name: Some(FixedStr::new(b"psql")),
            auth_method: FixedStr::new(b"scram-sha-256"),
            ssl: None,
            backend_pid: 12345,
            // 2026-12-03T15:38:41.123456Z
            time_us: 1_796_312_321_123_456,
        }
    }

    #[test]
    fn payload_has_every_key_with_its_type() {
        let p = payload(&event(), &server());
        assert_eq!(
            p,
            json!({
                "schemaVersion": 1, "event": "login", "status": "success",
                "userName": "alice", "databaseName": "orders",
                "remoteHost": "127.0.0.1", "remotePort": 51234,
                "applicationName": "psql", "authMethod": "scram-sha-256",
                "ssl": false, "sslVersion": null, "sslCipher": null,
                "backendPid": 12345,
                "timestamp": "2026-12-03 15:38:41",
                "time": "2026-12-03T15:38:41.123456Z",
                "server": {"host": "db1", "port": 5432, "clusterName": null,
                           "systemIdentifier": "7312345678901234567",
                           "version": "15.20", "inRecovery": false}
            })
        );
    }

    #[test]
    fn unix_socket_failure_test_event_and_ssl() {
        let mut ev = event();
        ev.kind = EventKind::Test;
        ev.status = AuthStatus::Failure;
        ev.remote_host = FixedStr::new(b"[local]");
        ev.remote_port = None;
        ev.application_name = None;
        ev.ssl = Some(SslInfo {
            version: Some(FixedStr::new(b"TLSv1.3")),
            cipher: Some(FixedStr::new(b"TLS_AES_256_GCM_SHA384")),
        });
        let mut srv = server();
        srv.cluster_name = Some("main".into());
        srv.in_recovery = true;
        let p = payload(&ev, &srv);
        assert_eq!(p["event"], "test");
        assert_eq!(p["status"], "failure");
        assert_eq!(p["remoteHost"], "[local]");
        assert_eq!(p["remotePort"], Value::Null);
        assert_eq!(p["applicationName"], Value::Null);
        assert_eq!(p["ssl"], true);
        assert_eq!(p["sslVersion"], "TLSv1.3");
        assert_eq!(p["sslCipher"], "TLS_AES_256_GCM_SHA384");
        assert_eq!(p["server"]["clusterName"], "main");
        assert_eq!(p["server"]["inRecovery"], true);
    }

    #[test]
    fn hostile_names_round_trip_exactly_through_json() {
        let names: [&str; 6] = [
            r#"o'brien "quoted" \ back"#,
            "tab\there\nnewline\u{1}ctl",
            "$$; DROP TABLE x; --",
            "日本語のユーザー",
            "emoji 🎉 {\"json\": [1]}",
            "",
        ];
        for name in names {
            let mut ev = event();
            ev.user_name = FixedStr::new(name.as_bytes());
            ev.application_name = Some(FixedStr::new(name.as_bytes()));
            let text = payload(&ev, &server()).to_string();
            let back: Value = serde_json::from_str(&text).expect("valid JSON");
            assert_eq!(back["userName"], name);
            assert_eq!(back["applicationName"], name);
        }
    }

    #[test]
    fn truncation_keeps_utf8_whole() {
        // 63 bytes of ASCII then a 3-byte character: the character does not fit in 64.
        let mut name = "a".repeat(63);
        name.push('日');
        let s = FixedStr::<NAME_LEN>::new(name.as_bytes());
        assert_eq!(s.as_bytes().len(), 63);
        assert_eq!(s.to_str_lossy(), "a".repeat(63));

        let exact = "é".repeat(32); // 64 bytes
        assert_eq!(
            FixedStr::<NAME_LEN>::new(exact.as_bytes()).to_str_lossy(),
            exact
        );

        let long = "x".repeat(500);
        assert_eq!(
            FixedStr::<NAME_LEN>::new(long.as_bytes()).as_bytes().len(),
            64
        );
    }

    #[test]
    fn invalid_utf8_is_converted_lossily() {
        let s = FixedStr::<NAME_LEN>::new(b"ab\xffcd");
        assert_eq!(s.to_str_lossy(), "ab\u{FFFD}cd");
    }

    #[test]
    fn timestamps_are_utc_in_both_formats() {
        assert_eq!(legacy_timestamp(0), "1970-01-01 00:00:00");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(1_500_000), "1970-01-01T00:00:01.500000Z");
        assert!(now_us() > 1_700_000_000_000_000);
    }
}
