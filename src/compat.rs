//! What differs between the PostgreSQL major versions we support (14–18), in one place.
//! pgrx's `pgNN` features select the bindings; these are the behaviours around them.
//!
//! Also version-dependent, and handled elsewhere on purpose:
//! - `src/port_info.c` reads the `Port` fields whose layout moves between versions and
//!   build options (`hba`, `ssl_in_use`), compiled against each server's own headers.
//! - pgrx's `pg_shmem_init!`-style hooks and `BackgroundWorker` signal setup (PostgreSQL 18
//!   renamed `pqsignal` for backends to `pqsignal_be`) are handled inside pgrx.

use pgrx::pg_sys;

/// The server's major version, from the headers we were built against.
pub const PG_MAJOR: u32 = pg_sys::PG_VERSION_NUM / 10000;

/// How `application_name` is cleaned to ASCII: PostgreSQL 16 changed `pg_clean_ascii`
/// from replacing each non-printable byte with `?` to escaping it as `\xNN`.
pub const CLEAN_ASCII_HEX_ESCAPES: bool = PG_MAJOR >= 16;

/// Reserves the `login_notification.` prefix, so typos in setting names are reported.
/// PostgreSQL 15 added `MarkGUCPrefixReserved` (which also removes unknown placeholders);
/// 14 only has `EmitWarningsOnPlaceholders`.
pub fn reserve_guc_prefix(prefix: &'static std::ffi::CStr) {
    // SAFETY: called from _PG_init with a static C string.
    unsafe {
        #[cfg(not(any(feature = "pg13", feature = "pg14")))]
        pg_sys::MarkGUCPrefixReserved(prefix.as_ptr());
        #[cfg(any(feature = "pg13", feature = "pg14"))]
        pg_sys::EmitWarningsOnPlaceholders(prefix.as_ptr());
    }
}

/// Asks for `size` bytes of shared memory at the moment each version allows: PostgreSQL
/// 15 added `shmem_request_hook` (requests outside it are refused); before, `_PG_init`
/// requests directly.
pub fn request_shared_memory(size: fn() -> usize) {
    #[cfg(not(any(feature = "pg13", feature = "pg14")))]
    {
        static mut PREV_SHMEM_REQUEST_HOOK: pg_sys::shmem_request_hook_type = None;
        static mut SIZE: Option<fn() -> usize> = None;

        #[pgrx::pg_guard]
        unsafe extern "C-unwind" fn shmem_request() {
            // SAFETY: called by PostgreSQL in the postmaster while requests are allowed.
            unsafe {
                if let Some(prev) = PREV_SHMEM_REQUEST_HOOK {
                    prev();
                }
                if let Some(size) = SIZE {
                    pg_sys::RequestAddinShmemSpace(size());
                }
            }
        }

        // SAFETY: _PG_init runs once, single-threaded, in the postmaster; we keep the
        // previous hook and call it first.
        unsafe {
            SIZE = Some(size);
            PREV_SHMEM_REQUEST_HOOK = pg_sys::shmem_request_hook;
            pg_sys::shmem_request_hook = Some(shmem_request);
        }
    }
    // SAFETY: _PG_init of a preloaded library may request shared memory on these versions.
    #[cfg(any(feature = "pg13", feature = "pg14"))]
    unsafe {
        pg_sys::RequestAddinShmemSpace(size());
    }
}
