//! Every `login_notification.*` setting: definitions, check hooks that refuse bad values
//! with a clear message, and typed accessors (callers never see a `CStr`).

use crate::validate;
use crate::worker::lambda::{InvocationKind, Target};
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::{pg_guard, pg_sys, PostgresGucEnum};
use std::ffi::{c_char, c_void, CStr, CString};
use std::time::Duration;

#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum InvocationType {
    #[name = c"event"]
    Event,
    #[name = c"request_response"]
    RequestResponse,
}

#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum NotifyOn {
    #[name = c"success"]
    Success,
    #[name = c"failure"]
    Failure,
    #[name = c"all"]
    All,
}

impl NotifyOn {
    pub fn includes(self, success: bool) -> bool {
        match self {
            NotifyOn::Success => success,
            NotifyOn::Failure => !success,
            NotifyOn::All => true,
        }
    }
}

static ENABLED: GucSetting<bool> = GucSetting::<bool>::new(true);
static FUNCTION_NAME: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static REGION: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static ENDPOINT_URL: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static INVOCATION_TYPE: GucSetting<InvocationType> =
    GucSetting::<InvocationType>::new(InvocationType::Event);
static NOTIFY_ON: GucSetting<NotifyOn> = GucSetting::<NotifyOn>::new(NotifyOn::Success);
static SKIP_USERS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static SKIP_DATABASES: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static QUEUE_SIZE: GucSetting<i32> = GucSetting::<i32>::new(1024);
static TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(5000);
static MAX_RETRIES: GucSetting<i32> = GucSetting::<i32>::new(3);
static MAX_CONCURRENCY: GucSetting<i32> = GucSetting::<i32>::new(16);
static RATE_LIMIT: GucSetting<i32> = GucSetting::<i32>::new(0);
static SPOOL_MAX_EVENTS: GucSetting<i32> = GucSetting::<i32>::new(10_000);

/// Faults the tests inject into the login hook; exists only in builds with the
/// `fault_injection` feature, never in the default build.
#[cfg(feature = "fault_injection")]
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum DebugFault {
    #[name = c"none"]
    None,
    #[name = c"panic"]
    Panic,
    #[name = c"error"]
    Error,
}

#[cfg(feature = "fault_injection")]
static DEBUG_FAULT: GucSetting<DebugFault> = GucSetting::<DebugFault>::new(DebugFault::None);

/// Largest `queue_size`: 100,000 events take about 45 MB of shared memory.
pub const MAX_QUEUE_SIZE: i32 = 100_000;

type Validator = fn(&str) -> Result<(), String>;

/// Runs a validator on a new string value; on refusal, hands PostgreSQL the detail and hint
/// it prints with "invalid value for parameter".
fn check_string(newval: *mut *mut c_char, validate: Validator, hint: &str) -> bool {
    // SAFETY: PostgreSQL passes a valid pointer to the candidate value (NULL or a C string).
    let value = unsafe {
        let p = *newval;
        if p.is_null() {
            return true;
        }
        CStr::from_ptr(p)
    };
    let result = match value.to_str() {
        Ok(text) => validate(text),
        Err(_) => Err("the value is not valid UTF-8".to_string()),
    };
    match result {
        Ok(()) => true,
        Err(detail) => {
            let detail = CString::new(detail).unwrap_or_default();
            let hint = CString::new(hint).unwrap_or_default();
            // SAFETY: GUC_check_* are PostgreSQL's documented way for a check hook to report;
            // the strings are copied into the current memory context, which outlives the
            // report.
            unsafe {
                pg_sys::GUC_check_errcode(
                    pgrx::PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE as i32,
                );
                pg_sys::GUC_check_errdetail_string = pg_sys::pstrdup(detail.as_ptr());
                pg_sys::GUC_check_errhint_string = pg_sys::pstrdup(hint.as_ptr());
            }
            false
        }
    }
}

macro_rules! string_check_hook {
    ($name:ident, $validate:expr, $hint:expr) => {
        #[pg_guard]
        unsafe extern "C-unwind" fn $name(
            newval: *mut *mut c_char,
            _extra: *mut *mut c_void,
            _source: pg_sys::GucSource::Type,
        ) -> bool {
            check_string(newval, $validate, $hint)
        }
    };
}

