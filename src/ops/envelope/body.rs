//! The fields of each event type, and their checks.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::checks::{
    check_artifact, check_object, check_text, check_timestamp, check_uri, check_uuid, gate, one_of,
    opt_text, opt_uuid,
};
use super::EventType;
use crate::ops::error::{OpsError, OpsResult};
use crate::ops::gates::GateCode;
use crate::ops::{personas, values};

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

/// An event about one release: the envelope named it (`release_id` is required).
#[derive(Debug, Clone, PartialEq)]
pub enum OnRelease {
    ReleaseCreated(ReleaseCreated),
    GateConfigured(GateRequirements),
    Check(CheckReport),
    Approval(Signoff),
    Evidence(Attachment),
    ExceptionRequested(ExceptionRequest),
    ExceptionDecided(ExceptionDecided),
    DeploymentStarted(DeploymentStarted),
    DeploymentFinished(DeploymentFinished),
    HealthCheck(HealthCheck),
    Rollback(Rollback),
}

/// gate_configured, checked: the gate's required check names as sent.
#[derive(Debug, Clone, PartialEq)]
pub struct GateRequirements {
    pub gate: GateCode,
    pub required_checks: Vec<String>,
}

/// build_complete or check_result, checked, with the defaults of build_complete filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckReport {
    pub gate: GateCode,
    pub check_name: String,
    pub status: String,
    pub required: bool,
    pub run_id: Option<String>,
    pub details_url: Option<String>,
}

/// gate_signoff or approval, checked: a decision on G2 or G3.
#[derive(Debug, Clone, PartialEq)]
pub struct Signoff {
    pub gate: GateCode,
    pub approved: bool,
    pub approver_id: Option<String>,
    pub persona_role: Option<String>,
    pub comment: Option<String>,
    pub report_url: Option<String>,
}

/// evidence_attached, checked: an artifact, on a gate or check of the release or on the release.
#[derive(Debug, Clone, PartialEq)]
pub struct Attachment {
    pub gate: Option<GateCode>,
    pub check_id: Option<String>,
    pub artifact: Artifact,
}

/// exception_requested, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ExceptionRequest {
    pub gate: GateCode,
    pub reason: String,
    pub expires_at: String,
    pub exception_id: Option<String>,
}

/// An event about an environment: environment events, incidents and drills, each of which
/// may also name a release.
#[derive(Debug, Clone, PartialEq)]
pub enum OnEnvironment {
    EnvironmentEvent(EnvironmentEvent),
    IncidentOpened(IncidentOpened),
    IncidentResolved(IncidentResolved),
    RecoveryDrill(RecoveryDrill),
}

/// The per-type part of a checked envelope, by what it is about. Gate codes, statuses and
/// decisions are checked; defaults are filled in.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Release {
        release_id: String,
        event: OnRelease,
    },
    Environment {
        release_id: Option<String>,
        event: OnEnvironment,
    },
}

impl Body {
    /// The release the envelope is about, if any.
    pub fn release_id(&self) -> Option<&str> {
        match self {
            Body::Release { release_id, .. } => Some(release_id),
            Body::Environment { release_id, .. } => release_id.as_deref(),
        }
    }
}

enum Parsed {
    Release(OnRelease),
    Environment(OnEnvironment),
}

