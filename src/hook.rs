//! The login path: `ClientAuthentication_hook`. The only code that reads `Port`.
//!
//! It copies the login's facts into a fixed-size event, pushes it onto the shared-memory
//! queue without waiting, and sets the worker's latch. No network, no waiting, no SPI.
//! Fail-open: a Rust panic or PostgreSQL ERROR in our part is caught, counted in
//! `hook_errors`, logged as one rate-limited WARNING, and the login goes on with the status
//! it had — an escaped ERROR would become FATAL and refuse the login.
//!
//! Every login runs this code in a freshly forked backend, where each page of code it
//! touches for the first time costs a page fault (1–3 µs here, more than the work itself).
//! So the functions of the login path — here, in `queue`, `event`, `guc`, `validate` and
//! the C shim — are placed together in one section, `.text.hot.login_notification` (build.rs
//! keeps it whole), and the path avoids code that lives elsewhere: std's clock, pgrx's guard
//! around each pg_sys call. (Not in `cfg(test)` builds: a function with a link_section is
//! always kept, and the unit-test binary cannot link the PostgreSQL symbols they use.)

use crate::event::{
    self, AuthStatus, EventKind, FixedStr, LoginEvent, LoginFacts, METHOD_LEN, NAME_LEN,
};
use crate::queue::{Queue, Stats};
use crate::{compat, guc, shmem};
use pgrx::pg_sys::libpq::be::Port;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::{pg_sys, PgTryBuilder};
use std::cell::Cell;
use std::ffi::{c_char, CStr};
use std::sync::atomic::Ordering;

/// At most one hook WARNING per minute, cluster-wide.
const WARNING_INTERVAL_US: i64 = 60_000_000;

static mut PREV_CLIENT_AUTH_HOOK: pg_sys::libpq::ClientAuthentication_hook_type = None;

pub fn init() {
    // SAFETY: _PG_init runs once, single-threaded, in the postmaster; we keep the previous
    // hook and call it first.
    unsafe {
        PREV_CLIENT_AUTH_HOOK = pg_sys::libpq::ClientAuthentication_hook;
        pg_sys::libpq::ClientAuthentication_hook = Some(client_authentication);
    }
}

/// No `#[pg_guard]`: everything of ours that could panic or raise an ERROR runs inside
/// `fail_open`, which catches both; what is outside it cannot fail (a clock read, atomics).
#[cfg_attr(not(test), link_section = ".text.hot.login_notification")]
unsafe extern "C-unwind" fn client_authentication(port: *mut Port, status: i32) {
    // SAFETY: the previous hook gets exactly what PostgreSQL gave us; an ERROR it raises is
    // its own and jumps over this frame, which holds nothing to drop at this point.
    unsafe {
        if let Some(prev) = PREV_CLIENT_AUTH_HOOK {
            prev(port, status);
        }
    }
    // The client gave up (e.g. psql closing to ask for a password): not a login attempt.
    if status == pg_sys::STATUS_EOF as i32 || port.is_null() {
        return;
    }
    let started = monotonic_ns();
    fail_open(|| report(port, status));
    if let Some(queue) = shmem::queue() {
        queue
            .stats
            .record_hook(monotonic_ns().saturating_sub(started));
    }
}

/// CLOCK_MONOTONIC in nanoseconds, for `hook_timing()`: read through libc (the vDSO, a
/// page every backend has touched) rather than std's `Instant`, whose code would be one
/// more page of this library to fault in on every login.
#[inline(always)]
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Runs our part of the login path so that nothing escapes: a Rust panic or PostgreSQL
/// ERROR is caught (and PostgreSQL's error state flushed), counted, and logged. Returns
/// whether it caught one. (pgrx turns an ERROR raised inside a pg_sys call into a Rust
/// panic, so `catch_unwind` sees both.)
#[cfg_attr(not(test), link_section = ".text.hot.login_notification")]
pub fn fail_open(part: impl FnOnce() + std::panic::UnwindSafe) -> bool {
    match std::panic::catch_unwind(part) {
        Ok(()) => false,
        Err(payload) => caught(payload),
    }
}

