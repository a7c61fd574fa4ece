//! The background worker: owns the tokio runtime and the Lambda client, drains the queue,
//! keeps undelivered events in the spool, reloads on SIGHUP, and stops after a bounded
//! drain on SIGTERM.
//!
//! The main thread is the only one that touches PostgreSQL (latch, settings, recovery
//! state). Deliveries run as tokio tasks that see only plain values and report through the
//! queue's atomic counters, the queue's lock-free `complete`, and the spool's mutex.
//!
//! The runtime is a current-thread one, driven by the main thread itself: while anything is
//! in flight (or logins keep coming) the loop runs it in short slices (`drive`), between
//! which it looks at the queue, signals and settings; when all is quiet it sleeps on its
//! latch instead. One thread does everything, so a delivery costs no cross-thread wake-up:
//! on this kind of VM the context switches between the main thread and runtime threads
//! were a third of the worker's CPU per event (BENCHMARKS.md, finding 7).

pub mod lambda;
pub mod limit;
pub mod spool;

use crate::event::{self, ServerInfo};
use crate::queue::{Queue, Stats, Ticket};
use crate::{guc, server, shmem};
use lambda::{DeliveryError, Lambda, Target};
use limit::RateLimiter;
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::{log, pg_guard, pg_sys, warning};
use spool::Spool;
use std::collections::HashMap;
use std::ffi::CStr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Idle wake-up interval (also bounds how late a failure summary is logged).
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// While logins keep coming the worker looks at the queue this often instead of being
/// woken by each one: the login path then skips SetLatch (see `Queue::sleep_until_woken`).
/// It runs the deliveries in between. 20 ms rather than 5: each look then finds several
/// logins to send, and the worker's CPU per login fell from 145-200 µs to 57-69 µs at
/// ~450 logins/s (a delivery starts at most 20 ms later; BENCHMARKS.md, finding 7).
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// While deliveries are in flight but no new event came for a while, the runtime runs in
/// slices this long (a new event then waits at most this long to be taken).
const IN_FLIGHT_SLICE: Duration = Duration::from_millis(20);
/// After sleeping on the latch, the runtime first runs this long on its own, so that
/// connections the endpoint closed meanwhile are noticed before a request picks one.
const WAKE_UP_SLICE: Duration = Duration::from_millis(1);
/// How long after the last event the worker keeps polling before it sleeps until woken.
const KEEP_POLLING: Duration = Duration::from_millis(500);
/// Longest wait for a free delivery slot before signals and settings are looked at again.
const BACKLOG_WAIT: Duration = Duration::from_millis(10);
/// Failed deliveries are summarised in one WARNING at most this often.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// How long a failed client setup waits before it is tried again.
const RECONNECT_INTERVAL: Duration = Duration::from_secs(30);
/// How long shutdown keeps delivering what is queued and in flight before spooling it.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(3);
/// How often delivery of spooled events is tried again while they fail.
const SPOOL_RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// The spool file, relative to the data directory.
const SPOOL_FILE: &str = "login_notification/spool.jsonl";

pub fn register() {
    BackgroundWorkerBuilder::new("login_notification sender")
        .set_type("login_notification")
        .set_library("login_notification")
        .set_function("login_notification_worker_main")
        // A connection to no database, so the worker shows in pg_stat_activity.
        .enable_spi_access()
        // Consistent state: also runs on a hot standby.
        .set_start_time(BgWorkerStartTime::ConsistentState)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn login_notification_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(None, None);
    let Some(queue) = shmem::queue() else {
        warning!("login_notification: shared memory is not attached; the worker stops");
        return;
    };
    let mut sender = Sender::start(queue);
    while sender.run_once() {}
    sender.shutdown();
    // Exit code 1, like PostgreSQL's own workers: after pg_terminate_backend the postmaster
    // restarts us (exit code 0 would unregister the worker); during shutdown it does not.
    // SAFETY: proc_exit runs the exit callbacks and never returns.
    unsafe { pg_sys::proc_exit(1) };
}

/// What every delivery task shares: plain Rust, safe on tokio threads.
struct Shared {
    queue: &'static Queue,
    spool: Mutex<Spool>,
    /// Payloads of deliveries under way, by ticket: spooled if still running at shutdown.
    in_flight: Mutex<HashMap<u64, Vec<u8>>>,
    in_flight_count: AtomicU64,
    spool_pass_running: AtomicBool,
}

