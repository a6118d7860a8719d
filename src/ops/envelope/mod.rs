//! The ingest envelope, checked before anything but the log row is written.
//! Pure.
//!
//! An envelope is one flat JSON object: the common fields below plus the fields of its
//! `event_type`. Unknown fields are rejected, so a misspelt field fails loudly instead of being
//! ignored.
//!
//! | field | |
//! |---|---|
//! | `schema_version` | `"1.0"` (or `"1"`, or the number 1) |
//! | `idempotency_key` | 1–256 printable characters, e.g. `github_actions/{run_id}/build_complete` |
//! | `event_type` | one of [`EventType::NAMES`] |
//! | `source_system` | 1–64 of `A-Za-z0-9_.:/-`, e.g. `github_actions` |
//! | `release_id` | a UUID; optional only for environment, incident and drill events |
//! | `occurred_at` | optional RFC 3339 time |
//! | `metadata` | optional object, kept in the log |
//! | `evidence` | optional array of artifacts `{artifact_type, uri, sha256?, description?}` |

use serde_json::{Map, Value};

use super::error::{OpsError, OpsResult};

mod body;
mod checks;
#[cfg(test)]
mod unit_tests;

pub use body::*;
use checks::{
    check_artifact, check_object, check_text, header_text, json_kind, required_text, truncate,
};
pub use checks::{check_timestamp, check_uuid, parse_uuid, text_ok, uri_ok};

/// Largest envelope accepted, as JSON text.
pub const MAX_ENVELOPE_BYTES: usize = 64 * 1024;
/// Largest envelope read at all, as stored jsonb: binary jsonb can be several times larger than
/// its JSON text (numbers), so this only keeps a huge argument from being converted.
pub const MAX_ENVELOPE_STORED_BYTES: usize = 16 * MAX_ENVELOPE_BYTES;
/// Longest idempotency_key accepted, in characters. Keys are stored and compared whole.
pub const MAX_KEY_CHARS: usize = 256;
/// Largest `metadata` / `detail` object, as JSON text.
pub const MAX_OBJECT_BYTES: usize = 16 * 1024;
/// Most artifacts one envelope may attach.
pub const MAX_EVIDENCE: usize = 20;
pub const SUPPORTED_SCHEMA_VERSIONS: &[&str] = &["1.0"];

const COMMON: &[&str] = &[
    "schema_version",
    "idempotency_key",
    "event_type",
    "source_system",
    "release_id",
    "occurred_at",
    "metadata",
    "evidence",
];

macro_rules! event_types {
    ($($variant:ident => $name:literal, $needs_release:literal, $fields:literal;)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum EventType { $($variant),* }

        impl EventType {
            pub const NAMES: &'static [&'static str] = &[$($name),*];

            pub fn parse(s: &str) -> Option<EventType> {
                match s { $($name => Some(EventType::$variant),)* _ => None }
            }

            pub fn as_str(self) -> &'static str {
                match self { $(EventType::$variant => $name),* }
            }

            /// Whether the envelope must name a release.
            pub fn needs_release(self) -> bool {
                match self { $(EventType::$variant => $needs_release),* }
            }

            /// The fields of this event type, for error messages.
            pub fn fields(self) -> &'static str {
                match self { $(EventType::$variant => $fields),* }
            }
        }
    };
}