/// The rare path, kept off the login path's pages: pgrx classifies what was caught and
/// cleans up PostgreSQL's error state (FlushErrorState), as in a PG_CATCH block.
#[cold]
#[inline(never)]
fn caught(payload: Box<dyn std::any::Any + Send>) -> bool {
    let payload = std::panic::AssertUnwindSafe(payload);
    PgTryBuilder::new(move || {
        let payload = payload;
        std::panic::resume_unwind(payload.0)
    })
    .catch_others(|err| {
        note_hook_error(err);
        true
    })
    .execute()
}

/// Our part of the hook: filter, copy, push, wake.
#[inline(never)]
#[cfg_attr(not(test), link_section = ".text.hot.login_notification")]
fn report(port: *mut Port, status: i32) {
    let Some(queue) = shmem::queue() else { return };
    // SAFETY: PostgreSQL passes the live Port of this connection; we only read it.
    let port = unsafe { &*port };
    let auth_method = auth_method(port);
    SESSION_AUTH_METHOD.0.set(auth_method);
    #[cfg(feature = "fault_injection")]
    match guc::debug_fault() {
        guc::DebugFault::None => {}
        guc::DebugFault::Panic => panic!("login_notification.debug_fault: injected panic"),
        guc::DebugFault::Error => pgrx::error!("login_notification.debug_fault: injected error"),
    }
    if !guc::enabled() || !guc::function_configured() {
        return;
    }
    let success = status == pg_sys::STATUS_OK as i32;
    if !guc::notify_on().includes(success) {
        return;
    }
    // SAFETY: the name fields are NULL or NUL-terminated strings owned by the Port.
    let (user, database) = unsafe {
        (
            c_bytes(login_notification_user_name(port)),
            c_bytes(login_notification_database_name(port)),
        )
    };
    if guc::skip_user(user) || guc::skip_database(database) {
        Stats::count(&queue.stats.skipped);
        return;
    }
    let status = if success {
        AuthStatus::Success
    } else {
        AuthStatus::Failure
    };
    let ev = login_event(port, EventKind::Login, status, user, auth_method);
    push_and_wake(queue, &ev);
}

/// This backend's own authentication method, remembered for `send_test`: after login,
/// `Port.hba` points into freed memory (PostmasterContext is deleted). A plain static, not
/// a thread_local: a backend has one thread, and dynamic TLS in a dlopen()ed library costs
/// an allocation on first use in every new backend — on the login path.
struct SessionAuthMethod(Cell<FixedStr<METHOD_LEN>>);
// SAFETY: only the backend's main thread (the hook, then SQL functions) touches it.
unsafe impl Sync for SessionAuthMethod {}
static SESSION_AUTH_METHOD: SessionAuthMethod = SessionAuthMethod(Cell::new(FixedStr::EMPTY));

// Compatibility shim compiled from src/port_info.c against the server's headers: Port's
// layout moves between versions and build options, so no field of it is read from Rust.
unsafe extern "C-unwind" {
    fn login_notification_user_name(port: *const Port) -> *const c_char;
    fn login_notification_database_name(port: *const Port) -> *const c_char;
    fn login_notification_remote_host(port: *const Port) -> *const c_char;
    fn login_notification_remote_port(port: *const Port) -> *const c_char;
    fn login_notification_auth_method(port: *const Port) -> *const c_char;
    fn login_notification_ssl_in_use(port: *const Port) -> bool;
    fn login_notification_ssl_version(port: *const Port) -> *const c_char;
    fn login_notification_ssl_cipher(port: *const Port) -> *const c_char;
    fn login_notification_raw_application_name(port: *const Port) -> *const c_char;
    fn login_notification_set_latch(latch: *mut pg_sys::Latch);
}

