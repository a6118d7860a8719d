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

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::{OpsError, OpsResult};
use super::gates::GateCode;

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
pub const ENVIRONMENTS: &[&str] = &["dev", "staging", "production"];
pub const ARTIFACT_TYPES: &[&str] = &[
    "build_log",
    "test_report",
    "qa_signoff",
    "security_scan",
    "rollback_plan",
    "health_check",
    "deployment_log",
    "runbook",
    "reference",
    "other",
];

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

/// An artifact to attach.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub artifact_type: String,
    pub uri: String,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum TextOrNumber {
    Text(String),
    Number(i64),
}

impl TextOrNumber {
    fn into_text(self) -> String {
        match self {
            TextOrNumber::Text(s) => s,
            TextOrNumber::Number(n) => n.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseCreated {
    pub version: String,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub repository: Option<String>,
    #[serde(default)]
    pub commit_sha: Option<String>,
    #[serde(default)]
    pub created_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateConfigured {
    pub gate_code: String,
    pub required_checks: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    #[serde(default)]
    pub gate_code: Option<String>,
    #[serde(default)]
    pub check_name: Option<String>,
    pub status: String,
    #[serde(default)]
    pub required: Option<bool>,
    #[serde(default)]
    pub run_id: Option<TextOrNumber>,
    #[serde(default)]
    pub details_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    #[serde(default)]
    pub gate_code: Option<String>,
    #[serde(default)]
    pub decision: Option<String>,
    #[serde(default)]
    pub approver_id: Option<String>,
    #[serde(default)]
    pub persona_role: Option<String>,
    #[serde(default)]
    pub comment: Option<String>,
    #[serde(default)]
    pub report_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceAttached {
    pub artifact_type: String,
    pub uri: String,
    #[serde(default)]
    pub gate_code: Option<String>,
    #[serde(default)]
    pub check_id: Option<String>,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExceptionRequested {
    pub gate_code: String,
    pub reason: String,
    pub expires_at: String,
    #[serde(default)]
    pub exception_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExceptionDecided {
    pub exception_id: String,
    pub decision: String,
    #[serde(default)]
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentStarted {
    pub environment: String,
    #[serde(default)]
    pub deployment_id: Option<String>,
    #[serde(default)]
    pub external_ref: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentFinished {
    pub deployment_id: String,
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub deployment_id: String,
    pub status: String,
    pub uri: String,
    #[serde(default)]
    pub details: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    pub deployment_id: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentEvent {
    pub environment: String,
    pub event_kind: String,
    #[serde(default)]
    pub deployment_id: Option<String>,
    #[serde(default)]
    pub detail: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentOpened {
    pub environment: String,
    pub severity: String,
    pub summary: String,
    #[serde(default)]
    pub incident_id: Option<String>,
    #[serde(default)]
    pub deployment_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentResolved {
    pub incident_id: String,
    #[serde(default)]
    pub resolution: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryDrill {
    pub environment: String,
    pub drill_type: String,
    pub outcome: String,
    #[serde(default)]
    pub rto_seconds: Option<i64>,
    #[serde(default)]
    pub rpo_seconds: Option<i64>,
    #[serde(default)]
    pub uri: Option<String>,
}

/// The per-type part of a checked envelope. Gate codes, statuses and decisions are checked;
/// defaults are filled in.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    ReleaseCreated(ReleaseCreated),
    GateConfigured {
        gate: GateCode,
        required_checks: Vec<String>,
    },
    Check {
        gate: GateCode,
        check_name: String,
        status: String,
        required: bool,
        run_id: Option<String>,
        details_url: Option<String>,
    },
    Approval {
        gate: GateCode,
        approved: bool,
        approver_id: Option<String>,
        persona_role: Option<String>,
        comment: Option<String>,
        report_url: Option<String>,
    },
    Evidence {
        gate: Option<GateCode>,
        check_id: Option<String>,
        artifact: Artifact,
    },
    ExceptionRequested {
        gate: GateCode,
        reason: String,
        expires_at: String,
        exception_id: Option<String>,
    },
    ExceptionDecided(ExceptionDecided),
    DeploymentStarted(DeploymentStarted),
    DeploymentFinished(DeploymentFinished),
    HealthCheck(HealthCheck),
    Rollback(Rollback),
    EnvironmentEvent(EnvironmentEvent),
    IncidentOpened(IncidentOpened),
    IncidentResolved(IncidentResolved),
    RecoveryDrill(RecoveryDrill),
}

/// A checked envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub schema_version: String,
    pub idempotency_key: String,
    pub event_type: EventType,
    pub source_system: String,
    pub release_id: Option<String>,
    pub occurred_at: Option<String>,
    pub metadata: Map<String, Value>,
    pub evidence: Vec<Artifact>,
    pub body: Body,
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Free text: non-empty, at most `max` characters, no control characters except newlines and
/// tabs when `multiline`.
fn check_text(field: &str, s: &str, max: usize, multiline: bool) -> OpsResult<()> {
    let allowed = format!("1 to {max} printable characters");
    if s.trim().is_empty() {
        return Err(OpsError::invalid(field, "it is empty", allowed));
    }
    let n = s.chars().count();
    if n > max {
        return Err(OpsError::invalid(
            field,
            format!("it is {n} characters long"),
            allowed,
        ));
    }
    if s.chars()
        .any(|c| c.is_control() && !(multiline && (c == '\n' || c == '\t')))
    {
        return Err(OpsError::invalid(
            field,
            "it contains control characters",
            allowed,
        ));
    }
    Ok(())
}

fn opt_text(field: &str, s: &Option<String>, max: usize, multiline: bool) -> OpsResult<()> {
    match s {
        Some(s) => check_text(field, s, max, multiline),
        None => Ok(()),
    }
}

pub fn check_uuid(field: &str, s: &str) -> OpsResult<String> {
    uuid::Uuid::parse_str(s)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| {
            OpsError::invalid(
                field,
                format!("{:?} is not a UUID", truncate(s, 64)),
                "a UUID such as 4f1c2a9e-8d3b-4c55-9a7e-0b6d2f1e3c4a",
            )
        })
}

fn opt_uuid(field: &str, s: Option<String>) -> OpsResult<Option<String>> {
    s.map(|s| check_uuid(field, &s)).transpose()
}

fn check_uri(field: &str, s: &str) -> OpsResult<()> {
    let allowed = "an absolute URI of at most 2048 characters (https://..., s3://...)";
    let scheme_end = s.find(':').unwrap_or(0);
    let scheme_ok = scheme_end > 0
        && s[..scheme_end].starts_with(|c: char| c.is_ascii_alphabetic())
        && s[..scheme_end]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok || s.len() > 2048 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(OpsError::invalid(
            field,
            format!("{:?} is not an absolute URI", truncate(s, 80)),
            allowed,
        ));
    }
    Ok(())
}

fn one_of(field: &str, s: &str, allowed: &[&str]) -> OpsResult<()> {
    if allowed.contains(&s) {
        Ok(())
    } else {
        Err(OpsError::invalid(
            field,
            format!("{:?} is not accepted", truncate(s, 64)),
            allowed.join(", "),
        ))
    }
}

fn check_sha(s: &Option<String>) -> OpsResult<()> {
    match s {
        Some(s)
            if !(s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))) =>
        {
            Err(OpsError::invalid(
                "sha256",
                "it is not 64 lowercase hex digits",
                "the artifact's SHA-256 as 64 lowercase hex digits",
            ))
        }
        _ => Ok(()),
    }
}

fn check_object(field: &str, m: &Option<Map<String, Value>>) -> OpsResult<()> {
    if let Some(m) = m {
        let size = Value::Object(m.clone()).to_string().len();
        if size > MAX_OBJECT_BYTES {
            return Err(OpsError::invalid(
                field,
                format!("it is {size} bytes of JSON"),
                format!("an object of at most {MAX_OBJECT_BYTES} bytes"),
            ));
        }
    }
    Ok(())
}

pub fn check_timestamp(field: &str, s: &str) -> OpsResult<()> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|_| ())
        .map_err(|e| {
            OpsError::invalid(
                field,
                format!("{:?} is not an RFC 3339 time ({e})", truncate(s, 64)),
                "an RFC 3339 time with an offset, e.g. 2026-11-30T12:00:00Z",
            )
        })
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

fn check_artifact(prefix: &str, a: &Artifact) -> OpsResult<()> {
    one_of(
        &format!("{prefix}artifact_type"),
        &a.artifact_type,
        ARTIFACT_TYPES,
    )?;
    check_uri(&format!("{prefix}uri"), &a.uri)?;
    check_sha(&a.sha256)?;
    opt_text(&format!("{prefix}description"), &a.description, 2000, true)
}

fn gate(field: &str, s: &Option<String>, default: Option<GateCode>) -> OpsResult<GateCode> {
    match (s, default) {
        (Some(s), _) => GateCode::parse(s).map_err(|_| {
            OpsError::invalid(
                field,
                format!("{:?} is not a gate", truncate(s, 16)),
                "G1, G2, G3 or G4",
            )
        }),
        (None, Some(d)) => Ok(d),
        (None, None) => Err(OpsError::MissingField {
            field: field.into(),
            allowed: "G1, G2, G3 or G4".into(),
        }),
    }
}

/// Read a common text field for the log even when the envelope is rejected later. A value
/// longer than `max` characters is not kept at all: it is never cut, because a cut key could
/// equal another key.
fn header_text(obj: &Map<String, Value>, key: &str, max: usize) -> Option<String> {
    match obj.get(key) {
        Some(Value::String(s)) if s.chars().count() <= max => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()).filter(|t| t.len() <= max),
        _ => None,
    }
}

fn required_text<'a>(obj: &'a Map<String, Value>, key: &str, allowed: &str) -> OpsResult<&'a str> {
    match obj.get(key) {
        None | Some(Value::Null) => Err(OpsError::MissingField {
            field: key.into(),
            allowed: allowed.into(),
        }),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(OpsError::invalid(
            key,
            format!("it is a JSON {}", json_kind(other)),
            format!("a string: {allowed}"),
        )),
    }
}

fn body<T: DeserializeOwned>(event: EventType, rest: Map<String, Value>) -> OpsResult<T> {
    serde_json::from_value(Value::Object(rest)).map_err(|e| {
        let msg = e.to_string();
        if let Some(field) = msg
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next())
        {
            OpsError::MissingField {
                field: field.into(),
                allowed: format!("{} fields: {}", event.as_str(), event.fields()),
            }
        } else {
            OpsError::invalid(format!("{} fields", event.as_str()), msg, event.fields())
        }
    })
}

/// Convert an envelope argument that passed the stored-size check.
pub fn value_of(arg: Option<crate::core::args::RawJsonb>) -> OpsResult<Option<Value>> {
    Ok(crate::core::args::optional(
        arg,
        "envelope",
        MAX_ENVELOPE_STORED_BYTES,
    )?)
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
            format!("{:?} is not accepted", truncate(source, 64)),
            "1 to 64 of A-Za-z0-9_.:/- (e.g. github_actions, n8n)",
        ));
    }
    let source_system = source.to_owned();

