//! Errors of the provisioning module: its own (a taken slug, a caller who is not an operator)
//! and the core's, each with its SQLSTATE and hint.

use pgrx::pg_sys::panic::ErrorReport;

use pgrx::PgSqlErrorCode;

use crate::core::error::{CoreError, SqlError};

#[derive(Debug, thiserror::Error)]
pub enum ProvisioningError {
    /// A client slug that is already taken.
    #[error("client {0:?} already exists")]
    ClientExists(String),

    /// An operator function called by someone who is not trusted.
    #[error("permission denied: {actor} may not {action}")]
    NotAnOperator { actor: String, action: String },

    #[error(transparent)]
    Core(#[from] CoreError),
}

impl From<pgrx::spi::SpiError> for ProvisioningError {
    fn from(e: pgrx::spi::SpiError) -> Self {
        ProvisioningError::Core(CoreError::Spi(e))
    }
}

impl From<serde_json::Error> for ProvisioningError {
    fn from(e: serde_json::Error) -> Self {
        ProvisioningError::Core(CoreError::from(e))
    }
}

pub type ProvisioningResult<T> = Result<T, ProvisioningError>;

/// Who may run operator functions, as their hint says.
const OPERATORS: &str =
    "trusted sessions (superuser, or members of a role in flowgate.trusted_roles, e.g. service_role)";

impl SqlError for ProvisioningError {
    fn errcode(&self) -> PgSqlErrorCode {
        match self {
            ProvisioningError::ClientExists(_) => PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION,
            ProvisioningError::NotAnOperator { .. } => {
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE
            }
            ProvisioningError::Core(e) => e.errcode(),
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            ProvisioningError::ClientExists(_) => Some(
                "slugs are unique: choose another, or repeat the original call unchanged to get its first result"
                    .into(),
            ),
            ProvisioningError::NotAnOperator { .. } => Some(OPERATORS.into()),
            ProvisioningError::Core(e) => e.hint(),
        }
    }
}

impl From<ProvisioningError> for ErrorReport {
    #[track_caller]
    fn from(e: ProvisioningError) -> Self {
        e.report("provisioning")
    }
}
