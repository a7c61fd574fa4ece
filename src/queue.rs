//! The bounded queue of login events and the counters, laid out in one block of shared
//! memory: a header, then `capacity` event slots.
//!
//! Backends push (many producers), the worker takes (one consumer). Producers are
//! lock-free: a producer claims a position with one compare-and-swap on `tail`, copies its
//! event into that slot and publishes it (slot state READY). It never waits for another
//! process — a producer descheduled mid-push delays only the consumer, never another login —
//! and an event is dropped (and counted) only when the queue is really full. The worker's
//! side (take, reclaim, requeue) is serialised among the worker's own threads by a small
//! spinlock that producers never touch. The code here calls nothing in PostgreSQL, so it is
//! unit-tested on ordinary heap memory, and the worker's async threads may update the
//! counters.

use crate::event::LoginEvent;
use std::cell::UnsafeCell;
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicI64, AtomicPtr, AtomicU64, AtomicU8, Ordering,
};

/// Longest `last_error` kept, in bytes.
pub const LAST_ERROR_LEN: usize = 256;

/// Buckets of the hook's time histogram: bucket 0 holds calls under 1,024 ns, then four
/// buckets per doubling (each about 19% wide) up to the last, which holds everything from
/// about 1 s on.
pub const HOOK_BUCKETS: usize = 84;

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

    /// For the worker's side of the queue and readers of `last_error` (never the login
    /// path): critical sections are a few hundred bytes of copying, so this never waits
    /// long.
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
    /// The same calls by duration (see `hook_bucket`), for quantiles: a mean is dominated by
    /// the few logins that were descheduled in the middle of the hook.
    hook_histogram: [AtomicU64; HOOK_BUCKETS],
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
            hook_histogram: [const { AtomicU64::new(0) }; HOOK_BUCKETS],
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

    /// Accounts one call of the login hook that took `ns` nanoseconds.
    #[cfg_attr(not(test), link_section = ".text.hot.login_notification")]
    pub fn record_hook(&self, ns: u64) {
        Self::count(&self.hook_calls);
        self.hook_ns.fetch_add(ns, Ordering::Relaxed);
        Self::count(&self.hook_histogram[hook_bucket(ns)]);
    }

    /// The hook's time below which a fraction `q` of its calls fall: the upper bound of
    /// the histogram bucket that holds that call (so at most about 19% high). None before
    /// the first call.
    pub fn hook_quantile(&self, q: f64) -> Option<u64> {
        let counts: Vec<u64> = self
            .hook_histogram
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(hook_bucket_limit(bucket));
            }
        }
        Some(u64::MAX)
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
        ]
        .into_iter()
        .chain(&self.hook_histogram)
        {
            c.store(0, Ordering::Relaxed);
        }
        self.last_sent_at.store(0, Ordering::Relaxed);
        self.last_hook_warning_at.store(0, Ordering::Relaxed);
        self.set_last_error("", 0);
    }
}

/// The histogram bucket of a hook call that took `ns`: 0 below 1,024 ns, then four per
/// doubling (by the two bits after the leading one), the last one open-ended.
#[cfg_attr(not(test), link_section = ".text.hot.login_notification")]
fn hook_bucket(ns: u64) -> usize {
    if ns < 1024 {
        return 0;
    }
    let octave = 63 - ns.leading_zeros() as usize; // >= 10
    let quarter = ((ns >> (octave - 2)) & 3) as usize;
    (1 + (octave - 10) * 4 + quarter).min(HOOK_BUCKETS - 1)
}

/// The first duration (ns) above `bucket` (u64::MAX for the last).
fn hook_bucket_limit(bucket: usize) -> u64 {
    if bucket == 0 {
        return 1024;
    }
    if bucket >= HOOK_BUCKETS - 1 {
        return u64::MAX;
    }
    let (octave, quarter) = (10 + (bucket - 1) / 4, ((bucket - 1) % 4) as u64);
    (4 + quarter + 1) << (octave - 2)
}

/// Where the worker can be woken: its process latch (a pointer into shared memory) and pid.
#[repr(C)]
pub struct WorkerSlot {
    pub latch: AtomicPtr<std::ffi::c_void>,
    pub pid: AtomicI32,
    /// Set by the worker before it sleeps until woken: only then does the login path set
    /// its latch. While logins keep coming, the worker polls instead, and a login costs no
    /// SetLatch (a kill() and two more pages to fault in).
    wake_needed: AtomicBool,
}

