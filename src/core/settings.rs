//! The registry of documented settings and the rules their values follow.
//!
//! Settings live in `flowgate.settings (key, value jsonb)`. Every key flowgate reads is declared
//! here with its type, bounds, default and documentation; the table's trigger calls
//! [`validate`] so a bad value cannot be stored by any path (the `flowgate.set_setting`
//! function or a plain `INSERT`). Modules add their keys by listing them in [`definitions`].
//! Pure: no Postgres access; `store.rs` reads the table.

use serde_json::Value;

use super::error::{CoreError, CoreResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Int {
        min: i64,
        max: i64,
    },
    Text {
        max_len: usize,
    },
    /// One of a fixed set of strings.
    OneOf(&'static [&'static str]),
    /// A JSON array of Postgres role names.
    RoleList,
    /// A JSON array of actor ids (JWT subjects, Slack ids: 1 to 256 characters).
    ActorList,
    /// A pg_cron schedule: five cron fields, or "N seconds" (1 to 59; pg_cron 1.5+).
    Schedule,
    /// Per-destination flow limits (`core::outbox::flow`).
    FlowLimits,
}

impl Kind {
    pub fn describe(&self) -> String {
        match self {
            Kind::Bool => "a JSON boolean".into(),
            Kind::Int { min, max } => format!("a JSON integer from {min} to {max}"),
            Kind::Text { max_len } => {
                format!("a JSON string of at most {max_len} characters, no control characters")
            }
            Kind::OneOf(options) => format!("one of the JSON strings {}", options.join(", ")),
            Kind::RoleList => "a JSON array of role names (1 to 63 characters each)".into(),
            Kind::ActorList => "a JSON array of actor ids (1 to 256 characters each)".into(),
            Kind::FlowLimits => "a JSON object of flow key (or prefix*) to {\"max_in_flight\": 1-10000, \"per_second\": number, \"burst\": 1-100000}".into(),
            Kind::Schedule => "a JSON string with a pg_cron schedule: five fields (minute hour day-of-month month day-of-week, each *, a number, a range a-b, a list, or a step /n), or \"N seconds\" with N from 1 to 59 (pg_cron 1.5+)".into(),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Kind::Bool => "boolean",
            Kind::Int { .. } => "integer",
            Kind::Text { .. } => "text",
            Kind::OneOf(_) => "enum",
            Kind::RoleList => "role list",
            Kind::ActorList => "actor list",
            Kind::Schedule => "schedule",
            Kind::FlowLimits => "flow limits",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Definition {
    pub key: &'static str,
    pub kind: Kind,
    /// The default as JSON text; checked against `kind` by a unit test.
    pub default: &'static str,
    pub doc: &'static str,
}

impl Definition {
    pub fn default_value(&self) -> Value {
        // Defaults are compile-time constants validated by `every_default_is_valid`; a parse
        // failure here would be caught by that test, so fall back to null rather than panic.
        serde_json::from_str(self.default).unwrap_or(Value::Null)
    }
}

/// Settings of the shared core.
pub const CORE: &[Definition] = &[
    Definition {
        key: "flowgate.trusted_roles",
        kind: Kind::RoleList,
        default: r#"["service_role"]"#,
        doc: "Members of these roles (and superusers) are trusted: they may act on behalf of another actor (e.g. a Slack bot for the Slack user) and count as admins of the workflow modules.",
    },
    Definition {
        key: "flowgate.authenticator_roles",
        kind: Kind::RoleList,
        default: r#"["authenticator"]"#,
        doc: "The roles PostgREST logs in as (Supabase: authenticator). request.jwt.claims is believed only in sessions that logged in as one of these, or as a trusted role; anywhere else the actor is the database role.",
    },
    Definition {
        key: "flowgate.allow_anonymous_users",
        kind: Kind::Bool,
        default: "false",
        doc: "Whether Supabase anonymous sign-ins (a JWT with is_anonymous: true) act as users. Off: they are refused as anonymous callers are (42501), since a script gets a new subject on every sign-in and per-user limits (intake's max_claims_per_user) would not hold.",
    },
    Definition {
        key: "flowgate.http_transport",
        kind: Kind::OneOf(&["auto", "pg_net", "native"]),
        default: r#""auto""#,
        doc: "How deliveries are sent: pg_net (net.http_post after the claim commits, responses read by flowgate.collect), native (flowgate's Rust client, with no transaction open), or auto (pg_net where installed, closed to other roles, usable by the runner and served by a pg_net worker in this database; README: the outbox's transports).",
    },
    Definition {
        key: "flowgate.http_timeout_ms",
        kind: Kind::Int { min: 100, max: 300_000 },
        default: "10000",
        doc: "Default per-request timeout of a new delivery, in milliseconds.",
    },
    Definition {
        key: "flowgate.http_max_attempts",
        kind: Kind::Int { min: 1, max: 100 },
        default: "8",
        doc: "Default number of attempts of a new delivery before it is dead.",
    },
    Definition {
        key: "flowgate.http_concurrency",
        kind: Kind::Int { min: 1, max: 256 },
        default: "32",
        doc: "Requests the native transport sends at once.",
    },
    Definition {
        key: "flowgate.retry_base_ms",
        kind: Kind::Int { min: 10, max: 3_600_000 },
        default: "1000",
        doc: "Back-off base: the retry after attempt n waits a uniformly random time up to min(cap, base * 2^(n-1)).",
    },
    Definition {
        key: "flowgate.retry_cap_ms",
        kind: Kind::Int { min: 100, max: 86_400_000 },
        default: "600000",
        doc: "Back-off cap in milliseconds.",
    },
    Definition {
        key: "flowgate.max_retry_after_seconds",
        kind: Kind::Int { min: 0, max: 86_400 },
        default: "3600",
        doc: "Longest Retry-After (from 429/503 responses) that is honoured; longer values are clamped.",
    },
    Definition {
        key: "flowgate.dispatch_batch_size",
        kind: Kind::Int { min: 1, max: 10_000 },
        default: "50",
        doc: "Deliveries claimed per round of the outbox runner (CALL flowgate.run_outbox(), the worker): one claim transaction, one send, one record transaction.",
    },
    Definition {
        key: "flowgate.flow_limits",
        kind: Kind::FlowLimits,
        default: r#"{"slack:*": {"per_second": 1, "burst": 1}, "supabase-management-api": {"max_in_flight": 4, "per_second": 2, "burst": 10}}"#,
        doc: "Per-destination flow control, honoured by every outbox runner at once: flow key (a delivery's host:port, or what its module set: slack:<channel>, supabase-management-api) or prefix* to max_in_flight and a token bucket (per_second, burst). A 429/503 with Retry-After pauses its whole flow key.",
    },
    Definition {
        key: "flowgate.outbox_run_seconds",
        kind: Kind::Int { min: 1, max: 3_600 },
        default: "20",
        doc: "How long one CALL flowgate.run_outbox() (or one worker tick) keeps claiming new rounds while deliveries are due.",
    },
    Definition {
        key: "flowgate.in_flight_lease_seconds",
        kind: Kind::Int { min: 10, max: 86_400 },
        default: "900",
        doc: "An in-flight delivery with no recorded response after this long (a lost pg_net response) counts as a timed-out attempt.",
    },
    Definition {
        key: "flowgate.dispatch_schedule",
        kind: Kind::Schedule,
        default: r#""* * * * *""#,
        doc: "pg_cron schedule of CALL flowgate.run_outbox() (pg_cron 1.5+ also accepts '5 seconds').",
    },
    Definition {
        key: "flowgate.delivered_retention_hours",
        kind: Kind::Int { min: 1, max: 87_600 },
        default: "168",
        doc: "Delivered deliveries older than this are removed by flowgate.prune_deliveries(); failed and dead ones are kept for replay.",
    },
    Definition {
        key: "flowgate.job_run_retention_hours",
        kind: Kind::Int { min: 1, max: 87_600 },
        default: "168",
        doc: "Rows of flowgate.job_runs older than this are removed by flowgate.prune_deliveries().",
    },
    Definition {
        key: "flowgate.prune_schedule",
        kind: Kind::Schedule,
        default: r#""17 * * * *""#,
        doc: "pg_cron schedule of flowgate.prune_deliveries().",
    },
    Definition {
        key: "flowgate.collect_schedule",
        kind: Kind::Schedule,
        default: r#""* * * * *""#,
        doc: "pg_cron schedule of flowgate.collect().",
    },
];

/// Keys that exist only in the pg_test build, to exercise every kind end to end.
#[cfg(any(test, feature = "pg_test"))]
pub const TEST_ONLY: &[Definition] = &[
    Definition {
        key: "fg_test.flag",
        kind: Kind::Bool,
        default: "false",
        doc: "test",
    },
    Definition {
        key: "fg_test.batch",
        kind: Kind::Int { min: 1, max: 1000 },
        default: "100",
        doc: "test",
    },
    Definition {
        key: "fg_test.label",
        kind: Kind::Text { max_len: 16 },
        default: r#""hello""#,
        doc: "test",
    },
    Definition {
        key: "fg_test.mode",
        kind: Kind::OneOf(&["auto", "manual"]),
        default: r#""auto""#,
        doc: "test",
    },
];

/// Every key flowgate knows, in documentation order.
pub fn definitions() -> impl Iterator<Item = &'static Definition> {
    let all = CORE
        .iter()
        .chain(super::module::all().iter().flat_map(|m| m.settings.iter()));
    #[cfg(any(test, feature = "pg_test"))]
    let all = all.chain(TEST_ONLY.iter());
    all
}

pub fn definition(key: &str) -> CoreResult<&'static Definition> {
    definitions().find(|d| d.key == key).ok_or_else(|| {
        let shown: String = key.chars().take(64).collect();
        let closest = definitions()
            .map(|d| (edit_distance(&shown, d.key), d.key))
            .min()
            .filter(|(distance, _)| *distance <= 4)
            .map(|(_, k)| format!("did you mean {k:?}? "))
            .unwrap_or_default();
        CoreError::invalid(
            "setting key",
            format!("{shown:?} is not a flowgate setting"),
            format!("{closest}every key, with its kind and default: SELECT * FROM flowgate.setting_definitions()"),
        )
    })
}

/// Levenshtein distance of two short strings (keys are at most a few dozen characters).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Check that `value` is acceptable for `key`.
/// [`validate`] for a new value (`flowgate.set_setting`), which also holds a text setting to
/// what it names: no control character (an id, a name or a URL with one would only fail later,
/// in a caller's request that never named it: a flow key, a header, a Slack channel); a key
/// ending in `_url` an http(s) endpoint, one ending in `_secret` a secret's name (or they fail
/// every user call that enqueues a request to them). Not part of `validate`, which the table's
/// trigger runs on every row, restores of older backups included.
pub fn validate_new(key: &str, value: &Value) -> CoreResult<&'static Definition> {
    let def = validate(key, value)?;
    if let (Kind::Text { .. }, Value::String(s)) = (&def.kind, value) {
        let what = || format!("value for setting {key}");
        if s.chars().any(char::is_control) {
            return Err(CoreError::invalid(
                what(),
                "it contains a control character",
                def.kind.describe(),
            ));
        }
        if key.ends_with("_url") {
            super::outbox::delivery::validate_url(s).map_err(|e| match e {
                CoreError::InvalidArgument {
                    problem, allowed, ..
                } => CoreError::invalid(what(), problem, allowed),
                other => other,
            })?;
        }
        if key.ends_with("_secret") && !super::outbox::delivery::is_secret_name(s) {
            return Err(CoreError::invalid(
                what(),
                format!("{:?} is not a secret's name", s.chars().take(64).collect::<String>()),
                "1 to 128 of A-Za-z0-9_.-, starting with a letter (a name flowgate.set_secret stores, or a Vault secret's)",
            ));
        }
    }
    Ok(def)
}

