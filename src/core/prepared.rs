//! A per-backend cache of prepared SPI statements, so hot paths (the event-store runner,
//! settings, lookups) parse and plan each statement once per connection instead of per call.
//! Plans live in Postgres' plan cache (SPI_keepplan), which re-plans them after DDL.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::PgOid;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiTupleTable};
use serde_json::Value;

use super::error::CoreResult;

/// One prepared form of a statement text: for writing or reading, with these parameter types.
struct Prepared {
    writes: bool,
    types: Vec<u32>,
    stmt: Rc<OwnedPreparedStatement>,
}

thread_local! {
    /// Statement text -> its prepared forms. Looked up by the text itself (no key is built per
    /// call); a statement in use is shared (`Rc`), so a nested call (a trigger or an RLS policy
    /// calling back into flowgate) that prepares or clears never frees it under its runner.
    static STATEMENTS: RefCell<HashMap<String, Vec<Prepared>>> = RefCell::new(HashMap::new());
}

/// Most distinct statement texts kept; beyond it the cache starts over (it only ever holds
/// flowgate's own statement shapes, so this is a safety net, not a working limit).
const CAPACITY: usize = 512;

/// Run a statement that writes (or locks rows), prepared once per backend (per parameter
/// types: the same text with a differently typed argument is another plan).
pub fn run<'conn>(
    client: &mut SpiClient<'conn>,
    sql: &str,
    types: &[PgOid],
    args: &[DatumWithOid<'_>],
) -> CoreResult<SpiTupleTable<'conn>> {
    let stmt = match cached(sql, true, types) {
        Some(stmt) => stmt,
        None => keep(sql, true, types, client.prepare_mut(sql, types)?.keep()),
    };
    Ok(client.update(&*stmt, None, args)?)
}

/// Run a read-only statement, prepared once per backend. Unlike [`run`] it never assigns a
/// transaction id, so reads from STABLE functions stay cheap.
pub fn query<'conn>(
    client: &SpiClient<'conn>,
    sql: &str,
    types: &[PgOid],
    args: &[DatumWithOid<'_>],
) -> CoreResult<SpiTupleTable<'conn>> {
    let stmt = match cached(sql, false, types) {
        Some(stmt) => stmt,
        None => keep(sql, false, types, client.prepare(sql, types)?.keep()),
    };
    Ok(client.select(&*stmt, None, args)?)
}

/// The parameter types of a call, taken from its arguments (a typed NULL included).
fn types_of(args: &[DatumWithOid<'_>]) -> Vec<PgOid> {
    args.iter().map(|a| PgOid::from(a.oid())).collect()
}

/// [`run`] with the parameter types taken from the arguments.
pub fn exec<'conn>(
    client: &mut SpiClient<'conn>,
    sql: &str,
    args: &[DatumWithOid<'_>],
) -> CoreResult<SpiTupleTable<'conn>> {
    run(client, sql, &types_of(args), args)
}

/// [`query`] with the parameter types taken from the arguments.
pub fn read<'conn>(
    client: &SpiClient<'conn>,
    sql: &str,
    args: &[DatumWithOid<'_>],
) -> CoreResult<SpiTupleTable<'conn>> {
    query(client, sql, &types_of(args), args)
}

fn same_types(kept: &[u32], types: &[PgOid]) -> bool {
    kept.len() == types.len()
        && kept
            .iter()
            .zip(types)
            .all(|(k, t)| *k == t.value().to_u32())
}

fn cached(sql: &str, writes: bool, types: &[PgOid]) -> Option<Rc<OwnedPreparedStatement>> {
    STATEMENTS.with(|c| {
        c.borrow()
            .get(sql)?
            .iter()
            .find(|p| p.writes == writes && same_types(&p.types, types))
            .map(|p| Rc::clone(&p.stmt))
    })
}

fn keep(
    sql: &str,
    writes: bool,
    types: &[PgOid],
    stmt: OwnedPreparedStatement,
) -> Rc<OwnedPreparedStatement> {
    let stmt = Rc::new(stmt);
    STATEMENTS.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= CAPACITY {
            c.clear();
        }
        c.entry(sql.to_owned()).or_default().push(Prepared {
            writes,
            types: types.iter().map(|t| t.value().to_u32()).collect(),
            stmt: Rc::clone(&stmt),
        });
    });
    stmt
}

/// Argument type shorthands.
pub const BOOL: PgOid = PgOid::BuiltIn(pgrx::pg_sys::PgBuiltInOids::BOOLOID);
pub const INT4: PgOid = PgOid::BuiltIn(pgrx::pg_sys::PgBuiltInOids::INT4OID);
pub const TEXT: PgOid = PgOid::BuiltIn(pgrx::pg_sys::PgBuiltInOids::TEXTOID);
pub const TEXT_ARRAY: PgOid = PgOid::BuiltIn(pgrx::pg_sys::PgBuiltInOids::TEXTARRAYOID);
pub const JSONB: PgOid = PgOid::BuiltIn(pgrx::pg_sys::PgBuiltInOids::JSONBOID);
pub const UUID: PgOid = PgOid::BuiltIn(pgrx::pg_sys::PgBuiltInOids::UUIDOID);

/// The first column of the first row as JSON, `None` when there is no row (pgrx 0.18 raises on
/// an empty table otherwise) or the value is NULL.
pub fn first_json(table: SpiTupleTable<'_>) -> CoreResult<Option<Value>> {
    if table.is_empty() {
        return Ok(None);
    }
    json_at(&table.first(), 1)
}

/// Column `ordinal` (1-based, `jsonb`) of the current row of `table` as JSON, read from the
/// datum (`super::jsonb`), not from its text.
pub fn json_at(table: &SpiTupleTable<'_>, ordinal: usize) -> CoreResult<Option<Value>> {
    if table.column_type_oid(ordinal)? != JSONB {
        return Err(super::error::CoreError::Internal(format!(
            "column {ordinal} is not jsonb"
        )));
    }
    match table.get_datum_by_ordinal(ordinal)? {
        None => Ok(None),
        // SAFETY: a non-null jsonb datum of the current SPI result, valid while `table` is.
        Some(d) => unsafe { super::jsonb::from_datum(d) }.map(Some),
    }
}

/// A `jsonb` argument built from `value` (`super::jsonb`), not printed and parsed again.
pub fn jsonb_arg(value: &Value) -> CoreResult<DatumWithOid<'static>> {
    let d = super::jsonb::to_datum(value)?;
    // SAFETY: a jsonb datum allocated in the current memory context, which lasts at least as
    // long as the statement it is handed to.
    Ok(unsafe { DatumWithOid::new(d, pgrx::pg_sys::JSONBOID) })
}

/// [`jsonb_arg`] of a JSON object.
pub fn object_arg(map: &serde_json::Map<String, Value>) -> CoreResult<DatumWithOid<'static>> {
    let d = super::jsonb::object_to_datum(map)?;
    // SAFETY: as in `jsonb_arg`.
    Ok(unsafe { DatumWithOid::new(d, pgrx::pg_sys::JSONBOID) })
}

/// The first column of the first row as text, `None` when there is no row.
pub fn first_text(table: SpiTupleTable<'_>) -> CoreResult<Option<String>> {
    if table.is_empty() {
        return Ok(None);
    }
    Ok(table.first().get_one::<String>()?)
}

/// A `uuid` argument as its canonical text, for binding into text-typed statements.
pub fn uuid_text(u: pgrx::Uuid) -> String {
    uuid::Uuid::from_bytes(*u.as_bytes())
        .hyphenated()
        .to_string()
}
