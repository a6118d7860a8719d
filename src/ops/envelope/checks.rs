//! Checks of single values: text, identifiers, URIs, times, artifacts, gate codes.

use chrono::{Datelike, Timelike};
use serde_json::{Map, Value};

use super::{Artifact, MAX_OBJECT_BYTES};
use crate::ops::error::{OpsError, OpsResult};
use crate::ops::gates::GateCode;
use crate::ops::values::ARTIFACT_TYPES;

pub(super) use crate::core::args::json_kind;

/// Free text: not blank (Unicode White_Space), at most `max` characters, no control characters
/// (Cc) except newlines and tabs when `multiline`. The CHECK constraints of ops call the same
/// rule (`ops.is_valid_text`).
pub fn text_ok(s: &str, max: usize, multiline: bool) -> bool {
    !s.trim().is_empty()
        && s.chars().count() <= max
        && !s
            .chars()
            .any(|c| c.is_control() && !(multiline && (c == '\n' || c == '\t')))
}

/// [`text_ok`], with the reason when it fails.
pub(super) fn check_text(field: &str, s: &str, max: usize, multiline: bool) -> OpsResult<()> {
    if text_ok(s, max, multiline) {
        return Ok(());
    }
    let allowed = format!("1 to {max} printable characters");
    let n = s.chars().count();
    let problem = if s.trim().is_empty() {
        "it is empty".to_owned()
    } else if n > max {
        format!("it is {n} characters long")
    } else {
        "it contains control characters".to_owned()
    };
    Err(OpsError::invalid(field, problem, allowed))
}

pub(super) fn opt_text(
    field: &str,
    s: &Option<String>,
    max: usize,
    multiline: bool,
) -> OpsResult<()> {
    match s {
        Some(s) => check_text(field, s, max, multiline),
        None => Ok(()),
    }
}

pub fn check_uuid(field: &str, s: &str) -> OpsResult<String> {
    parse_uuid(field, s).map(|u| u.hyphenated().to_string())
}

/// `s` as a UUID; 400 `invalid_field` naming `field` when it is not one.
pub fn parse_uuid(field: &str, s: &str) -> OpsResult<uuid::Uuid> {
    uuid::Uuid::parse_str(s).map_err(|_| {
        OpsError::invalid(
            field,
            format!("{} is not a UUID", crate::core::error::quoted_upto(s, 64)),
            "a UUID such as 4f1c2a9e-8d3b-4c55-9a7e-0b6d2f1e3c4a",
        )
    })
}

pub(super) fn opt_uuid(field: &str, s: Option<String>) -> OpsResult<Option<String>> {
    s.map(|s| check_uuid(field, &s)).transpose()
}

/// An absolute URI: a scheme (a letter, then letters, digits, `+`, `-`, `.`) and a colon, at
/// most 2048 bytes, no whitespace or control characters. The CHECK constraints of ops call the
/// same rule (`ops.is_absolute_uri`).
pub fn uri_ok(s: &str) -> bool {
    let scheme = &s[..s.find(':').unwrap_or(0)];
    scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && s.len() <= 2048
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// [`uri_ok`], with the reason when it fails.
pub(super) fn check_uri(field: &str, s: &str) -> OpsResult<()> {
    if uri_ok(s) {
        return Ok(());
    }
    Err(OpsError::invalid(
        field,
        format!(
            "{} is not an absolute URI",
            crate::core::error::quoted_upto(s, 80)
        ),
        "an absolute URI of at most 2048 characters (https://..., s3://...)",
    ))
}

pub(super) fn one_of(field: &str, s: &str, allowed: &[&str]) -> OpsResult<()> {
    if allowed.contains(&s) {
        Ok(())
    } else {
        Err(OpsError::invalid(
            field,
            format!("{} is not accepted", crate::core::error::quoted_upto(s, 64)),
            allowed.join(", "),
        ))
    }
}

pub(super) fn check_sha(s: &Option<String>) -> OpsResult<()> {
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

pub(super) fn check_object(field: &str, m: &Option<Map<String, Value>>) -> OpsResult<()> {
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

/// Longest RFC 3339 time taken: `YYYY-MM-DDTHH:MM:SS.fffffffff+HH:MM`.
const MAX_TIMESTAMP_CHARS: usize = 35;

pub fn check_timestamp(field: &str, s: &str) -> OpsResult<()> {
    // Each refusal quotes the value (cut) and says what is wrong with it.
    let refused = |problem: String| {
        OpsError::invalid(
            field,
            format!("{} {problem}", crate::core::error::quoted_upto(s, 64)),
            "an RFC 3339 time with an offset, e.g. 2026-11-30T12:00:00Z",
        )
    };
    // chrono skips any number of fraction digits; Postgres refuses a time longer than about 150
    // characters (22007, quoting it whole, after the envelope was accepted as valid). Nine
    // digits (nanoseconds) is more than either keeps: `2026-11-30T12:00:00.123456789+15:59`.
    if s.len() > MAX_TIMESTAMP_CHARS {
        return Err(refused(format!(
            "is longer than an RFC 3339 time ({MAX_TIMESTAMP_CHARS} characters, nine fraction digits)"
        )));
    }
    let t = chrono::DateTime::parse_from_rfc3339(s)
        .map_err(|e| refused(format!("is not an RFC 3339 time ({e})")))?;
    // RFC 3339 allows what a timestamptz does not: year 0, offsets past ±15:59, and a leap
    // second with a fraction (`:60.5`; chrono holds a leap second as a nanosecond count past
    // one second; `:60` alone Postgres reads as the next minute).
    if t.year() < 1
        || t.offset().local_minus_utc().abs() > MAX_OFFSET_SECONDS
        || t.nanosecond() > 1_000_000_000
    {
        return Err(refused(
            "is out of range (a year from 1, an offset within ±15:59, no fraction of a leap second)"
                .into(),
        ));
    }
    Ok(())
}

/// The largest UTC offset a timestamptz accepts in its input, 15:59.
const MAX_OFFSET_SECONDS: i32 = 15 * 3600 + 59 * 60;

pub(super) fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

pub(super) fn check_artifact(prefix: &str, a: &Artifact) -> OpsResult<()> {
    one_of(
        &format!("{prefix}artifact_type"),
        &a.artifact_type,
        ARTIFACT_TYPES,
    )?;
    check_uri(&format!("{prefix}uri"), &a.uri)?;
    check_sha(&a.sha256)?;
    opt_text(&format!("{prefix}description"), &a.description, 2000, true)
}

pub(super) fn gate(
    field: &str,
    s: &Option<String>,
    default: Option<GateCode>,
) -> OpsResult<GateCode> {
    match (s, default) {
        (Some(s), _) => GateCode::parse(s).map_err(|_| {
            OpsError::invalid(
                field,
                format!("{} is not a gate", crate::core::error::quoted_upto(s, 16)),
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
pub(super) fn header_text(obj: &Map<String, Value>, key: &str, max: usize) -> Option<String> {
    match obj.get(key) {
        Some(Value::String(s)) if s.chars().count() <= max => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()).filter(|t| t.len() <= max),
        _ => None,
    }
}

pub(super) fn required_text<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    allowed: &str,
) -> OpsResult<&'a str> {
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
