//! The core error type and its SQLSTATE contract.
//!
//! Every error a caller can cause maps to one SQLSTATE of the README's table, with a message
//! that says what was wrong and a hint that says what is allowed; a caller's mistake is never
//! XX000. PostgREST turns them into HTTP statuses: class 22 → 400, 42501 → 403, 23505 → 409;
//! P0002, 55000 and 40001 → 500 by its mapping.
//!
//! One idiom for every module: an error type implements [`SqlError`] in one place, saying per
//! variant its SQLSTATE, DETAIL and HINT (its message is its `Display`), and converts into
//! [`ErrorReport`] with `From`, so a SQL entry point ends in `?` and never names itself (the
//! report's LOCATION is that `?`). A module with errors of its own (ops, provisioning) has an enum that
//! wraps `CoreError` for the rest; a module without (capacity, intake) uses `CoreError`.

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
    #[error("{kind} {} does not exist", quoted(.id))]
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
    #[error("{kind} {} already exists", quoted(.key))]
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

    /// A remote service refused a request in its answer (Slack's `ok: false`, a GraphQL
    /// `errors` list) though HTTP said 2xx: nothing was done there, so the outbox records the
    /// delivery as not delivered (`transient`: tried again; else failed, for
    /// `flowgate.replay_dead` once the cause is fixed).
    #[error("{service} refused the request: {answer}")]
    Refused {
        service: String,
        answer: String,
        hint: String,
        transient: bool,
    },

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
}

/// How an error reaches Postgres: its SQLSTATE, its message (`Display`), and the DETAIL and
/// HINT that say what was wrong and what is allowed.
pub trait SqlError: std::fmt::Display {
    /// The SQLSTATE.
    fn errcode(&self) -> PgSqlErrorCode;

    /// The SQLSTATE as its five characters, e.g. "22023".
    fn sqlstate(&self) -> String {
        // Postgres packs the five characters into 6-bit fields, the first one lowest.
        let packed = self.errcode() as u32;
        (0..5)
            .map(|i| char::from((((packed >> (6 * i)) & 0x3F) as u8) + b'0'))
            .collect()
    }

    /// Facts about this occurrence beyond the message, if any.
    fn detail(&self) -> Option<String> {
        None
    }

    /// What the caller may do instead, if anything.
    fn hint(&self) -> Option<String> {
        None
    }

    /// The report Postgres raises, attributed to `module`. Its LOCATION (in a verbose log) is
    /// the entry point's file and line: this and the `From` conversions track their caller, so
    /// an entry point ending in `?` is where the report is made.
    #[track_caller]
    fn report(&self, module: &'static str) -> ErrorReport {
        let mut report = ErrorReport::new(self.errcode(), bounded(self.to_string()), module);
        if let Some(d) = self.detail() {
            report = report.set_detail(bounded(d));
        }
        if let Some(h) = self.hint() {
            report = report.set_hint(bounded(h));
        }
        report
    }
}

/// Most bytes of a message, detail or hint. An error may quote what the caller sent (a pool id
/// that is not one, say); quoted whole, a 20 MB argument would make a 20 MB error, in the
/// client's answer and the server log.
pub const MAX_REPORT_BYTES: usize = 1024;

/// Caller text as a message quotes it: escaped as a Rust string literal, at most
/// [`QUOTED_CHARS`] characters of it, then "…" and its length. Quoted whole, a 30 MB argument of
/// control characters would escape to 180 MB before [`bounded`] cut the report.
pub fn quoted(text: &str) -> String {
    quoted_upto(text, QUOTED_CHARS)
}

/// [`quoted`] showing at most `max_chars` characters (a field whose values are shorter).
pub fn quoted_upto(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        None => format!("{text:?}"),
        Some((end, _)) => format!("{:?}… ({} bytes)", &text[..end], text.len()),
    }
}

/// What serde_json says is wrong with caller JSON, with the caller's text in it cut as
/// [`quoted`] cuts it: serde quotes the offending value whole (`invalid type: string "…"`,
/// `unknown field `…``), and an envelope may hold a 64 KiB string (or a pasted token).
pub fn json_problem(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let mut out = String::with_capacity(msg.len().min(256));
    let mut rest = msg.as_str();
    // Each quoted segment ("..." with backslash escapes, or `...`) is cut on its own.
    while let Some(start) = rest.find(['"', '`']) {
        let close = rest.as_bytes()[start] as char;
        out.push_str(&rest[..=start]);
        let inner = &rest[start + 1..];
        let mut escaped = false;
        let end = inner.char_indices().find_map(|(i, c)| {
            let at = !escaped && c == close;
            escaped = close == '"' && !escaped && c == '\\';
            at.then_some(i)
        });
        let Some(end) = end else {
            rest = inner;
            break;
        };
        let segment = &inner[..end];
        match segment.char_indices().nth(QUOTED_CHARS) {
            None => out.push_str(segment),
            Some((cut, _)) => {
                out.push_str(&format!("{}… ({} bytes)", &segment[..cut], segment.len()))
            }
        }
        out.push(close);
        rest = &inner[end + 1..];
    }
    out.push_str(rest);
    bounded(out)
}

