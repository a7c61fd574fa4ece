//! The background worker: owns the tokio runtime and the Lambda client, drains the queue,
//! reloads on SIGHUP, and stops after a bounded drain on SIGTERM.
//!
//! The main thread is the only one that touches PostgreSQL (latch, settings, recovery
//! state). Deliveries run as tokio tasks that see only plain values and report through the
//! queue's atomic counters.

pub mod lambda;

use crate::event::{self, ServerInfo};
use crate::queue::{Queue, Stats};
use crate::{guc, server, shmem};
use lambda::{Lambda, Target};
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::{log, pg_guard, pg_sys, warning};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;

/// Idle wake-up interval (also bounds how late a failure summary is logged).
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// Wake-up interval while events wait for a free delivery slot.
const BACKLOG_WAIT: Duration = Duration::from_millis(10);
/// Failed deliveries are summarised in one WARNING at most this often.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// How long a failed client setup waits before it is tried again.
const RECONNECT_INTERVAL: Duration = Duration::from_secs(30);
/// How long shutdown keeps delivering what is queued and in flight.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(3);

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

struct Sender {
    queue: &'static Queue,
    runtime: Runtime,
    lambda: Result<Arc<Lambda>, String>,
    last_connect: Instant,
    slots: Arc<Semaphore>,
    max_concurrency: usize,
    in_flight: Arc<AtomicUsize>,
    server: ServerInfo,
    backlog: bool,
    failures_seen: u64,
    last_failure_log: Instant,
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
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("login_notification-io")
            .enable_all()
            .on_thread_start(block_signals)
            .build()
            .unwrap_or_else(|e| panic!("cannot start the tokio runtime: {e}"));
        let max_concurrency = guc::max_concurrency();
        let mut sender = Sender {
            queue,
            runtime,
            lambda: Err("not configured yet".into()),
            last_connect: Instant::now(),
            slots: Arc::new(Semaphore::new(max_concurrency)),
            max_concurrency,
            in_flight: Arc::new(AtomicUsize::new(0)),
            server: server::info(),
            backlog: false,
            failures_seen: queue.stats.failed.load(Ordering::Relaxed),
            last_failure_log: Instant::now(),
        };
        sender.connect(guc::target());
        log!(
            "login_notification worker started: {} max_concurrency={} queue_size={}",
            guc::target(),
            max_concurrency,
            queue.capacity()
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
        let alive = BackgroundWorker::wait_latch(Some(if self.backlog {
            BACKLOG_WAIT
        } else {
            IDLE_WAIT
        }));
        if BackgroundWorker::sighup_received() {
            self.reload();
        }
        if self.lambda.is_err() && self.last_connect.elapsed() >= RECONNECT_INTERVAL {
            self.connect(guc::target());
        }
        self.dispatch();
        self.log_failures();
        alive
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
            self.max_concurrency = max_concurrency;
        }
        log!(
            "login_notification configuration reloaded{}: {target} max_concurrency={max_concurrency}",
            if changed { " (new client)" } else { "" }
        );
    }

    /// Starts a delivery for each queued event while delivery slots are free.
    fn dispatch(&mut self) {
        // SAFETY: a read of shared recovery state from the main thread.
        self.server.in_recovery = unsafe { pg_sys::RecoveryInProgress() };
        let stats: &'static Stats = &self.queue.stats;
        loop {
            let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                self.backlog = true;
                return;
            };
            let Some(ev) = self.queue.pop() else {
                self.backlog = false;
                return;
            };
            let body = event::payload(&ev, &self.server).to_string().into_bytes();
            let lambda = match &self.lambda {
                Ok(l) => Arc::clone(l),
                Err(e) => {
                    stats.record_failure(e, event::now_us());
                    continue;
                }
            };
            let in_flight = Arc::clone(&self.in_flight);
            in_flight.fetch_add(1, Ordering::Relaxed);
            self.runtime.spawn(async move {
                match lambda.deliver(body, stats).await {
                    Ok(()) => stats.record_sent(event::now_us()),
                    Err(e) => stats.record_failure(&e.to_string(), event::now_us()),
                }
                in_flight.fetch_sub(1, Ordering::Relaxed);
                drop(slot);
            });
        }
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
                "login_notification: {new} notification(s) could not be delivered in the last {}s; last error: {}",
                FAILURE_LOG_INTERVAL.as_secs(),
                self.queue.stats.last_error().unwrap_or_default()
            );
        }
    }

    /// Bounded drain: keep delivering for up to SHUTDOWN_DRAIN, then count what is left.
    fn shutdown(mut self) {
        let deadline = Instant::now() + SHUTDOWN_DRAIN;
        loop {
            self.dispatch();
            let idle = self.in_flight.load(Ordering::Relaxed) == 0;
            if (idle && self.queue.len() == 0) || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(BACKLOG_WAIT);
        }
        let mut left = 0u64;
        while self.queue.pop().is_some() {
            left += 1;
        }
        let in_flight = self.in_flight.load(Ordering::Relaxed) as u64;
        if left + in_flight > 0 {
            self.queue
                .stats
                .dropped
                .fetch_add(left + in_flight, Ordering::Relaxed);
            warning!(
                "login_notification: stopping with {left} queued and {in_flight} in-flight notification(s) undelivered"
            );
        }
        self.queue
            .worker
            .latch
            .store(std::ptr::null_mut(), Ordering::Release);
        self.queue.worker.pid.store(0, Ordering::Release);
        self.runtime.shutdown_timeout(Duration::from_millis(100));
        log!("login_notification worker stopped");
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
