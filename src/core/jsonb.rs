//! `serde_json` values to and from `jsonb` datums, built and walked with Postgres' own jsonb
//! API. pgrx's `JsonB` goes through text both ways (`serde_json` prints, `jsonb_in` parses;
//! `jsonb_out` prints, `serde_json` parses); a hot path that hands a row or an answer across
//! pays that on every call. The values are the same either way: numbers become `numeric`
//! (integers directly, other numbers from the text `serde_json` prints for them), and `numeric`
//! becomes the number `serde_json` would read from its text.

use std::ffi::CString;
use std::ptr;

use pgrx::pg_sys::{self, JsonbIteratorToken as Tok};
use serde_json::{Map, Number, Value};

use super::error::{CoreError, CoreResult};

/// Deepest nesting of arrays and objects converted either way: what `serde_json` reads from
/// text (127 levels, its recursion limit), so a value read here is one pgrx's `JsonB` would
/// have read.
/// Postgres stores deeper `jsonb`; a `serde_json::Value` that deep would overflow the stack
/// when it is dropped or deserialized (both recurse), so it is refused with 22023 instead.
pub const MAX_DEPTH: usize = 127;

fn too_deep() -> CoreError {
    CoreError::invalid(
        "jsonb value",
        format!("nested deeper than {MAX_DEPTH} levels of arrays and objects"),
        format!("at most {MAX_DEPTH} levels"),
    )
}

/// A `jsonb` datum of `value`, allocated in the current memory context.
pub fn to_datum(value: &Value) -> CoreResult<pg_sys::Datum> {
    let mut state: *mut pg_sys::JsonbParseState = ptr::null_mut();
    // SAFETY: pushJsonbValue builds the value in the current memory context; the strings it is
    // handed point into `value`, which outlives the JsonbValueToJsonb call that copies them.
    // A scalar at the top is a one-element "raw scalar" array, as jsonb_in stores it.
    unsafe {
        let root = match value {
            Value::Object(_) | Value::Array(_) => push_container(&mut state, value, 1)?,
            scalar => {
                let mut open = empty(pg_sys::jbvType::jbvArray);
                open.val.array.rawScalar = true;
                pg_sys::pushJsonbValue(&mut state, Tok::WJB_BEGIN_ARRAY, &mut open);
                let mut v = scalar_of(scalar)?;
                pg_sys::pushJsonbValue(&mut state, Tok::WJB_ELEM, &mut v);
                pg_sys::pushJsonbValue(&mut state, Tok::WJB_END_ARRAY, ptr::null_mut())
            }
        };
        Ok(pg_sys::Datum::from(pg_sys::JsonbValueToJsonb(root)))
    }
}

/// A `jsonb` datum of the object `map`, allocated in the current memory context.
pub fn object_to_datum(map: &Map<String, Value>) -> CoreResult<pg_sys::Datum> {
    let mut state: *mut pg_sys::JsonbParseState = ptr::null_mut();
    // SAFETY: as in `to_datum`.
    unsafe {
        let root = push_object(&mut state, map, 1)?;
        Ok(pg_sys::Datum::from(pg_sys::JsonbValueToJsonb(root)))
    }
}