pub fn validate(key: &str, value: &Value) -> CoreResult<&'static Definition> {
    let def = definition(key)?;
    let bad = |problem: String| {
        CoreError::invalid(
            format!("value for setting {key}"),
            problem,
            def.kind.describe(),
        )
    };
    match (def.kind, value) {
        (Kind::Bool, Value::Bool(_)) => {}
        (Kind::Int { min, max }, Value::Number(n)) => match n.as_i64() {
            Some(i) if (min..=max).contains(&i) => {}
            Some(i) => return Err(bad(format!("{i} is out of range"))),
            None => return Err(bad(format!("{n} is not an integer"))),
        },
        (Kind::Text { max_len }, Value::String(s)) => {
            if s.chars().count() > max_len {
                return Err(bad(format!("it is {} characters long", s.chars().count())));
            }
        }
        (Kind::OneOf(options), Value::String(s)) => {
            if !options.contains(&s.as_str()) {
                return Err(bad(format!("{s:?} is not a known option")));
            }
        }
        (Kind::ActorList, Value::Array(items)) => {
            for item in items {
                match item {
                    Value::String(a) if super::actor::validate_actor_id("actor id", a).is_ok() => {}
                    other => return Err(bad(format!("{other} is not an actor id"))),
                }
            }
        }
        (Kind::Schedule, Value::String(s)) => {
            if let Err(problem) = check_schedule(s) {
                return Err(bad(problem));
            }
        }
        (Kind::FlowLimits, v @ Value::Object(_)) => {
            if let Err(problem) = super::outbox::flow::parse_limits(v) {
                return Err(bad(problem));
            }
        }
        (Kind::RoleList, Value::Array(items)) => {
            for item in items {
                match item {
                    Value::String(r) if !r.is_empty() && r.len() <= 63 && !r.contains('\0') => {}
                    other => return Err(bad(format!("{other} is not a role name"))),
                }
            }
        }
        (_, other) => return Err(bad(format!("got {}", type_name(other)))),
    }
    Ok(def)
}

