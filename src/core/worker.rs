//! The optional background worker: runs the periodic jobs (`flowgate.run_periodic()`) at a
//! sub-second cadence, for servers whose pg_cron (before 1.5) has no seconds schedules;
//! housekeeping jobs run once a minute.
//!
//! Enabled by preloading flowgate and naming a database:
//! `shared_preload_libraries = 'flowgate'`, `flowgate.worker_database = 'mydb'`, optionally
//! `flowgate.worker_interval_ms = 1000` and `flowgate.worker_lock_timeout_ms = 500` (both
//! reloadable). Each job runs in a transaction of its own (the outbox in its claim, send and
//! record steps) and a failing job is recorded, not raised; the worker exits on SIGTERM, and
//! the postmaster restarts it after five seconds unless the server is shutting down.

use std::ffi::CString;
use std::time::Duration;

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::panic::AssertUnwindSafe;

use super::error::{CoreError, CoreResult};
use super::outbox::engine::{self, Limits, Transactions};
use super::schedules::{self, Runner};
use super::subxact;
use crate::core::error::SqlError;

static WORKER_DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static WORKER_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(1000);
static WORKER_LOCK_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(500);

/// Register the GUCs, and the worker when flowgate is being preloaded with a database set.
pub fn init() {
    // SAFETY: a plain global of the postmaster, read during _PG_init on the main thread.
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    if !preloading {
        // A postmaster-context setting can only be defined while preloading; without it there
        // is no worker to configure.
        return;
    }
    GucRegistry::define_string_guc(
        c"flowgate.worker_database",
        c"Database in which flowgate's background worker runs the periodic jobs.",
        c"Empty (the default) starts no worker. Needs flowgate in shared_preload_libraries.",
        &WORKER_DATABASE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"flowgate.worker_interval_ms",
        c"Milliseconds between two runs of flowgate.run_periodic() in the background worker.",
        c"From 100 ms to one hour; reloadable with pg_reload_conf().",
        &WORKER_INTERVAL_MS,
        100,
        3_600_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"flowgate.worker_lock_timeout_ms",
        c"Longest wait of a background worker's job for a lock, in milliseconds (0: no limit).",
        c"A job that waits longer fails for this tick (55P03, recorded) and the worker goes on \
          with the next. Below deadlock_timeout, so that in a deadlock the job gives way. \
          The outbox and collect always wait. Reloadable.",
        &WORKER_LOCK_TIMEOUT_MS,
        0,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    let configured = WORKER_DATABASE
        .get()
        .is_some_and(|db| !db.as_bytes().is_empty());
    if configured {
        BackgroundWorkerBuilder::new("flowgate periodic worker")
            .set_type("flowgate worker")
            .set_library("flowgate")
            .set_function("flowgate_worker_main")
            .enable_spi_access()
            .set_start_time(BgWorkerStartTime::RecoveryFinished)
            .set_restart_time(Some(Duration::from_secs(5)))
            .load();
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn flowgate_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = WORKER_DATABASE.get().and_then(|c| c.into_string().ok());
    BackgroundWorker::connect_worker_to_spi(database.as_deref(), None);
    // The worker runs as the bootstrap superuser, with the database's own defaults applied
    // (ALTER DATABASE ... SET): a search_path its owner set would make every unqualified name
    // in the jobs' statements (clock_timestamp(), an operator) theirs, run as superuser.
    BackgroundWorker::transaction(|| Spi::run("SET search_path = pg_catalog, pg_temp"))
        .unwrap_or_else(|e| pgrx::error!("flowgate worker: could not pin search_path: {e}"));
    log!(
        "flowgate worker running periodic jobs in database {}",
        database.as_deref().unwrap_or("?")
    );
    let mut last_housekeeping = std::time::Instant::now();
    loop {
        let interval = Duration::from_millis(WORKER_INTERVAL_MS.get().max(100) as u64);
        if stop_requested() || !BackgroundWorker::wait_latch(Some(interval)) {
            break;
        }
        if BackgroundWorker::sighup_received() {
            // SAFETY: re-reading the configuration files is what every worker does on SIGHUP,
            // here on the worker's only thread and outside any transaction.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        let housekeeping = last_housekeeping.elapsed() >= Duration::from_secs(60);
        if housekeeping {
            last_housekeeping = std::time::Instant::now();
        }
        // One transaction per job: a job that fails (or keeps failing) cannot undo or repeat
        // the work of another; the dispatcher's recorded attempts are committed on their own.
        let due = super::schedules::jobs().filter(|j| j.every_tick || housekeeping);
        for job in due {
            if stop_requested() {
                break;
            }
            if job.is_procedure() {
                run_outbox();
                continue;
            }
            BackgroundWorker::transaction(|| {
                // Dropped, not yet created, or being dropped: nothing to run this tick.
                if super::store::try_hold_extension() {
                    if job.gives_way_to_locks() {
                        limit_lock_waits();
                    }
                    if let Err(e) =
                        super::schedules::run_recorded(job, super::schedules::Runner::Worker)
                    {
                        warning!("flowgate worker: recording job {} failed: {e}", job.name);
                    }
                }
            });
        }
    }
    // Stopped by SIGTERM: at shutdown, or by an operator's pg_terminate_backend (a script that
    // ends a database's sessions, DROP DATABASE ... WITH (FORCE)). Exit code 1 asks the
    // postmaster to start the worker again after its restart time (5 s) unless it is shutting
    // down; exit code 0 would end it for good, and the outbox, drains and timers with it, until
    // the next server restart.
    log!("flowgate worker stopped; the postmaster restarts it in 5 s unless it is shutting down");
    // SAFETY: proc_exit runs the backend's exit callbacks and ends the process, as any worker
    // does when it returns; nothing of this function runs after it.
    unsafe { pg_sys::proc_exit(1) };
}

/// Whether SIGTERM has come (shutdown, `pg_terminate_backend`). Read from the flag the handler
/// sets for Postgres itself, which stays set: pgrx's `sigterm_received()` clears its own flag
/// when read, so a SIGTERM the outbox's send loop noticed (to stop early) was forgotten by the
/// time the main loop looked, and the worker went on running until the next server restart.
fn stop_requested() -> bool {
    // SAFETY: a flag of this process, set by its signal handler; read only.
    unsafe { std::ptr::read_volatile(&raw const pg_sys::ShutdownRequestPending) != 0 }
}

/// Bound how long the current transaction waits for a lock (`flowgate.worker_lock_timeout_ms`,
/// as `SET LOCAL lock_timeout`). The worker is one process running every job in turn: a job
/// waiting for a lock some session holds (an open transaction's row lock, an operator's
/// `LOCK TABLE`, a `CREATE INDEX` or `VACUUM FULL` of a flowgate table) would otherwise stall
/// the outbox, the timers and every other job until that session ends, and SIGTERM (a
/// shutdown, `pg_terminate_backend`) reaches the worker only between two steps. Below
/// `deadlock_timeout` (1 s), the job is also the side that gives way in a deadlock with a
/// session (an `ALTER EXTENSION flowgate UPDATE`, say) that began waiting a little earlier.
fn limit_lock_waits() {
    let ms = WORKER_LOCK_TIMEOUT_MS.get().max(0);
    // An integer of a bounded GUC: no quoting needed.
    if let Err(e) = Spi::run(&format!("SET LOCAL lock_timeout = {ms}")) {
        warning!("flowgate worker: could not set lock_timeout: {e}");
    }
}

/// The outbox job, natively: claim and record in transactions of their own, send in none.
fn run_outbox() {
    let t0 = std::time::Instant::now();
    if !BackgroundWorker::transaction(super::store::try_hold_extension) {
        return;
    }
    let mut tx = WorkerTransactions;
    // One tick's worth of rounds at most, so the other jobs keep their cadence.
    let tick = Duration::from_millis(WORKER_INTERVAL_MS.get().max(100) as u64);
    let limits = tx.step(|| Limits::from_settings(None)).map(|l| Limits {
        budget: l.budget.min(tick.max(Duration::from_secs(1))),
        ..l
    });
    let result = limits.and_then(|l| engine::run(&mut tx, l));
    let duration_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let recorded = tx.step(|| {
        let (ok, text) = match &result {
            Ok(s) => (true, s.to_json().to_string()),
            Err(e) => (false, format!("{}: {e}", e.sqlstate())),
        };
        schedules::record_outcome(
            "flowgate.dispatch",
            Runner::Worker,
            None,
            duration_ms,
            ok,
            &text,
        )
    });
    if let Err(e) = recorded {
        warning!("flowgate worker: recording the outbox run failed: {e}");
    }
}

/// The worker's transactions: each step is one, committed unless it failed (then its
/// subtransaction is rolled back and the empty transaction commits).
struct WorkerTransactions;

impl Transactions for WorkerTransactions {
    fn step<R>(&mut self, step: impl FnOnce() -> CoreResult<R>) -> CoreResult<R> {
        BackgroundWorker::transaction(AssertUnwindSafe(|| {
            match subxact::run(|| {
                super::store::require_extension()?;
                step()
            }) {
                Ok(result) => result,
                Err(caught) => Err(CoreError::Internal(format!(
                    "{}: {}",
                    caught.sqlstate, caught.message
                ))),
            }
        }))
    }

    fn stopping(&self) -> bool {
        stop_requested()
    }
}