impl Shared {
    fn stats(&self) -> &'static Stats {
        &self.queue.stats
    }

    fn lock_spool(&self) -> std::sync::MutexGuard<'_, Spool> {
        self.spool
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Vec<u8>>> {
        self.in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn update_spool_gauge(&self, spool: &Spool) {
        self.stats()
            .spooled
            .store(spool.len() as u64, Ordering::Relaxed);
    }

    /// Keeps a payload for later delivery; a full or unwritable spool drops it (counted).
    fn spool(&self, payload: &[u8]) {
        let mut spool = self.lock_spool();
        match spool.add(payload) {
            Ok(true) => {}
            Ok(false) => Stats::count(&self.stats().dropped),
            Err(e) => {
                Stats::count(&self.stats().dropped);
                self.stats()
                    .set_last_error(&format!("cannot write the spool: {e}"), event::now_us());
            }
        }
        self.update_spool_gauge(&spool);
    }

    /// One delivery from the queue (ticket) or of a summary (no ticket).
    async fn deliver(&self, lambda: Arc<Lambda>, payload: Vec<u8>, ticket: Option<Ticket>) {
        let stats = self.stats();
        match lambda.deliver(&payload, stats).await {
            Ok(()) => stats.record_sent(event::now_us()),
            Err(e) => {
                stats.record_failure(&e.to_string(), event::now_us());
                if e.retryable() {
                    self.spool(&payload);
                }
            }
        }
        if let Some(ticket) = ticket {
            self.lock_in_flight().remove(&ticket.position());
            self.queue.complete(ticket);
            self.queue.reclaim();
        }
        self.in_flight_count.fetch_sub(1, Ordering::Relaxed);
    }

    /// Delivers spooled payloads, oldest first, a batch at a time; stops at the first
    /// batch in which the endpoint still fails (they stay spooled, uncounted).
    async fn spool_pass(self: Arc<Self>, lambda: Arc<Lambda>, batch: usize) {
        let stats = self.stats();
        loop {
            let payloads = self.lock_spool().oldest(batch);
            if payloads.is_empty() {
                break;
            }
            let results = attempt_all(&lambda, &payloads).await;
            let mut endpoint_down = false;
            let keep: Vec<bool> = results
                .into_iter()
                .map(|result| match result {
                    Ok(()) => {
                        stats.record_sent(event::now_us());
                        false
                    }
                    Err(DeliveryError::Retryable(e)) => {
                        endpoint_down = true;
                        stats.set_last_error(&e, event::now_us());
                        true
                    }
                    Err(DeliveryError::Permanent(e)) => {
                        stats.record_failure(&e, event::now_us());
                        false
                    }
                })
                .collect();
            let mut spool = self.lock_spool();
            spool.retain_oldest(&keep);
            self.update_spool_gauge(&spool);
            drop(spool);
            if endpoint_down {
                break;
            }
        }
        if let Err(e) = self.lock_spool().compact() {
            stats.set_last_error(&format!("cannot rewrite the spool: {e}"), event::now_us());
        }
        self.spool_pass_running.store(false, Ordering::Release);
    }
}

/// One attempt per payload (no retries: the spool pass itself is the retry), concurrently.
async fn attempt_all(lambda: &Arc<Lambda>, payloads: &[Vec<u8>]) -> Vec<Result<(), DeliveryError>> {
    let mut set = tokio::task::JoinSet::new();
    for (i, payload) in payloads.iter().enumerate() {
        let (lambda, payload) = (Arc::clone(lambda), payload.clone());
        set.spawn(async move { (i, lambda.attempt(&payload).await) });
    }
    let mut results: Vec<Result<(), DeliveryError>> = payloads
        .iter()
        .map(|_| Err(DeliveryError::Retryable("not attempted".into())))
        .collect();
    while let Some(joined) = set.join_next().await {
        if let Ok((i, result)) = joined {
            results[i] = result;
        }
    }
    results
}

struct Sender {
    queue: &'static Queue,
    shared: Arc<Shared>,
    runtime: Runtime,
    lambda: Result<Arc<Lambda>, String>,
    last_connect: Instant,
    slots: Arc<Semaphore>,
    /// A delivery slot obtained while waiting for one (backlog), used by the next dispatch.
    spare_slot: Option<OwnedSemaphorePermit>,
    max_concurrency: usize,
    limiter: RateLimiter,
    server: ServerInfo,
    backlog: bool,
    /// When the last event was taken from the queue (polling while logins keep coming).
    last_event: Instant,
    last_spool_pass: Instant,
    failures_seen: u64,
    last_failure_log: Instant,
}

