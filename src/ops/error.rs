//! Errors of the release-gates module.
//!
//! `ops.ingest_event` never raises for a bad envelope: each error becomes a `rejected` (or
//! `error`) outcome recorded in `ops.event_ingest_log`, with the HTTP status PostgREST returns
//! (`response.status`) and a machine-readable `error` code. Functions that do raise
//! (`ops.evaluate_gate`, `ops.is_eligible_for_promotion`, ...) map the same variants to
//! SQLSTATEs.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::PgSqlErrorCode;

use crate::core::error::{CoreError, SqlError};

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("the envelope is {bytes} bytes of JSON; at most {limit} are accepted")]
    PayloadTooLarge { bytes: usize, limit: usize },

    #[error("schema_version {got} is not supported")]
    UnsupportedSchemaVersion { got: String },

    #[error("missing field {field:?}")]
    MissingField { field: String, allowed: String },

    #[error("invalid {field}: {problem}")]
    InvalidField {
        field: String,
        problem: String,
        allowed: String,
    },

    #[error("unknown event_type {got:?}")]
    UnknownEventType { got: String },

    #[error("release {0} does not exist")]
    UnknownRelease(String),

    /// The event names something that does not exist (a deployment, an exception).
    #[error("{kind} {id} does not exist")]
    UnknownReference { kind: String, id: String },

    /// The event contradicts what is recorded (a release created twice, a decided exception
    /// decided again, a promotion the gates do not allow).
    #[error("{0}")]
    Conflict(String),

    #[error("permission denied: {actor} may not {action}")]
    Forbidden {
        actor: String,
        action: String,
        allowed: String,
    },

    #[error(transparent)]
    Core(#[from] CoreError),
}

pub type OpsResult<T> = Result<T, OpsError>;

impl From<pgrx::spi::SpiError> for OpsError {
    fn from(e: pgrx::spi::SpiError) -> Self {
        OpsError::Core(CoreError::Spi(e))
    }
}

impl OpsError {
    pub fn invalid(
        field: impl Into<String>,
        problem: impl Into<String>,
        allowed: impl Into<String>,
    ) -> Self {
        OpsError::InvalidField {
            field: field.into(),
            problem: problem.into(),
            allowed: allowed.into(),
        }
    }

    /// What each error is, in one place: the HTTP status of its ingest outcome, the
    /// machine-readable `error` of a rejected outcome, and the SQLSTATE a raising function
    /// (`ops.evaluate_gate`, `ops.promotion_status`, ...) reports.
    fn mapping(&self) -> (u16, &'static str, PgSqlErrorCode) {
        use PgSqlErrorCode::*;
        match self {
            OpsError::PayloadTooLarge { .. } => {
                (413, "payload_too_large", ERRCODE_INVALID_PARAMETER_VALUE)
            }
            OpsError::UnsupportedSchemaVersion { .. } => (
                422,
                "unsupported_schema_version",
                ERRCODE_INVALID_PARAMETER_VALUE,
            ),
            OpsError::MissingField { .. } => {
                (400, "missing_field", ERRCODE_INVALID_PARAMETER_VALUE)
            }
            OpsError::InvalidField { .. } => {
                (400, "invalid_field", ERRCODE_INVALID_PARAMETER_VALUE)
            }
            OpsError::UnknownEventType { .. } => {
                (400, "unknown_event_type", ERRCODE_INVALID_PARAMETER_VALUE)
            }
            OpsError::UnknownRelease(_) => (409, "unknown_release", ERRCODE_NO_DATA_FOUND),
            OpsError::UnknownReference { .. } => (409, "unknown_reference", ERRCODE_NO_DATA_FOUND),
            OpsError::Conflict(_) => (409, "conflict", ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
            OpsError::Forbidden { .. } => (403, "forbidden", ERRCODE_INSUFFICIENT_PRIVILEGE),
            OpsError::Core(e) => {
                let (http, kind) = match e {
                    CoreError::InvalidArgument { .. } | CoreError::InvalidJson { .. } => {
                        (400, "invalid_field")
                    }
                    CoreError::PermissionDenied { .. } => (403, "forbidden"),
                    CoreError::NotFound { .. } => (404, "not_found"),
                    CoreError::Duplicate { .. } => (409, "conflict"),
                    CoreError::Busy { .. } => (503, "busy"),
                    CoreError::IllegalTransition { .. }
                    | CoreError::MissingDependency { .. }
                    | CoreError::Refused { .. }
                    | CoreError::NeedsOwnTransactions { .. }
                    | CoreError::Spi(_)
                    | CoreError::Internal(_) => (500, "internal_error"),
                };
                (http, kind, e.errcode())
            }
        }
    }

    /// The HTTP status of the ingest outcome.
    pub fn http_status(&self) -> u16 {
        self.mapping().0
    }

    /// The machine-readable `error` of a rejected outcome.
    pub fn kind(&self) -> &'static str {
        self.mapping().1
    }

