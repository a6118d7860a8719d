//! `CALL flowgate.run_outbox()`: the outbox's claim–send–record loop as a procedure that
//! commits between its steps, for pg_cron and for operators (the background worker runs the
//! same loop with transactions of its own).
//!
//! pgrx generates functions, not procedures, so this one is declared by hand: a V1 C function
//! that reads its arguments from `fcinfo`, connects to SPI non-atomically (allowed only when the
//! CALL is not inside a transaction block or a function) and commits with `SPI_commit`.

use std::time::Instant;

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::{IntoDatum, JsonB};

use super::engine::{self, Limits, Transactions};
use crate::core::error::SqlError;
use crate::core::error::{CoreError, CoreResult};
use crate::core::schedules::{self, Runner};

extension_sql!(
    r#"
CREATE PROCEDURE flowgate.run_outbox(max_deliveries int DEFAULT NULL, runner text DEFAULT 'manual',
                                     INOUT summary jsonb DEFAULT NULL)
LANGUAGE c AS 'MODULE_PATHNAME', 'flowgate_run_outbox';
REVOKE EXECUTE ON PROCEDURE flowgate.run_outbox(int, text, jsonb) FROM PUBLIC;
COMMENT ON PROCEDURE flowgate.run_outbox(int, text, jsonb) IS
  'Send due deliveries: claim a batch (committed), send it with no transaction open, record the outcomes (committed), '
  'in rounds until nothing is due, max_deliveries were claimed or flowgate.outbox_run_seconds passed. '
  'CALL it on its own (psql autocommit, pg_cron), not inside a transaction block. Returns the counts as summary.';
"#,
    name = "run_outbox_procedure",
    requires = ["outbox_tables"],
);

/// The V1 call convention record for `flowgate_run_outbox`.
#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_flowgate_run_outbox() -> &'static pg_sys::Pg_finfo_record {
    const V1_API: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1_API
}

/// # Safety
/// Called by the function manager with a valid `fcinfo` for the declaration above.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn flowgate_run_outbox(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: fcinfo comes from the function manager; arguments 0 and 1 are declared above.
    let (max, runner, atomic) = unsafe {
        (
            pgrx::fcinfo::pg_getarg::<i32>(fcinfo, 0),
            pgrx::fcinfo::pg_getarg::<String>(fcinfo, 1),
            called_atomically(fcinfo),
        )
    };
    match call(max, runner.as_deref(), atomic) {
        // SAFETY: fcinfo is valid, and the result is built in the caller's memory context.
        Ok(summary) => unsafe { one_column_row(fcinfo, summary) },
        Err(e) => {
            e.report("flowgate").report(PgLogLevel::ERROR);
            unreachable!("an ERROR report does not return")
        }
    }
}

/// Whether this CALL may not commit: inside a transaction block, a function, or not a CALL.
unsafe fn called_atomically(fcinfo: pg_sys::FunctionCallInfo) -> bool {
    // SAFETY: a non-null context of a procedure call is a CallContext node (ExecuteCallStmt).
    unsafe {
        let context = (*fcinfo).context;
        if context.is_null() || (*context).type_ != pg_sys::NodeTag::T_CallContext {
            return true;
        }
        (*(context as *mut pg_sys::CallContext)).atomic
    }
}

fn call(max: Option<i32>, runner: Option<&str>, atomic: bool) -> CoreResult<JsonB> {
    let runner = Runner::parse(runner.unwrap_or("manual"))?;
    Limits::check_max(max.map(i64::from))?;
    if atomic {
        return Err(CoreError::NeedsOwnTransactions {
            what: "flowgate.run_outbox()".into(),
            hint: "it sends HTTP with no transaction open: CALL flowgate.run_outbox() in autocommit mode \
                   (psql, pg_cron), after the transaction that enqueued has committed"
                .into(),
        });
    }
    // Before the settings are read: a DROP EXTENSION waits for this CALL's transaction.
    crate::core::store::require_extension()?;
    let limits = Limits::from_settings(max.map(i64::from))?;
    pin_search_path();
    let started = Spi::get_one::<pgrx::datum::TimestampWithTimeZone>("SELECT clock_timestamp()")?;
    let t0 = Instant::now();
    // SAFETY: the CALL is non-atomic (checked above), so this connection may commit; it is
    // closed on every path below before returning.
    unsafe {
        if pg_sys::SPI_connect_ext(pg_sys::SPI_OPT_NONATOMIC as i32)
            != pg_sys::SPI_OK_CONNECT as i32
        {
            return Err(CoreError::Internal("SPI_connect_ext failed".into()));
        }
    }
    let mut tx = Procedure { idle: false };
    let result = engine::run(&mut tx, limits);
    let duration_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let recorded = tx.step(|| {
        let (ok, text) = match &result {
            Ok(s) => (true, s.to_json().to_string()),
            Err(e) => (false, format!("{}: {e}", e.sqlstate())),
        };
        schedules::record_outcome("flowgate.dispatch", runner, started, duration_ms, ok, &text)
    });
    // SAFETY: pairs with the SPI_connect_ext above.
    unsafe { pg_sys::SPI_finish() };
    let summary = result?;
    recorded?;
    Ok(JsonB(summary.to_json()))
}

