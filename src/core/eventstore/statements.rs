//! The statements of the event-store runner, built from each table's shape (its columns and
//! triggers, read from the relation cache) and kept per backend: a workflow's statements are
//! the same few texts on every call. What was built is dropped when Postgres invalidates the
//! relation cache entry of a table the runner writes (a column or trigger added, the table
//! dropped or renamed), or the whole cache, and rebuilt on the next call, after the write's
//! lock is taken (which processes the invalidations sent before it).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use pgrx::prelude::*;
use serde_json::{Map, Value};

use super::Tables;
use crate::core::error::CoreError;
use crate::core::workflow::{column_list, Ident, QualifiedName};

/// A workflow's tables, named and quoted once per backend.
pub(super) struct Sql {
    projection: QualifiedName,
    events: QualifiedName,
    id: Ident,
    id_type: Ident,
    touch: Option<Ident>,
    /// What every update's text depends on besides its columns: the table, the id column, its
    /// type and the touched column (see [`Sql::update_key`]).
    update_kind: String,
    /// The projection lock, and the look for an idempotency key.
    lock: String,
    find_key: String,
}

thread_local! {
    /// Bumped by every relation cache invalidation this backend processes of a table the
    /// runner writes (or of every relation: a cache reset): what was built under an older
    /// generation is built again.
    static GENERATION: Cell<u64> = const { Cell::new(0) };
    /// The tables whose shapes were read (their OIDs): invalidations of other relations
    /// (statistics updates, other sessions' temporary tables) keep what was built.
    static WATCHED: RefCell<HashSet<pg_sys::Oid>> = RefCell::new(HashSet::new());
    static LISTENING: Cell<bool> = const { Cell::new(false) };
    /// Each workflow's tables, by every name in its `Tables` (constants): two workflows that
    /// share a projection may keep their events elsewhere.
    static TABLES: RefCell<HashMap<TablesKey, Rc<Sql>>> = RefCell::new(HashMap::new());
    /// Each table's shape, by quoted name.
    static SHAPES: RefCell<HashMap<String, KeptShape>> = RefCell::new(HashMap::new());
    /// Each write's text by what it depends on (see [`Sql::text`]), with its generation.
    static TEXTS: RefCell<HashMap<String, (u64, Rc<str>)>> = RefCell::new(HashMap::new());
}

