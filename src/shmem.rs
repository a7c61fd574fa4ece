//! Reserves and attaches the shared-memory block that holds the [`Queue`]. Its size depends
//! on `login_notification.queue_size`, so it is requested by hand rather than through
//! pgrx's fixed-size `PgLwLock`.

use crate::guc;
use crate::queue::Queue;
use pgrx::{pg_guard, pg_sys};
use std::sync::atomic::{AtomicPtr, Ordering};

const SHMEM_NAME: &std::ffi::CStr = c"login_notification queue";

/// Set in the postmaster by the startup hook; backends and the worker inherit it by fork.
static QUEUE: AtomicPtr<Queue> = AtomicPtr::new(std::ptr::null_mut());

static mut PREV_SHMEM_STARTUP_HOOK: pg_sys::shmem_startup_hook_type = None;
#[cfg(not(any(feature = "pg13", feature = "pg14")))]
static mut PREV_SHMEM_REQUEST_HOOK: pg_sys::shmem_request_hook_type = None;

fn size() -> usize {
    Queue::size_of(guc::queue_size())
}

/// Installs the request (PostgreSQL 15+) and startup hooks. Called from `_PG_init`, after
/// the settings are defined.
pub fn init() {
    // SAFETY: _PG_init runs once, single-threaded, in the postmaster; we keep the previous
    // hooks and call them first.
    unsafe {
        #[cfg(not(any(feature = "pg13", feature = "pg14")))]
        {
            PREV_SHMEM_REQUEST_HOOK = pg_sys::shmem_request_hook;
            pg_sys::shmem_request_hook = Some(shmem_request);
        }
        #[cfg(any(feature = "pg13", feature = "pg14"))]
        pg_sys::RequestAddinShmemSpace(size());

        PREV_SHMEM_STARTUP_HOOK = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(shmem_startup);
    }
}

#[cfg(not(any(feature = "pg13", feature = "pg14")))]
#[pg_guard]
unsafe extern "C-unwind" fn shmem_request() {
    // SAFETY: called by PostgreSQL in the postmaster while requests are allowed.
    unsafe {
        if let Some(prev) = PREV_SHMEM_REQUEST_HOOK {
            prev();
        }
        pg_sys::RequestAddinShmemSpace(size());
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn shmem_startup() {
    // SAFETY: called by PostgreSQL after shared memory exists (again after a crash
    // restart). AddinShmemInitLock (MainLWLockArray[21]) serialises extensions' setup;
    // ShmemInitStruct returns a block of the size we requested, MAXALIGNed, which is
    // enough alignment for Queue (8).
    unsafe {
        if let Some(prev) = PREV_SHMEM_STARTUP_HOOK {
            prev();
        }
        let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock;
        pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let mem = pg_sys::ShmemInitStruct(SHMEM_NAME.as_ptr(), size(), &mut found).cast::<u8>();
        let queue = if found {
            mem.cast::<Queue>()
        } else {
            (Queue::init_at(mem, guc::queue_size()) as *const Queue).cast_mut()
        };
        QUEUE.store(queue, Ordering::Release);
        pg_sys::LWLockRelease(init_lock);
    }
}

/// The queue, when the library was preloaded and shared memory is attached.
pub fn queue() -> Option<&'static Queue> {
    let q = QUEUE.load(Ordering::Acquire);
    // SAFETY: non-null only once shmem_startup placed an initialised Queue there; shared
    // memory lives as long as the process.
    unsafe { q.as_ref() }
}