/// The value of a non-null `jsonb` datum (detoasted here if it must be).
///
/// # Safety
/// `datum` must be a valid, non-null `jsonb` datum for the duration of the call.
pub unsafe fn from_datum(datum: pg_sys::Datum) -> CoreResult<Value> {
    // SAFETY: the caller guarantees a jsonb datum; detoasting returns it or a flat copy.
    unsafe {
        let jb = pg_sys::pg_detoast_datum(datum.cast_mut_ptr()).cast::<pg_sys::Jsonb>();
        let mut it = pg_sys::JsonbIteratorInit(&mut (*jb).root);
        let mut v = empty(pg_sys::jbvType::jbvNull);
        // Open containers, innermost last, each with the key its next value goes under.
        let mut open: Vec<(Value, Option<String>)> = Vec::new();
        let mut raw_scalar = false;
        loop {
            let tok = pg_sys::JsonbIteratorNext(&mut it, &mut v, false);
            let done = match tok {
                Tok::WJB_DONE => return Err(CoreError::Internal("an empty jsonb value".into())),
                Tok::WJB_BEGIN_ARRAY | Tok::WJB_BEGIN_OBJECT if open.len() >= MAX_DEPTH => {
                    return Err(too_deep())
                }
                Tok::WJB_BEGIN_ARRAY => {
                    raw_scalar = v.val.array.rawScalar;
                    open.push((Value::Array(Vec::new()), None));
                    None
                }
                Tok::WJB_BEGIN_OBJECT => {
                    open.push((Value::Object(Map::new()), None));
                    None
                }
                Tok::WJB_KEY => {
                    let key = string_of(&v)?;
                    if let Some(top) = open.last_mut() {
                        top.1 = Some(key);
                    }
                    None
                }
                Tok::WJB_VALUE | Tok::WJB_ELEM => {
                    let scalar = value_of(&v)?;
                    place(&mut open, scalar)?
                }
                Tok::WJB_END_ARRAY | Tok::WJB_END_OBJECT => {
                    let (mut done, _) = open
                        .pop()
                        .ok_or_else(|| CoreError::Internal("unbalanced jsonb".into()))?;
                    if raw_scalar && open.is_empty() {
                        if let Value::Array(items) = &mut done {
                            done = items.pop().unwrap_or(Value::Null);
                        }
                    }
                    place(&mut open, done)?
                }
                other => return Err(CoreError::Internal(format!("jsonb token {other}"))),
            };
            if let Some(root) = done {
                return Ok(root);
            }
        }
    }
}

/// Put a finished value into the innermost open container; the value itself when none is open
/// (it is the root).
fn place(open: &mut [(Value, Option<String>)], value: Value) -> CoreResult<Option<Value>> {
    match open.last_mut() {
        None => Ok(Some(value)),
        Some((Value::Array(items), _)) => {
            items.push(value);
            Ok(None)
        }
        Some((Value::Object(map), key)) => {
            let key = key
                .take()
                .ok_or_else(|| CoreError::Internal("a jsonb value without its key".into()))?;
            map.insert(key, value);
            Ok(None)
        }
        Some(_) => Err(CoreError::Internal("a jsonb scalar container".into())),
    }
}

fn empty(kind: pg_sys::jbvType::Type) -> pg_sys::JsonbValue {
    // SAFETY: JsonbValue is plain data; all-zero is a valid (null) value of every member.
    let mut v: pg_sys::JsonbValue = unsafe { std::mem::zeroed() };
    v.type_ = kind;
    v
}

/// Push an object or array (and everything in it) onto the parse state; the finished value
/// when it is the outermost.
/// (`depth`: this container's level, 1 at the top.)
unsafe fn push_container(
    state: &mut *mut pg_sys::JsonbParseState,
    value: &Value,
    depth: usize,
) -> CoreResult<*mut pg_sys::JsonbValue> {
    // SAFETY (whole body): see `to_datum`; every pointer handed over lives as long as `value`.
    unsafe {
        match value {
            Value::Object(map) => push_object(state, map, depth),
            Value::Array(items) => {
                if depth > MAX_DEPTH {
                    return Err(too_deep());
                }
                pg_sys::pushJsonbValue(state, Tok::WJB_BEGIN_ARRAY, ptr::null_mut());
                for v in items {
                    push_member(state, Tok::WJB_ELEM, v, depth)?;
                }
                Ok(pg_sys::pushJsonbValue(
                    state,
                    Tok::WJB_END_ARRAY,
                    ptr::null_mut(),
                ))
            }
            _ => Err(CoreError::Internal("not a container".into())),
        }
    }
}

unsafe fn push_object(
    state: &mut *mut pg_sys::JsonbParseState,
    map: &Map<String, Value>,
    depth: usize,
) -> CoreResult<*mut pg_sys::JsonbValue> {
    if depth > MAX_DEPTH {
        return Err(too_deep());
    }
    // SAFETY: see `to_datum`.
    unsafe {
        pg_sys::pushJsonbValue(state, Tok::WJB_BEGIN_OBJECT, ptr::null_mut());
        for (k, v) in map {
            let mut key = string(k)?;
            pg_sys::pushJsonbValue(state, Tok::WJB_KEY, &mut key);
            push_member(state, Tok::WJB_VALUE, v, depth)?;
        }
        Ok(pg_sys::pushJsonbValue(
            state,
            Tok::WJB_END_OBJECT,
            ptr::null_mut(),
        ))
    }
}