/// A workflow's `Tables`, every field.
type TablesKey = [Option<&'static str>; 6];

fn tables_key(t: &Tables) -> TablesKey {
    // Every field named: a field added to `Tables` does not compile until it is keyed too.
    let Tables {
        projection,
        id_column,
        id_type,
        events,
        entity_column,
        touch_column,
    } = *t;
    [
        Some(projection),
        Some(id_column),
        Some(id_type),
        Some(events),
        Some(entity_column),
        touch_column,
    ]
}

/// A table's shape as kept: the generation it was read in, the table's OID and the shape.
type KeptShape = (u64, pg_sys::Oid, Rc<Shape>);

/// Most write texts kept (a workflow has a handful per table: its sets of changed columns);
/// beyond it the cache starts over.
const TEXTS_KEPT: usize = 256;

#[pg_guard]
unsafe extern "C-unwind" fn relation_invalidated(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    // Never fails, whatever the runner is doing when Postgres processes invalidations: a
    // watched set it cannot read right now counts as watching everything.
    let unrelated = relid != pg_sys::InvalidOid
        && WATCHED
            .try_with(|w| w.try_borrow().is_ok_and(|w| !w.contains(&relid)))
            .unwrap_or(false);
    if !unrelated {
        let _ = GENERATION.try_with(|g| g.set(g.get().wrapping_add(1)));
    }
}

fn listen() {
    if !LISTENING.with(Cell::get) {
        // SAFETY: registers a callback for this backend's life (Postgres allows a few per
        // backend; this is done once).
        unsafe {
            pg_sys::CacheRegisterRelcacheCallback(
                Some(relation_invalidated),
                pg_sys::Datum::from(0),
            )
        };
        LISTENING.with(|l| l.set(true));
    }
}

fn generation() -> u64 {
    GENERATION.with(Cell::get)
}

impl Sql {
    /// The workflow's tables, named and quoted on its first use in the backend.
    pub(super) fn for_tables(t: &Tables) -> Result<Rc<Sql>, CoreError> {
        let key = tables_key(t);
        if let Some(sql) = TABLES.with(|c| c.borrow().get(&key).cloned()) {
            return Ok(sql);
        }
        let projection = QualifiedName::parse(t.projection)?;
        let events = QualifiedName::parse(t.events)?;
        let id = Ident::new(t.id_column)?;
        let id_type = Ident::new(t.id_type)?;
        let entity = Ident::new(t.entity_column)?;
        let lock = format!(
            "SELECT to_jsonb(p) FROM {} p WHERE {} = $1::{} FOR UPDATE",
            projection.quoted(),
            id.quoted(),
            id_type.as_str()
        );
        let find_key = format!(
            "SELECT to_jsonb(e) FROM {} e WHERE {} = $1::{} AND idempotency_key = $2",
            events.quoted(),
            entity.quoted(),
            id_type.as_str()
        );
        let touch = t.touch_column.map(Ident::new).transpose()?;
        let update_kind = format!(
            "U\0{}\0{}\0{}",
            id.as_str(),
            id_type.as_str(),
            touch.as_ref().map_or("", Ident::as_str)
        );
        let sql = Rc::new(Sql {
            projection,
            events,
            id,
            id_type,
            touch,
            update_kind,
            lock,
            find_key,
        });
        TABLES.with(|c| c.borrow_mut().insert(key, Rc::clone(&sql)));
        Ok(sql)
    }

    /// Whether every applied event sets a column of the projection (`Tables::touch_column`).
    pub(super) fn touches(&self) -> bool {
        self.touch.is_some()
    }

    pub(super) fn lock(&self) -> &str {
        &self.lock
    }

    pub(super) fn find_key(&self) -> &str {
        &self.find_key
    }

    /// The text of a write to `tables` that depends on `key` (the columns written and how),
    /// built by `build` from the tables' shapes (in the same order) when it is not kept from
    /// an earlier call. Always takes the write's lock on each table first (see [`shape`]).
    fn text(
        tables: &[&QualifiedName],
        key: String,
        build: impl FnOnce(&[Rc<Shape>]) -> Result<String, CoreError>,
    ) -> Result<Rc<str>, CoreError> {
        let shapes = tables
            .iter()
            .map(|t| shape(t))
            .collect::<Result<Vec<_>, _>>()?;
        Sql::kept(&shapes, key, build)
    }

    /// [`Sql::text`] for a caller that has read (and locked) the tables' shapes already.
    fn kept(
        shapes: &[Rc<Shape>],
        key: String,
        build: impl FnOnce(&[Rc<Shape>]) -> Result<String, CoreError>,
    ) -> Result<Rc<str>, CoreError> {
        let now = generation();
        if let Some((g, text)) = TEXTS.with(|c| c.borrow().get(&key).cloned()) {
            if g == now {
                return Ok(text);
            }
        }
        let text: Rc<str> = build(shapes)?.into();
        TEXTS.with(|c| {
            let mut c = c.borrow_mut();
            if c.len() >= TEXTS_KEPT {
                c.clear();
            }
            c.insert(key, (now, Rc::clone(&text)));
        });
        Ok(text)
    }

    /// Insert the projection row `row` (`$1`, see [`insert_text`]); returns what Postgres
    /// decided.
    pub(super) fn insert_projection(&self, row: &Map<String, Value>) -> Result<Rc<str>, CoreError> {
        let key = insert_key(&self.projection, row);
        Sql::text(&[&self.projection], key, |shapes| {
            insert_text(&self.projection, &shapes[0], row, 1)
        })
    }

    /// Append the event row `row` (`$1`, see [`insert_text`]); returns what Postgres decided.
    pub(super) fn insert_event(&self, row: &Map<String, Value>) -> Result<Rc<str>, CoreError> {
        let key = insert_key(&self.events, row);
        Sql::text(&[&self.events], key, |shapes| {
            insert_text(&self.events, &shapes[0], row, 1)
        })
    }

    /// Update the projection row (`$1` its id, `$2` the changed columns) and read back what
    /// Postgres decided (see [`Sql::update_text`]).
    pub(super) fn update(&self, changed: &Map<String, Value>) -> Result<Rc<str>, CoreError> {
        let key = self.update_key(changed);
        Sql::text(&[&self.projection], key, |shapes| {
            self.update_text(&shapes[0], changed)
        })
    }

    /// Update the projection row (`$1` its id, `$2` the changed columns) and append the event
    /// row (`$3`) in one statement; returns what Postgres decided of each, in two columns.
    /// The event's foreign key is checked at the statement's end, on the updated row.
    ///
    /// `None` when the projection has an UPDATE trigger or the event table an INSERT trigger
    /// of its own: in one statement the projection's AFTER triggers would fire after the event
    /// row is written, and whatever the event's insert runs would see the row as it was before
    /// the update (the statement's snapshot); the caller writes them in two statements, which
    /// keep the order of two writes.
    pub(super) fn update_and_append(
        &self,
        changed: &Map<String, Value>,
        event: &Map<String, Value>,
    ) -> Result<Option<Rc<str>>, CoreError> {
        let shapes = [shape(&self.projection)?, shape(&self.events)?];
        if shapes[0].has_own_trigger_on(pg_sys::TRIGGER_TYPE_UPDATE)
            || shapes[1].has_own_trigger_on(pg_sys::TRIGGER_TYPE_INSERT)
        {
            return Ok(None);
        }
        let key = format!(
            "{}\0\0{}",
            self.update_key(changed),
            insert_key(&self.events, event)
        );
        Sql::kept(&shapes, key, |shapes| {
            Ok(format!(
                "WITH u AS ({}), e AS ({}) SELECT (SELECT * FROM u), (SELECT * FROM e)",
                self.update_text(&shapes[0], changed)?,
                insert_text(&self.events, &shapes[1], event, 3)?
            ))
        })
        .map(Some)
    }

    /// An update's text depends on the columns it sets, and on the row's id column, its type
    /// and the touched column, which it names too.
    fn update_key(&self, changed: &Map<String, Value>) -> String {
        written_key(&self.update_kind, &self.projection, changed, |_| ' ')
    }

    /// Set the changed columns (and the touched one) and read back what Postgres decided
    /// (`$1` the id, `$2` the values). The values come from one `jsonb_populate_record` in a
    /// sub-SELECT: as a joined FROM item it would make the update carry and lock a second row
    /// source.
    fn update_text(
        &self,
        shape: &Shape,
        changed: &Map<String, Value>,
    ) -> Result<String, CoreError> {
        let mut targets: Vec<String> = Vec::new();
        let mut values: Vec<String> = Vec::new();
        for c in column_list(changed.keys())? {
            values.push(format!("r.{}", c.quoted()));
            targets.push(c.quoted());
        }
        let touched = self
            .touch
            .as_ref()
            .filter(|t| !changed.contains_key(t.as_str()));
        if let Some(t) = touched {
            targets.push(t.quoted());
            values.push("now()".into());
        }
        let t = self.projection.quoted();
        let sets = match (targets.len(), changed.is_empty()) {
            (0, _) => return Err(CoreError::Internal("an update that sets nothing".into())),
            (1, true) => format!("{} = {}", targets[0], values[0]),
            _ => format!(
                "({}) = (SELECT {} FROM jsonb_populate_record(NULL::{t}, $2) r)",
                targets.join(", "),
                values.join(", ")
            ),
        };
        let returning = shape.read_back("p", shape.before_update_row, |c| {
            changed.contains_key(c.name.as_str()) || touched.is_some_and(|t| t.as_str() == c.name)
        });
        Ok(format!(
            "UPDATE {t} p SET {sets} WHERE p.{id} = $1::{ty} RETURNING {returning}",
            id = self.id.quoted(),
            ty = self.id_type.as_str()
        ))
    }
}

/// What a write's text depends on: its kind, its table, and each column written with a mark
/// (`mark`) of how its value reads back. Column names are joined with NUL, which no
/// identifier holds.
fn written_key(
    kind: &str,
    table: &QualifiedName,
    row: &Map<String, Value>,
    mark: impl Fn(&Value) -> char,
) -> String {
    let mut key = format!("{kind}\0{}", table.quoted());
    for (name, value) in row {
        key.push('\0');
        key.push(mark(value));
        key.push_str(name);
    }
    key
}

/// An insert's text depends on which values print back as they were sent, so each value's
/// JSON kind is part of the key.
fn insert_key(table: &QualifiedName, row: &Map<String, Value>) -> String {
    written_key("I", table, row, |v| match v {
        Value::Null => 'n',
        Value::String(_) => 's',
        _ => 'o',
    })
}

/// Insert `row` (the JSON object `$param`: column -> value, cast to each column's type by
/// `jsonb_populate_record`) and read back what Postgres decided (see [`Shape::read_back`]).
fn insert_text(
    table: &QualifiedName,
    shape: &Shape,
    row: &Map<String, Value>,
    param: usize,
) -> Result<String, CoreError> {
    let cols = column_list(row.keys())?;
    let list = cols
        .iter()
        .map(Ident::quoted)
        .collect::<Vec<_>>()
        .join(", ");
    let t = table.quoted();
    let returning = shape.read_back(&t, shape.before_insert_row, |c| {
        !row.get(c.name.as_str()).is_some_and(|v| c.sent.prints(v))
    });
    Ok(format!(
        "INSERT INTO {t} ({list}) SELECT {list} FROM jsonb_populate_record(NULL::{t}, ${param}) RETURNING {returning}"
    ))
}

/// The shape of `table`, after taking the lock its write takes anyway (`RowExclusiveLock`,
/// held to the end of the transaction): no trigger or column can be added between this look
/// and the write, and taking it processes the invalidations of what changed before.
fn shape(table: &QualifiedName) -> Result<Rc<Shape>, CoreError> {
    listen();
    let name = table.quoted();
    if let Some((g, oid, shape)) = SHAPES.with(|c| c.borrow().get(&name).cloned()) {
        // SAFETY: locking a relation by OID; a relation dropped since is an invalidation,
        // which makes the generation differ below.
        unsafe { pg_sys::LockRelationOid(oid, pg_sys::RowExclusiveLock as _) };
        if g == generation() {
            return Ok(shape);
        }
    }
    // The generation before the look: an invalidation processed during it makes the kept
    // shape's generation old, and the next call looks again.
    let read_in = generation();
    let (oid, shape) = Shape::of(table)?;
    WATCHED.with(|w| w.borrow_mut().insert(oid));
    let shape = Rc::new(shape);
    SHAPES.with(|c| {
        c.borrow_mut()
            .insert(name, (read_in, oid, Rc::clone(&shape)))
    });
    Ok(shape)
}

/// One live column of a table, as the runner sees it.
struct Column {
    name: String,
    /// Which values sent to it print back exactly as they were sent.
    sent: Sent,
    /// A generated column: Postgres computes it on every write.
    generated: bool,
}

/// What the runner needs to know of a table to read back only what Postgres decided.
struct Shape {
    columns: Vec<Column>,
    /// A BEFORE row trigger may change any column of the row being written.
    before_insert_row: bool,
    before_update_row: bool,
    /// The events (`TRIGGER_TYPE_INSERT`, `TRIGGER_TYPE_UPDATE`, ...) some trigger of the
    /// table's own fires on (not Postgres' internal foreign-key triggers).
    own_triggers: u32,
}

impl Shape {
    fn has_own_trigger_on(&self, event: u32) -> bool {
        self.own_triggers & event != 0
    }
}

impl Shape {
    /// The table's OID, columns and triggers, from the relation cache (no statement), after
    /// taking the write's lock on it.
    fn of(table: &QualifiedName) -> Result<(pg_sys::Oid, Shape), CoreError> {
        let missing = || CoreError::Internal(format!("{}: no such relation", table.quoted()));
        // SAFETY: to_regclass takes a text and returns NULL (None) for a missing relation.
        let look = || unsafe {
            pgrx::direct_function_call::<pgrx::pg_sys::Oid>(
                pgrx::pg_sys::to_regclass,
                &[table.quoted().into_datum()],
            )
        };
        let mut oid = look().ok_or_else(missing)?;
        // The lock the write takes anyway, held to the end of the transaction: no trigger or
        // column can be added between this look and the write. Locking processes the
        // invalidations of a drop committed meanwhile: the name is looked up again until it
        // names the relation locked (as RangeVarGetRelidExtended does).
        for _ in 0..3 {
            // SAFETY: locking a relation by OID (a dropped one is simply a lock on nothing).
            unsafe { pgrx::pg_sys::LockRelationOid(oid, pgrx::pg_sys::RowExclusiveLock as _) };
            let again = look().ok_or_else(missing)?;
            if again == oid {
                break;
            }
            oid = again;
        }
        // SAFETY: a relation that exists now and is locked (above), as PgRelation::open requires.
        let rel = unsafe { pgrx::PgRelation::open(oid) };
        // SAFETY: trigdesc is null or the relation cache entry's trigger descriptor; the flags are
        // copied before any catalog access, which could rebuild the entry and free it.
        let (before_insert_row, before_update_row, own_triggers) = unsafe {
            rel.trigdesc.as_ref().map_or((false, false, 0), |t| {
                let all = std::slice::from_raw_parts(
                    t.triggers,
                    usize::try_from(t.numtriggers).unwrap_or(0),
                );
                let own = all
                    .iter()
                    .filter(|g| !g.tgisinternal)
                    .fold(0u32, |kinds, g| kinds | g.tgtype as u16 as u32);
                (t.trig_insert_before_row, t.trig_update_before_row, own)
            })
        };
        let columns = rel
            .tuple_desc()
            .iter()
            .filter(|a| !a.is_dropped())
            .map(|a| Column {
                name: a.name().to_owned(),
                sent: Sent::of(a.atttypid, a.atttypmod),
                generated: a.attgenerated != 0,
            })
            .collect();
        Ok((
            oid,
            Shape {
                columns,
                before_insert_row,
                before_update_row,
                own_triggers,
            },
        ))
    }

    /// The RETURNING list of a write to `alias`: the whole row as JSON when a BEFORE row trigger
    /// may have changed anything (or a column name needs more than plain quoting), else a JSON
    /// object of the generated columns and of those `wanted` says the runner does not know.
    fn read_back(&self, alias: &str, whole: bool, wanted: impl Fn(&Column) -> bool) -> String {
        let full = format!("to_jsonb({alias}.*)");
        if whole {
            return full;
        }
        let mut pairs = Vec::new();
        for c in self.columns.iter().filter(|c| c.generated || wanted(c)) {
            let Ok(id) = Ident::new(&c.name) else {
                return full;
            };
            pairs.push(format!("'{}', {alias}.{}", id.as_str(), id.quoted()));
        }
        if pairs.is_empty() {
            return "'{}'::jsonb".into();
        }
        // jsonb_build_object takes at most 100 arguments: 50 columns per call.
        pairs
            .chunks(50)
            .map(|c| format!("jsonb_build_object({})", c.join(", ")))
            .collect::<Vec<_>>()
            .join(" || ")
    }
}

/// Which JSON values written to a column of some type print back exactly as they were sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// text, unbounded varchar, enums: strings (a number or an object would be stored as its
    /// text, and print back as a string).
    Strings,
    /// json, jsonb: any value.
    Any,
    /// Everything else (numbers, dates, uuids, bounded varchar, domains, arrays, ...): none.
    Nothing,
}

impl Sent {
    fn of(oid: pgrx::pg_sys::Oid, typmod: i32) -> Sent {
        use pgrx::pg_sys::{PgBuiltInOids as B, PgOid};
        match PgOid::from(oid) {
            PgOid::BuiltIn(B::JSONOID | B::JSONBOID) => Sent::Any,
            PgOid::BuiltIn(B::TEXTOID) => Sent::Strings,
            PgOid::BuiltIn(B::VARCHAROID) if typmod < 0 => Sent::Strings,
            // SAFETY: a type cache lookup by OID; an unknown OID is simply not an enum.
            _ if unsafe { pgrx::pg_sys::type_is_enum(oid) } => Sent::Strings,
            _ => Sent::Nothing,
        }
    }

    fn prints(self, value: &Value) -> bool {
        match self {
            Sent::Any => true,
            Sent::Strings => value.is_string() || value.is_null(),
            Sent::Nothing => false,
        }
    }
}
