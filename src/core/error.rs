//! The core error type and its SQLSTATE contract.
//!
//! Every error a caller can cause maps to one SQLSTATE of the README's table, with a message
//! that says what was wrong and a hint that says what is allowed; a caller's mistake is never
//! XX000. PostgREST turns them into HTTP statuses: class 22 → 400, 42501 → 403, 23505 → 409;
//! P0002, 55000 and 40001 → 500 by its mapping. Module error enums wrap `CoreError` and convert
//! into [`ErrorReport`] the same way.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::PgSqlErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// An argument has a value outside what the function accepts.
    #[error("invalid {what}: {problem}")]
    InvalidArgument {
        what: String,
        problem: String,
        allowed: String,
    },

    /// Text that must be JSON of a given shape is not.
    #[error("invalid JSON in {what}: {problem}")]
    InvalidJson { what: String, problem: String },

    /// The entity a call names does not exist.
    #[error("{kind} {id:?} does not exist")]
    NotFound { kind: String, id: String },

    /// A workflow event that the current state does not accept.
    #[error("{event} is not allowed in state {state}")]
    IllegalTransition {
        state: String,
        event: String,
        allowed: Vec<String>,
    },

    /// The actor may not do this.
    #[error("permission denied: {actor} may not {action}")]
    PermissionDenied {
        actor: String,
        action: String,
        allowed: String,
    },

    /// A unique key is already taken.
    #[error("{kind} {key:?} already exists")]
    Duplicate { kind: String, key: String },

    /// A required extension or server feature is missing.
    #[error("{feature} requires {dependency}")]
    MissingDependency {
        feature: String,
        dependency: String,
        hint: String,
    },

    /// The call controls its own transactions (it commits between steps), so it cannot run
    /// inside a transaction block or a function.
    #[error("{what} must be CALLed on its own, not inside a transaction block or a function")]
    NeedsOwnTransactions { what: String, hint: String },

    /// Concurrent work got in the way; the same call may succeed when sent again.
    #[error("{what} is busy")]
    Busy { what: String, hint: String },

    /// A Postgres SPI failure that is not the caller's fault.
    #[error("SPI failure: {0}")]
    Spi(#[from] pgrx::spi::SpiError),

    /// A broken internal invariant; always a bug in flowgate.
    #[error("internal error: {0}")]
    Internal(String),
}

impl CoreError {
    pub fn invalid(
        what: impl Into<String>,
        problem: impl Into<String>,
        allowed: impl Into<String>,
    ) -> Self {
        CoreError::InvalidArgument {
            what: what.into(),
            problem: problem.into(),
            allowed: allowed.into(),
        }
    }

    pub fn not_found(kind: impl Into<String>, id: impl Into<String>) -> Self {
        CoreError::NotFound {
            kind: kind.into(),
            id: id.into(),
        }
    }

    /// The five-character SQLSTATE, as documented in the README.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            CoreError::InvalidArgument { .. } => "22023",
            CoreError::InvalidJson { .. } => "22P02",
            CoreError::NotFound { .. } => "P0002",
            CoreError::IllegalTransition { .. } => "55000",
            CoreError::PermissionDenied { .. } => "42501",
            CoreError::Duplicate { .. } => "23505",
            CoreError::MissingDependency { .. } => "0A000",
            CoreError::NeedsOwnTransactions { .. } => "2D000",
            CoreError::Busy { .. } => "40001",
            CoreError::Spi(_) | CoreError::Internal(_) => "XX000",
        }
    }

    fn code(&self) -> PgSqlErrorCode {
        use PgSqlErrorCode::*;
        match self {
            CoreError::InvalidArgument { .. } => ERRCODE_INVALID_PARAMETER_VALUE,
            CoreError::InvalidJson { .. } => ERRCODE_INVALID_TEXT_REPRESENTATION,
            CoreError::NotFound { .. } => ERRCODE_NO_DATA_FOUND,
            CoreError::IllegalTransition { .. } => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            CoreError::PermissionDenied { .. } => ERRCODE_INSUFFICIENT_PRIVILEGE,
            CoreError::Duplicate { .. } => ERRCODE_UNIQUE_VIOLATION,
            CoreError::MissingDependency { .. } => ERRCODE_FEATURE_NOT_SUPPORTED,
            CoreError::NeedsOwnTransactions { .. } => ERRCODE_INVALID_TRANSACTION_TERMINATION,
            CoreError::Busy { .. } => ERRCODE_T_R_SERIALIZATION_FAILURE,
            CoreError::Spi(_) | CoreError::Internal(_) => ERRCODE_INTERNAL_ERROR,
        }
    }

    /// What the caller may do instead, shown as the error's HINT.
    pub fn hint(&self) -> Option<String> {
        match self {
            CoreError::InvalidArgument { allowed, .. } if !allowed.is_empty() => {
                Some(format!("allowed: {allowed}"))
            }
            CoreError::IllegalTransition { state, allowed, .. } => Some(if allowed.is_empty() {
                format!("{state} is terminal: no event is accepted")
            } else {
                format!("events allowed in {state}: {}", allowed.join(", "))
            }),
            CoreError::PermissionDenied { allowed, .. } if !allowed.is_empty() => {
                Some(allowed.clone())
            }
            CoreError::MissingDependency { hint, .. }
            | CoreError::Busy { hint, .. }
            | CoreError::NeedsOwnTransactions { hint, .. } => {
                Some(hint.clone())
            }
            CoreError::NotFound { kind, .. } => Some(format!(
                "no {kind} has this id that you may see; check the id (ids are exact and case-sensitive) and that you are a party to it"
            )),
            CoreError::Duplicate { kind, .. } => Some(format!(
                "the {kind} is taken: choose another, or repeat the original call unchanged to get its first result"
            )),
            CoreError::Spi(_) | CoreError::Internal(_) => Some(
                "this is a bug in flowgate; please report it with the statement that caused it"
                    .into(),
            ),
            _ => None,
        }
    }

    /// A `map_err` adapter for SQL entry points: `run().map_err(CoreError::reporter("flowgate.x"))`.
    pub fn reporter(funcname: &'static str) -> impl FnOnce(CoreError) -> ErrorReport {
        move |e| e.into_report(funcname)
    }

    /// Convert into a Postgres error report attributed to `funcname`.
    pub fn into_report(self, funcname: &'static str) -> ErrorReport {
        let hint = self.hint();
        let report = ErrorReport::new(self.code(), self.to_string(), funcname);
        match hint {
            Some(h) => report.set_hint(h),
            None => report,
        }
    }
}

