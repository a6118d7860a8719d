//! Hostile-sized arguments. A `jsonb` argument arrives as a Postgres datum; converting it to a
//! `serde_json::Value` costs several times its size in memory, so a 30 MB argument would cost
//! gigabytes before any check ran. [`RawJsonb`] takes the argument without touching it: its size
//! comes from the varlena header (or the toast pointer) without detoasting, so a function checks
//! the caller's permission first, then the size against a documented limit, and converts last.

use pgrx::callconv::{Arg, ArgAbi};
use pgrx::nullable::Nullable;
use pgrx::prelude::*;
use pgrx::FromDatum;
use serde_json::Value;

use super::error::{CoreError, CoreResult};

/// The default limit of a jsonb argument (a configuration, a payload, an event body), as stored.
pub const MAX_JSON_ARG_BYTES: usize = 64 * 1024;
/// The limit of a reported HTTP response body, as stored.
pub const MAX_RESPONSE_ARG_BYTES: usize = 1024 * 1024;
/// The limit of a reported error text.
pub const MAX_ERROR_TEXT_BYTES: usize = 8 * 1024;

/// A `jsonb` function argument, not yet detoasted or converted. A NULL that reaches a required
/// (non-`Option`) argument of a non-STRICT function is kept as "absent" and refused with 22023
/// by [`RawJsonb::value`], never a panic.
pub struct RawJsonb {
    datum: Option<pg_sys::Datum>,
}

impl FromDatum for RawJsonb {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _typoid: pg_sys::Oid,
    ) -> Option<Self> {
        (!is_null).then_some(RawJsonb { datum: Some(datum) })
    }
}

// SAFETY: the argument is declared `jsonb` (below), so a non-null datum is a jsonb varlena that
// lives for the whole call; nothing is read from it here.
unsafe impl<'fcx> ArgAbi<'fcx> for RawJsonb {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        // SAFETY: the caller upholds ArgAbi's contract (a jsonb datum, or NULL).
        unsafe { arg.unbox_arg_using_from_datum() }.unwrap_or(RawJsonb { datum: None })
    }

    unsafe fn unbox_nullable_arg(arg: Arg<'_, 'fcx>) -> Nullable<Self> {
        // SAFETY: as above.
        unsafe { arg.unbox_arg_using_from_datum() }.into()
    }
}

pgrx::impl_sql_translatable!(RawJsonb, arg_only = "jsonb");

impl RawJsonb {
    /// The size in bytes of the jsonb value once detoasted, read without detoasting it (0 for
    /// an absent value).
    pub fn size(&self) -> usize {
        // SAFETY: `datum` is a valid (possibly toasted or compressed) varlena for the call;
        // toast_raw_datum_size only reads its header or toast pointer.
        self.datum
            .map_or(0, |d| unsafe { pg_sys::toast_raw_datum_size(d) })
    }

    /// The jsonb datum as the caller passed it (possibly toasted), valid for the call; None for
    /// an absent value. A statement of the call may take it as a `jsonb` argument as it is.
    pub fn datum(&self) -> Option<pg_sys::Datum> {
        self.datum
    }

    /// Convert the value, refusing it with 22023 when it is larger than `limit` bytes, nested
    /// deeper than [`MAX_JSON_DEPTH`] levels, or holds a number a 64-bit float would round.
    pub fn value(self, what: &str, limit: usize) -> CoreResult<Value> {
        self.read(what, limit, true)
    }

    /// [`RawJsonb::value`] for a caller that keeps the argument itself (its [`RawJsonb::datum`])
    /// and reads the JSON only to check and route it (an ops envelope, logged as sent): a
    /// number a 64-bit float would round is read rounded instead of refused.
    pub fn value_as_sent(self, what: &str, limit: usize) -> CoreResult<Value> {
        self.read(what, limit, false)
    }

