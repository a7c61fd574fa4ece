//! The login event: the fixed-size record the hook copies into shared memory, and the JSON
//! payload the worker builds from it. Pure Rust — no PostgreSQL calls — so it is unit-tested
//! with plain `#[test]`s.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use std::borrow::Cow;

/// `NAMEDATALEN - 1`: PostgreSQL keeps role, database and application names to 63 bytes.
pub const NAME_LEN: usize = 63;
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
    #[cfg_attr(not(test), link_section = ".text.hot.login_notification")]
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

const FLAG_TEST: u8 = 1;
const FLAG_FAILURE: u8 = 2;
const FLAG_APPLICATION_NAME: u8 = 4;
const FLAG_SSL: u8 = 8;

/// What the hook knows about one login, copied by value into the queue.
///
/// Plain old data: integers and byte arrays only, so that *any* bit pattern is a valid
/// event. The postmaster reads events out of shared memory after a crash (to carry them
/// over the restart), and a crashed process may have left anything there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct LoginEvent {
    /// A UUIDv7: time-ordered and unique, so receivers can drop duplicates.
    pub event_id: [u8; 16],
    /// When the hook ran: microseconds since the Unix epoch, UTC.
    pub time_us: i64,
    pub backend_pid: i32,
    /// Client TCP port; negative for a Unix socket.
    pub remote_port: i32,
    pub(crate) flags: u8,
    pub user_name: FixedStr<NAME_LEN>,
    pub database_name: FixedStr<NAME_LEN>,
    pub remote_host: FixedStr<HOST_LEN>,
    pub(crate) application_name: FixedStr<NAME_LEN>,
    pub auth_method: FixedStr<METHOD_LEN>,
    pub(crate) ssl_version: FixedStr<SSL_FIELD_LEN>,
    pub(crate) ssl_cipher: FixedStr<SSL_FIELD_LEN>,
}

/// The facts the hook (or `send_test`) gathers, as ordinary Rust values.
pub struct LoginFacts<'a> {
    pub kind: EventKind,
    pub status: AuthStatus,
    pub user_name: &'a [u8],
    pub database_name: &'a [u8],
    pub remote_host: &'a [u8],
    pub remote_port: Option<u16>,
    pub application_name: Option<&'a [u8]>,
    pub auth_method: &'a [u8],
    /// TLS version and cipher, when the connection uses TLS.
    pub ssl: Option<(&'a [u8], &'a [u8])>,
    pub backend_pid: i32,
}

impl LoginEvent {
    /// An all-empty event, used to initialise queue slots.
    pub const EMPTY: LoginEvent = LoginEvent {
        event_id: [0; 16],
        time_us: 0,
        backend_pid: 0,
        remote_port: -1,
        flags: 0,
        user_name: FixedStr::EMPTY,
        database_name: FixedStr::EMPTY,
        remote_host: FixedStr::EMPTY,
        application_name: FixedStr::EMPTY,
        auth_method: FixedStr::EMPTY,
        ssl_version: FixedStr::EMPTY,
        ssl_cipher: FixedStr::EMPTY,
    };

    /// Copies `facts` (truncating at the documented limits), stamped with the current time
    /// and a fresh event id.
    #[cfg_attr(not(test), link_section = ".text.hot.login_notification")]
    pub fn new(facts: &LoginFacts) -> LoginEvent {
        let time_us = now_us();
        let mut flags = 0;
        if facts.kind == EventKind::Test {
            flags |= FLAG_TEST;
        }
        if facts.status == AuthStatus::Failure {
            flags |= FLAG_FAILURE;
        }
        if facts.application_name.is_some() {
            flags |= FLAG_APPLICATION_NAME;
        }
        if facts.ssl.is_some() {
            flags |= FLAG_SSL;
        }
        let (ssl_version, ssl_cipher) = facts.ssl.unwrap_or((b"", b""));
        LoginEvent {
            event_id: new_event_id(time_us),
            time_us,
            backend_pid: facts.backend_pid,
            remote_port: facts.remote_port.map_or(-1, i32::from),
            flags,
            user_name: FixedStr::new(facts.user_name),
            database_name: FixedStr::new(facts.database_name),
            remote_host: FixedStr::new(facts.remote_host),
            application_name: FixedStr::new(facts.application_name.unwrap_or(b"")),
            auth_method: FixedStr::new(facts.auth_method),
            ssl_version: FixedStr::new(ssl_version),
            ssl_cipher: FixedStr::new(ssl_cipher),
        }
    }

    pub fn kind(&self) -> EventKind {
        if self.flags & FLAG_TEST != 0 {
            EventKind::Test
        } else {
            EventKind::Login
        }
    }

    pub fn status(&self) -> AuthStatus {
        if self.flags & FLAG_FAILURE != 0 {
            AuthStatus::Failure
        } else {
            AuthStatus::Success
        }
    }

