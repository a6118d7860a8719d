//! Subtransactions for Rust code: run a step so that its writes can be undone without aborting
//! the caller's transaction, the way PL/pgSQL's `BEGIN ... EXCEPTION` block does (and with the
//! same calls: BeginInternalSubTransaction, then release or roll back and restore the memory
//! context and resource owner).
//!
//! Query cancellation and shutdown requests are never swallowed: the subtransaction is rolled
//! back and the error continues to the caller.

use std::panic::AssertUnwindSafe;

use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::{PgSqlErrorCode, PgTryBuilder};

/// An error raised (or a panic) inside the step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caught {
    /// The five-character SQLSTATE (XX000 for a Rust panic).
    pub sqlstate: String,
    pub message: String,
}

/// Unpack a Postgres error code (MAKE_SQLSTATE) into its five characters.
pub fn sqlstate_text(code: PgSqlErrorCode) -> String {
    let v = code as i32;
    (0..5)
        .map(|i| char::from((((v >> (6 * i)) & 0x3F) as u8) + b'0'))
        .collect()
}

/// Never swallowed: the user or the server wants this backend to stop what it is doing.
fn must_propagate(code: PgSqlErrorCode) -> bool {
    matches!(
        code,
        PgSqlErrorCode::ERRCODE_QUERY_CANCELED
            | PgSqlErrorCode::ERRCODE_ADMIN_SHUTDOWN
            | PgSqlErrorCode::ERRCODE_CRASH_SHUTDOWN
            | PgSqlErrorCode::ERRCODE_CANNOT_CONNECT_NOW
            | PgSqlErrorCode::ERRCODE_OUT_OF_MEMORY
    )
}

/// Run `step` in a subtransaction. `Ok(Ok(_))` keeps its writes; `Ok(Err(_))` (an error the
/// step returned) and `Err(Caught)` (an error it raised, or a panic) roll them back.
pub fn run<R, E>(step: impl FnOnce() -> Result<R, E>) -> Result<Result<R, E>, Caught> {
    run_catching(None, step)
}

/// [`run`] that catches only errors whose SQLSTATE is in `codes`: any other error raised in the
/// step is rolled back and continues to the caller as it was raised (its SQLSTATE, message,
/// detail and hint intact).
pub fn run_only<R, E>(
    codes: &[&str],
    step: impl FnOnce() -> Result<R, E>,
) -> Result<Result<R, E>, Caught> {
    run_catching(Some(codes), step)
}

fn run_catching<R, E>(
    codes: Option<&[&str]>,
    step: impl FnOnce() -> Result<R, E>,
) -> Result<Result<R, E>, Caught> {
    // SAFETY: this is the sequence PL/pgSQL's exec_stmt_block uses. We are inside a transaction
    // (every SQL-callable function is); the memory context and resource owner saved here are
    // valid for the whole call and are restored on both paths before returning. SPI
    // connections opened by `step` are closed by their guards while unwinding, before the
    // rollback, and AtEOSubXact_SPI cleans up anything left.
    unsafe {
        let old_context = pg_sys::CurrentMemoryContext;
        let old_owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(old_context);

        let restore = move || {
            pg_sys::MemoryContextSwitchTo(old_context);
            pg_sys::CurrentResourceOwner = old_owner;
        };

        PgTryBuilder::new(AssertUnwindSafe(|| {
            let result = step();
            if result.is_ok() {
                pg_sys::ReleaseCurrentSubTransaction();
            } else {
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
            }
            restore();
            Ok(result)
        }))
        .catch_others(move |cause| {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
            restore();
            let (code, message) = match &cause {
                CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => {
                    (r.sql_error_code(), r.message().to_owned())
                }
                CaughtError::RustPanic { ereport, .. } => {
                    (ereport.sql_error_code(), ereport.message().to_owned())
                }
            };
            let caught_here = codes.is_none_or(|c| c.contains(&sqlstate_text(code).as_str()));
            if must_propagate(code) || !caught_here {
                cause.rethrow();
            }
            Err(Caught {
                sqlstate: sqlstate_text(code),
                message,
            })
        })
        .execute()
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn sqlstates_unpack() {
        assert_eq!(
            sqlstate_text(PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION),
            "23505"
        );
        assert_eq!(
            sqlstate_text(PgSqlErrorCode::ERRCODE_QUERY_CANCELED),
            "57014"
        );
        assert_eq!(
            sqlstate_text(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR),
            "XX000"
        );
    }
}