/// application_name as the session will show it in pg_stat_activity: the raw value
/// clipped like an identifier (NAMEDATALEN - 1 bytes, whole UTF-8 characters), then
/// cleaned to printable ASCII as the server version does it: `?` up to PostgreSQL 15,
/// `\xNN` escapes (clipped again) from 16 on (see `compat`).
#[cfg_attr(not(test), link_section = ".text.hot.login_notification")]
fn session_application_name(raw: &[u8], hex_escapes: bool) -> FixedStr<NAME_LEN> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // No allocation: the allocator's code is more pages to fault in on the login path.
    let mut out = [0u8; NAME_LEN];
    let mut len = 0;
    let mut put = |b: u8| {
        if len < NAME_LEN {
            out[len] = b;
            len += 1;
        }
    };
    for &b in FixedStr::<NAME_LEN>::new(raw).as_bytes() {
        match b {
            32..=126 => put(b),
            _ if hex_escapes => {
                for e in [
                    b'\\',
                    b'x',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 0xF)],
                ] {
                    put(e);
                }
            }
            _ => put(b'?'),
        }
    }
    FixedStr::new(&out[..len])
}

/// Only valid during authentication (see `SESSION_AUTH_METHOD`).
#[cfg_attr(not(test), link_section = ".text.hot.login_notification")]
fn auth_method(port: &Port) -> FixedStr<METHOD_LEN> {
    // SAFETY: during authentication `hba` is the matched pg_hba line; the shim returns NULL
    // or a static string.
    match unsafe { c_bytes(login_notification_auth_method(port)) } {
        b"" => FixedStr::new(b"unknown"),
        name => FixedStr::new(name),
    }
}

/// An event about the calling backend's own connection (for `send_test`).
pub fn session_event(kind: EventKind, status: AuthStatus, user: &[u8]) -> LoginEvent {
    // SAFETY: MyProcPort is NULL or this backend's connection, alive for the session.
    match unsafe { pg_sys::MyProcPort.cast::<Port>().as_ref() } {
        Some(port) => login_event(port, kind, status, user, SESSION_AUTH_METHOD.0.get()),
        None => LoginEvent::new(&LoginFacts {
            kind,
            status,
            user_name: user,
            database_name: b"",
            remote_host: b"",
            remote_port: None,
            application_name: None,
            auth_method: b"unknown",
            ssl: None,
            // SAFETY: MyProcPid is a plain global.
            backend_pid: unsafe { pg_sys::MyProcPid },
        }),
    }
}

/// Copies the facts of `port` into a fixed-size event.
#[cfg_attr(not(test), link_section = ".text.hot.login_notification")]
fn login_event(
    port: &Port,
    kind: EventKind,
    status: AuthStatus,
    user: &[u8],
    auth_method: FixedStr<METHOD_LEN>,
) -> LoginEvent {
    // SAFETY: the shim returns NULL or a string owned by the Port's startup options.
    let raw_app_name = unsafe { login_notification_raw_application_name(port) };
    let app_name = (!raw_app_name.is_null()).then(|| {
        // SAFETY: checked non-NULL; NUL-terminated.
        session_application_name(
            unsafe { c_bytes(raw_app_name) },
            compat::CLEAN_ASCII_HEX_ESCAPES,
        )
    });
    // SAFETY: every pointer read here is NULL or a NUL-terminated string owned by the Port
    // (allocated in TopMemoryContext, alive for the connection); the shim functions only
    // read the Port.
    unsafe {
        LoginEvent::new(&LoginFacts {
            kind,
            status,
            user_name: user,
            database_name: c_bytes(login_notification_database_name(port)),
            remote_host: c_bytes(login_notification_remote_host(port)),
            remote_port: std::str::from_utf8(c_bytes(login_notification_remote_port(port)))
                .ok()
                .and_then(|p| p.parse().ok()),
            application_name: app_name.as_ref().map(FixedStr::as_bytes),
            auth_method: auth_method.as_bytes(),
            ssl: login_notification_ssl_in_use(port).then(|| {
                (
                    c_bytes(login_notification_ssl_version(port)),
                    c_bytes(login_notification_ssl_cipher(port)),
                )
            }),
            backend_pid: pg_sys::MyProcPid,
        })
    }
}