    pub fn remote_port(&self) -> Option<u16> {
        u16::try_from(self.remote_port).ok()
    }

    pub fn application_name(&self) -> Option<&FixedStr<NAME_LEN>> {
        (self.flags & FLAG_APPLICATION_NAME != 0).then_some(&self.application_name)
    }

    /// TLS version and cipher (each `None` when PostgreSQL did not report it).
    pub fn ssl(
        &self,
    ) -> Option<(
        Option<&FixedStr<SSL_FIELD_LEN>>,
        Option<&FixedStr<SSL_FIELD_LEN>>,
    )> {
        let non_empty = |s: &FixedStr<SSL_FIELD_LEN>| !s.as_bytes().is_empty();
        (self.flags & FLAG_SSL != 0).then(|| {
            (
                Some(&self.ssl_version).filter(|s| non_empty(s)),
                Some(&self.ssl_cipher).filter(|s| non_empty(s)),
            )
        })
    }

    pub fn event_id(&self) -> String {
        format_uuid(&self.event_id)
    }
}

/// A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then random bits.
#[cfg_attr(not(test), link_section = ".text.hot.login_notification")]
pub fn new_event_id(time_us: i64) -> [u8; 16] {
    let mut id = random_bytes();
    let ms = (time_us / 1000).max(0) as u64;
    id[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    id[6] = 0x70 | (id[6] & 0x0F);
    id[8] = 0x80 | (id[8] & 0x3F);
    id
}

#[cfg_attr(not(test), link_section = ".text.hot.login_notification")]
fn random_bytes() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    // SAFETY: getrandom writes at most bytes.len() bytes into our buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), libc::GRND_NONBLOCK) };
    if n != bytes.len() as isize {
        // No entropy yet (early boot): mix the clock, the pid and a counter instead.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let c = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mixed = (now_us() as u64).rotate_left(17) ^ (u64::from(std::process::id()) << 32) ^ c;
        bytes[..8].copy_from_slice(&mixed.to_le_bytes());
        bytes[8..].copy_from_slice(&c.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    }
    bytes
}

pub fn format_uuid(id: &[u8; 16]) -> String {
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
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

/// Microseconds since the Unix epoch (0 if the clock is before it). Read through libc, not
/// std's `SystemTime`: it runs on the login path (see hook.rs on page faults).
#[cfg_attr(not(test), link_section = ".text.hot.login_notification")]
pub fn now_us() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write; CLOCK_REALTIME always exists.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) } != 0 || ts.tv_sec < 0 {
        return 0;
    }
    ts.tv_sec
        .saturating_mul(1_000_000)
        .saturating_add(ts.tv_nsec / 1_000)
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

fn opt_str<const N: usize>(s: Option<&FixedStr<N>>) -> Value {
    s.map_or(Value::Null, |s| Value::from(s.to_str_lossy()))
}

/// The JSON document sent to Lambda (and returned by `send_test`).
pub fn payload(ev: &LoginEvent, server: &ServerInfo) -> Value {
    let ssl = ev.ssl();
    json!({
        "schemaVersion": SCHEMA_VERSION,
        "eventId": ev.event_id(),
        "event": ev.kind().as_str(),
        "status": ev.status().as_str(),
        "userName": ev.user_name.to_str_lossy(),
        "databaseName": ev.database_name.to_str_lossy(),
        "remoteHost": ev.remote_host.to_str_lossy(),
        "remotePort": ev.remote_port(),
        "applicationName": opt_str(ev.application_name()),
        "authMethod": ev.auth_method.to_str_lossy(),
        "ssl": ssl.is_some(),
        "sslVersion": opt_str(ssl.and_then(|(version, _)| version)),
        "sslCipher": opt_str(ssl.and_then(|(_, cipher)| cipher)),
        "backendPid": ev.backend_pid,
        "timestamp": legacy_timestamp(ev.time_us),
        "time": rfc3339(ev.time_us),
        "server": server_json(server),
    })
}

fn server_json(server: &ServerInfo) -> Value {
    json!({
            "host": server.host,
            "port": server.port,
            "clusterName": server.cluster_name,
            "systemIdentifier": server.system_identifier.to_string(),
            "version": server.version,
            "inRecovery": server.in_recovery,
    })
}

/// A summary of events not sent one by one because of `login_notification.rate_limit`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SuppressedSummary {
    pub period_start_us: i64,
    pub period_end_us: i64,
    pub total: u64,
    pub by_user: std::collections::BTreeMap<String, u64>,
    pub by_remote_host: std::collections::BTreeMap<String, u64>,
}

