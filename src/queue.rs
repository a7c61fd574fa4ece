//! The bounded queue of login events and the counters, laid out in one block of shared
//! memory: a header, then `capacity` event slots.
//!
//! Backends push (many producers), the worker pops (one consumer). A tiny spinlock built on
//! a Rust atomic guards the ring indexes; it is held only for one event copy. A producer
//! never waits for it: after a bounded number of spins it gives up and counts a drop. The
//! code here calls nothing in PostgreSQL, so it is unit-tested on ordinary heap memory, and
//! the worker's async threads may update the counters.

use crate::event::LoginEvent;
use std::cell::UnsafeCell;
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicI64, AtomicPtr, AtomicU64, AtomicU8, Ordering,
};

/// Longest `last_error` kept, in bytes.
pub const LAST_ERROR_LEN: usize = 256;

/// How long a producer (the login path) tries for the lock before it drops the event
/// instead of waiting. Critical sections are one event copy, but on a busy machine the
/// holder can be descheduled for a moment: a few spins alone drop events needlessly.
const PRODUCER_PATIENCE: std::time::Duration = std::time::Duration::from_micros(200);

/// A test-and-set lock that lives in shared memory.
#[repr(C)]
struct SpinLock(AtomicBool);

impl SpinLock {
    fn try_lock_once(&self) -> bool {
        !self.0.load(Ordering::Relaxed)
            && self
                .0
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
    }

    /// Spins (yielding now and then) for at most `patience`.
    fn try_lock_for(&self, patience: std::time::Duration) -> bool {
        let started = std::time::Instant::now();
        for i in 0u32.. {
            if self.try_lock_once() {
                return true;
            }
            if i % 64 == 63 {
                if started.elapsed() >= patience {
                    return false;
                }
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        false
    }

    /// For the consumer and readers of `last_error`: critical sections are a few hundred
    /// bytes of copying, so this never waits long.
    fn lock(&self) {
        while !self.try_lock_for(std::time::Duration::from_secs(1)) {}
    }

    fn unlock(&self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Counters shown by `login_notification.stats`. Times are microseconds since the Unix
/// epoch, 0 for "never".
#[repr(C)]
pub struct Stats {
    pub enqueued: AtomicU64,
    pub sent: AtomicU64,
    pub failed: AtomicU64,
    pub retried: AtomicU64,
    pub dropped: AtomicU64,
    pub skipped: AtomicU64,
    /// Events not sent one by one because of `rate_limit` (summarised instead).
    pub suppressed: AtomicU64,
    /// Events waiting in the spool file (a gauge, set by the worker).
    pub spooled: AtomicU64,
    pub hook_errors: AtomicU64,
    /// Calls of our part of the hook and the nanoseconds spent in it (for benchmarks).
    pub hook_calls: AtomicU64,
    pub hook_ns: AtomicU64,
    pub last_sent_at: AtomicI64,
    pub last_error_at: AtomicI64,
    /// When the hook last logged a WARNING (rate-limits the log under a flood).
    pub last_hook_warning_at: AtomicI64,
    error_lock: SpinLock,
    last_error_len: UnsafeCell<usize>,
    last_error: UnsafeCell<[u8; LAST_ERROR_LEN]>,
}

// SAFETY: the UnsafeCells are only accessed under error_lock.
unsafe impl Sync for Stats {}

/// A plain copy of the counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub queued: u64,
    pub enqueued: u64,
    pub sent: u64,
    pub failed: u64,
    pub retried: u64,
    pub dropped: u64,
    pub skipped: u64,
    pub suppressed: u64,
    pub spooled: u64,
    pub hook_errors: u64,
    pub last_sent_at: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_at: Option<i64>,
    pub worker_pid: Option<i32>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            enqueued: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            spooled: AtomicU64::new(0),
            hook_errors: AtomicU64::new(0),
            hook_calls: AtomicU64::new(0),
            hook_ns: AtomicU64::new(0),
            last_sent_at: AtomicI64::new(0),
            last_error_at: AtomicI64::new(0),
            last_hook_warning_at: AtomicI64::new(0),
            error_lock: SpinLock(AtomicBool::new(false)),
            last_error_len: UnsafeCell::new(0),
            last_error: UnsafeCell::new([0; LAST_ERROR_LEN]),
        }
    }

    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_sent(&self, at_us: i64) {
        Self::count(&self.sent);
        self.last_sent_at.fetch_max(at_us, Ordering::Relaxed);
    }

    /// Counts a failed delivery and keeps its message (truncated at a UTF-8 boundary).
    pub fn record_failure(&self, message: &str, at_us: i64) {
        Self::count(&self.failed);
        self.set_last_error(message, at_us);
    }

    pub fn set_last_error(&self, message: &str, at_us: i64) {
        let mut end = message.len().min(LAST_ERROR_LEN);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        self.error_lock.lock();
        // SAFETY: the buffer and its length are only touched while error_lock is held.
        unsafe {
            (&mut *self.last_error.get())[..end].copy_from_slice(&message.as_bytes()[..end]);
            *self.last_error_len.get() = end;
        }
        self.last_error_at.store(at_us, Ordering::Relaxed);
        self.error_lock.unlock();
    }

    pub fn last_error(&self) -> Option<String> {
        self.error_lock.lock();
        // SAFETY: read under error_lock, see set_last_error.
        let text = unsafe {
            let len = (*self.last_error_len.get()).min(LAST_ERROR_LEN);
            String::from_utf8_lossy(&(&*self.last_error.get())[..len]).into_owned()
        };
        self.error_lock.unlock();
        (!text.is_empty()).then_some(text)
    }

    fn reset(&self) {
        for c in [
            &self.enqueued,
            &self.sent,
            &self.failed,
            &self.retried,
            &self.dropped,
            &self.skipped,
            &self.suppressed,
            &self.hook_errors,
            &self.hook_calls,
            &self.hook_ns,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        self.last_sent_at.store(0, Ordering::Relaxed);
        self.last_hook_warning_at.store(0, Ordering::Relaxed);
        self.set_last_error("", 0);
    }
}

/// Where the worker can be woken: its process latch (a pointer into shared memory) and pid.
#[repr(C)]
pub struct WorkerSlot {
    pub latch: AtomicPtr<std::ffi::c_void>,
    pub pid: AtomicI32,
}

/// Why an event was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    Full,
    Busy,
}

/// Slot states. An event leaves the queue only once its delivery is over (sent, failed,
/// or written to the spool), so a worker that dies mid-delivery loses nothing.
const FREE: u8 = 0;
const READY: u8 = 1;
const IN_FLIGHT: u8 = 2;
const DONE: u8 = 3;

#[repr(C)]
struct Slot {
    state: AtomicU8,
    event: UnsafeCell<LoginEvent>,
}

/// A ticket for an event handed to the worker; `complete` it when its delivery is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket(u64);

impl Ticket {
    pub fn position(self) -> u64 {
        self.0
    }