/// A member of a container at level `depth`.
unsafe fn push_member(
    state: &mut *mut pg_sys::JsonbParseState,
    tok: Tok::Type,
    value: &Value,
    depth: usize,
) -> CoreResult<()> {
    // SAFETY: see `to_datum`.
    unsafe {
        match value {
            Value::Object(_) | Value::Array(_) => {
                push_container(state, value, depth + 1)?;
            }
            scalar => {
                let mut v = scalar_of(scalar)?;
                pg_sys::pushJsonbValue(state, tok, &mut v);
            }
        }
    }
    Ok(())
}

/// A jsonb string pointing at `s` (not copied: `s` must outlive the jsonb being built).
/// Refused as `jsonb_in` refuses them: a string longer than a jsonb entry holds (its length
/// would spill into the entry's type bits), and the NUL character, which jsonb does not store
/// (a dump holding one would not load back).
fn string(s: &str) -> CoreResult<pg_sys::JsonbValue> {
    /// JENTRY_OFFLENMASK: the longest string a jsonb entry holds.
    const LONGEST: usize = 0x0FFF_FFFF;
    if s.len() > LONGEST {
        return Err(CoreError::invalid(
            "JSON string",
            format!("{} bytes long", s.len()),
            format!("at most {LONGEST} bytes, as jsonb stores"),
        ));
    }
    if s.contains('\0') {
        return Err(CoreError::InvalidJson {
            what: "JSON string".into(),
            problem: "it holds the NUL character (\\u0000), which jsonb does not store".into(),
        });
    }
    let len = i32::try_from(s.len())
        .map_err(|_| CoreError::Internal("a JSON string over 2 GB".into()))?;
    let mut v = empty(pg_sys::jbvType::jbvString);
    v.val.string = pg_sys::JsonbValue__bindgen_ty_1__bindgen_ty_1 {
        len,
        val: s.as_ptr().cast_mut().cast(),
    };
    Ok(v)
}

fn scalar_of(value: &Value) -> CoreResult<pg_sys::JsonbValue> {
    Ok(match value {
        Value::Null => empty(pg_sys::jbvType::jbvNull),
        Value::Bool(b) => {
            let mut v = empty(pg_sys::jbvType::jbvBool);
            v.val.boolean = *b;
            v
        }
        Value::String(s) => string(s)?,
        Value::Number(n) => {
            let mut v = empty(pg_sys::jbvType::jbvNumeric);
            v.val.numeric = numeric(n)?;
            v
        }
        _ => return Err(CoreError::Internal("not a scalar".into())),
    })
}

fn numeric(n: &Number) -> CoreResult<pg_sys::Numeric> {
    if let Some(i) = n.as_i64() {
        // SAFETY: builds a numeric in the current memory context.
        return Ok(unsafe { pg_sys::int64_to_numeric(i) });
    }
    // Other numbers from their JSON text, as jsonb_in would read them.
    let text = CString::new(n.to_string())
        .map_err(|_| CoreError::Internal("a number's text held NUL".into()))?;
    // SAFETY: numeric_in takes (cstring, typelem oid, typmod) and returns a numeric datum.
    let d = unsafe {
        pgrx::direct_function_call::<pg_sys::Datum>(
            pg_sys::numeric_in,
            &[
                pgrx::IntoDatum::into_datum(text.as_c_str()),
                pgrx::IntoDatum::into_datum(pg_sys::InvalidOid),
                pgrx::IntoDatum::into_datum(-1i32),
            ],
        )
    }
    .ok_or_else(|| CoreError::Internal("numeric_in returned NULL".into()))?;
    Ok(d.cast_mut_ptr())
}

/// How many characters the numbers of a non-null `jsonb` datum print as (`numeric_out`), read
/// from each number's header without printing it; counting stops once past `cap`. A number is
/// stored in a few bytes whatever its magnitude (`1e131000` takes 16 and prints as 131,001
/// characters), so a caller's value is measured this way before it is printed at all.
///
/// # Safety
/// `datum` must be a valid, non-null `jsonb` datum for the duration of the call.
pub unsafe fn printed_numbers_width(datum: pg_sys::Datum, cap: usize) -> usize {
    // SAFETY: the caller guarantees a jsonb datum; detoasting returns it or a flat copy.
    unsafe {
        let jb = pg_sys::pg_detoast_datum(datum.cast_mut_ptr()).cast::<pg_sys::Jsonb>();
        let mut it = pg_sys::JsonbIteratorInit(&mut (*jb).root);
        let mut v = empty(pg_sys::jbvType::jbvNull);
        let mut width = 0usize;
        loop {
            match pg_sys::JsonbIteratorNext(&mut it, &mut v, false) {
                Tok::WJB_DONE => return width,
                Tok::WJB_VALUE | Tok::WJB_ELEM if v.type_ == pg_sys::jbvType::jbvNumeric => {
                    width = width.saturating_add(numeric_width(v.val.numeric));
                    if width > cap {
                        return width;
                    }
                }
                _ => {}
            }
        }
    }
}