event_types! {
    ReleaseCreated => "release_created", true,
        "version, and optionally title, repository, commit_sha, created_by";
    GateConfigured => "gate_configured", true,
        "gate_code, required_checks (array of check names)";
    BuildComplete => "build_complete", true,
        "status (pass|fail), and optionally gate_code (G1), check_name (default build), run_id, details_url, required";
    CheckResult => "check_result", true,
        "gate_code, check_name, status (pass|fail|pending|skipped), and optionally run_id, details_url, required";
    GateSignoff => "gate_signoff", true,
        "optionally gate_code (default G2), decision (approved|rejected, default approved), report_url, comment, approver_id and persona_role (trusted callers)";
    Approval => "approval", true,
        "decision (approved|rejected), and optionally gate_code (default G3), comment, approver_id and persona_role (trusted callers)";
    EvidenceAttached => "evidence_attached", true,
        "artifact_type, uri, and optionally gate_code, check_id, sha256, description";
    ExceptionRequested => "exception_requested", true,
        "gate_code, reason, expires_at (RFC 3339, at most 90 days ahead), and optionally exception_id";
    ExceptionDecided => "exception_decided", true,
        "exception_id, decision (approved|rejected|revoked), and optionally comment";
    DeploymentStarted => "deployment_started", true,
        "environment (dev|staging|production), and optionally deployment_id, external_ref";
    DeploymentFinished => "deployment_finished", true,
        "deployment_id, status (succeeded|failed)";
    HealthCheck => "health_check", true,
        "deployment_id, status (pass|fail), uri (the health report), and optionally details";
    Rollback => "rollback", true,
        "deployment_id, reason";
    EnvironmentEvent => "environment_event", false,
        "environment, event_kind, and optionally deployment_id, detail (object)";
    IncidentOpened => "incident_opened", false,
        "environment, severity (sev1..sev4), summary, and optionally incident_id, deployment_id";
    IncidentResolved => "incident_resolved", false,
        "incident_id, and optionally resolution";
    RecoveryDrill => "recovery_drill", false,
        "environment, drill_type (backup_restore|failover|rollback|region_evacuation), outcome (passed|failed), and optionally rto_seconds, rpo_seconds, uri";
}

/// What could be read from an envelope even when it is rejected, for the log row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Header {
    pub schema_version: Option<String>,
    pub idempotency_key: Option<String>,
    pub event_type: Option<String>,
    pub source_system: Option<String>,
    pub release_id: Option<String>,
}

/// A checked envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub schema_version: String,
    pub idempotency_key: String,
    pub event_type: EventType,
    pub source_system: String,
    pub occurred_at: Option<String>,
    pub metadata: Map<String, Value>,
    pub evidence: Vec<Artifact>,
    /// What the event is about, with its release: required for release events.
    pub body: Body,
}

impl Envelope {
    /// The release the envelope is about, if any.
    pub fn release_id(&self) -> Option<&str> {
        self.body.release_id()
    }
}

/// The error for a release event without a release.
fn missing_release(event_type: EventType) -> OpsError {
    OpsError::MissingField {
        field: "release_id".into(),
        allowed: format!(
            "a UUID; {} needs the release it is about",
            event_type.as_str()
        ),
    }
}

/// Convert an envelope argument that passed the stored-size check.
pub fn value_of(arg: Option<crate::core::args::RawJsonb>) -> OpsResult<Option<Value>> {
    // The log keeps the envelope as sent (the argument itself), digits and all.
    Ok(arg
        .map(|a| a.value_as_sent("envelope", MAX_ENVELOPE_STORED_BYTES))
        .transpose()?)
}

/// Why an envelope Postgres holds could not be read as JSON here (a number beyond a 64-bit
/// float, nesting deeper than `core::args::MAX_JSON_DEPTH`): a 400 like any malformed envelope,
/// logged, rather than an error raised before the log row.
pub fn unreadable(e: OpsError) -> OpsError {
    use crate::core::error::CoreError;
    let OpsError::Core(CoreError::InvalidArgument { problem, .. }) = e else {
        return e;
    };
    OpsError::invalid(
        "envelope",
        problem,
        "JSON whose numbers fit a 64-bit float, nested at most 64 levels deep",
    )
}

/// Parse and check an envelope of `size` bytes of JSON text (the caller has measured it once).
/// The [`Header`] is returned in every case so that a rejection can still be logged with
/// whatever identified it.
pub fn parse(envelope: &Value, size: usize) -> (Header, OpsResult<Envelope>) {
    let too_large = || {
        Err(OpsError::PayloadTooLarge {
            bytes: size,
            limit: MAX_ENVELOPE_BYTES,
        })
    };
    let Value::Object(obj) = envelope else {
        if size > MAX_ENVELOPE_BYTES {
            return (Header::default(), too_large());
        }
        return (
            Header::default(),
            Err(OpsError::invalid(
                "envelope",
                format!("it is a JSON {}", json_kind(envelope)),
                "a JSON object with schema_version, idempotency_key, event_type, source_system and release_id",
            )),
        );
    };
    let header = Header {
        schema_version: header_text(obj, "schema_version", 32),
        idempotency_key: header_text(obj, "idempotency_key", MAX_KEY_CHARS),
        event_type: header_text(obj, "event_type", 64),
        source_system: header_text(obj, "source_system", 64),
        release_id: header_text(obj, "release_id", 36),
    };
    if size > MAX_ENVELOPE_BYTES {
        return (header, too_large());
    }
    let result = parse_object(obj.clone());
    (header, result)
}