    pub fn at(position: u64) -> Ticket {
        Ticket(position)
    }
}

/// The header of the shared block; `capacity` slots follow it directly.
///
/// Positions count up forever (slot = position % capacity):
/// `head` ≤ `next` ≤ `tail`. Slots in `head..next` were handed to the worker (in flight or
/// done), `next..tail` wait. All three are guarded by `lock`.
#[repr(C)]
pub struct Queue {
    lock: SpinLock,
    capacity: u64,
    head: UnsafeCell<u64>,
    next: UnsafeCell<u64>,
    tail: UnsafeCell<u64>,
    /// Events pushed and not yet completed (what `stats.queued` shows), without the lock.
    undelivered: AtomicU64,
    pub worker: WorkerSlot,
    pub stats: Stats,
}

// SAFETY: every mutable field is an atomic or an UnsafeCell guarded by a SpinLock.
unsafe impl Sync for Queue {}

impl Queue {
    /// Bytes needed for a queue of `capacity` events.
    pub const fn size_of(capacity: usize) -> usize {
        std::mem::size_of::<Queue>() + capacity * std::mem::size_of::<Slot>()
    }

    /// Lays out an empty queue at `mem`.
    ///
    /// # Safety
    /// `mem` must be valid for writes of `Queue::size_of(capacity)` bytes, aligned for
    /// `Queue`, and not in use by anyone else while this runs.
    pub unsafe fn init_at(mem: *mut u8, capacity: usize) -> &'static Queue {
        let queue = mem.cast::<Queue>();
        // SAFETY: the caller guarantees size, alignment and exclusive access.
        unsafe {
            queue.write(Queue {
                lock: SpinLock(AtomicBool::new(false)),
                capacity: capacity.max(1) as u64,
                head: UnsafeCell::new(0),
                next: UnsafeCell::new(0),
                tail: UnsafeCell::new(0),
                undelivered: AtomicU64::new(0),
                worker: WorkerSlot {
                    latch: AtomicPtr::new(std::ptr::null_mut()),
                    pid: AtomicI32::new(0),
                },
                stats: Stats::new(),
            });
            let q = &*queue;
            for i in 0..capacity {
                q.slot(i as u64).cast_mut().write(Slot {
                    state: AtomicU8::new(FREE),
                    event: UnsafeCell::new(LoginEvent::EMPTY),
                });
            }
            q
        }
    }

