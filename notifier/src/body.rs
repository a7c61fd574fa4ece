//! The message body: the headline, then every field of the event, one per line.
//!
//! ```text
//! [main] FAILED login: bob → orders from 10.0.0.5
//!
//! event               login
//! status              failure
//! user                bob
//! …
//! ```
//! Every value is escaped (`text::clean`), so no field can add a line of its own, and
//! cut to a bounded length, so the body stays within SNS's 256 KB.

use std::collections::BTreeMap;
use std::fmt::Display;

use serde_json::Value;

use crate::event::{Common, Event, Login, Suppressed};
use crate::text::{clip, clip_bytes, show};

const LABEL_WIDTH: usize = 20;
const MAX_VALUE_CHARS: usize = 512;
const MAX_LIST_ENTRIES: usize = 50;
const MAX_EXTRA_FIELDS: usize = 100;
/// SNS accepts 256 KB (262,144 bytes) per message; stay a little under it.
const MAX_BODY_BYTES: usize = 250_000;

pub fn render(headline: &str, event: &Event) -> String {
    let mut rows = Rows::default();
    match event {
        Event::Login(login) => login_rows(&mut rows, login),
        Event::Suppressed(summary) => suppressed_rows(&mut rows, summary),
        Event::Legacy(legacy) => {
            rows.add("event", "login (RDS payload: userName, timestamp)");
            rows.add("user", &legacy.user_name);
            rows.opt("timestamp (UTC)", &legacy.timestamp);
            rows.extra("", &legacy.extra);
        }
        Event::Other(other) => {
            rows.add("event", &other.kind);
            rows.extra("", &other.fields);
        }
    }
    clip_bytes(&format!("{headline}\n\n{}", rows.text), MAX_BODY_BYTES)
}

fn login_rows(rows: &mut Rows, login: &Login) {
    rows.add("event", login.kind.as_str());
    rows.add("status", login.status.as_str());
    rows.add("user", &login.user_name);
    rows.opt("database", &login.database_name);
    rows.opt("remote host", &login.remote_host);
    rows.opt("remote port", &login.remote_port);
    rows.opt("application", &login.application_name);
    rows.opt("auth method", &login.auth_method);
    rows.opt("ssl", &login.ssl.map(yes_no));
    rows.opt("ssl version", &login.ssl_version);
    rows.opt("ssl cipher", &login.ssl_cipher);
    rows.opt("backend pid", &login.backend_pid);
    common_rows(rows, &login.common);
}

fn suppressed_rows(rows: &mut Rows, summary: &Suppressed) {
    rows.add("event", "suppressed (rate limited)");
    rows.add("logins suppressed", summary.suppressed);
    rows.opt("period start", &summary.period_start);
    rows.opt("period end", &summary.period_end);
    rows.counts("by user", &summary.by_user);
    rows.counts("by remote host", &summary.by_remote_host);
    common_rows(rows, &summary.common);
}

/// The fields every schema-version-1 event has, and the ones this version does not know.
fn common_rows(rows: &mut Rows, common: &Common) {
    rows.opt("time", &common.time);
    rows.opt("timestamp (UTC)", &common.timestamp);
    if common.event_id.is_some() {
        rows.opt("event id", &common.event_id);
    }
    let server = common.server.clone().unwrap_or_default();
    rows.opt("server host", &server.host);
    rows.opt("server port", &server.port);
    rows.opt("cluster name", &server.cluster_name);
    rows.opt("system identifier", &server.system_identifier);
    rows.opt("server version", &server.version);
    rows.opt("in recovery", &server.in_recovery.map(yes_no));
    rows.extra("server.", &server.extra);
    rows.extra("", &common.extra);
}

fn yes_no(flag: bool) -> &'static str {
    if flag {
        "yes"
    } else {
        "no"
    }
}

#[derive(Default)]
struct Rows {
    text: String,
}

impl Rows {
    fn add(&mut self, label: &str, value: impl Display) {
        let value = show(&value.to_string(), MAX_VALUE_CHARS);
        self.text += &format!("{label:<LABEL_WIDTH$}{value}\n");
    }

    /// An optional field: `(none)` when absent or null.
    fn opt<T: Display>(&mut self, label: &str, value: &Option<T>) {
        match value {
            Some(value) => self.add(label, value),
            None => self.add(label, "(none)"),
        }
    }

    /// Fields this version does not know, as `prefix` + name and their JSON value.
    fn extra(&mut self, prefix: &str, fields: &BTreeMap<String, Value>) {
        for (name, value) in fields.iter().take(MAX_EXTRA_FIELDS) {
            let label = format!("{prefix}{}", show(name, 40));
            match value {
                Value::String(text) => self.add(&label, text),
                other => self.add(&label, other),
            }
        }
        if fields.len() > MAX_EXTRA_FIELDS {
            self.add(
                "",
                format!("… and {} more fields", fields.len() - MAX_EXTRA_FIELDS),
            );
        }
    }

