//! A `jsonb` answer handed back as the value a statement built. pgrx's `JsonB` prints a
//! `serde_json::Value` and parses the text again with `jsonb_in`; a hot path whose answer a
//! statement can build (`jsonb_build_object` in its last SELECT) returns that datum as it is.

use pgrx::callconv::{BoxRet, FcInfo};
use pgrx::pg_sys;
use pgrx::spi::SpiTupleTable;
use serde_json::Value;

use super::error::{CoreError, CoreResult};

/// A non-null `jsonb` datum that lives in the calling function's memory context.
pub struct JsonbAnswer(pg_sys::Datum);

impl JsonbAnswer {
    /// Column `ordinal` (1-based) of the current row of `table` (positioned with `first()`),
    /// which must be the result of a statement of the function's own `Spi::connect` (the
    /// outermost): the value is copied out of SPI's memory into the context that was current
    /// when that connection was opened, the function's own. `None` when there is no row or the
    /// value is NULL.
    ///
    /// Inside a nested connection that context would be the outer connection's, freed when it
    /// closes, before Postgres reads the answer: the copy is checked and an internal error
    /// (XX000) raised instead of an answer that points at freed memory.
    pub fn from_current(table: &SpiTupleTable<'_>, ordinal: usize) -> CoreResult<Option<Self>> {
        if table.is_empty() {
            return Ok(None);
        }
        let jsonb = table.column_type_oid(ordinal)?;
        if jsonb != pg_sys::PgOid::BuiltIn(pg_sys::PgBuiltInOids::JSONBOID) {
            return Err(CoreError::Internal(format!(
                "column {ordinal} of an answer is not jsonb"
            )));
        }
        let Some(datum) = table.get_datum_by_ordinal(ordinal)? else {
            return Ok(None);
        };
        // SAFETY: `datum` is a non-null jsonb varlena of the current SPI result (checked above).
        // pg_detoast_datum returns it with a plain 4-byte header (copying it in SPI memory when
        // it was short, compressed or toasted), and SPI_datumTransfer copies that flat value into
        // the memory context that was current at SPI_connect, which outlives the connection.
        let owned = unsafe {
            let flat = pg_sys::pg_detoast_datum(datum.cast_mut_ptr());
            pg_sys::SPI_datumTransfer(pg_sys::Datum::from(flat), false, -1)
        };
        // SAFETY: `owned` was just palloc'd by SPI_datumTransfer (a chunk of a valid context).
        if unsafe { in_spi_memory(owned.cast_mut_ptr()) } {
            return Err(CoreError::Internal(
                "an answer was read in a nested SPI connection, whose memory ends with the outer one".into(),
            ));
        }
        Ok(Some(JsonbAnswer(owned)))
    }

    /// An answer built in Rust (with Postgres' jsonb builder, `super::jsonb`), allocated in
    /// the current memory context: call it outside any `Spi::connect`, whose memory is freed
    /// when the connection ends (see [`Answer`]).
    pub fn from_value(value: Value) -> CoreResult<Self> {
        super::jsonb::to_datum(&value).map(JsonbAnswer)
    }

    /// The datum, for a statement of the same call to take as a `jsonb` argument.
    pub fn datum(&self) -> pg_sys::Datum {
        self.0
    }
}

/// Whether a palloc'd chunk lives in an SPI connection's own memory ("SPI Proc" or "SPI Exec",
/// Postgres' names for them), which the connection's end frees.
///
/// # Safety
/// `chunk` must point at a live palloc'd chunk.
unsafe fn in_spi_memory(chunk: *mut std::ffi::c_void) -> bool {
    // SAFETY: the caller's promise; a valid context always has a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr((*pg_sys::GetMemoryChunkContext(chunk)).name) };
    name == c"SPI Proc" || name == c"SPI Exec"
}

/// What a hot path answers from inside its `Spi::connect`: the datum its statement built, or a
/// value built in Rust, converted once the connection is closed.
pub enum Answer {
    Built(JsonbAnswer),
    Value(Value),
}

impl Answer {
    /// The function's result; outside any `Spi::connect`.
    pub fn into_jsonb(self) -> CoreResult<JsonbAnswer> {
        match self {
            Answer::Built(j) => Ok(j),
            Answer::Value(v) => JsonbAnswer::from_value(v),
        }
    }
}

// SAFETY: the datum is a jsonb allocated in the memory context of the function call (see the
// constructors), valid until Postgres has consumed the function's result; it is never null.
unsafe impl BoxRet for JsonbAnswer {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> pgrx::datum::Datum<'fcx> {
        // SAFETY: as above: a valid jsonb datum for the function's return.
        unsafe { fcinfo.return_raw_datum(self.0) }
    }
}

pgrx::impl_sql_translatable!(JsonbAnswer, "jsonb");