fn schema_version(obj: &Map<String, Value>) -> OpsResult<String> {
    let allowed = "\"1.0\"";
    let v = match obj.get("schema_version") {
        None | Some(Value::Null) => {
            return Err(OpsError::MissingField {
                field: "schema_version".into(),
                allowed: allowed.into(),
            })
        }
        Some(Value::String(s)) => s.trim().to_owned(),
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => {
            return Err(OpsError::invalid(
                "schema_version",
                format!("it is a JSON {}", json_kind(other)),
                allowed,
            ))
        }
    };
    match v.as_str() {
        "1" | "1.0" => Ok("1.0".into()),
        _ => Err(OpsError::UnsupportedSchemaVersion {
            got: truncate(&v, 32),
        }),
    }
}

fn parse_object(mut obj: Map<String, Value>) -> OpsResult<Envelope> {
    let schema_version = schema_version(&obj)?;

    let key = required_text(&obj, "idempotency_key", "1 to 256 printable characters")?;
    check_text("idempotency_key", key, MAX_KEY_CHARS, false)?;
    let idempotency_key = key.to_owned();

    let et = required_text(&obj, "event_type", &EventType::NAMES.join(", "))?;
    let event_type = EventType::parse(et).ok_or_else(|| OpsError::UnknownEventType {
        got: truncate(et, 64),
    })?;

    let source = required_text(&obj, "source_system", "1 to 64 of A-Za-z0-9_.:/-")?;
    if source.is_empty()
        || source.len() > 64
        || !source
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '/' | '-'))
    {
        return Err(OpsError::invalid(
            "source_system",
            format!(
                "{} is not accepted",
                crate::core::error::quoted_upto(source, 64)
            ),
            "1 to 64 of A-Za-z0-9_.:/- (e.g. github_actions, n8n)",
        ));
    }
    let source_system = source.to_owned();

    let release_id = match obj.get("release_id") {
        None | Some(Value::Null) if event_type.needs_release() => {
            return Err(missing_release(event_type))
        }
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(check_uuid("release_id", s)?),
        Some(other) => {
            return Err(OpsError::invalid(
                "release_id",
                format!("it is a JSON {}", json_kind(other)),
                "a UUID string",
            ))
        }
    };

    let occurred_at = match obj.get("occurred_at") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            check_timestamp("occurred_at", s)?;
            Some(s.clone())
        }
        Some(other) => {
            return Err(OpsError::invalid(
                "occurred_at",
                format!("it is a JSON {}", json_kind(other)),
                "an RFC 3339 time string",
            ))
        }
    };

    let metadata = match obj.get("metadata") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => {
            check_object("metadata", &Some(m.clone()))?;
            m.clone()
        }
        Some(other) => {
            return Err(OpsError::invalid(
                "metadata",
                format!("it is a JSON {}", json_kind(other)),
                "a JSON object",
            ))
        }
    };

    let evidence: Vec<Artifact> = match obj.get("evidence") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            if items.len() > MAX_EVIDENCE {
                return Err(OpsError::invalid(
                    "evidence",
                    format!("it has {} items", items.len()),
                    format!("at most {MAX_EVIDENCE} artifacts"),
                ));
            }
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let a: Artifact = serde_json::from_value(item.clone()).map_err(|e| {
                    OpsError::invalid(
                        format!("evidence[{i}]"),
                        crate::core::error::json_problem(&e),
                        "{artifact_type, uri, sha256?, description?}",
                    )
                })?;
                check_artifact(&format!("evidence[{i}]."), &a)?;
                out.push(a);
            }
            out
        }
        Some(other) => {
            return Err(OpsError::invalid(
                "evidence",
                format!("it is a JSON {}", json_kind(other)),
                "an array of {artifact_type, uri, sha256?, description?}",
            ))
        }
    };

    for k in COMMON {
        obj.remove(*k);
    }
    let body = parse_body(event_type, obj, release_id)?;
    Ok(Envelope {
        schema_version,
        idempotency_key,
        event_type,
        source_system,
        occurred_at,
        metadata,
        evidence,
        body,
    })
}