pub fn suppressed_payload(summary: &SuppressedSummary, server: &ServerInfo) -> Value {
    let end = summary.period_end_us;
    json!({
        "schemaVersion": SCHEMA_VERSION,
        "eventId": format_uuid(&new_event_id(end)),
        "event": "suppressed",
        "timestamp": legacy_timestamp(end),
        "time": rfc3339(end),
        "periodStart": rfc3339(summary.period_start_us),
        "periodEnd": rfc3339(end),
        "suppressed": summary.total,
        "byUser": summary.by_user,
        "byRemoteHost": summary.by_remote_host,
        "server": server_json(server),
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

    fn facts() -> LoginFacts<'static> {
        LoginFacts {
            kind: EventKind::Login,
            status: AuthStatus::Success,
            user_name: b"alice",
            database_name: b"orders",
            remote_host: b"127.0.0.1",
            remote_port: Some(51234),
            application_name: Some(b"psql"),
            auth_method: b"scram-sha-256",
            ssl: None,
            backend_pid: 12345,
        }
    }

    fn event() -> LoginEvent {
        let mut ev = LoginEvent::new(&facts());
        // 2026-12-03T15:38:41.123456Z
        ev.time_us = 1_796_312_321_123_456;
        ev
    }

    #[test]
    fn payload_has_every_key_with_its_type() {
        let ev = event();
        let p = payload(&ev, &server());
        assert_eq!(
            p,
            json!({
                "schemaVersion": 1, "eventId": ev.event_id(), "event": "login", "status": "success",
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
        let ev = LoginEvent::new(&LoginFacts {
            kind: EventKind::Test,
            status: AuthStatus::Failure,
            remote_host: b"[local]",
            remote_port: None,
            application_name: None,
            ssl: Some((b"TLSv1.3", b"TLS_AES_256_GCM_SHA384")),
            ..facts()
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
    fn empty_application_name_is_not_null() {
        let ev = LoginEvent::new(&LoginFacts {
            application_name: Some(b""),
            ..facts()
        });
        assert_eq!(payload(&ev, &server())["applicationName"], "");
    }

    #[test]
    fn any_bit_pattern_is_a_valid_event() {
        // What the postmaster may read from shared memory after a crash.
        let garbage = [0xA5u8; std::mem::size_of::<LoginEvent>()];
        // SAFETY: LoginEvent holds only integers and byte arrays.
        let ev: LoginEvent = unsafe { std::ptr::read_unaligned(garbage.as_ptr().cast()) };
        let text = payload(&ev, &server()).to_string();
        assert!(serde_json::from_str::<Value>(&text).is_ok());
    }

    #[test]
    fn event_ids_are_unique_uuid_v7() {
        let a = LoginEvent::new(&facts());
        let b = LoginEvent::new(&facts());
        assert_ne!(a.event_id, b.event_id);
        let id = a.event_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "7", "version 7: {id}");
        assert!("89ab".contains(&id[19..20]), "RFC 9562 variant: {id}");
        let ms = u64::from_str_radix(&id[..8], 16).unwrap() << 16
            | u64::from_str_radix(&id[9..13], 16).unwrap();
        assert_eq!(ms as i64, a.time_us / 1000);
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
            let ev = LoginEvent::new(&LoginFacts {
                user_name: name.as_bytes(),
                application_name: Some(name.as_bytes()),
                ..facts()
            });
            let text = payload(&ev, &server()).to_string();
            let back: Value = serde_json::from_str(&text).expect("valid JSON");
            assert_eq!(back["userName"], name);
            assert_eq!(back["applicationName"], name);
        }
    }

    #[test]
    fn truncation_keeps_utf8_whole() {
        // 62 bytes of ASCII then a 3-byte character: the character does not fit in 63.
        let mut name = "a".repeat(62);
        name.push('日');
        let s = FixedStr::<NAME_LEN>::new(name.as_bytes());
        assert_eq!(s.as_bytes().len(), 62);
        assert_eq!(s.to_str_lossy(), "a".repeat(62));

        let exact = "é".repeat(31) + "x"; // 63 bytes
        assert_eq!(
            FixedStr::<NAME_LEN>::new(exact.as_bytes()).to_str_lossy(),
            exact
        );

        let long = "x".repeat(500);
        assert_eq!(
            FixedStr::<NAME_LEN>::new(long.as_bytes()).as_bytes().len(),
            63
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

    #[test]
    fn suppressed_summary_payload() {
        let mut summary = SuppressedSummary {
            period_start_us: 0,
            period_end_us: 10_000_000,
            total: 3,
            ..Default::default()
        };
        summary.by_user.insert("mallory".into(), 3);
        summary.by_remote_host.insert("10.0.0.9".into(), 3);
        let p = suppressed_payload(&summary, &server());
        assert_eq!(p["event"], "suppressed");
        assert_eq!(p["suppressed"], 3);
        assert_eq!(p["byUser"], json!({"mallory": 3}));
        assert_eq!(p["byRemoteHost"], json!({"10.0.0.9": 3}));
        assert_eq!(p["periodStart"], "1970-01-01T00:00:00.000000Z");
        assert_eq!(p["periodEnd"], "1970-01-01T00:00:10.000000Z");
        assert_eq!(p["server"]["host"], "db1");
    }
}
