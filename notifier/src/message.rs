//! What is published for one event: subject, body and message attributes.
//!
//! Subjects are what a person scans in an inbox:
//! `[db-prod] login: alice → orders from 10.0.0.5`,
//! `[db-prod] FAILED login: bob → orders from 10.0.0.5`,
//! `[db-prod] rate limited: 240 logins not reported one by one`.
//! SNS wants them under 100 characters, without line breaks or control characters.

use crate::body;
use crate::event::{Event, Kind, Login, Status};
use crate::text::{clip, show};

/// SNS refuses subjects of 100 characters or more.
pub const MAX_SUBJECT_CHARS: usize = 99;
/// Each name in a subject is cut to this, so that the rest stays visible.
const MAX_NAME_CHARS: usize = 24;
/// Message attribute values are names and short words; cut anything longer.
const MAX_ATTRIBUTE_CHARS: usize = 256;

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub subject: String,
    pub body: String,
    /// (name, value) pairs for SNS subscription filter policies; all of type String.
    pub attributes: Vec<(&'static str, String)>,
}

/// The message for `event`; `label_override` is DB_LABEL.
pub fn build(event: &Event, label_override: Option<&str>) -> Message {
    let headline = headline(event, label(event, label_override).as_deref());
    Message {
        subject: clip(&headline, MAX_SUBJECT_CHARS),
        body: body::render(&headline, event),
        attributes: attributes(event),
    }
}

/// DB_LABEL, else the server's cluster_name, else its host name.
fn label(event: &Event, label_override: Option<&str>) -> Option<String> {
    let server = event.server();
    let from_server = server
        .and_then(|s| s.cluster_name.as_deref().filter(|n| !n.is_empty()))
        .or_else(|| server.and_then(|s| s.host.as_deref().filter(|h| !h.is_empty())));
    label_override.or(from_server).map(str::to_string)
}

/// The subject before it is cut to SNS's limit (also the first line of the body).
fn headline(event: &Event, label: Option<&str>) -> String {
    let prefix = label
        .map(|l| format!("[{}] ", show(l, MAX_NAME_CHARS)))
        .unwrap_or_default();
    let what = match event {
        Event::Login(login) => describe_login(login),
        Event::Legacy(legacy) => format!("login: {}", show(&legacy.user_name, MAX_NAME_CHARS)),
        Event::Suppressed(summary) => {
            format!(
                "rate limited: {} logins not reported one by one",
                summary.suppressed
            )
        }
        Event::Other(other) => format!("{} event", show(&other.kind, MAX_NAME_CHARS)),
    };
    prefix + &what
}

fn describe_login(login: &Login) -> String {
    let what = match (login.kind, &login.status) {
        (Kind::Login, Status::Success) => "login".to_string(),
        (Kind::Login, Status::Failure) => "FAILED login".to_string(),
        (Kind::Test, Status::Success) => "test notification".to_string(),
        (kind, status) => format!(
            "{} ({})",
            kind.as_str(),
            show(status.as_str(), MAX_NAME_CHARS)
        ),
    };
    let mut text = format!("{what}: {}", show(&login.user_name, MAX_NAME_CHARS));
    if let Some(database) = &login.database_name {
        text += &format!(" → {}", show(database, MAX_NAME_CHARS));
    }
    if let Some(host) = &login.remote_host {
        text += &format!(" from {}", show(host, 2 * MAX_NAME_CHARS));
    }
    text
}