/// A schedule's number as pg_cron reads one: ASCII digits only (Rust's parse would also take a
/// leading `+`, which pg_cron refuses).
fn cron_number(t: &str) -> Option<u32> {
    if t.is_empty() || t.len() > 9 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

/// Check a pg_cron schedule as pg_cron will: a value it refuses would make
/// `flowgate.install_schedules()` fail for every job. A sixth field is refused: pg_cron 1.4
/// accepts it and silently ignores it (so "*/5 * * * * *" would run every five minutes, not
/// seconds). A step follows `*` or a range only (pg_cron refuses "5/15").
pub fn check_schedule(s: &str) -> Result<(), String> {
    let shown = || format!("{:?}", s.chars().take(64).collect::<String>());
    if let Some(n) = s
        .strip_suffix(" seconds")
        .or_else(|| s.strip_suffix(" second"))
    {
        return match cron_number(n.trim()).ok_or(()) {
            Ok(n) if (1..=59).contains(&n) => Ok(()),
            _ => Err(format!("{} is not 1 to 59 seconds", shown())),
        };
    }
    let fields: Vec<&str> = s.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!("{} has {} fields, not 5", shown(), fields.len()));
    }
    const RANGES: [(&str, u32, u32); 5] = [
        ("minute", 0, 59),
        ("hour", 0, 23),
        ("day of month", 1, 31),
        ("month", 1, 12),
        ("day of week", 0, 7),
    ];
    for (field, (name, lo, hi)) in fields.iter().zip(RANGES) {
        let in_range = |t: &str| cron_number(t).is_some_and(|v| (lo..=hi).contains(&v));
        let range = |t: &str| {
            t.split_once('-').is_some_and(|(a, b)| {
                in_range(a) && in_range(b) && cron_number(a) <= cron_number(b)
            })
        };
        let ok = field.split(',').all(|part| match part.split_once('/') {
            Some((base, step)) => {
                (base == "*" || range(base))
                    && cron_number(step).is_some_and(|v| (1..=hi.max(1)).contains(&v))
            }
            None => part == "*" || in_range(part) || range(part),
        });
        if !ok {
            return Err(format!(
                "{} has an invalid {name} field {field:?} ({lo} to {hi})",
                shown()
            ));
        }
    }
    Ok(())
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Typed reads: the stored value if present (already validated by the table trigger), else
/// the default. A stored value of the wrong shape (possible only if the trigger was disabled)
/// is reported rather than silently replaced.
pub fn as_bool(def: &Definition, stored: Option<Value>) -> CoreResult<bool> {
    let v = stored.unwrap_or_else(|| def.default_value());
    v.as_bool().ok_or_else(|| corrupt(def, &v))
}