impl From<CoreError> for ErrorReport {
    fn from(e: CoreError) -> Self {
        e.into_report("flowgate")
    }
}

impl From<serde_json::Error> for CoreError {
    fn from(e: serde_json::Error) -> Self {
        CoreError::Internal(format!("JSON (de)serialisation: {e}"))
    }
}

pub type CoreResult<T> = Result<T, CoreError>;

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn every_variant_has_a_postgrest_friendly_sqlstate() {
        let cases: Vec<(CoreError, &str)> = vec![
            (CoreError::invalid("x", "bad", "a, b"), "22023"),
            (
                CoreError::InvalidJson {
                    what: "x".into(),
                    problem: "eof".into(),
                },
                "22P02",
            ),
            (CoreError::not_found("request", "CR-1"), "P0002"),
            (
                CoreError::IllegalTransition {
                    state: "A".into(),
                    event: "E".into(),
                    allowed: vec![],
                },
                "55000",
            ),
            (
                CoreError::PermissionDenied {
                    actor: "u".into(),
                    action: "x".into(),
                    allowed: String::new(),
                },
                "42501",
            ),
            (
                CoreError::Duplicate {
                    kind: "key".into(),
                    key: "k".into(),
                },
                "23505",
            ),
            (
                CoreError::MissingDependency {
                    feature: "f".into(),
                    dependency: "pgmq".into(),
                    hint: "h".into(),
                },
                "0A000",
            ),
            (CoreError::Internal("x".into()), "XX000"),
        ];
        for (err, code) in cases {
            assert_eq!(err.sqlstate(), code, "{err}");
            assert_eq!(unpack_sqlstate(err.code() as isize), code, "{err}");
        }
    }

    /// Inverse of Postgres' MAKE_SQLSTATE: five 6-bit fields, least significant first.
    fn unpack_sqlstate(packed: isize) -> String {
        (0..5)
            .map(|i| char::from((((packed >> (6 * i)) & 0x3F) as u8) + b'0'))
            .collect()
    }

    #[test]
    fn illegal_transition_names_state_and_allowed_events() {
        let e = CoreError::IllegalTransition {
            state: "SUBMITTED".into(),
            event: "ACTIVATION_CONFIRMED".into(),
            allowed: vec!["COMMERCIAL_APPROVED".into(), "CANCEL_APPROVED".into()],
        };
        assert_eq!(
            e.to_string(),
            "ACTIVATION_CONFIRMED is not allowed in state SUBMITTED"
        );
        assert_eq!(
            e.hint().as_deref(),
            Some("events allowed in SUBMITTED: COMMERCIAL_APPROVED, CANCEL_APPROVED")
        );
        let terminal = CoreError::IllegalTransition {
            state: "ACTIVATED".into(),
            event: "X".into(),
            allowed: vec![],
        };
        assert_eq!(
            terminal.hint().as_deref(),
            Some("ACTIVATED is terminal: no event is accepted")
        );
    }
}