string_check_hook!(
    check_function_name,
    validate::check_function_name,
    "Use a function name, name:alias, or the function's ARN."
);
string_check_hook!(
    check_region,
    validate::check_region,
    "Use a region name such as us-east-1, or '' for the SDK's default."
);
string_check_hook!(
    check_endpoint_url,
    validate::check_endpoint_url,
    "Use a URL such as https://lambda.us-east-1.amazonaws.com, or '' for the AWS default."
);
string_check_hook!(
    check_name_list,
    |raw| validate::parse_name_list(raw).map(|_| ()),
    "Separate names with commas; double-quote a name that contains a comma, blank or quote."
);

/// Defines every setting and reserves the prefix. Called once from `_PG_init`.
pub fn init() {
    let sighup = || GucContext::Sighup;
    let destination = GucFlags::SUPERUSER_ONLY;
    GucRegistry::define_bool_guc(
        c"login_notification.enabled",
        c"Master switch: report logins to Lambda.",
        c"When off, the login hook returns at once and nothing is queued.",
        &ENABLED,
        sighup(),
        GucFlags::default(),
    );
    // SAFETY: the check hooks are #[pg_guard]ed and only read the candidate value.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"login_notification.function_name",
            c"Lambda function to invoke: name, name:qualifier, partial or full ARN.",
            c"Empty means nothing is sent and events are not even queued.",
            &FUNCTION_NAME,
            sighup(),
            destination,
            Some(check_function_name),
            None,
            None,
        );
        GucRegistry::define_string_guc_with_hooks(
            c"login_notification.region",
            c"AWS region of the function.",
            c"Empty: the region in the function's ARN, else the AWS SDK's default chain.",
            &REGION,
            sighup(),
            destination,
            Some(check_region),
            None,
            None,
        );
        GucRegistry::define_string_guc_with_hooks(
            c"login_notification.endpoint_url",
            c"Lambda endpoint override (VPC endpoint, local emulator).",
            c"Empty: the AWS default endpoint for the region.",
            &ENDPOINT_URL,
            sighup(),
            destination,
            Some(check_endpoint_url),
            None,
            None,
        );
        GucRegistry::define_string_guc_with_hooks(
            c"login_notification.skip_users",
            c"Role names whose logins are never reported.",
            c"Comma-separated, exact and case-sensitive like pg_hba.conf; double-quote names with commas or blanks.",
            &SKIP_USERS,
            sighup(),
            GucFlags::default(),
            Some(check_name_list),
            None,
            None,
        );
        GucRegistry::define_string_guc_with_hooks(
            c"login_notification.skip_databases",
            c"Database names whose logins are never reported.",
            c"Comma-separated, exact and case-sensitive; double-quote names with commas or blanks.",
            &SKIP_DATABASES,
            sighup(),
            GucFlags::default(),
            Some(check_name_list),
            None,
            None,
        );
    }
    GucRegistry::define_enum_guc(
        c"login_notification.invocation_type",
        c"Lambda InvocationType: event (asynchronous) or request_response.",
        c"",
        &INVOCATION_TYPE,
        sighup(),
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"login_notification.notify_on",
        c"Which authentication outcomes are reported: success, failure or all.",
        c"",
        &NOTIFY_ON,
        sighup(),
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"login_notification.queue_size",
        c"Events the shared-memory queue holds; when full, new events are dropped and counted.",
        c"",
        &QUEUE_SIZE,
        1,
        MAX_QUEUE_SIZE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"login_notification.timeout",
        c"Timeout of one invocation attempt.",
        c"",
        &TIMEOUT_MS,
        100,
        600_000,
        sighup(),
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"login_notification.max_retries",
        c"Retries after a failed attempt (throttling, 5xx, timeouts, network errors).",
        c"",
        &MAX_RETRIES,
        0,
        100,
        sighup(),
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"login_notification.max_concurrency",
        c"Invocations in flight at once.",
        c"",
        &MAX_CONCURRENCY,
        1,
        1024,
        sighup(),
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"login_notification.rate_limit",
        c"Events sent per second at most; 0 = unlimited.",
        c"Events over the limit are counted and summarised in a periodic \"suppressed\" event.",
        &RATE_LIMIT,
        0,
        1_000_000,
        sighup(),
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"login_notification.spool_max_events",
        c"Undelivered events kept in the spool file for later delivery; 0 = no spool.",
        c"Events that do not fit are dropped and counted.",
        &SPOOL_MAX_EVENTS,
        0,
        10_000_000,
        sighup(),
        GucFlags::default(),
    );
    #[cfg(feature = "fault_injection")]
    GucRegistry::define_enum_guc(
        c"login_notification.debug_fault",
        c"Test builds only: inject a fault into the login hook.",
        c"",
        &DEBUG_FAULT,
        sighup(),
        GucFlags::default(),
    );
    crate::compat::reserve_guc_prefix(c"login_notification");
}