    /// What the caller may send instead.
    pub fn allowed(&self) -> Option<String> {
        match self {
            OpsError::PayloadTooLarge { limit, .. } => Some(format!("at most {limit} bytes")),
            OpsError::UnsupportedSchemaVersion { .. } => Some(format!(
                "schema_version {}",
                super::envelope::SUPPORTED_SCHEMA_VERSIONS.join(" or ")
            )),
            OpsError::MissingField { allowed, .. }
            | OpsError::InvalidField { allowed, .. }
            | OpsError::Forbidden { allowed, .. } => Some(allowed.clone()),
            OpsError::UnknownEventType { .. } => Some(format!(
                "event_type one of: {}",
                super::envelope::EventType::NAMES.join(", ")
            )),
            OpsError::UnknownRelease(_) => {
                Some("send release_created for this release_id first".into())
            }
            OpsError::UnknownReference { kind, .. } => Some(format!(
                "send the event that creates the {kind} first, or check its id"
            )),
            OpsError::Conflict(_) => Some(
                "the record already says otherwise: read ops.v_release_gate_summary or ops.promotion_status(release_id) for the current state".into(),
            ),
            OpsError::Core(e) => e.hint(),
        }
    }
}

impl SqlError for OpsError {
    fn errcode(&self) -> PgSqlErrorCode {
        self.mapping().2
    }

    fn hint(&self) -> Option<String> {
        match self {
            OpsError::Core(e) => e.hint(),
            _ => self.allowed().map(|a| format!("allowed: {a}")),
        }
    }
}

impl From<OpsError> for ErrorReport {
    #[track_caller]
    fn from(e: OpsError) -> Self {
        e.report("ops")
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn each_error_has_its_sqlstate_beside_its_http_status() {
        let forbidden = OpsError::Forbidden {
            actor: "a".into(),
            action: "b".into(),
            allowed: "c".into(),
        };
        assert_eq!(
            (forbidden.http_status(), forbidden.sqlstate()),
            (403, "42501".into())
        );
        let missing = OpsError::UnknownRelease("r".into());
        assert_eq!(
            (missing.kind(), missing.sqlstate()),
            ("unknown_release", "P0002".into())
        );
        let conflict = OpsError::Conflict("c".into());
        assert_eq!(conflict.sqlstate(), "55000");
        let busy = OpsError::Core(CoreError::Busy {
            what: "k".into(),
            hint: "again".into(),
        });
        assert_eq!(
            (busy.http_status(), busy.kind(), busy.sqlstate()),
            (503, "busy", "40001".into())
        );
        assert_eq!(busy.hint().as_deref(), Some("again"));
        let bad = OpsError::invalid("f", "p", "x or y");
        assert_eq!(bad.hint().as_deref(), Some("allowed: x or y"));
    }

    #[test]
    fn each_error_has_its_documented_http_status() {
        assert_eq!(
            OpsError::UnsupportedSchemaVersion {
                got: "\"9\"".into()
            }
            .http_status(),
            422
        );
        assert_eq!(
            OpsError::MissingField {
                field: "release_id".into(),
                allowed: String::new()
            }
            .http_status(),
            400
        );
        assert_eq!(OpsError::UnknownRelease("x".into()).http_status(), 409);
        assert_eq!(
            OpsError::PayloadTooLarge { bytes: 1, limit: 0 }.http_status(),
            413
        );
        assert_eq!(
            OpsError::Core(CoreError::Internal("boom".into())).http_status(),
            500
        );
    }
}