fn spool_path() -> PathBuf {
    // SAFETY: DataDir is set before any worker starts and never changes.
    let data_dir = unsafe { CStr::from_ptr(pg_sys::DataDir) };
    PathBuf::from(data_dir.to_string_lossy().into_owned()).join(SPOOL_FILE)
}

impl Sender {
    fn start(queue: &'static Queue) -> Sender {
        // SAFETY: MyLatch is this process's latch inside its PGPROC (shared memory), valid
        // for the life of the process; MyProcPid is a plain global.
        unsafe {
            queue.worker.pid.store(pg_sys::MyProcPid, Ordering::Release);
            queue
                .worker
                .latch
                .store(pg_sys::MyLatch.cast(), Ordering::Release);
        }
        let requeued = queue.requeue_in_flight();
        batch_scheduling();
        let path = spool_path();
        let (spool, loaded) = Spool::open(&path, guc::spool_max_events())
            .unwrap_or_else(|e| panic!("cannot open the spool {}: {e}", path.display()));
        if loaded.corrupt + loaded.over_cap > 0 {
            warning!(
                "login_notification: spool {}: skipped {} damaged line(s), dropped {} event(s) over spool_max_events",
                path.display(),
                loaded.corrupt,
                loaded.over_cap
            );
            queue
                .stats
                .dropped
                .fetch_add((loaded.corrupt + loaded.over_cap) as u64, Ordering::Relaxed);
        }
        queue
            .stats
            .spooled
            .store(spool.len() as u64, Ordering::Relaxed);
        // Current-thread: the main thread drives it (see the module comment); threads of
        // its blocking pool (file reads of the credential chain) start with signals blocked.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .thread_name("login_notification-io")
            .enable_all()
            .on_thread_start(block_signals)
            .build()
            .unwrap_or_else(|e| panic!("cannot start the tokio runtime: {e}"));
        let max_concurrency = guc::max_concurrency();
        let mut sender = Sender {
            queue,
            shared: Arc::new(Shared {
                queue,
                spool: Mutex::new(spool),
                in_flight: Mutex::new(HashMap::new()),
                in_flight_count: AtomicU64::new(0),
                spool_pass_running: AtomicBool::new(false),
            }),
            runtime,
            lambda: Err("not configured yet".into()),
            last_connect: Instant::now(),
            slots: Arc::new(Semaphore::new(max_concurrency)),
            spare_slot: None,
            max_concurrency,
            limiter: RateLimiter::new(guc::rate_limit(), Instant::now()),
            server: server::info(),
            backlog: false,
            last_event: Instant::now(),
            last_spool_pass: Instant::now() - SPOOL_RETRY_INTERVAL,
            failures_seen: queue.stats.failed.load(Ordering::Relaxed),
            last_failure_log: Instant::now(),
        };
        sender.connect(guc::target());
        log!(
            "login_notification worker started: {} max_concurrency={} rate_limit={} queue_size={} \
             (queued: {}, resumed in flight: {requeued}) spool={} ({} events)",
            guc::target(),
            max_concurrency,
            guc::rate_limit(),
            queue.capacity(),
            queue.len(),
            path.display(),
            loaded.events
        );
        sender
    }

    /// (Re)builds the Lambda client for `target`.
    fn connect(&mut self, target: Target) {
        self.last_connect = Instant::now();
        self.lambda = self.runtime.block_on(Lambda::connect(target)).map(Arc::new);
        if let Err(e) = &self.lambda {
            warning!("login_notification: cannot set up the Lambda client: {e}");
        }
    }

    /// One turn of the loop. Returns false once SIGTERM (or postmaster death) arrived.
    fn run_once(&mut self) -> bool {
        if self.backlog {
            // Every delivery slot is busy: run the deliveries until one frees (not a fixed
            // poll, which would cap delivery at max_concurrency per BACKLOG_WAIT).
            self.wait_for_slot();
        } else if self.last_event.elapsed() < KEEP_POLLING {
            self.drive(POLL_INTERVAL);
        } else if self.busy() {
            self.drive(IN_FLIGHT_SLICE);
        } else if self.queue.sleep_until_woken() {
            let alive = BackgroundWorker::wait_latch(Some(IDLE_WAIT));
            self.queue.awake();
            if !alive {
                return false;
            }
            self.drive(WAKE_UP_SLICE);
        }
        // Signals and postmaster death, without sleeping: their handlers only set flags and
        // the latch, which a slice of the runtime does not look at.
        let alive = BackgroundWorker::wait_latch(Some(Duration::ZERO));
        if BackgroundWorker::sighup_received() {
            self.reload();
        }
        if self.lambda.is_err() && self.last_connect.elapsed() >= RECONNECT_INTERVAL {
            self.connect(guc::target());
        }
        self.dispatch();
        self.send_due_summary(false);
        self.start_spool_pass();
        self.log_failures();
        alive
    }