/// The most characters `numeric_out` prints for `n`, from its header in Postgres' numeric
/// format (a 16-bit header, short or long form, then base-10000 digits): a sign, the integer
/// part's digits (four per base-10000 digit up to its weight), and the display scale's.
///
/// # Safety
/// `n` must point to a valid, detoasted numeric.
unsafe fn numeric_width(n: pg_sys::Numeric) -> usize {
    // SAFETY: a numeric varlena: its payload starts with the header and holds `len` bytes.
    let (len, data) = unsafe {
        let v = n.cast::<pg_sys::varlena>();
        (
            pgrx::varlena::varsize_any_exhdr(v),
            pgrx::varlena::vardata_any(v).cast::<u8>(),
        )
    };
    if len < 2 {
        return 1;
    }
    // SAFETY: at least the two header bytes are there (checked above), four in the long form.
    let header = unsafe { u16::from_ne_bytes([*data, *data.add(1)]) };
    let (weight, dscale, header_len) = match header & 0xC000 {
        // NaN and the infinities (not in jsonb, which refuses them): "-Infinity" at most.
        0xC000 => return 9,
        // Short form: dscale in bits 7-12, a 7-bit signed weight in bits 0-6.
        0x8000 => {
            let low = i32::from(header & 0x003F);
            let weight = if header & 0x0040 != 0 { low - 64 } else { low };
            (weight, usize::from((header & 0x1F80) >> 7), 2)
        }
        // Long form: dscale in the low 14 bits, then a 16-bit signed weight.
        _ if len >= 4 => {
            // SAFETY: len >= 4: the weight's two bytes are there.
            let weight = i32::from(unsafe { i16::from_ne_bytes([*data.add(2), *data.add(3)]) });
            (weight, usize::from(header & 0x3FFF), 4)
        }
        _ => return 1,
    };
    let digits = (len - header_len) / 2;
    let integer = if digits == 0 || weight < 0 {
        1
    } else {
        (usize::try_from(weight).unwrap_or(0) + 1) * 4
    };
    let fraction = if dscale > 0 { 1 + dscale } else { 0 };
    1 + integer + fraction
}

fn string_of(v: &pg_sys::JsonbValue) -> CoreResult<String> {
    // SAFETY: a jbvString's bytes (len of them) live in the jsonb being walked.
    let bytes = unsafe {
        let s = v.val.string;
        std::slice::from_raw_parts(s.val.cast::<u8>(), usize::try_from(s.len).unwrap_or(0))
    };
    String::from_utf8(bytes.to_vec())
        .map_err(|_| CoreError::Internal("a jsonb string that is not UTF-8".into()))
}

fn value_of(v: &pg_sys::JsonbValue) -> CoreResult<Value> {
    // SAFETY: the member read is the one `type_` names.
    unsafe {
        Ok(match v.type_ {
            pg_sys::jbvType::jbvNull => Value::Null,
            pg_sys::jbvType::jbvBool => Value::Bool(v.val.boolean),
            pg_sys::jbvType::jbvString => Value::String(string_of(v)?),
            pg_sys::jbvType::jbvNumeric => {
                let text = pgrx::direct_function_call::<&std::ffi::CStr>(
                    pg_sys::numeric_out,
                    &[Some(pg_sys::Datum::from(v.val.numeric))],
                )
                .ok_or_else(|| CoreError::Internal("numeric_out returned NULL".into()))?;
                let text = text.to_str().map_err(|_| {
                    CoreError::Internal("a numeric printed as something not UTF-8".into())
                })?;
                Value::Number(serde_json::from_str::<Number>(text).map_err(|e| {
                    CoreError::Internal(format!("numeric {text} as a JSON number: {e}"))
                })?)
            }
            other => return Err(CoreError::Internal(format!("jsonb value of type {other}"))),
        })
    }
}
