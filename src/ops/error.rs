//! Errors of the release-gates module.
//!
//! `ops.ingest_event` never raises for a bad envelope: each error becomes a `rejected` (or
//! `error`) outcome recorded in `ops.event_ingest_log`, with the HTTP status PostgREST returns
//! (`response.status`) and a machine-readable `error` code. Functions that do raise
//! (`ops.evaluate_gate`, `ops.is_eligible_for_promotion`, ...) map the same variants to
//! SQLSTATEs.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::PgSqlErrorCode;

use crate::core::error::CoreError;

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

    /// The HTTP status of the ingest outcome.
    pub fn http_status(&self) -> u16 {
        match self {
            OpsError::PayloadTooLarge { .. } => 413,
            OpsError::UnsupportedSchemaVersion { .. } => 422,
            OpsError::MissingField { .. }
            | OpsError::InvalidField { .. }
            | OpsError::UnknownEventType { .. } => 400,
            OpsError::UnknownRelease(_)
            | OpsError::UnknownReference { .. }
            | OpsError::Conflict(_) => 409,
            OpsError::Forbidden { .. } => 403,
            OpsError::Core(e) => match e.sqlstate() {
                "22023" | "22P02" => 400,
                "42501" => 403,
                "P0002" => 404,
                "23505" => 409,
                "40001" => 503,
                _ => 500,
            },
        }
    }

    /// The machine-readable `error` of a rejected outcome.
    pub fn code(&self) -> &'static str {
        match self {
            OpsError::PayloadTooLarge { .. } => "payload_too_large",
            OpsError::UnsupportedSchemaVersion { .. } => "unsupported_schema_version",
            OpsError::MissingField { .. } => "missing_field",
            OpsError::InvalidField { .. } => "invalid_field",
            OpsError::UnknownEventType { .. } => "unknown_event_type",
            OpsError::UnknownRelease(_) => "unknown_release",
            OpsError::UnknownReference { .. } => "unknown_reference",
            OpsError::Conflict(_) => "conflict",
            OpsError::Forbidden { .. } => "forbidden",
            OpsError::Core(e) => match e.sqlstate() {
                "22023" | "22P02" => "invalid_field",
                "42501" => "forbidden",
                "P0002" => "not_found",
                "23505" => "conflict",
                "40001" => "busy",
                _ => "internal_error",
            },
        }
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

    fn sql_code(&self) -> PgSqlErrorCode {
        use PgSqlErrorCode::*;
        match self.http_status() {
            400 | 413 | 422 => ERRCODE_INVALID_PARAMETER_VALUE,
            403 => ERRCODE_INSUFFICIENT_PRIVILEGE,
            404 => ERRCODE_NO_DATA_FOUND,
            409 => match self {
                OpsError::UnknownRelease(_) | OpsError::UnknownReference { .. } => {
                    ERRCODE_NO_DATA_FOUND
                }
                OpsError::Conflict(_) => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                _ => ERRCODE_UNIQUE_VIOLATION,
            },
            _ => ERRCODE_INTERNAL_ERROR,
        }
    }

    pub fn into_report(self, funcname: &'static str) -> ErrorReport {
        if let OpsError::Core(e) = self {
            return e.into_report(funcname);
        }
        let hint = self.allowed().map(|a| format!("allowed: {a}"));
        let report = ErrorReport::new(self.sql_code(), self.to_string(), funcname);
        match hint {
            Some(h) => report.set_hint(h),
            None => report,
        }
    }

    pub fn reporter(funcname: &'static str) -> impl FnOnce(OpsError) -> ErrorReport {
        move |e| e.into_report(funcname)
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

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