impl WorkerSlot {
    /// For the login path, after `push` returned `Ok(true)`: must the worker be woken?
    #[cfg_attr(not(test), link_section = ".text.hot.login_notification")]
    pub fn wake_needed(&self) -> bool {
        self.wake_needed.load(Ordering::SeqCst)
    }
}

/// Why an event was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    Full,
}

/// Slot states. An event leaves the queue only once its delivery is over (sent, failed,
/// or written to the spool), so a worker that dies mid-delivery loses nothing. A slot in
/// `next..tail` that is still FREE has been claimed by a producer that is copying its event.
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
/// done), `next..tail` wait (or are being written). Producers move `tail` (compare-and-swap);
/// `head` and `next` move only under `lock`, which only the worker's threads take.
#[repr(C)]
pub struct Queue {
    lock: SpinLock,
    capacity: u64,
    head: AtomicU64,
    next: AtomicU64,
    tail: AtomicU64,
    /// Events pushed and not yet completed (what `stats.queued` shows), without the lock.
    undelivered: AtomicU64,
    pub worker: WorkerSlot,
    pub stats: Stats,
}

// SAFETY: every mutable field is an atomic, or a slot's event, which is written only by the
// producer that claimed the slot and read only after it was published (state READY).
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
                head: AtomicU64::new(0),
                next: AtomicU64::new(0),
                tail: AtomicU64::new(0),
                undelivered: AtomicU64::new(0),
                worker: WorkerSlot {
                    latch: AtomicPtr::new(std::ptr::null_mut()),
                    pid: AtomicI32::new(0),
                    wake_needed: AtomicBool::new(false),
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

    /// Runs `f` under the worker's lock (`head` and `next` change only there).
    fn locked<R>(&self, f: impl FnOnce() -> R) -> R {
        self.lock.lock();
        let r = f();
        self.lock.unlock();
        r
    }

    /// Queues a copy of `ev` without waiting (lock-free); counts `enqueued` or `dropped`.
    /// `Ok(true)` when the worker has taken every event before this one: only then does it
    /// need waking (it may be asleep); otherwise it is awake, or another producer wakes it.
    #[cfg_attr(not(test), link_section = ".text.hot.login_notification")]
    pub fn push(&self, ev: &LoginEvent) -> Result<bool, PushError> {
        let Some(position) = self.claim() else {
            Stats::count(&self.stats.dropped);
            return Err(PushError::Full);
        };
        Ok(self.publish(position, ev))
    }

    /// Reserves the slot at `tail` for the caller, unless the queue is full.
    #[cfg_attr(not(test), link_section = ".text.hot.login_notification")]
    fn claim(&self) -> Option<u64> {
        let mut tail = self.tail.load(Ordering::Relaxed);
        loop {
            // `head` moves on only after the slot it leaves is FREE (Release in reclaim).
            // A stale `tail` may be behind `head`: then the CAS below fails and retries.
            if tail.saturating_sub(self.head.load(Ordering::Acquire)) >= self.capacity {
                return None;
            }
            match self.tail.compare_exchange_weak(
                tail,
                tail + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(tail),
                Err(current) => tail = current,
            }
        }
    }

    /// Copies `ev` into the claimed slot and hands it to the worker; true when the worker
    /// was waiting at exactly this position (see `take`) and must be woken.
    #[cfg_attr(not(test), link_section = ".text.hot.login_notification")]
    fn publish(&self, position: u64, ev: &LoginEvent) -> bool {
        // SAFETY: the slot at `position` was claimed by this caller alone (compare-and-swap
        // on tail) and is FREE: nobody else reads or writes its event until it is READY.
        unsafe { *(*self.slot(position)).event.get() = *ev };
        self.undelivered.fetch_add(1, Ordering::Relaxed);
        Stats::count(&self.stats.enqueued);
        // SeqCst pairs with `take`: either the worker sees READY, or we see that it stopped
        // here (next == position) and wake it.
        self.state(position).store(READY, Ordering::SeqCst);
        self.next.load(Ordering::SeqCst) == position
    }

    /// Hands the oldest waiting event to the worker. Stops at a slot that a producer has
    /// claimed but not yet published (the producer wakes the worker when it does).
    pub fn take(&self) -> Option<(Ticket, LoginEvent)> {
        self.locked(|| {
            let tail = self.tail.load(Ordering::Acquire);
            let mut next = self.next.load(Ordering::Relaxed);
            let mut taken = None;
            while next < tail {
                match self.state(next).load(Ordering::SeqCst) {
                    READY => {
                        self.state(next).store(IN_FLIGHT, Ordering::Release);
                        // SAFETY: a READY slot's event was fully written before it was
                        // published, and no producer touches it again until it is FREE.
                        let ev = unsafe { *(*self.slot(next)).event.get() };
                        taken = Some((Ticket(next), ev));
                        next += 1;
                        break;
                    }
                    // Claimed, still being copied: wait for its producer.
                    FREE => break,
                    // In flight or done (only after requeue_in_flight): skip.
                    _ => next += 1,
                }
            }
            self.next.store(next, Ordering::SeqCst);
            taken
        })
    }

    /// For the worker, before it sleeps until woken: asks producers to wake it, then
    /// returns whether an event is already there to look at (then it must not sleep). The
    /// SeqCst pair with `publish` + `WorkerSlot::wake_needed`: either this sees the event,
    /// or its producer sees the request.
    pub fn sleep_until_woken(&self) -> bool {
        self.worker.wake_needed.store(true, Ordering::SeqCst);
        let next = self.next.load(Ordering::SeqCst);
        let nothing_waiting = next >= self.tail.load(Ordering::SeqCst)
            || self.state(next).load(Ordering::SeqCst) == FREE;
        if !nothing_waiting {
            self.worker.wake_needed.store(false, Ordering::SeqCst);
        }
        nothing_waiting
    }

    /// For the worker once awake (or polling): producers need not wake it.
    pub fn awake(&self) {
        self.worker.wake_needed.store(false, Ordering::SeqCst);
    }

    /// Marks a delivery as over (sent, failed or spooled). Lock-free: safe from any thread.
    pub fn complete(&self, ticket: Ticket) {
        if self.state(ticket.0).swap(DONE, Ordering::AcqRel) != DONE {
            self.undelivered.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Frees the slots of completed deliveries at the front of the queue.
    pub fn reclaim(&self) {
        self.locked(|| {
            let next = self.next.load(Ordering::Relaxed);
            let mut head = self.head.load(Ordering::Relaxed);
            while head < next && self.state(head).load(Ordering::Acquire) == DONE {
                self.state(head).store(FREE, Ordering::Release);
                head += 1;
                // Release: a producer that sees the new head sees the slot FREE.
                self.head.store(head, Ordering::Release);
            }
        })
    }

    /// For a (re)starting worker: events handed to a previous worker and never completed
    /// wait again.
    pub fn requeue_in_flight(&self) -> u64 {
        self.locked(|| {
            let head = self.head.load(Ordering::Relaxed);
            let mut requeued = 0;
            for position in head..self.next.load(Ordering::Relaxed) {
                if self.state(position).load(Ordering::Acquire) == IN_FLIGHT {
                    self.state(position).store(READY, Ordering::Release);
                    requeued += 1;
                }
            }
            self.next.store(head, Ordering::SeqCst);
            requeued
        })
    }

    /// Events not yet delivered (waiting or in flight), read without the lock by the
    /// postmaster after a crash, when no other process is left. Positions are clamped and
    /// every bit pattern is a valid LoginEvent, so a damaged queue yields garbage events at
    /// worst, never undefined behaviour. A slot claimed by a producer that died before
    /// publishing it is FREE and skipped: that login's backend died in our hook.
    ///
    /// # Safety
    /// No other process may be using the queue.
    pub unsafe fn undelivered_after_crash(&self) -> Vec<LoginEvent> {
        let (head, tail) = (
            self.head.load(Ordering::Relaxed),
            self.tail.load(Ordering::Relaxed),
        );
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
    fn producers_never_wait_for_the_workers_lock() {
        let q = queue(4);
        q.lock.lock();
        assert_eq!(q.push(&ev(1)), Ok(true));
        assert_eq!(q.push(&ev(2)), Ok(false));
        q.lock.unlock();
        assert_eq!(q.snapshot().dropped, 0);
        assert_eq!(deliver(q), Some(1));
    }

    #[test]
    fn the_worker_is_woken_only_when_it_waits_at_the_pushed_event() {
        let q = queue(8);
        assert_eq!(q.push(&ev(1)), Ok(true));
        // The first is still waiting: the worker is awake or already woken.
        assert_eq!(q.push(&ev(2)), Ok(false));
        assert_eq!(deliver(q), Some(1));
        assert_eq!(deliver(q), Some(2));
        assert_eq!(deliver(q), None);
        // The worker took everything and may sleep: wake it.
        assert_eq!(q.push(&ev(3)), Ok(true));
    }

    #[test]
    fn producers_wake_the_worker_only_when_it_asked_to_be_woken() {
        let q = queue(8);
        // Polling (the initial state): nobody needs to wake it.
        assert_eq!(q.push(&ev(1)), Ok(true));
        assert!(!q.worker.wake_needed());
        // It may not sleep while an event waits.
        assert!(!q.sleep_until_woken());
        assert!(!q.worker.wake_needed());
        assert_eq!(deliver(q), Some(1));
        // Nothing waits: it sleeps, and the next producer must wake it.
        assert!(q.sleep_until_woken());
        assert!(q.worker.wake_needed());
        assert_eq!(q.push(&ev(2)), Ok(true));
        assert!(q.worker.wake_needed());
        q.awake();
        assert!(!q.worker.wake_needed());
        // A claimed, unpublished slot is nothing to take yet: sleeping is right, its
        // producer wakes the worker when it publishes.
        assert_eq!(deliver(q), Some(2));
        let slow = q.claim().unwrap();
        assert!(q.sleep_until_woken());
        assert!(q.publish(slow, &ev(3)) && q.worker.wake_needed());
    }

    #[test]
    fn take_waits_for_a_claimed_slot_still_being_written() {
        let q = queue(8);
        // A producer claims position 0 and is descheduled before it publishes.
        let slow = q.claim().unwrap();
        // Another login behind it is published first and needs no wake-up...
        assert_eq!(q.push(&ev(2)), Ok(false));
        // ...because the worker must not pass the unpublished slot (order, no loss).
        assert_eq!(q.take().map(|(_, e)| e.backend_pid), None);
        assert_eq!(q.len(), 1);
        // The slow producer publishes: the worker stopped right there, so it is woken.
        assert!(q.publish(slow, &ev(1)));
        assert_eq!(deliver(q), Some(1));
        assert_eq!(deliver(q), Some(2));
    }

    #[test]
    fn concurrent_producers_drop_nothing_while_there_is_room() {
        let q = queue(4096);
        let threads: Vec<_> = (0..8)
            .map(|t| {
                std::thread::spawn(move || {
                    for i in 0..500 {
                        q.push(&ev(t * 1000 + i)).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut seen = Vec::new();
        while let Some(pid) = deliver(q) {
            seen.push(pid);
        }
        seen.sort_unstable();
        let mut want: Vec<i32> = (0..8)
            .flat_map(|t| (0..500).map(move |i| t * 1000 + i))
            .collect();
        want.sort_unstable();
        assert_eq!(seen, want);
        assert_eq!(q.snapshot().dropped, 0);
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
    fn hook_histogram_buckets_are_contiguous_and_quantiles_bound_the_calls() {
        assert_eq!(hook_bucket(0), 0);
        assert_eq!(hook_bucket(1023), 0);
        assert_eq!(hook_bucket(1024), 1);
        // Every bucket starts where the previous one ends.
        for b in 0..HOOK_BUCKETS - 1 {
            let limit = hook_bucket_limit(b);
            assert_eq!(hook_bucket(limit - 1), b, "bucket {b}");
            assert_eq!(hook_bucket(limit), b + 1, "bucket {b}");
        }
        assert_eq!(hook_bucket(u64::MAX), HOOK_BUCKETS - 1);
        assert!(hook_bucket_limit(HOOK_BUCKETS - 2) >= 1_000_000_000);

        let q = queue(1);
        assert_eq!(q.stats.hook_quantile(0.5), None);
        // 90 fast calls (~3 us) and 10 descheduled ones (~2 ms).
        for _ in 0..90 {
            q.stats.record_hook(3_000);
        }
        for _ in 0..10 {
            q.stats.record_hook(2_000_000);
        }
        let p50 = q.stats.hook_quantile(0.5).unwrap();
        assert!((3_000..=3_000 * 6 / 5).contains(&p50), "{p50}");
        assert_eq!(q.stats.hook_quantile(0.9), Some(p50));
        let p99 = q.stats.hook_quantile(0.99).unwrap();
        assert!((2_000_000..=2_400_000).contains(&p99), "{p99}");
        assert_eq!(q.stats.hook_calls.load(Ordering::Relaxed), 100);
        q.reset_stats();
        assert_eq!(q.stats.hook_quantile(0.5), None);
    }

    #[test]
    fn hook_warnings_are_rate_limited() {
        let q = queue(1);
        assert!(q.may_warn(1_000, 60_000_000));
        assert!(!q.may_warn(2_000, 60_000_000));
        assert!(q.may_warn(60_001_000, 60_000_000));
    }
}