    let release_id = match obj.get("release_id") {
        None | Some(Value::Null) if event_type.needs_release() => {
            return Err(OpsError::MissingField {
                field: "release_id".into(),
                allowed: format!(
                    "a UUID; {} needs the release it is about",
                    event_type.as_str()
                ),
            })
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
                        e.to_string(),
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
    let body = parse_body(event_type, obj)?;
    Ok(Envelope {
        schema_version,
        idempotency_key,
        event_type,
        source_system,
        release_id,
        occurred_at,
        metadata,
        evidence,
        body,
    })
}

fn parse_body(event: EventType, rest: Map<String, Value>) -> OpsResult<Body> {
    use EventType as T;
    Ok(match event {
        T::ReleaseCreated => {
            let b: ReleaseCreated = body(event, rest)?;
            check_text("version", &b.version, 128, false)?;
            opt_text("title", &b.title, 500, false)?;
            opt_text("repository", &b.repository, 200, false)?;
            opt_text("created_by", &b.created_by, 256, false)?;
            if let Some(sha) = &b.commit_sha {
                if !(7..=64).contains(&sha.len())
                    || !sha.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
                {
                    return Err(OpsError::invalid(
                        "commit_sha",
                        format!("{:?} is not a commit hash", truncate(sha, 70)),
                        "7 to 64 lowercase hex digits",
                    ));
                }
            }
            Body::ReleaseCreated(b)
        }
        T::GateConfigured => {
            let b: GateConfigured = body(event, rest)?;
            if b.required_checks.len() > 50 {
                return Err(OpsError::invalid(
                    "required_checks",
                    format!("it names {} checks", b.required_checks.len()),
                    "at most 50 check names",
                ));
            }
            for c in &b.required_checks {
                check_text("required_checks[]", c, 128, false)?;
            }
            Body::GateConfigured {
                gate: gate("gate_code", &Some(b.gate_code), None)?,
                required_checks: b.required_checks,
            }
        }
        T::BuildComplete | T::CheckResult => {
            let b: Check = body(event, rest)?;
            let build = event == T::BuildComplete;
            let g = gate(
                "gate_code",
                &b.gate_code,
                if build { Some(GateCode::G1) } else { None },
            )?;
            if build && g != GateCode::G1 {
                return Err(OpsError::invalid(
                    "gate_code",
                    format!("build_complete reports on G1, not {g}"),
                    "G1 (use check_result for other gates)",
                ));
            }
            let name = match (b.check_name, build) {
                (Some(n), _) => n,
                (None, true) => "build".to_owned(),
                (None, false) => {
                    return Err(OpsError::MissingField {
                        field: "check_name".into(),
                        allowed: "the check's name, 1 to 128 characters".into(),
                    })
                }
            };
            check_text("check_name", &name, 128, false)?;
            one_of(
                "status",
                &b.status,
                if build {
                    &["pass", "fail"]
                } else {
                    &["pass", "fail", "pending", "skipped"]
                },
            )?;
            let run_id = b.run_id.map(TextOrNumber::into_text);
            opt_text("run_id", &run_id, 128, false)?;
            if let Some(u) = &b.details_url {
                check_uri("details_url", u)?;
            }
            Body::Check {
                gate: g,
                check_name: name,
                status: b.status,
                required: b.required.unwrap_or(true),
                run_id,
                details_url: b.details_url,
            }
        }
        T::GateSignoff | T::Approval => {
            let b: Approval = body(event, rest)?;
            let signoff = event == T::GateSignoff;
            let g = gate(
                "gate_code",
                &b.gate_code,
                Some(if signoff { GateCode::G2 } else { GateCode::G3 }),
            )?;
            let decision = match (&b.decision, signoff) {
                (Some(d), _) => d.clone(),
                (None, true) => "approved".into(),
                (None, false) => {
                    return Err(OpsError::MissingField {
                        field: "decision".into(),
                        allowed: "approved or rejected".into(),
                    })
                }
            };
            one_of("decision", &decision, &["approved", "rejected"])?;
            opt_text("approver_id", &b.approver_id, 256, false)?;
            if let Some(p) = &b.persona_role {
                one_of("persona_role", p, super::roles::PERSONAS)?;
            }
            opt_text("comment", &b.comment, 4000, true)?;
            if let Some(u) = &b.report_url {
                check_uri("report_url", u)?;
            }
            Body::Approval {
                gate: g,
                approved: decision == "approved",
                approver_id: b.approver_id,
                persona_role: b.persona_role,
                comment: b.comment,
                report_url: b.report_url,
            }
        }
        T::EvidenceAttached => {
            let b: EvidenceAttached = body(event, rest)?;
            let artifact = Artifact {
                artifact_type: b.artifact_type,
                uri: b.uri,
                sha256: b.sha256,
                description: b.description,
            };
            check_artifact("", &artifact)?;
            let g = b
                .gate_code
                .as_ref()
                .map(|_| gate("gate_code", &b.gate_code, None))
                .transpose()?;
            Body::Evidence {
                gate: g,
                check_id: opt_uuid("check_id", b.check_id)?,
                artifact,
            }
        }
        T::ExceptionRequested => {
            let b: ExceptionRequested = body(event, rest)?;
            check_text("reason", &b.reason, 4000, true)?;
            check_timestamp("expires_at", &b.expires_at)?;
            Body::ExceptionRequested {
                gate: gate("gate_code", &Some(b.gate_code), None)?,
                reason: b.reason,
                expires_at: b.expires_at,
                exception_id: opt_uuid("exception_id", b.exception_id)?,
            }
        }
        T::ExceptionDecided => {
            let mut b: ExceptionDecided = body(event, rest)?;
            b.exception_id = check_uuid("exception_id", &b.exception_id)?;
            one_of(
                "decision",
                &b.decision,
                &["approved", "rejected", "revoked"],
            )?;
            opt_text("comment", &b.comment, 4000, true)?;
            Body::ExceptionDecided(b)
        }
        T::DeploymentStarted => {
            let mut b: DeploymentStarted = body(event, rest)?;
            one_of("environment", &b.environment, ENVIRONMENTS)?;
            b.deployment_id = opt_uuid("deployment_id", b.deployment_id)?;
            opt_text("external_ref", &b.external_ref, 256, false)?;
            Body::DeploymentStarted(b)
        }
        T::DeploymentFinished => {
            let mut b: DeploymentFinished = body(event, rest)?;
            b.deployment_id = check_uuid("deployment_id", &b.deployment_id)?;
            one_of("status", &b.status, &["succeeded", "failed"])?;
            Body::DeploymentFinished(b)
        }
        T::HealthCheck => {
            let mut b: HealthCheck = body(event, rest)?;
            b.deployment_id = check_uuid("deployment_id", &b.deployment_id)?;
            one_of("status", &b.status, &["pass", "fail"])?;
            check_uri("uri", &b.uri)?;
            check_object("details", &b.details)?;
            Body::HealthCheck(b)
        }
        T::Rollback => {
            let mut b: Rollback = body(event, rest)?;
            b.deployment_id = check_uuid("deployment_id", &b.deployment_id)?;
            check_text("reason", &b.reason, 4000, true)?;
            Body::Rollback(b)
        }
        T::EnvironmentEvent => {
            let mut b: EnvironmentEvent = body(event, rest)?;
            one_of("environment", &b.environment, ENVIRONMENTS)?;
            if b.event_kind.is_empty()
                || b.event_kind.len() > 64
                || !b
                    .event_kind
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
            {
                return Err(OpsError::invalid(
                    "event_kind",
                    format!("{:?} is not accepted", truncate(&b.event_kind, 64)),
                    "1 to 64 of a-z, 0-9 and _ (e.g. config_change, maintenance_started)",
                ));
            }
            b.deployment_id = opt_uuid("deployment_id", b.deployment_id)?;
            check_object("detail", &b.detail)?;
            Body::EnvironmentEvent(b)
        }
        T::IncidentOpened => {
            let mut b: IncidentOpened = body(event, rest)?;
            one_of("environment", &b.environment, ENVIRONMENTS)?;
            one_of("severity", &b.severity, &["sev1", "sev2", "sev3", "sev4"])?;
            check_text("summary", &b.summary, 2000, true)?;
            b.incident_id = opt_uuid("incident_id", b.incident_id)?;
            b.deployment_id = opt_uuid("deployment_id", b.deployment_id)?;
            Body::IncidentOpened(b)
        }
        T::IncidentResolved => {
            let mut b: IncidentResolved = body(event, rest)?;
            b.incident_id = check_uuid("incident_id", &b.incident_id)?;
            opt_text("resolution", &b.resolution, 4000, true)?;
            Body::IncidentResolved(b)
        }
        T::RecoveryDrill => {
            let b: RecoveryDrill = body(event, rest)?;
            one_of("environment", &b.environment, ENVIRONMENTS)?;
            one_of(
                "drill_type",
                &b.drill_type,
                &[
                    "backup_restore",
                    "failover",
                    "rollback",
                    "region_evacuation",
                ],
            )?;
            one_of("outcome", &b.outcome, &["passed", "failed"])?;
            for (f, v) in [
                ("rto_seconds", b.rto_seconds),
                ("rpo_seconds", b.rpo_seconds),
            ] {
                if let Some(v) = v {
                    if !(0..=31_536_000).contains(&v) {
                        return Err(OpsError::invalid(f, v.to_string(), "0 to 31536000 seconds"));
                    }
                }
            }
            if let Some(u) = &b.uri {
                check_uri("uri", u)?;
            }
            Body::RecoveryDrill(b)
        }
    })
}

#[cfg(test)]
mod unit_tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const RELEASE: &str = "4f1c2a9e-8d3b-4c55-9a7e-0b6d2f1e3c4a";

    fn build() -> Value {
        json!({
            "schema_version": "1.0",
            "idempotency_key": "github_actions/123/build_complete",
            "event_type": "build_complete",
            "source_system": "github_actions",
            "release_id": RELEASE,
            "status": "pass",
            "run_id": 123
        })
    }

    fn parse(v: &Value) -> (Header, OpsResult<Envelope>) {
        super::parse(v, v.to_string().len())
    }

    fn rejected(v: Value) -> (u16, String) {
        let e = parse(&v).1.unwrap_err();
        (e.http_status(), e.to_string())
    }

    #[test]
    fn a_build_event_is_read_with_defaults() {
        let (h, e) = parse(&build());
        let e = e.unwrap();
        assert_eq!(
            h.idempotency_key.as_deref(),
            Some("github_actions/123/build_complete")
        );
        assert_eq!(e.event_type, EventType::BuildComplete);
        assert_eq!(
            e.body,
            Body::Check {
                gate: GateCode::G1,
                check_name: "build".into(),
                status: "pass".into(),
                required: true,
                run_id: Some("123".into()),
                details_url: None,
            }
        );
    }

    #[test]
    fn keys_are_kept_whole_or_not_at_all() {
        let long = format!("{}é", "k".repeat(MAX_KEY_CHARS - 1));
        let mut v = build();
        v["idempotency_key"] = json!(long);
        let (h, e) = parse(&v);
        assert_eq!(h.idempotency_key.as_deref(), Some(long.as_str()));
        assert_eq!(e.unwrap().idempotency_key, long);
        let longer = format!("{long}x");
        v["idempotency_key"] = json!(longer);
        let (h, e) = parse(&v);
        assert_eq!(
            h.idempotency_key, None,
            "an over-long key is not logged cut"
        );
        assert_eq!(e.unwrap_err().http_status(), 400);
    }

    #[test]
    fn an_unsupported_schema_version_is_422() {
        let mut v = build();
        v["schema_version"] = json!("2.0");
        assert_eq!(rejected(v).0, 422);
        let mut v = build();
        v.as_object_mut().unwrap().remove("schema_version");
        assert_eq!(rejected(v).0, 400);
        let mut v = build();
        v.as_object_mut().unwrap().remove("release_id");
        let (s, m) = rejected(v);
        assert_eq!((s, m.as_str()), (400, "missing field \"release_id\""));
        let mut v = build();
        v.as_object_mut().unwrap().remove("status");
        assert_eq!(rejected(v).1, "missing field \"status\"");
        let mut v = build();
        v["status"] = json!(true);
        assert_eq!(rejected(v).0, 400);
        let mut v = build();
        v["event_type"] = json!("build_completed");
        let (s, m) = rejected(v);
        assert_eq!(s, 400);
        assert!(m.contains("unknown event_type"), "{m}");
        let mut v = build();
        v["surprise"] = json!(1);
        let (s, m) = rejected(v);
        assert_eq!(s, 400);
        assert!(m.contains("unknown field `surprise`"), "{m}");
        let mut v = build();
        v["metadata"] = json!({"blob": "x".repeat(MAX_ENVELOPE_BYTES)});
        assert_eq!(rejected(v).0, 413);
        assert_eq!(rejected(json!([1, 2])).0, 400);
        let mut v = build();
        v["release_id"] = json!("'; DROP TABLE ops.releases; --");
        assert_eq!(rejected(v).0, 400);
    }

    #[test]
    fn environment_events_need_no_release() {
        let v = json!({
            "schema_version": 1, "idempotency_key": "k", "event_type": "environment_event",
            "source_system": "sre-bot", "environment": "production", "event_kind": "config_change"
        });
        assert!(parse(&v).1.is_ok());
    }

    proptest! {
        /// Any JSON at all is either accepted or rejected with a 4xx; parsing never panics.
        #[test]
        fn arbitrary_json_is_rejected_cleanly(s in "\\PC{0,200}", key in "[a-z_]{1,20}") {
            let mut v = build();
            v[key.as_str()] = json!(s);
            if let Err(e) = parse(&v).1 {
                prop_assert!((400..500).contains(&e.http_status()));
            }
        }

        /// Idempotency keys with control characters are never accepted.
        #[test]
        fn control_characters_in_keys_are_rejected(prefix in "[a-z]{0,5}", c in 0u8..32) {
            let mut v = build();
            v["idempotency_key"] = json!(format!("{prefix}{}x", c as char));
            prop_assert_eq!(parse(&v).1.unwrap_err().http_status(), 400);
        }
    }
}
