//! login_notification: tells AWS Lambda about every login, without ever failing or slowing
//! one. The hook copies each login into a shared-memory queue; a background worker delivers.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

::pgrx::pg_module_magic!(name, version);

mod compat;
mod event;
mod guc;
mod hook;
mod queue;
mod server;
mod shmem;
mod sql_api;
mod validate;
pub mod worker;

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // SAFETY: plain reads of PostgreSQL globals during library load.
    let (binary_upgrade, preloading) = unsafe {
        (
            pg_sys::IsBinaryUpgrade,
            pg_sys::process_shared_preload_libraries_in_progress,
        )
    };
    if binary_upgrade {
        return;
    }
    if !preloading {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "login_notification must be loaded via shared_preload_libraries",
            "_PG_init",
        )
        .set_hint(
            "Add login_notification to shared_preload_libraries in postgresql.conf and restart the server.",
        )
        .report(PgLogLevel::ERROR);
    }
    guc::init();
    shmem::init();
    hook::init();
    worker::register();
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'login_notification'"]
    }
}