/// Most characters of caller text [`quoted`] shows.
pub const QUOTED_CHARS: usize = 64;

/// `text` cut to [`MAX_REPORT_BYTES`] (at a character boundary), saying how long it was.
pub fn bounded(text: String) -> String {
    if text.len() <= MAX_REPORT_BYTES {
        return text;
    }
    let mut end = MAX_REPORT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &text[..end], text.len())
}

impl SqlError for CoreError {
    fn errcode(&self) -> PgSqlErrorCode {
        use PgSqlErrorCode::*;
        match self {
            CoreError::InvalidArgument { .. } => ERRCODE_INVALID_PARAMETER_VALUE,
            CoreError::InvalidJson { .. } => ERRCODE_INVALID_TEXT_REPRESENTATION,
            CoreError::NotFound { .. } => ERRCODE_NO_DATA_FOUND,
            CoreError::IllegalTransition { .. } => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            CoreError::PermissionDenied { .. } => ERRCODE_INSUFFICIENT_PRIVILEGE,
            CoreError::Duplicate { .. } => ERRCODE_UNIQUE_VIOLATION,
            CoreError::MissingDependency { .. } | CoreError::Refused { .. } => {
                ERRCODE_FEATURE_NOT_SUPPORTED
            }
            CoreError::NeedsOwnTransactions { .. } => ERRCODE_INVALID_TRANSACTION_TERMINATION,
            CoreError::Busy { .. } => ERRCODE_T_R_SERIALIZATION_FAILURE,
            CoreError::Spi(_) | CoreError::Internal(_) => ERRCODE_INTERNAL_ERROR,
        }
    }

    fn hint(&self) -> Option<String> {
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
            | CoreError::Refused { hint, .. }
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
            CoreError::InvalidJson { what, .. } => Some(format!(
                "send {what} as valid JSON of the shape it takes (RFC 8259 text, UTF-8, no NUL character)"
            )),
            CoreError::Spi(_) | CoreError::Internal(_) => Some(
                "this is a bug in flowgate; please report it with the statement that caused it"
                    .into(),
            ),
            _ => None,
        }
    }
}

impl From<CoreError> for ErrorReport {
    #[track_caller]
    fn from(e: CoreError) -> Self {
        e.report("flowgate")
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
    #[test]
    fn json_problems_cut_the_callers_text() {
        let long = "x".repeat(5000);
        let e = serde_json::from_str::<u32>(&format!("{long:?}")).unwrap_err();
        let p = super::json_problem(&e);
        assert!(p.len() < 200, "{p}");
        assert!(p.contains("(5000 bytes)"), "{p}");
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct S {
            a: u8,
        }
        let e = serde_json::from_str::<S>(&format!("{{\"{long}\": 1}}")).unwrap_err();
        let p = super::json_problem(&e);
        assert!(p.starts_with("unknown field `xxxx"), "{p}");
        assert!(p.contains("(5000 bytes)`"), "{p}");
        assert!(p.len() < 300, "{p}");
        let short = serde_json::from_str::<u32>("\"a\\\"b\"").unwrap_err();
        assert_eq!(super::json_problem(&short), short.to_string());
    }

    use super::*;

    #[test]
    fn reports_are_bounded_at_a_character_boundary() {
        assert_eq!(bounded("short".into()), "short");
        let long = "é".repeat(MAX_REPORT_BYTES);
        let cut = bounded(long.clone());
        assert!(cut.len() < MAX_REPORT_BYTES + 40, "{} bytes", cut.len());
        assert!(cut.ends_with(&format!("… ({} bytes in all)", long.len())));
        assert!(cut.starts_with("éé"));
    }

    #[test]
    fn caller_text_is_quoted_short_whatever_its_length() {
        assert_eq!(quoted("us-east-1"), "\"us-east-1\"");
        assert_eq!(quoted("a\u{7f}"), "\"a\\u{7f}\"");
        // Control characters escape to six bytes each: 30 MB of them must not become 180 MB.
        let hostile = "\u{7f}".repeat(1_000_000);
        let q = quoted(&hostile);
        assert!(q.len() < QUOTED_CHARS * 6 + 40, "{} bytes", q.len());
        assert!(q.ends_with("… (1000000 bytes)"), "{q}");
        // Cut at a character, never inside one.
        let wide = "é".repeat(QUOTED_CHARS + 1);
        assert_eq!(
            quoted(&wide),
            format!("{:?}… ({} bytes)", "é".repeat(QUOTED_CHARS), wide.len())
        );
        assert!(
            CoreError::not_found("pool", hostile.clone())
                .to_string()
                .len()
                < 500
        );
        let dup = CoreError::Duplicate {
            kind: "key".into(),
            key: hostile,
        };
        assert!(dup.to_string().len() < 500);
    }

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
        }
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