    fn slot(&self, position: u64) -> *const Slot {
        let first = (self as *const Queue).wrapping_add(1).cast::<Slot>();
        first.wrapping_add((position % self.capacity) as usize)
    }

    fn state(&self, position: u64) -> &AtomicU8 {
        // SAFETY: slot() stays inside the block; the state is an atomic.
        unsafe { &(*self.slot(position)).state }
    }

    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// Runs `f` on (head, next, tail) under the lock.
    fn locked<R>(&self, f: impl FnOnce(&mut u64, &mut u64, &mut u64) -> R) -> R {
        self.lock.lock();
        // SAFETY: the positions are only touched while `lock` is held.
        let r = unsafe {
            f(
                &mut *self.head.get(),
                &mut *self.next.get(),
                &mut *self.tail.get(),
            )
        };
        self.lock.unlock();
        r
    }

    /// Queues a copy of `ev` without waiting; counts `enqueued` or `dropped`. `Ok(true)`
    /// when no other event was waiting: only then does the worker need waking.
    pub fn push(&self, ev: &LoginEvent) -> Result<bool, PushError> {
        if !self.lock.try_lock_for(PRODUCER_PATIENCE) {
            Stats::count(&self.stats.dropped);
            return Err(PushError::Busy);
        }
        // SAFETY: positions and the free slot at `tail` are accessed only under `lock`; the
        // slot index is within capacity (modulo), so the write stays inside the block.
        let result = unsafe {
            let head = *self.head.get();
            let tail = *self.tail.get();
            if tail - head >= self.capacity {
                Err(PushError::Full)
            } else {
                *(*self.slot(tail)).event.get() = *ev;
                self.state(tail).store(READY, Ordering::Release);
                *self.tail.get() = tail + 1;
                self.undelivered.fetch_add(1, Ordering::Relaxed);
                Ok(*self.next.get() == tail)
            }
        };
        self.lock.unlock();
        match result {
            Ok(_) => Stats::count(&self.stats.enqueued),
            Err(_) => Stats::count(&self.stats.dropped),
        }
        result
    }

    /// Hands the oldest waiting event to the worker.
    pub fn take(&self) -> Option<(Ticket, LoginEvent)> {
        self.locked(|_, next, tail| {
            while *next < *tail {
                let position = *next;
                *next += 1;
                if self.state(position).load(Ordering::Acquire) == READY {
                    self.state(position).store(IN_FLIGHT, Ordering::Release);
                    // SAFETY: a READY slot is written only by push, which holds the lock.
                    let ev = unsafe { *(*self.slot(position)).event.get() };
                    return Some((Ticket(position), ev));
                }
            }
            None
        })
    }