    /// Runs the deliveries (and nothing else) on this thread for `slice`.
    fn drive(&self, slice: Duration) {
        // The timer is created inside the runtime's context (block_on's future), not before.
        self.runtime
            .block_on(async move { tokio::time::sleep(slice).await });
    }

    /// Whether a delivery or a spool pass is under way: the runtime must then be driven.
    fn busy(&self) -> bool {
        self.shared.in_flight_count.load(Ordering::Relaxed) > 0
            || self.shared.spool_pass_running.load(Ordering::Acquire)
    }

    /// Runs the deliveries until a delivery slot is free (kept for the next dispatch) or
    /// BACKLOG_WAIT passed. SIGTERM and SIGHUP still reach the main thread: their handlers
    /// only set flags and the latch, which the caller looks at right after.
    fn wait_for_slot(&mut self) {
        if self.spare_slot.is_some() {
            return;
        }
        let slots = Arc::clone(&self.slots);
        self.spare_slot = self.runtime.block_on(async move {
            tokio::time::timeout(BACKLOG_WAIT, slots.acquire_owned())
                .await
                .ok()
                .and_then(Result::ok)
        });
    }

    fn reload(&mut self) {
        // SAFETY: re-reads postgresql.conf on the worker's main thread, as PostgreSQL's own
        // auxiliary processes do after SIGHUP.
        unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        let target = guc::target();
        let changed = match &self.lambda {
            Ok(l) => l.target() != &target,
            Err(_) => true,
        };
        if changed {
            self.connect(target.clone());
        }
        let max_concurrency = guc::max_concurrency();
        if max_concurrency != self.max_concurrency {
            // Deliveries in flight keep their slots on the old semaphore.
            self.slots = Arc::new(Semaphore::new(max_concurrency));
            self.spare_slot = None;
            self.max_concurrency = max_concurrency;
        }
        self.limiter.set_rate(guc::rate_limit());
        self.shared.lock_spool().set_max(guc::spool_max_events());
        log!(
            "login_notification configuration reloaded{}: {target} max_concurrency={max_concurrency} rate_limit={} spool_max_events={}",
            if changed { " (new client)" } else { "" },
            guc::rate_limit(),
            guc::spool_max_events()
        );
    }

    fn spawn_delivery(
        &self,
        lambda: Arc<Lambda>,
        payload: Vec<u8>,
        ticket: Option<Ticket>,
        slot: Option<tokio::sync::OwnedSemaphorePermit>,
    ) {
        if let Some(ticket) = ticket {
            self.shared
                .lock_in_flight()
                .insert(ticket.position(), payload.clone());
        }
        self.shared.in_flight_count.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::clone(&self.shared);
        self.runtime.spawn(async move {
            shared.deliver(lambda, payload, ticket).await;
            drop(slot);
        });
    }

    /// Starts a delivery for each queued event while delivery slots are free.
    fn dispatch(&mut self) {
        // SAFETY: a read of shared recovery state from the main thread.
        self.server.in_recovery = unsafe { pg_sys::RecoveryInProgress() };
        self.queue.reclaim();
        loop {
            let Some(slot) = self
                .spare_slot
                .take()
                .or_else(|| Arc::clone(&self.slots).try_acquire_owned().ok())
            else {
                self.backlog = true;
                return;
            };
            let Some((ticket, ev)) = self.queue.take() else {
                self.backlog = false;
                return;
            };
            self.last_event = Instant::now();
            if !self.limiter.admit(&ev, Instant::now()) {
                Stats::count(&self.queue.stats.suppressed);
                self.queue.complete(ticket);
                continue;
            }
            let payload = event::payload(&ev, &self.server).to_string().into_bytes();
            match &self.lambda {
                Ok(lambda) => {
                    self.spawn_delivery(Arc::clone(lambda), payload, Some(ticket), Some(slot))
                }
                Err(e) => {
                    self.queue.stats.record_failure(e, event::now_us());
                    self.shared.spool(&payload);
                    self.queue.complete(ticket);
                }
            }
        }
    }