    fn read(self, what: &str, limit: usize, exact_numbers: bool) -> CoreResult<Value> {
        check_size(what, self.size(), limit)?;
        let datum = required(what, self.datum)?;
        // Numbers print far wider than they are stored (`1e131000`: 16 bytes, 131,001
        // characters), so a value whose numbers alone would print past the limit is refused
        // before anything is printed: a 64 kB argument cannot cost gigabytes of text.
        // SAFETY: a non-null jsonb datum valid for the call (see FromDatum above).
        let numbers = unsafe { super::jsonb::printed_numbers_width(datum, limit) };
        if numbers > limit {
            return Err(CoreError::invalid(
                what,
                format!("its numbers print as more than {limit} characters"),
                format!("at most {limit} bytes of JSON"),
            ));
        }
        // SAFETY: a non-null jsonb datum valid for the call (see FromDatum above); jsonb_out
        // detoasts it and returns a palloc'd C string, copied before anything else runs.
        let text = unsafe {
            pgrx::direct_function_call::<&core::ffi::CStr>(pg_sys::jsonb_out, &[Some(datum)])
                .map(|c| c.to_string_lossy().into_owned())
        }
        .ok_or_else(|| CoreError::Internal(format!("{what}: jsonb_out returned NULL")))?;
        // A number read as a 64-bit float must be the number sent: a customer's account id of
        // 21 digits would otherwise be stored as another number, without a word.
        if let Some(n) = inexact_number(&text).filter(|_| exact_numbers) {
            let shown: String = n.chars().take(40).collect();
            return Err(CoreError::invalid(
                what,
                format!("the number {shown} does not fit a 64-bit float exactly"),
                "JSON whose numbers fit a 64-bit float exactly (send a longer number as a string)",
            ));
        }
        // Postgres printed the text, so it is valid JSON: what cannot be read is a value beyond
        // what JSON here holds (a number past a 64-bit float, such as 1e400), a bad value
        // (22023) rather than bad text.
        parse_bounded(what, &text).map_err(|e| match e {
            CoreError::InvalidJson { what, problem } => {
                CoreError::invalid(what, problem, "JSON whose numbers fit a 64-bit float")
            }
            other => other,
        })
    }
}

/// The first number of JSON text (as Postgres prints it) that a 64-bit float does not hold
/// exactly, which `serde_json` would read rounded (`123456789012345678901` as
/// `123456789012345680000`, 20 significant decimal digits as 17); None when every number is
/// exact. Numbers beyond a float's range are left to the parser, which refuses them.
pub fn inexact_number(text: &str) -> Option<&str> {
    let b = text.as_bytes();
    let (mut i, mut in_string, mut escaped) = (0, false, false);
    while i < b.len() {
        let c = b[i];
        i += 1;
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else if c == b'"' {
            in_string = true;
        } else if c == b'-' || c.is_ascii_digit() {
            let start = i - 1;
            while i < b.len() && matches!(b[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') {
                i += 1;
            }
            let number = &text[start..i];
            if !exact_as_float(number) {
                return Some(number);
            }
        }
    }
    None
}

/// Whether a JSON number reads as a 64-bit integer or float of the same value.
fn exact_as_float(number: &str) -> bool {
    if number.parse::<i64>().is_ok() || number.parse::<u64>().is_ok() {
        return true;
    }
    match number.parse::<f64>() {
        Ok(f) if f.is_finite() => decimal(number) == decimal(&f.to_string()),
        _ => true,
    }
}

/// A decimal number as (negative, significant digits, exponent): the value is
/// 0.<digits> x 10^exponent, with no leading or trailing zero digit (zero: no digits).
fn decimal(number: &str) -> Option<(bool, String, i64)> {
    let (negative, unsigned) = match number.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, number),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(p) => (&unsigned[..p], unsigned[p + 1..].parse::<i64>().ok()?),
        None => (unsigned, 0),
    };
    let (integer, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all = format!("{integer}{fraction}");
    let significant = all.trim_start_matches('0');
    let point = i64::try_from(integer.len())
        .ok()?
        .checked_add(exponent)?
        .checked_sub(i64::try_from(all.len() - significant.len()).ok()?)?;
    let digits = significant.trim_end_matches('0');
    if digits.is_empty() {
        return Some((false, String::new(), 0));
    }
    Some((negative, digits.to_owned(), point))
}

/// Deepest nesting of objects and arrays accepted in a JSON argument.
pub const MAX_JSON_DEPTH: usize = 64;