/// Pushes without waiting (a full queue counts a drop) and wakes the worker if it had
/// taken everything before this event and is asleep: a burst costs one wake-up, not one
/// per login, and while logins keep coming the worker polls and needs none.
#[cfg_attr(not(test), link_section = ".text.hot.login_notification")]
pub fn push_and_wake(queue: &Queue, ev: &LoginEvent) -> bool {
    let pushed = queue.push(ev);
    if pushed == Ok(true) && queue.worker.wake_needed() {
        let latch = queue.worker.latch.load(Ordering::Acquire);
        if !latch.is_null() {
            // SAFETY: the worker published its process latch, which lives in shared memory
            // (PGPROC); SetLatch on it is the standard cross-process wakeup and is a no-op
            // when its owner has gone.
            unsafe { login_notification_set_latch(latch.cast()) };
        }
    }
    pushed.is_ok()
}

/// The bytes of a C string, or empty for NULL.
///
/// # Safety
/// `p` must be NULL or point to a NUL-terminated string that outlives the result.
#[cfg_attr(not(test), link_section = ".text.hot.login_notification")]
unsafe fn c_bytes<'a>(p: *const c_char) -> &'a [u8] {
    if p.is_null() {
        b""
    } else {
        // SAFETY: guaranteed by the caller.
        unsafe { CStr::from_ptr(p) }.to_bytes()
    }
}

/// Counts a caught error and logs it, at most once per minute across the cluster.
fn note_hook_error(err: CaughtError) {
    let Some(queue) = shmem::queue() else { return };
    Stats::count(&queue.stats.hook_errors);
    if queue.may_warn(event::now_us(), WARNING_INTERVAL_US) {
        let message = match &err {
            CaughtError::PostgresError(report)
            | CaughtError::ErrorReport(report)
            | CaughtError::RustPanic {
                ereport: report, ..
            } => report.message().to_string(),
        };
        pgrx::warning!(
            "login_notification: error in the login hook, login allowed and event not sent: {message} \
             (further errors are counted in login_notification.stats.hook_errors, logged at most once a minute)"
        );
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::fail_open;
    use crate::shmem;
    use pgrx::prelude::*;
    use std::sync::atomic::Ordering;

    fn hook_errors() -> u64 {
        shmem::queue()
            .unwrap()
            .stats
            .hook_errors
            .load(Ordering::Relaxed)
    }

    // The counter is cluster-wide and other tests run at the same time: it must grow by at
    // least what this test caused.

    #[pg_test]
    fn a_panic_in_the_hook_is_caught_and_counted() {
        let before = hook_errors();
        assert!(fail_open(|| panic!("injected panic")));
        assert!(hook_errors() > before);
    }

    #[pg_test]
    fn a_postgres_error_in_the_hook_is_caught_and_counted() {
        let before = hook_errors();
        assert!(fail_open(|| pgrx::error!("injected error")));
        assert!(fail_open(|| {
            Spi::run("SELECT 1/0").unwrap();
        }));
        assert!(hook_errors() >= before + 2);
        // The error state was cleaned up: the session keeps working.
        assert_eq!(Spi::get_one::<i32>("SELECT 41 + 1").unwrap(), Some(42));
    }

    #[test]
    fn application_name_is_clipped_then_cleaned_like_the_session_does() {
        let app = |raw: &[u8], hex| {
            super::session_application_name(raw, hex)
                .as_bytes()
                .to_vec()
        };
        assert_eq!(app(b"psql", false), b"psql");
        assert_eq!(app("é".repeat(40).as_bytes(), false), b"?".repeat(62));
        assert_eq!(app("a\tb".as_bytes(), false), b"a?b");
        assert_eq!(app(&[b'x'; 80], false), vec![b'x'; 63]);
        assert_eq!(app("é".as_bytes(), true), b"\\xc3\\xa9");
        assert_eq!(app("é".repeat(40).as_bytes(), true).len(), 63);
    }

    #[pg_test]
    fn the_normal_path_catches_nothing() {
        let ran = std::sync::atomic::AtomicBool::new(false);
        assert!(!fail_open(|| ran.store(true, Ordering::Relaxed)));
        assert!(ran.load(Ordering::Relaxed));
    }
}