/// `event`, `status`, `userName`, `databaseName` where the event has them.
fn attributes(event: &Event) -> Vec<(&'static str, String)> {
    let mut attributes = vec![("event", event.kind())];
    match event {
        Event::Login(login) => {
            attributes.push(("status", login.status.as_str()));
            attributes.push(("userName", &login.user_name));
            if let Some(database) = &login.database_name {
                attributes.push(("databaseName", database));
            }
        }
        Event::Legacy(legacy) => attributes.push(("userName", &legacy.user_name)),
        Event::Suppressed(_) | Event::Other(_) => {}
    }
    attributes
        .into_iter()
        .map(|(name, value)| (name, show(value, MAX_ATTRIBUTE_CHARS)))
        .filter(|(_, value)| !value.is_empty()) // SNS refuses empty attribute values
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::parse;
    use crate::testdata::{failure_payload, login_payload, suppressed_payload};
    use serde_json::{json, Value};

    fn message(payload: Value, label: Option<&str>) -> Message {
        build(&parse(payload).expect("payload parses"), label)
    }

    fn subject(payload: Value) -> String {
        message(payload, None).subject
    }

    #[test]
    fn subjects_a_person_can_scan() {
        assert_eq!(
            subject(login_payload()),
            "[main] login: alice → orders from 10.0.0.5"
        );
        assert_eq!(
            subject(failure_payload()),
            "[main] FAILED login: bob → orders from 10.0.0.5"
        );
        let mut test_event = login_payload();
        test_event["event"] = json!("test");
        test_event["remoteHost"] = json!("[local]");
        assert_eq!(
            subject(test_event),
            "[main] test notification: alice → orders from [local]"
        );
        assert_eq!(
            subject(suppressed_payload()),
            "[main] rate limited: 240 logins not reported one by one"
        );
        assert_eq!(
            subject(json!({"userName": "alice", "timestamp": "2026-12-03 15:38:41"})),
            "login: alice"
        );
        assert_eq!(
            subject(json!({"schemaVersion": 1, "event": "logout"})),
            "logout event"
        );
        let mut odd = login_payload();
        odd["status"] = json!("maybe");
        assert_eq!(
            subject(odd),
            "[main] login (maybe): alice → orders from 10.0.0.5"
        );
    }

    #[test]
    fn label_falls_back_to_host_and_can_be_overridden() {
        let mut payload = login_payload();
        payload["server"]["clusterName"] = Value::Null;
        assert!(subject(payload.clone()).starts_with("[db1] login: alice"));
        payload["server"]["host"] = json!("");
        assert!(subject(payload).starts_with("login: alice"));
        assert!(message(login_payload(), Some("db-prod"))
            .subject
            .starts_with("[db-prod] login: alice"));
        assert_eq!(
            message(json!({"userName": "alice"}), Some("rds")).subject,
            "[rds] login: alice"
        );
    }

    #[test]
    fn subjects_stay_within_the_sns_limit() {
        let mut payload = failure_payload();
        payload["userName"] = json!("u".repeat(63));
        payload["databaseName"] = json!("d".repeat(63));
        payload["remoteHost"] = json!("2001:0db8:85a3:0000:0000:8a2e:0370:7334");
        payload["server"]["clusterName"] = json!("c".repeat(63));
        let subject = message(payload, None).subject;
        assert!(subject.chars().count() <= MAX_SUBJECT_CHARS, "{subject}");
        assert!(
            subject.starts_with(
                "[ccccccccccccccccccccccc…] FAILED login: uuuuuuuuuuuuuuuuuuuuuuu… → "
            ),
            "{subject}"
        );
    }

    #[test]
    fn hostile_strings_cannot_break_the_subject() {
        let mut payload = failure_payload();
        payload["userName"] = json!("x\r\nBcc: victim@example.com");
        payload["databaseName"] = json!("\u{202E}sredro");
        payload["server"]["clusterName"] = json!("🙂".repeat(200));
        let subject = message(payload, None).subject;
        assert!(!subject.chars().any(char::is_control), "{subject:?}");
        assert!(
            subject.contains("FAILED login: x\\u{d}\\u{a}Bcc: victim@…"),
            "{subject}"
        );
        assert!(subject.contains("→ \\u{202e}sredro"), "{subject}");
        assert!(subject.chars().count() <= MAX_SUBJECT_CHARS);
    }

    #[test]
    fn attributes_for_filter_policies() {
        let attributes = message(failure_payload(), None).attributes;
        assert_eq!(
            attributes,
            vec![
                ("event", "login".to_string()),
                ("status", "failure".to_string()),
                ("userName", "bob".to_string()),
                ("databaseName", "orders".to_string())
            ]
        );
        assert_eq!(
            message(suppressed_payload(), None).attributes,
            vec![("event", "suppressed".to_string())]
        );
        assert_eq!(
            message(json!({"userName": "al\u{0}"}), None).attributes,
            vec![
                ("event", "login".to_string()),
                ("userName", "al\\u{0}".to_string())
            ]
        );
    }

    #[test]
    fn empty_attribute_values_are_left_out() {
        let mut payload = login_payload();
        payload["userName"] = json!("");
        payload["databaseName"] = Value::Null;
        let names: Vec<_> = message(payload, None)
            .attributes
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(names, vec!["event", "status"]);
    }
}
