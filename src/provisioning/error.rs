//! Errors of the provisioning module, mapped to the core SQLSTATE contract.

use pgrx::pg_sys::panic::ErrorReport;

use crate::core::error::CoreError;

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

impl ProvisioningError {
    /// SQLSTATE through the core contract: a taken slug is 23505, a non-operator 42501.
    pub fn into_core(self) -> CoreError {
        match self {
            ProvisioningError::ClientExists(slug) => CoreError::Duplicate {
                kind: "client slug".into(),
                key: slug,
            },
            ProvisioningError::NotAnOperator { actor, action } => CoreError::PermissionDenied {
                actor,
                action,
                allowed: "trusted sessions (superuser, or members of a role in flowgate.trusted_roles, e.g. service_role)".into(),
            },
            ProvisioningError::Core(e) => e,
        }
    }

    pub fn reporter(funcname: &'static str) -> impl FnOnce(ProvisioningError) -> ErrorReport {
        move |e| e.into_core().into_report(funcname)
    }
}