fn string(setting: &GucSetting<Option<CString>>) -> String {
    setting
        .get()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Reads a string setting in place, without copying it (for the login path).
#[cfg_attr(not(test), link_section = ".text.hot.login_notification")]
fn with_bytes<R>(setting: &'static GucSetting<Option<CString>>, f: impl FnOnce(&[u8]) -> R) -> R {
    // SAFETY: the setting's storage is NULL or a NUL-terminated string that PostgreSQL
    // replaces only between statements, never while this backend runs the login hook.
    let value = unsafe {
        let p = *setting.as_ptr();
        if p.is_null() {
            b"" as &[u8]
        } else {
            CStr::from_ptr(p).to_bytes()
        }
    };
    f(value)
}

#[cfg_attr(not(test), link_section = ".text.hot.login_notification")]
pub fn enabled() -> bool {
    ENABLED.get()
}

pub fn function_name() -> String {
    string(&FUNCTION_NAME)
}

/// True when a function is configured (no copy: this runs on the login path).
#[cfg_attr(not(test), link_section = ".text.hot.login_notification")]
pub fn function_configured() -> bool {
    with_bytes(&FUNCTION_NAME, |name| !name.is_empty())
}

#[cfg_attr(not(test), link_section = ".text.hot.login_notification")]
pub fn notify_on() -> NotifyOn {
    NOTIFY_ON.get()
}

#[cfg_attr(not(test), link_section = ".text.hot.login_notification")]
pub fn skip_user(name: &[u8]) -> bool {
    with_bytes(&SKIP_USERS, |list| validate::list_contains(list, name))
}

#[cfg_attr(not(test), link_section = ".text.hot.login_notification")]
pub fn skip_database(name: &[u8]) -> bool {
    with_bytes(&SKIP_DATABASES, |list| validate::list_contains(list, name))
}

pub fn queue_size() -> usize {
    QUEUE_SIZE.get().clamp(1, MAX_QUEUE_SIZE) as usize
}

pub fn max_concurrency() -> usize {
    MAX_CONCURRENCY.get().max(1) as usize
}

pub fn rate_limit() -> u32 {
    RATE_LIMIT.get().max(0) as u32
}

pub fn spool_max_events() -> usize {
    SPOOL_MAX_EVENTS.get().max(0) as usize
}

#[cfg(feature = "fault_injection")]
pub fn debug_fault() -> DebugFault {
    DEBUG_FAULT.get()
}

/// Where and how to invoke, as plain values the async sender can own.
pub fn target() -> Target {
    let function_name = function_name();
    let region = Some(string(&REGION))
        .filter(|r| !r.is_empty())
        .or_else(|| validate::region_from_arn(&function_name).map(str::to_owned));
    Target {
        region,
        endpoint_url: Some(string(&ENDPOINT_URL)).filter(|u| !u.is_empty()),
        invocation: match INVOCATION_TYPE.get() {
            InvocationType::Event => InvocationKind::Event,
            InvocationType::RequestResponse => InvocationKind::RequestResponse,
        },
        timeout: Duration::from_millis(TIMEOUT_MS.get().max(1) as u64),
        max_retries: MAX_RETRIES.get().max(0) as u32,
        function_name,
    }
}
