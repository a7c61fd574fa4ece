//! SKIP_USERS and ONLY_FAILURES: which events are dropped instead of published.
//!
//! Test events (`send_test()`) are always published, so that a test checks the whole
//! chain whatever the filters; so are rate-limit summaries and kinds this version does
//! not know. A legacy RDS payload has no status: it reports a successful login.

use crate::config::Filters;
use crate::event::{Event, Kind, Status};
use crate::text::show;

/// Why `event` is not published, or `None` to publish it.
pub fn skip_reason(event: &Event, filters: &Filters) -> Option<String> {
    let (user, failed) = match event {
        Event::Login(login) if login.kind == Kind::Login => {
            (&login.user_name, login.status == Status::Failure)
        }
        Event::Legacy(legacy) => (&legacy.user_name, false),
        _ => return None,
    };
    if filters.skip_users.iter().any(|skipped| skipped == user) {
        return Some(format!("user {} is in SKIP_USERS", show(user, 64)));
    }
    if filters.only_failures && !failed {
        return Some("ONLY_FAILURES is set and this is not a failed login".to_string());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::parse;
    use crate::testdata::{failure_payload, login_payload, suppressed_payload};
    use serde_json::{json, Value};

    fn reason(payload: Value, skip_users: &[&str], only_failures: bool) -> Option<String> {
        let filters = Filters {
            skip_users: skip_users.iter().map(|u| u.to_string()).collect(),
            only_failures,
        };
        skip_reason(&parse(payload).expect("payload parses"), &filters)
    }

    #[test]
    fn no_filters_publish_everything() {
        assert_eq!(reason(login_payload(), &[], false), None);
        assert_eq!(reason(failure_payload(), &[], false), None);
    }

    #[test]
    fn skip_users_is_exact() {
        assert_eq!(
            reason(login_payload(), &["alice"], false).as_deref(),
            Some("user alice is in SKIP_USERS")
        );
        assert_eq!(reason(login_payload(), &["Alice", "alic"], false), None);
        assert!(reason(failure_payload(), &["bob"], false).is_some());
        assert!(reason(json!({"userName": "alice"}), &["alice"], false).is_some());
    }

    #[test]
    fn only_failures() {
        assert!(reason(login_payload(), &[], true).is_some());
        assert_eq!(reason(failure_payload(), &[], true), None);
        assert!(reason(json!({"userName": "alice"}), &[], true).is_some());
    }

    #[test]
    fn tests_and_summaries_always_pass() {
        let mut test_event = login_payload();
        test_event["event"] = json!("test");
        assert_eq!(reason(test_event, &["alice"], true), None);
        assert_eq!(reason(suppressed_payload(), &["alice"], true), None);
    }

    #[test]
    fn hostile_user_name_in_the_reason_is_escaped() {
        let mut payload = login_payload();
        payload["userName"] = json!("a\nb");
        assert_eq!(
            reason(payload, &["a\nb"], false).as_deref(),
            Some("user a\\u{a}b is in SKIP_USERS")
        );
    }
}
