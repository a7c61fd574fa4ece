//! Reserves and attaches the shared-memory block that holds the [`Queue`]. Its size depends
//! on `login_notification.queue_size`, so it is requested by hand rather than through
//! pgrx's fixed-size `PgLwLock`.

use crate::event::LoginEvent;
use crate::queue::Queue;
use crate::{compat, guc};
use pgrx::{log, pg_guard, pg_sys};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Mutex;

const SHMEM_NAME: &std::ffi::CStr = c"login_notification queue";

/// Set in the postmaster by the startup hook; backends and the worker inherit it by fork.
static QUEUE: AtomicPtr<Queue> = AtomicPtr::new(std::ptr::null_mut());

/// Undelivered events saved by the postmaster when shared memory is torn down after a crash
/// (any backend or our worker dying abnormally), re-queued when it is rebuilt. Postmaster
/// memory only: the postmaster itself survives a crash restart.
static CARRIED_OVER: Mutex<Vec<LoginEvent>> = Mutex::new(Vec::new());

static mut PREV_SHMEM_STARTUP_HOOK: pg_sys::shmem_startup_hook_type = None;

fn size() -> usize {
    Queue::size_of(guc::queue_size())
}

/// Requests the shared memory and installs the startup hook. Called from `_PG_init`, after
/// the settings are defined (the size depends on queue_size).
pub fn init() {
    compat::request_shared_memory(size);
    // SAFETY: _PG_init runs once, single-threaded, in the postmaster; we keep the previous
    // hook and call it first.
    unsafe {
        PREV_SHMEM_STARTUP_HOOK = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(shmem_startup);
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
            let queue = Queue::init_at(mem, guc::queue_size());
            requeue_carried_over(queue);
            (queue as *const Queue).cast_mut()
        };
        QUEUE.store(queue, Ordering::Release);
        pg_sys::LWLockRelease(init_lock);
        // Runs in the postmaster before shared memory is detached, on a crash restart and at
        // exit (registered after the segment's own detach callback, so it runs first).
        pg_sys::on_shmem_exit(Some(save_undelivered), pg_sys::Datum::from(0));
    }
}

fn requeue_carried_over(queue: &Queue) {
    let carried = std::mem::take(&mut *CARRIED_OVER.lock().unwrap_or_else(|p| p.into_inner()));
    if carried.is_empty() {
        return;
    }
    let requeued = carried.iter().filter(|ev| queue.push(ev).is_ok()).count();
    log!(
        "login_notification: {requeued} of {} undelivered event(s) carried over the crash restart",
        carried.len()
    );
}

/// No pg_guard: an ERROR in the postmaster would be FATAL. Nothing here is expected to
/// panic; if it did, the events are lost and the postmaster carries on.
unsafe extern "C-unwind" fn save_undelivered(code: i32, _arg: pg_sys::Datum) {
    let _ = std::panic::catch_unwind(|| save_undelivered_events(code));
}

fn save_undelivered_events(code: i32) {
    let queue = QUEUE.swap(std::ptr::null_mut(), Ordering::AcqRel);
    // SAFETY: shared memory is still attached, and no other process is left: the
    // postmaster tears it down only once all children have exited.
    let Some(events) = (unsafe { queue.as_ref() }).map(|q| unsafe { q.undelivered_after_crash() })
    else {
        return;
    };
    if code == 0 && !events.is_empty() {
        // A clean shutdown: the worker spooled what it had; these came in after it stopped.
        log!(
            "login_notification: {} event(s) queued after the worker stopped are lost at shutdown",
            events.len()
        );
    }
    *CARRIED_OVER.lock().unwrap_or_else(|p| p.into_inner()) = events;
}

/// The queue, when the library was preloaded and shared memory is attached.
pub fn queue() -> Option<&'static Queue> {
    let q = QUEUE.load(Ordering::Acquire);
    // SAFETY: non-null only once shmem_startup placed an initialised Queue there; shared
    // memory lives as long as the process.
    unsafe { q.as_ref() }
}