    /// Marks a delivery as over (sent, failed or spooled). Lock-free: safe from any thread.
    pub fn complete(&self, ticket: Ticket) {
        if self.state(ticket.0).swap(DONE, Ordering::AcqRel) != DONE {
            self.undelivered.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Frees the slots of completed deliveries at the front of the queue.
    pub fn reclaim(&self) {
        self.locked(|head, next, _| {
            while *head < *next && self.state(*head).load(Ordering::Acquire) == DONE {
                self.state(*head).store(FREE, Ordering::Release);
                *head += 1;
            }
        })
    }

    /// For a (re)starting worker: events handed to a previous worker and never completed
    /// wait again.
    pub fn requeue_in_flight(&self) -> u64 {
        self.locked(|head, next, _| {
            let mut requeued = 0;
            for position in *head..*next {
                if self.state(position).load(Ordering::Acquire) == IN_FLIGHT {
                    self.state(position).store(READY, Ordering::Release);
                    requeued += 1;
                }
            }
            *next = *head;
            requeued
        })
    }

    /// Events not yet delivered (waiting or in flight), read without the lock by the
    /// postmaster after a crash, when no other process is left. Positions are clamped and
    /// every bit pattern is a valid LoginEvent, so a damaged queue yields garbage events at
    /// worst, never undefined behaviour.
    ///
    /// # Safety
    /// No other process may be using the queue.
    pub unsafe fn undelivered_after_crash(&self) -> Vec<LoginEvent> {
        // SAFETY: the caller guarantees exclusive access.
        let (head, tail) = unsafe { (*self.head.get(), *self.tail.get()) };
        let start = head.max(tail.saturating_sub(self.capacity));
        (start..tail)
            .filter(|&p| matches!(self.state(p).load(Ordering::Relaxed), READY | IN_FLIGHT))
            // SAFETY: inside the block; LoginEvent is plain old data.
            .map(|p| unsafe { std::ptr::read_volatile((*self.slot(p)).event.get()) })
            .collect()
    }

    /// Events in the queue: waiting or being delivered (completed slots not yet reclaimed
    /// do not count).
    pub fn len(&self) -> u64 {
        self.undelivered.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let s = &self.stats;
        let at = |v: &AtomicI64| Some(v.load(Ordering::Relaxed)).filter(|&t| t != 0);
        let n = |v: &AtomicU64| v.load(Ordering::Relaxed);
        StatsSnapshot {
            queued: self.len(),
            enqueued: n(&s.enqueued),
            sent: n(&s.sent),
            failed: n(&s.failed),
            retried: n(&s.retried),
            dropped: n(&s.dropped),
            skipped: n(&s.skipped),
            suppressed: n(&s.suppressed),
            spooled: n(&s.spooled),
            hook_errors: n(&s.hook_errors),
            last_sent_at: at(&s.last_sent_at),
            last_error: s.last_error(),
            last_error_at: at(&s.last_error_at),
            worker_pid: Some(self.worker.pid.load(Ordering::Relaxed)).filter(|&p| p != 0),
        }
    }

    /// Zeroes the counters (not the queue itself).
    pub fn reset_stats(&self) {
        self.stats.reset();
    }

    /// Claims the right to log a hook WARNING: true at most once per `interval_us`.
    pub fn may_warn(&self, now_us: i64, interval_us: i64) -> bool {
        let last = &self.stats.last_hook_warning_at;
        let prev = last.load(Ordering::Relaxed);
        (prev == 0 || now_us - prev >= interval_us)
            && last
                .compare_exchange(prev, now_us, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::FixedStr;

    /// A queue on heap memory, as the shared-memory block would hold it.
    fn queue(capacity: usize) -> &'static Queue {
        let words = Queue::size_of(capacity).div_ceil(8);
        let mem = Box::leak(vec![0u64; words].into_boxed_slice());
        // SAFETY: freshly leaked, 8-aligned, large enough, used by this test only.
        unsafe { Queue::init_at(mem.as_mut_ptr().cast(), capacity) }
    }

    fn ev(n: i32) -> LoginEvent {
        LoginEvent {
            backend_pid: n,
            user_name: FixedStr::new(format!("user{n}").as_bytes()),
            ..LoginEvent::EMPTY
        }
    }

    /// Takes, completes and reclaims one event, as the worker does.
    fn deliver(q: &Queue) -> Option<i32> {
        let (ticket, ev) = q.take()?;
        q.complete(ticket);
        q.reclaim();
        Some(ev.backend_pid)
    }

    #[test]
    fn fifo_with_wraparound() {
        let q = queue(3);
        for round in 0..5 {
            for i in 0..3 {
                q.push(&ev(round * 10 + i)).unwrap();
            }
            assert_eq!(q.len(), 3);
            for i in 0..3 {
                assert_eq!(deliver(q), Some(round * 10 + i));
            }
            assert_eq!(deliver(q), None);
            assert_eq!(q.len(), 0);
        }
        assert_eq!(q.snapshot().enqueued, 15);
    }

    #[test]
    fn full_queue_drops_and_counts() {
        let q = queue(2);
        q.push(&ev(1)).unwrap();
        q.push(&ev(2)).unwrap();
        assert_eq!(q.push(&ev(3)), Err(PushError::Full));
        let s = q.snapshot();
        assert_eq!((s.queued, s.enqueued, s.dropped), (2, 2, 1));
        assert_eq!(deliver(q), Some(1));
    }

    #[test]
    fn slots_stay_taken_until_their_delivery_is_over() {
        let q = queue(2);
        q.push(&ev(1)).unwrap();
        q.push(&ev(2)).unwrap();
        let (first, _) = q.take().unwrap();
        let (second, _) = q.take().unwrap();
        q.complete(second);
        q.reclaim();
        // The first delivery is still in flight: its slot (and the one after it, done but
        // not reclaimable past it) is held.
        assert_eq!(q.len(), 1);
        assert!(q.take().is_none());
        assert_eq!(q.push(&ev(3)), Err(PushError::Full));
        q.complete(first);
        q.reclaim();
        assert_eq!(q.len(), 0);
        q.push(&ev(4)).unwrap();
        assert_eq!(deliver(q), Some(4));
    }

    #[test]
    fn a_restarted_worker_gets_the_in_flight_events_again() {
        let q = queue(4);
        for i in 1..=3 {
            q.push(&ev(i)).unwrap();
        }
        let (t1, _) = q.take().unwrap();
        let _in_flight = q.take().unwrap();
        q.complete(t1);
        // The worker dies here; its successor starts:
        assert_eq!(q.requeue_in_flight(), 1);
        assert_eq!(deliver(q), Some(2));
        assert_eq!(deliver(q), Some(3));
        assert_eq!(deliver(q), None);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn undelivered_events_survive_for_the_crash_carry_over() {
        let q = queue(3);
        for i in 1..=3 {
            q.push(&ev(i)).unwrap();
        }
        let (t1, _) = q.take().unwrap();
        q.complete(t1);
        let _in_flight = q.take().unwrap();
        // SAFETY: this test is the queue's only user.
        let left: Vec<i32> = unsafe { q.undelivered_after_crash() }
            .iter()
            .map(|e| e.backend_pid)
            .collect();
        assert_eq!(left, [2, 3]);
    }

    #[test]
    fn producer_gives_up_instead_of_waiting_for_the_lock() {
        let q = queue(4);
        q.lock.lock();
        assert_eq!(q.push(&ev(1)), Err(PushError::Busy));
        q.lock.unlock();
        assert_eq!(q.snapshot().dropped, 1);
        q.push(&ev(2)).unwrap();
    }

    #[test]
    fn concurrent_producers_lose_nothing_uncounted() {
        let q = queue(1000);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                std::thread::spawn(move || {
                    for i in 0..500 {
                        let _ = q.push(&ev(t * 1000 + i));
                    }
                })
            })
            .collect();
        let mut delivered = 0;
        while threads.iter().any(|t| !t.is_finished()) || q.len() > 0 {
            if deliver(q).is_some() {
                delivered += 1;
            }
        }
        for t in threads {
            t.join().unwrap();
        }
        let s = q.snapshot();
        assert_eq!(s.enqueued + s.dropped, 2000);
        assert_eq!(delivered, s.enqueued);
    }

    #[test]
    fn last_error_is_truncated_on_a_char_boundary_and_reset() {
        let q = queue(1);
        q.stats.record_failure(&"é".repeat(200), 42);
        let s = q.snapshot();
        assert_eq!(s.failed, 1);
        assert_eq!(s.last_error.unwrap(), "é".repeat(128));
        assert_eq!(s.last_error_at, Some(42));
        q.reset_stats();
        assert_eq!(q.snapshot(), StatsSnapshot::default());
    }

    #[test]
    fn hook_warnings_are_rate_limited() {
        let q = queue(1);
        assert!(q.may_warn(1_000, 60_000_000));
        assert!(!q.may_warn(2_000, 60_000_000));
        assert!(q.may_warn(60_001_000, 60_000_000));
    }
}