    /// Sends the rate limiter's summary when it is due (or now, at shutdown).
    fn send_due_summary(&mut self, flush: bool) {
        let Some(summary) = self.limiter.due_summary(Instant::now(), flush) else {
            return;
        };
        let payload = event::suppressed_payload(&summary, &self.server)
            .to_string()
            .into_bytes();
        match &self.lambda {
            Ok(lambda) => self.spawn_delivery(Arc::clone(lambda), payload, None, None),
            Err(_) => self.shared.spool(&payload),
        }
    }

    /// Retries the spool every SPOOL_RETRY_INTERVAL while it holds events.
    fn start_spool_pass(&mut self) {
        let Ok(lambda) = &self.lambda else { return };
        if self.shared.lock_spool().is_empty()
            || self.last_spool_pass.elapsed() < SPOOL_RETRY_INTERVAL
            || self.shared.spool_pass_running.swap(true, Ordering::AcqRel)
        {
            return;
        }
        self.last_spool_pass = Instant::now();
        let batch = self.max_concurrency;
        self.runtime
            .spawn(Arc::clone(&self.shared).spool_pass(Arc::clone(lambda), batch));
    }

    /// One WARNING per interval that summarises new failures.
    fn log_failures(&mut self) {
        if self.last_failure_log.elapsed() < FAILURE_LOG_INTERVAL {
            return;
        }
        self.last_failure_log = Instant::now();
        let failed = self.queue.stats.failed.load(Ordering::Relaxed);
        let new = failed.saturating_sub(self.failures_seen);
        self.failures_seen = failed;
        if new > 0 {
            warning!(
                "login_notification: {new} notification(s) could not be delivered in the last {}s \
                 ({} waiting in the spool); last error: {}",
                FAILURE_LOG_INTERVAL.as_secs(),
                self.queue.stats.spooled.load(Ordering::Relaxed),
                self.queue.stats.last_error().unwrap_or_default()
            );
        }
    }

    /// Bounded drain: keep delivering for up to SHUTDOWN_DRAIN; then write what is still
    /// queued or in flight to the spool, for delivery after the next start.
    fn shutdown(mut self) {
        let deadline = Instant::now() + SHUTDOWN_DRAIN;
        self.send_due_summary(true);
        loop {
            self.dispatch();
            let idle = self.shared.in_flight_count.load(Ordering::Relaxed) == 0;
            if (idle && self.queue.len() == 0) || Instant::now() >= deadline {
                break;
            }
            self.drive(BACKLOG_WAIT);
        }
        // Stop the deliveries still under way (at their next await point). Each one either
        // completed its ticket, or is still listed in `in_flight` and is spooled here.
        let runtime = self.runtime;
        runtime.shutdown_timeout(Duration::from_millis(200));
        let mut spooled = 0;
        let unfinished: Vec<(u64, Vec<u8>)> = self.shared.lock_in_flight().drain().collect();
        for (position, payload) in unfinished {
            self.shared.spool(&payload);
            self.queue.complete(Ticket::at(position));
            spooled += 1;
        }
        while let Some((ticket, ev)) = self.queue.take() {
            self.shared
                .spool(event::payload(&ev, &self.server).to_string().as_bytes());
            self.queue.complete(ticket);
            spooled += 1;
        }
        self.queue.reclaim();
        if let Err(e) = self.shared.lock_spool().sync() {
            warning!("login_notification: cannot sync the spool: {e}");
        }
        self.queue
            .worker
            .latch
            .store(std::ptr::null_mut(), Ordering::Release);
        self.queue.worker.pid.store(0, Ordering::Release);
        log!(
            "login_notification worker stopped ({spooled} undelivered event(s) written to the spool, {} waiting there)",
            self.shared.lock_spool().len()
        );
    }
}

/// SCHED_BATCH for this process and the runtime threads it starts (they inherit it): the
/// kernel then lets a backend that just queued an event finish its login before running
/// us, instead of preempting it on SetLatch. Delivery is throughput work, not latency work.
fn batch_scheduling() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: changes this thread's scheduling policy only; param is a valid struct.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
        log!(
            "login_notification: cannot use SCHED_BATCH: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Runtime threads block every signal, so SIGHUP and SIGTERM reach the main thread.
fn block_signals() {
    // SAFETY: sigfillset initialises the set; pthread_sigmask changes only this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}