pub fn as_i64(def: &Definition, stored: Option<Value>) -> CoreResult<i64> {
    let v = stored.unwrap_or_else(|| def.default_value());
    v.as_i64().ok_or_else(|| corrupt(def, &v))
}

pub fn as_text(def: &Definition, stored: Option<Value>) -> CoreResult<String> {
    let v = stored.unwrap_or_else(|| def.default_value());
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| corrupt(def, &v))
}

pub fn as_list(def: &Definition, stored: Option<Value>) -> CoreResult<Vec<String>> {
    let v = stored.unwrap_or_else(|| def.default_value());
    let items = v.as_array().ok_or_else(|| corrupt(def, &v))?;
    items
        .iter()
        .map(|i| {
            i.as_str()
                .map(str::to_owned)
                .ok_or_else(|| corrupt(def, &v))
        })
        .collect()
}

fn corrupt(def: &Definition, v: &Value) -> CoreError {
    CoreError::Internal(format!(
        "setting {} holds {}, expected {}; was the flowgate.settings trigger disabled?",
        def.key,
        type_name(v),
        def.kind.describe()
    ))
}

/// A setting key must be `module.name` in lower case.
pub fn is_well_formed_key(key: &str) -> bool {
    let mut parts = key.split('.');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            p.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

#[cfg(test)]
mod unit_tests;