/// Parse JSON text whose nesting is at most [`MAX_JSON_DEPTH`]: 22023 otherwise, never a panic.
pub fn parse_bounded(what: &str, text: &str) -> CoreResult<Value> {
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for b in text.bytes() {
        match (in_string, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (true, false, _) => {}
            (false, _, b'"') => in_string = true,
            (false, _, b'[' | b'{') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (false, _, b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if deepest > MAX_JSON_DEPTH {
        return Err(CoreError::invalid(
            what,
            format!("it is nested {deepest} levels deep"),
            format!("JSON nested at most {MAX_JSON_DEPTH} levels"),
        ));
    }
    serde_json::from_str(text).map_err(|e| CoreError::InvalidJson {
        what: what.into(),
        problem: super::error::json_problem(&e),
    })
}

/// 22023 unless `size` bytes fit in `limit`.
pub fn check_size(what: &str, size: usize, limit: usize) -> CoreResult<()> {
    if size > limit {
        return Err(CoreError::invalid(
            what,
            format!("it is {size} bytes"),
            format!("at most {limit} bytes of JSON"),
        ));
    }
    Ok(())
}

/// An optional `jsonb` argument, converted after the size check; `None` stays `None`.
pub fn optional(arg: Option<RawJsonb>, what: &str, limit: usize) -> CoreResult<Option<Value>> {
    arg.map(|a| a.value(what, limit)).transpose()
}

/// A required argument of a function that is not STRICT (it has optional arguments): NULL is
/// 22023 naming the argument, never a pgrx panic (XX000).
pub fn required<T>(what: &str, value: Option<T>) -> CoreResult<T> {
    value.ok_or_else(|| {
        CoreError::invalid(
            what,
            "it is NULL",
            "a value; only the arguments documented as optional may be NULL",
        )
    })
}

/// 22023 unless a text argument of `len` bytes fits in `limit`. Text arrives detoasted, so this
/// bounds what is parsed or stored, not what Postgres already read.
pub fn check_text_size(what: &str, text: &str, limit: usize) -> CoreResult<()> {
    if text.len() > limit {
        return Err(CoreError::invalid(
            what,
            format!("it is {} bytes", text.len()),
            format!("at most {limit} bytes"),
        ));
    }
    Ok(())
}

/// A JSON value's kind, for saying what was sent instead: null, boolean, number, string, array,
/// object.
pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;
    use crate::core::error::SqlError;

    #[test]
    fn sizes_over_the_limit_are_22023_with_the_limit_in_the_hint() {
        assert!(check_size("payload", 16, 16).is_ok());
        let e = check_size("payload", 17, 16).unwrap_err();
        assert_eq!(e.sqlstate(), "22023");
        assert_eq!(e.hint().unwrap(), "allowed: at most 16 bytes of JSON");
        assert!(e.to_string().contains("17 bytes"));
        assert_eq!(
            check_text_size("text", "abc", 2).unwrap_err().sqlstate(),
            "22023"
        );
    }

    #[test]
    fn nesting_is_bounded_and_strings_do_not_count() {
        let ok = format!(
            "{}{}",
            "[".repeat(MAX_JSON_DEPTH),
            "]".repeat(MAX_JSON_DEPTH)
        );
        assert!(parse_bounded("v", &ok).is_ok());
        let deep = format!("[{ok}]");
        let e = parse_bounded("v", &deep).unwrap_err();
        assert_eq!(e.sqlstate(), "22023");
        assert!(e.to_string().contains("65 levels"));
        // Brackets and escaped quotes inside strings are text, not nesting.
        let text = format!(r#"{{"a": "{}\"{}"}}"#, "[".repeat(500), "{".repeat(500));
        assert_eq!(
            parse_bounded("v", &text).unwrap()["a"]
                .as_str()
                .unwrap()
                .len(),
            1001
        );
        // 100,000 levels neither overflow the stack nor panic.
        let huge = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(parse_bounded("v", &huge).unwrap_err().sqlstate(), "22023");
    }

    #[test]
    fn numbers_a_float_holds_exactly_pass_and_others_are_named() {
        for ok in [
            r#"{"a": 1, "b": -0, "c": 0.1, "d": 19.99, "e": 1.50, "f": 9223372036854775807}"#,
            r#"[18446744073709551615, 0.30000000000000004, 100000000000000000000, 1e21, 5e-324]"#,
            r#"{"s": "123456789012345678901", "t": "a \"12345678901234567890123\" b"}"#,
        ] {
            assert_eq!(inexact_number(ok), None, "{ok}");
        }
        assert_eq!(
            inexact_number(r#"{"account": 123456789012345678901}"#),
            Some("123456789012345678901")
        );
        assert_eq!(
            inexact_number(r#"[1, 3.14159265358979323846]"#),
            Some("3.14159265358979323846")
        );
        assert_eq!(
            inexact_number("-18446744073709551617"),
            Some("-18446744073709551617")
        );
        // Beyond a float's range: left to the parser (22023 there).
        assert_eq!(inexact_number("[1e400]"), None);
        // An exponent past i64 neither overflows nor passes.
        assert_eq!(
            inexact_number("[0e9223372036854775807]"),
            Some("0e9223372036854775807")
        );
    }
}