    /// A count per name, largest first.
    fn counts(&mut self, label: &str, counts: &BTreeMap<String, u64>) {
        if counts.is_empty() {
            return self.add(label, "(none)");
        }
        self.add(label, "");
        let mut sorted: Vec<_> = counts.iter().collect();
        sorted.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (name, count) in sorted.iter().take(MAX_LIST_ENTRIES) {
            self.add(
                &format!("  {}", clip(&show(name, 64), LABEL_WIDTH - 3)),
                count,
            );
        }
        if counts.len() > MAX_LIST_ENTRIES {
            self.add(
                "",
                format!("… and {} more", counts.len() - MAX_LIST_ENTRIES),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::event::parse;
    use crate::message::build;
    use crate::testdata::{failure_payload, login_payload, suppressed_payload};
    use serde_json::{json, Value};

    fn body(payload: Value) -> String {
        build(&parse(payload).expect("payload parses"), None).body
    }

    #[test]
    fn login_body_lists_every_field() {
        let expected = "\
[main] FAILED login: bob → orders from 10.0.0.5

event               login
status              failure
user                bob
database            orders
remote host         10.0.0.5
remote port         51234
application         psql
auth method         scram-sha-256
ssl                 yes
ssl version         TLSv1.3
ssl cipher          TLS_AES_256_GCM_SHA384
backend pid         12345
time                2026-12-03T15:38:41.123456Z
timestamp (UTC)     2026-12-03 15:38:41
server host         db1
server port         5432
cluster name        main
system identifier   7312345678901234567
server version      15.20
in recovery         no
";
        assert_eq!(body(failure_payload()), expected);
    }

    #[test]
    fn absent_and_unknown_fields() {
        let mut payload = login_payload();
        payload["applicationName"] = Value::Null;
        payload["eventId"] = json!("e-1");
        payload["newField"] = json!([1, 2]);
        payload["server"]["zone"] = json!("a");
        let body = body(payload);
        assert!(body.contains("\napplication         (none)\n"), "{body}");
        assert!(body.contains("\nevent id            e-1\n"), "{body}");
        assert!(
            body.ends_with("\nserver.zone         a\nnewField            [1,2]\n"),
            "{body}"
        );
    }

    #[test]
    fn suppressed_body_lists_the_counts_largest_first() {
        let body = body(suppressed_payload());
        assert!(
            body.starts_with("[main] rate limited: 240 logins not reported one by one\n\n"),
            "{body}"
        );
        assert!(
            body.contains(
                "\
logins suppressed   240
period start        2026-12-03T15:39:00Z
period end          2026-12-03T15:40:00Z
by user             \n  alice             120
  bob               100
  carol             20
by remote host      \n  10.0.0.5          200
  10.0.0.6          40
"
            ),
            "{body}"
        );
        assert!(body.contains("\nevent id            e-42\n"), "{body}");
    }

    #[test]
    fn legacy_and_unknown_kinds() {
        let body = body(json!({"userName": "alice", "timestamp": "2026-12-03 15:38:41", "x": 1}));
        assert!(body.contains("\nuser                alice\ntimestamp (UTC)     2026-12-03 15:38:41\nx                   1\n"), "{body}");
        let other = super::render(
            "h",
            &parse(json!({"schemaVersion": 1, "event": "logout", "who": "a"})).expect("parses"),
        );
        assert_eq!(
            other,
            "h\n\nevent               logout\nwho                 a\n"
        );
    }

    #[test]
    fn hostile_values_cannot_add_lines() {
        let mut payload = login_payload();
        payload["userName"] = json!("alice\nstatus              success");
        payload["applicationName"] = json!("\u{1b}]0;pwned\u{7}");
        payload["evil\nkey"] = json!("v");
        let body = body(payload);
        assert_eq!(
            body.lines().filter(|l| l.starts_with("status")).count(),
            1,
            "{body}"
        );
        assert!(
            body.contains("\nuser                alice\\u{a}status"),
            "{body}"
        );
        assert!(body.contains("\\u{1b}]0;pwned\\u{7}"), "{body}");
        assert!(body.contains("\nevil\\u{a}key"), "{body}");
        assert!(!body.chars().any(|c| c.is_control() && c != '\n'), "{body}");
    }

    #[test]
    fn huge_payloads_make_bounded_bodies() {
        let mut payload = login_payload();
        payload["applicationName"] = json!("\u{0}".repeat(100_000));
        for i in 0..500 {
            payload[format!("field{i}")] = json!("🙂".repeat(1000));
        }
        let text = body(payload);
        assert!(text.len() < 262_144, "{}", text.len());
        assert!(text.contains("… and 400 more fields"));
        let mut summary = suppressed_payload();
        summary["byUser"] = (0..80)
            .map(|i| (format!("user{i:02}"), json!(i)))
            .collect::<serde_json::Map<_, _>>()
            .into();
        assert!(body(summary).contains("… and 30 more"));
    }
}