/// Resolve every name the steps use in pg_catalog (and pg_temp last), for the rest of the
/// current transaction. A procedure that commits cannot carry `SET search_path` itself, and its
/// caller is usually pg_cron running as the extension's owner: the session's search_path is
/// the database's default, which the database owner sets (`ALTER DATABASE ... SET`), and would
/// otherwise decide what `clock_timestamp()` or `to_jsonb` mean in the statements run here.
fn pin_search_path() {
    // SAFETY: a transaction-local GUC assignment by name, inside a transaction (each step's,
    // or the CALL's own), with NUL-terminated constants; an invalid value would raise an ERROR.
    unsafe {
        pg_sys::set_config_option(
            c"search_path".as_ptr(),
            c"pg_catalog, pg_temp".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_LOCAL,
            true,
            0,
            false,
        );
    }
}

/// Transaction boundaries of a non-atomic CALL.
struct Procedure {
    /// A send happened since the last commit: the transaction SPI_commit started then has
    /// been open (empty) through it, so it is committed before the next step for a fresh now().
    idle: bool,
}

impl Transactions for Procedure {
    fn step<R>(&mut self, step: impl FnOnce() -> CoreResult<R>) -> CoreResult<R> {
        // SAFETY: SPI is connected non-atomically (flowgate_run_outbox) and no nested SPI
        // connection is open between steps; EnsurePortalSnapshotExists is what PL/pgSQL calls
        // before running a statement after a COMMIT in a procedure.
        unsafe {
            if self.idle {
                pg_sys::SPI_commit();
                self.idle = false;
            }
            pg_sys::pgstat_report_xact_timestamp(pg_sys::GetCurrentTimestamp());
            pg_sys::EnsurePortalSnapshotExists();
        }
        pin_search_path();
        let result = crate::core::store::require_extension().and_then(|()| step());
        // SAFETY: as above; SPI_commit/SPI_rollback release the portal snapshot and start the
        // next transaction.
        unsafe {
            if result.is_ok() {
                pg_sys::SPI_commit();
            } else {
                pg_sys::SPI_rollback();
            }
        }
        result
    }

    fn between(&mut self) {
        // The claim has committed: this backend now holds no snapshot, lock or transaction id.
        // The empty transaction SPI_commit opened is not reported as open while sending.
        self.idle = true;
        // SAFETY: a plain status report of this backend.
        unsafe { pg_sys::pgstat_report_xact_timestamp(0) };
    }

    fn stopping(&self) -> bool {
        // A cancel (statement_timeout, pg_cancel_backend) or a termination. Not InterruptPending
        // alone: it is also set by interrupts that stop nothing (a ProcSignal barrier,
        // pg_log_backend_memory_contexts, client_connection_check_interval), which would leave
        // the rest of a batch unsent.
        // SAFETY: flags Postgres sets from signal handlers; read on the backend's main thread.
        unsafe {
            std::ptr::read_volatile(&raw const pg_sys::QueryCancelPending) != 0
                || std::ptr::read_volatile(&raw const pg_sys::ProcDiePending) != 0
        }
    }
}

/// The procedure's result: one row whose only column is the INOUT `summary`.
unsafe fn one_column_row(fcinfo: pg_sys::FunctionCallInfo, value: JsonB) -> pg_sys::Datum {
    // SAFETY: the declaration has exactly one output column (jsonb); the tuple is formed in
    // the current (caller's) memory context and returned as a composite datum.
    unsafe {
        let mut tupdesc: pg_sys::TupleDesc = std::ptr::null_mut();
        if pg_sys::get_call_result_type(fcinfo, std::ptr::null_mut(), &mut tupdesc)
            != pg_sys::TypeFuncClass::TYPEFUNC_COMPOSITE
        {
            pgrx::error!("flowgate.run_outbox: unexpected result type");
        }
        let tupdesc = pg_sys::BlessTupleDesc(tupdesc);
        let mut values = [value.into_datum().unwrap_or(pg_sys::Datum::from(0))];
        let mut nulls = [false];
        let tuple = pg_sys::heap_form_tuple(tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr());
        pg_sys::HeapTupleHeaderGetDatum((*tuple).t_data)
    }
}