fn body<T: DeserializeOwned>(event: EventType, rest: Map<String, Value>) -> OpsResult<T> {
    serde_json::from_value(Value::Object(rest)).map_err(|e| {
        // Caller text in serde's message is cut (a 64 KiB string is quoted whole otherwise).
        let msg = crate::core::error::json_problem(&e);
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

/// The body of an `event` envelope from its own fields (`rest`), with the release it names.
pub(super) fn parse_body(
    event: EventType,
    rest: Map<String, Value>,
    release_id: Option<String>,
) -> OpsResult<Body> {
    use EventType as T;
    let parsed = match event {
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
                        format!(
                            "{} is not a commit hash",
                            crate::core::error::quoted_upto(sha, 70)
                        ),
                        "7 to 64 lowercase hex digits",
                    ));
                }
            }
            Parsed::Release(OnRelease::ReleaseCreated(b))
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
            Parsed::Release(OnRelease::GateConfigured(GateRequirements {
                gate: gate("gate_code", &Some(b.gate_code), None)?,
                required_checks: b.required_checks,
            }))
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
                    values::BUILD_STATUSES
                } else {
                    values::CHECK_STATUSES
                },
            )?;
            let run_id = b.run_id.map(TextOrNumber::into_text);
            opt_text("run_id", &run_id, 128, false)?;
            if let Some(u) = &b.details_url {
                check_uri("details_url", u)?;
            }
            Parsed::Release(OnRelease::Check(CheckReport {
                gate: g,
                check_name: name,
                status: b.status,
                required: b.required.unwrap_or(true),
                run_id,
                details_url: b.details_url,
            }))
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
            one_of("decision", &decision, values::DECISIONS)?;
            opt_text("approver_id", &b.approver_id, 256, false)?;
            if let Some(p) = &b.persona_role {
                one_of("persona_role", p, personas::PERSONAS)?;
            }
            opt_text("comment", &b.comment, 4000, true)?;
            if let Some(u) = &b.report_url {
                check_uri("report_url", u)?;
            }
            Parsed::Release(OnRelease::Approval(Signoff {
                gate: g,
                approved: decision == "approved",
                approver_id: b.approver_id,
                persona_role: b.persona_role,
                comment: b.comment,
                report_url: b.report_url,
            }))
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
            Parsed::Release(OnRelease::Evidence(Attachment {
                gate: g,
                check_id: opt_uuid("check_id", b.check_id)?,
                artifact,
            }))
        }
        T::ExceptionRequested => {
            let b: ExceptionRequested = body(event, rest)?;
            check_text("reason", &b.reason, 4000, true)?;
            check_timestamp("expires_at", &b.expires_at)?;
            Parsed::Release(OnRelease::ExceptionRequested(ExceptionRequest {
                gate: gate("gate_code", &Some(b.gate_code), None)?,
                reason: b.reason,
                expires_at: b.expires_at,
                exception_id: opt_uuid("exception_id", b.exception_id)?,
            }))
        }
        T::ExceptionDecided => {
            let mut b: ExceptionDecided = body(event, rest)?;
            b.exception_id = check_uuid("exception_id", &b.exception_id)?;
            one_of("decision", &b.decision, values::EXCEPTION_DECISIONS)?;
            opt_text("comment", &b.comment, 4000, true)?;
            Parsed::Release(OnRelease::ExceptionDecided(b))
        }
        T::DeploymentStarted => {
            let mut b: DeploymentStarted = body(event, rest)?;
            one_of("environment", &b.environment, values::ENVIRONMENTS)?;
            b.deployment_id = opt_uuid("deployment_id", b.deployment_id)?;
            opt_text("external_ref", &b.external_ref, 256, false)?;
            Parsed::Release(OnRelease::DeploymentStarted(b))
        }
        T::DeploymentFinished => {
            let mut b: DeploymentFinished = body(event, rest)?;
            b.deployment_id = check_uuid("deployment_id", &b.deployment_id)?;
            one_of("status", &b.status, values::DEPLOYMENT_OUTCOMES)?;
            Parsed::Release(OnRelease::DeploymentFinished(b))
        }
        T::HealthCheck => {
            let mut b: HealthCheck = body(event, rest)?;
            b.deployment_id = check_uuid("deployment_id", &b.deployment_id)?;
            one_of("status", &b.status, values::HEALTH_RESULTS)?;
            check_uri("uri", &b.uri)?;
            check_object("details", &b.details)?;
            Parsed::Release(OnRelease::HealthCheck(b))
        }
        T::Rollback => {
            let mut b: Rollback = body(event, rest)?;
            b.deployment_id = check_uuid("deployment_id", &b.deployment_id)?;
            check_text("reason", &b.reason, 4000, true)?;
            Parsed::Release(OnRelease::Rollback(b))
        }
        T::EnvironmentEvent => {
            let mut b: EnvironmentEvent = body(event, rest)?;
            one_of("environment", &b.environment, values::ENVIRONMENTS)?;
            if b.event_kind.is_empty()
                || b.event_kind.len() > 64
                || !b
                    .event_kind
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
            {
                return Err(OpsError::invalid(
                    "event_kind",
                    format!(
                        "{} is not accepted",
                        crate::core::error::quoted_upto(&b.event_kind, 64)
                    ),
                    "1 to 64 of a-z, 0-9 and _ (e.g. config_change, maintenance_started)",
                ));
            }
            b.deployment_id = opt_uuid("deployment_id", b.deployment_id)?;
            check_object("detail", &b.detail)?;
            Parsed::Environment(OnEnvironment::EnvironmentEvent(b))
        }
        T::IncidentOpened => {
            let mut b: IncidentOpened = body(event, rest)?;
            one_of("environment", &b.environment, values::ENVIRONMENTS)?;
            one_of("severity", &b.severity, values::SEVERITIES)?;
            check_text("summary", &b.summary, 2000, true)?;
            b.incident_id = opt_uuid("incident_id", b.incident_id)?;
            b.deployment_id = opt_uuid("deployment_id", b.deployment_id)?;
            Parsed::Environment(OnEnvironment::IncidentOpened(b))
        }
        T::IncidentResolved => {
            let mut b: IncidentResolved = body(event, rest)?;
            b.incident_id = check_uuid("incident_id", &b.incident_id)?;
            opt_text("resolution", &b.resolution, 4000, true)?;
            Parsed::Environment(OnEnvironment::IncidentResolved(b))
        }
        T::RecoveryDrill => {
            let b: RecoveryDrill = body(event, rest)?;
            one_of("environment", &b.environment, values::ENVIRONMENTS)?;
            one_of("drill_type", &b.drill_type, values::DRILL_TYPES)?;
            one_of("outcome", &b.outcome, values::DRILL_OUTCOMES)?;
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
            Parsed::Environment(OnEnvironment::RecoveryDrill(b))
        }
    };
    Ok(match (parsed, release_id) {
        (Parsed::Release(event), Some(release_id)) => Body::Release { release_id, event },
        (Parsed::Release(_), None) => return Err(super::missing_release(event)),
        (Parsed::Environment(event), release_id) => Body::Environment { release_id, event },
    })
}
