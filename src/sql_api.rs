//! The SQL surface: `stats` (function and view), `send_test`, `reset_stats`.

use crate::event::{self, AuthStatus, EventKind};
use crate::queue::Queue;
use crate::{guc, hook, server, shmem};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};

/// Raises an ERROR with a hint; never returns.
pub fn raise(code: PgSqlErrorCode, message: impl Into<String>, hint: &str) -> ! {
    ErrorReport::new(code, message.into(), "login_notification")
        .set_hint(hint)
        .report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

fn queue() -> &'static Queue {
    shmem::queue().unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "login_notification is not loaded through shared_preload_libraries",
            "Add login_notification to shared_preload_libraries in postgresql.conf and restart the server.",
        )
    })
}

fn require_superuser(what: &str) {
    // SAFETY: superuser() reads this backend's current role.
    if !unsafe { pg_sys::superuser() } {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied for {what}"),
            "Only superusers may call this function.",
        );
    }
}

/// Unix microseconds (0 = never) to timestamptz.
fn timestamptz(unix_us: Option<i64>) -> Option<TimestampWithTimeZone> {
    const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;
    unix_us.and_then(|t| TimestampWithTimeZone::try_from(t - PG_EPOCH_OFFSET_US).ok())
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_safe)]
fn stats() -> TableIterator<
    'static,
    (
        name!(queued, i64),
        name!(enqueued, i64),
        name!(sent, i64),
        name!(failed, i64),
        name!(retried, i64),
        name!(dropped, i64),
        name!(skipped, i64),
        name!(suppressed, i64),
        name!(spooled, i64),
        name!(hook_errors, i64),
        name!(last_sent_at, Option<TimestampWithTimeZone>),
        name!(last_error, Option<String>),
        name!(last_error_at, Option<TimestampWithTimeZone>),
        name!(worker_pid, Option<i32>),
    ),
> {
    let s = queue().snapshot();
    TableIterator::once((
        count(s.queued),
        count(s.enqueued),
        count(s.sent),
        count(s.failed),
        count(s.retried),
        count(s.dropped),
        count(s.skipped),
        count(s.suppressed),
        count(s.spooled),
        count(s.hook_errors),
        timestamptz(s.last_sent_at),
        s.last_error,
        timestamptz(s.last_error_at),
        s.worker_pid,
    ))
}

/// Queues a synthetic event (`"event": "test"`) through the same path as a login and
/// returns its payload.
#[pg_extern(volatile)]
fn send_test(user_name: default!(String, "current_user")) -> JsonB {
    require_superuser("function send_test");
    let queue = queue();
    if !guc::function_configured() {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "login_notification.function_name is not set: there is nowhere to send the test",
            "Set login_notification.function_name in postgresql.conf (or ALTER SYSTEM) and reload.",
        );
    }
    let ev = hook::session_event(EventKind::Test, AuthStatus::Success, user_name.as_bytes());
    let payload = event::payload(&ev, &server::info());
    if !hook::push_and_wake(queue, &ev) {
        raise(
            PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
            "the login_notification queue is full; the test event was dropped",
            "Check login_notification.stats and the server log for delivery errors, or raise login_notification.queue_size.",
        );
    }
    JsonB(payload)
}

/// Time spent in our part of the login hook since start (or `reset_stats()`): the
/// figure behind "adds no measurable login latency". Quantiles come from a histogram with
/// buckets about 19% wide and are the bucket's upper bound. Same privileges as `stats`.
#[pg_extern(volatile, parallel_safe)]
fn hook_timing() -> TableIterator<
    'static,
    (
        name!(calls, i64),
        name!(total_ns, i64),
        name!(avg_ns, f64),
        name!(p50_ns, Option<i64>),
        name!(p90_ns, Option<i64>),
        name!(p99_ns, Option<i64>),
    ),
> {
    use std::sync::atomic::Ordering::Relaxed;
    let stats = &queue().stats;
    let (calls, ns) = (stats.hook_calls.load(Relaxed), stats.hook_ns.load(Relaxed));
    let avg = if calls == 0 {
        0.0
    } else {
        ns as f64 / calls as f64
    };
    let quantile = |q| stats.hook_quantile(q).map(count);
    TableIterator::once((
        count(calls),
        count(ns),
        avg,
        quantile(0.5),
        quantile(0.9),
        quantile(0.99),
    ))
}

#[pg_extern(volatile)]
fn reset_stats() {
    require_superuser("function reset_stats");
    queue().reset_stats();
}

extension_sql!(
    r#"
CREATE VIEW stats AS SELECT * FROM stats();
COMMENT ON VIEW stats IS 'login_notification counters: queue depth, deliveries, failures, drops';

GRANT USAGE ON SCHEMA @extschema@ TO PUBLIC;
REVOKE ALL ON FUNCTION stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION stats() TO pg_monitor;
REVOKE ALL ON FUNCTION hook_timing() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hook_timing() TO pg_monitor;
REVOKE ALL ON stats FROM PUBLIC;
GRANT SELECT ON stats TO pg_monitor;
REVOKE ALL ON FUNCTION send_test(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION reset_stats() FROM PUBLIC;
"#,
    name = "views_and_privileges",
    requires = [stats, hook_timing, send_test, reset_stats],
    finalize
);

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn stats_view_has_one_row_with_every_column() {
        let cols = Spi::get_one::<String>(
            "SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute \
             WHERE attrelid = 'login_notification.stats'::regclass AND attnum > 0",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            cols,
            "queued,enqueued,sent,failed,retried,dropped,skipped,suppressed,spooled,hook_errors,\
             last_sent_at,last_error,last_error_at,worker_pid"
        );
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM login_notification.stats").unwrap(),
            Some(1)
        );
    }

    #[pg_test(
        error = "login_notification.function_name is not set: there is nowhere to send the test"
    )]
    fn send_test_without_a_function_is_refused() {
        Spi::run("SELECT login_notification.send_test()").unwrap();
    }

    #[pg_test(error = "parameter \"login_notification.notify_on\" cannot be changed now")]
    fn settings_cannot_be_set_in_a_session() {
        Spi::run("SET login_notification.notify_on = 'all'").unwrap();
    }

    #[pg_test]
    fn reset_stats_zeroes_counters() {
        Spi::run("SELECT login_notification.reset_stats()").unwrap();
        let total = Spi::get_one::<i64>(
            "SELECT enqueued + sent + failed + retried + dropped + skipped + hook_errors \
             FROM login_notification.stats",
        )
        .unwrap();
        assert_eq!(total, Some(0));
    }

    #[pg_test]
    fn stats_are_not_public() {
        let public_can_read = Spi::get_one::<bool>(
            "SELECT has_table_privilege('public', 'login_notification.stats', 'SELECT') \
                 OR has_function_privilege('public', 'login_notification.send_test(text)', 'EXECUTE') \
                 OR has_function_privilege('public', 'login_notification.reset_stats()', 'EXECUTE')",
        )
        .unwrap();
        assert_eq!(public_can_read, Some(false));
        let monitor_can_read = Spi::get_one::<bool>(
            "SELECT has_table_privilege('pg_monitor', 'login_notification.stats', 'SELECT')",
        )
        .unwrap();
        assert_eq!(monitor_can_read, Some(true));
    }
}
