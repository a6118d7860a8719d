//! The event-store runner: applies one event to one workflow entity inside the caller's
//! transaction.
//!
//! Steps, all in one transaction so a rejected event writes nothing:
//! 1. lock the projection row (`SELECT ... FOR UPDATE`), so transitions of one entity are
//!    serialised while other entities proceed in parallel;
//! 2. if the call carries an idempotency key already recorded for this entity, return that
//!    event and the current state without writing anything;
//! 3. run the pure reducer;
//! 4. insert the projection row (creation) or update only the columns that changed;
//! 5. append the event row (entity id, type, actor, payload, idempotency key, extras);
//! 6. hand the effects to the workflow, which enqueues them (outbox rows, tasks, ...).
//!
//! Table contract: the projection has a primary-key column `tables.id_column`; the event table
//! has `tables.entity_column`, `event_type`, `actor_id`, `actor_type`, `payload jsonb`,
//! `idempotency_key text` with `UNIQUE (entity_column, idempotency_key)`, and the
//! `flowgate.forbid_mutation()` trigger. Column values are written through
//! `jsonb_populate_record`, so Postgres casts JSON to each column's type (enums included).
//!
//! A write reads back only what Postgres decided: defaults, generated columns, the touched
//! column and every value whose stored form may print differently from what was sent (all types
//! but text, varchar, enums and json). The rest of the returned row is the locked row or the
//! values written. A table with a BEFORE row trigger, which may change anything, is read back
//! whole.

use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use serde_json::{Map, Value};

use super::actor::Actor;
use super::error::CoreError;
use super::prepared::{self, first_json, JSONB, TEXT};
use super::workflow::{changed_columns, column_list, state_columns, Ident, QualifiedName, Reducer};

/// Where a workflow keeps its rows.
#[derive(Debug, Clone, Copy)]
pub struct Tables {
    /// `schema.table` of the projection.
    pub projection: &'static str,
    /// Its primary-key column.
    pub id_column: &'static str,
    /// SQL type of the id (`text`, `uuid`, `bigint`), used to cast the bound text id.
    pub id_type: &'static str,
    /// `schema.table` of the append-only event log.
    pub events: &'static str,
    /// The event table's column referencing the projection id.
    pub entity_column: &'static str,
    /// A projection column set to `now()` on every applied event, if any.
    pub touch_column: Option<&'static str>,
}

/// A workflow the runner can drive: the pure reducer plus where its rows live and how its
/// effects are enqueued.
pub trait Workflow: Reducer {
    const TABLES: Tables;

    /// Enqueue the effects of a transition; runs after the event row is written, in the same
    /// transaction. `event` is the stored event row.
    fn enqueue_effects(
        client: &mut SpiClient<'_>,
        entity_id: &str,
        event: &Value,
        effects: Vec<Self::Effect>,
    ) -> Result<(), Self::Error>;
}

/// The outcome of [`apply`].
#[derive(Debug, Clone)]
pub struct Applied<S> {
    pub state: S,
    /// The projection row as stored (all columns, including ones the state does not model).
    pub row: Value,
    /// The event row as stored, or the earlier event when `replayed`.
    pub event: Value,
    /// True when the idempotency key had been used already and nothing was written.
    pub replayed: bool,
}

struct Sql {
    projection: QualifiedName,
    events: QualifiedName,
    id: Ident,
    id_type: Ident,
    entity: Ident,
    touch: Option<Ident>,
}

impl Sql {
    fn for_tables(t: &Tables) -> Result<Sql, CoreError> {
        Ok(Sql {
            projection: QualifiedName::parse(t.projection)?,
            events: QualifiedName::parse(t.events)?,
            id: Ident::new(t.id_column)?,
            id_type: Ident::new(t.id_type)?,
            entity: Ident::new(t.entity_column)?,
            touch: t.touch_column.map(Ident::new).transpose()?,
        })
    }

    fn lock(&self) -> String {
        format!(
            "SELECT to_jsonb(p) FROM {} p WHERE {} = $1::{} FOR UPDATE",
            self.projection.quoted(),
            self.id.quoted(),
            self.id_type.as_str()
        )
    }

    fn find_key(&self) -> String {
        format!(
            "SELECT to_jsonb(e) FROM {} e WHERE {} = $1::{} AND idempotency_key = $2",
            self.events.quoted(),
            self.entity.quoted(),
            self.id_type.as_str()
        )
    }

    /// Insert `row` (column -> JSON value, cast to each column's type by
    /// `jsonb_populate_record`) and read back what Postgres decided (see [`Shape::read_back`]).
    fn insert(
        table: &QualifiedName,
        shape: &Shape,
        row: &Map<String, Value>,
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
            "INSERT INTO {t} ({list}) SELECT {list} FROM jsonb_populate_record(NULL::{t}, $1) RETURNING {returning}"
        ))
    }

    /// Set the changed columns (and the touched one) and read back what Postgres decided. The
    /// values come from one `jsonb_populate_record` in a sub-SELECT: as a joined FROM item it
    /// would make the update carry and lock a second row source.
    fn update(&self, shape: &Shape, changed: &Map<String, Value>) -> Result<String, CoreError> {
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
}

impl Shape {
    /// The table's columns and triggers, from the relation cache (no statement).
    fn of(table: &QualifiedName) -> Result<Shape, CoreError> {
        let missing = || CoreError::Internal(format!("{}: no such relation", table.quoted()));
        // SAFETY: to_regclass takes a text and returns NULL (None) for a missing relation.
        let oid = unsafe {
            pgrx::direct_function_call::<pgrx::pg_sys::Oid>(
                pgrx::pg_sys::to_regclass,
                &[table.quoted().into_datum()],
            )
        }
        .ok_or_else(missing)?;
        // The lock the write takes anyway, held to the end of the transaction: no trigger or
        // column can be added between this look and the write.
        // SAFETY: locking a relation by OID; a dropped OID is caught by the open below.
        unsafe {
            pgrx::pg_sys::LockRelationOid(oid, pgrx::pg_sys::RowExclusiveLock as _);
        }
        // SAFETY: the relation is locked (above), as PgRelation::open requires.
        let rel = unsafe { pgrx::PgRelation::open(oid) };
        // SAFETY: trigdesc is null or the relation cache entry's trigger descriptor; the flags are
        // copied before any catalog access, which could rebuild the entry and free it.
        let (before_insert_row, before_update_row) = unsafe {
            rel.trigdesc.as_ref().map_or((false, false), |t| {
                (t.trig_insert_before_row, t.trig_update_before_row)
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
        Ok(Shape {
            columns,
            before_insert_row,
            before_update_row,
        })
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

/// `row` with the columns Postgres returned laid over it.
fn merged(mut row: Map<String, Value>, returned: Value) -> Map<String, Value> {
    if let Value::Object(r) = returned {
        row.extend(r);
    }
    row
}

/// Apply `event` to the entity `entity_id` of workflow `W` as `actor`.
pub fn apply<W: Workflow>(
    entity_id: &str,
    event: &W::Event,
    actor: &Actor,
    idempotency_key: Option<&str>,
) -> Result<Applied<W::State>, W::Error> {
    let sql = Sql::for_tables(&W::TABLES)?;
    let current = Spi::connect_mut(|client| {
        first_json(prepared::run(
            client,
            &sql.lock(),
            &[TEXT],
            &[entity_id.into()],
        )?)
    })?;
    run::<W>(&sql, entity_id, current, event, actor, idempotency_key)
}

/// [`apply`] for a caller that has already locked the entity's projection row
/// (`SELECT to_jsonb(p) ... FOR UPDATE`, usually together with facts the event needs) and
/// passes it as `current` (`None`: the entity does not exist and the event creates it).
pub fn apply_locked<W: Workflow>(
    entity_id: &str,
    current: Option<Value>,
    event: &W::Event,
    actor: &Actor,
    idempotency_key: Option<&str>,
) -> Result<Applied<W::State>, W::Error> {
    run::<W>(
        &Sql::for_tables(&W::TABLES)?,
        entity_id,
        current,
        event,
        actor,
        idempotency_key,
    )
}

/// The runner on a locked (or missing) projection row.
fn run<W: Workflow>(
    sql: &Sql,
    entity_id: &str,
    current: Option<Value>,
    event: &W::Event,
    actor: &Actor,
    idempotency_key: Option<&str>,
) -> Result<Applied<W::State>, W::Error> {
    Spi::connect_mut(|client| {
        let before: Option<W::State> = match &current {
            Some(row) => Some(serde_json::from_value(row.clone()).map_err(CoreError::from)?),
            None => None,
        };

        if let (Some(key), Some(row)) = (idempotency_key, &current) {
            let found = prepared::query(
                client,
                &sql.find_key(),
                &[TEXT, TEXT],
                &[entity_id.into(), key.into()],
            )?;
            if let Some(earlier) = first_json(found)? {
                // A key names one event: the same key for another event or actor is a conflict.
                let same = earlier["event_type"].as_str() == Some(W::event_type(event).as_str())
                    && earlier["actor_id"].as_str() == Some(actor.id.as_str());
                if !same {
                    return Err(CoreError::Duplicate {
                        kind: "idempotency key (used for another event or actor)".into(),
                        key: key.to_owned(),
                    }
                    .into());
                }
                // `before` is Some whenever `current` is.
                let state = before
                    .clone()
                    .ok_or_else(|| CoreError::Internal("lost projection".into()))?;
                return Ok(Applied {
                    state,
                    row: row.clone(),
                    event: earlier,
                    replayed: true,
                });
            }
        }

        let transition = W::reduce(before.as_ref(), event, actor)?;
        let after_cols = state_columns(&transition.state)?;

        let vanished = || {
            CoreError::Internal(format!(
                "{} row {entity_id} vanished while locked",
                W::TABLES.projection
            ))
        };
        let row = match (&before, current) {
            (None, _) => {
                let mut cols: Map<String, Value> = after_cols
                    .into_iter()
                    .filter(|(_, v)| !v.is_null())
                    .collect();
                cols.insert(
                    W::TABLES.id_column.to_owned(),
                    Value::String(entity_id.to_owned()),
                );
                let q = Sql::insert(&sql.projection, &Shape::of(&sql.projection)?, &cols)?;
                let returned = first_json(prepared::run(
                    client,
                    &q,
                    &[JSONB],
                    &[prepared::object_arg(&cols)?],
                )?)?
                .ok_or_else(vanished)?;
                Value::Object(merged(cols, returned))
            }
            (Some(_), None) => return Err(vanished().into()),
            (Some(b), Some(current)) => {
                let changed = changed_columns(&state_columns(b)?, &after_cols);
                if changed.is_empty() && sql.touch.is_none() {
                    current
                } else {
                    let q = sql.update(&Shape::of(&sql.projection)?, &changed)?;
                    let returned = first_json(prepared::run(
                        client,
                        &q,
                        &[TEXT, JSONB],
                        &[entity_id.into(), prepared::object_arg(&changed)?],
                    )?)?
                    .ok_or_else(vanished)?;
                    match current {
                        Value::Object(locked) => Value::Object(merged(locked, returned)),
                        _ => {
                            return Err(CoreError::Internal(format!(
                                "{} row {entity_id} was not read as an object",
                                W::TABLES.projection
                            ))
                            .into())
                        }
                    }
                }
            }
        };

        let mut ev = W::event_extra(before.as_ref(), &transition.state);
        ev.insert(
            W::TABLES.entity_column.to_owned(),
            Value::String(entity_id.to_owned()),
        );
        ev.insert("event_type".into(), Value::String(W::event_type(event)));
        ev.insert("actor_id".into(), Value::String(actor.id.clone()));
        ev.insert(
            "actor_type".into(),
            Value::String(actor.actor_type().to_owned()),
        );
        ev.insert("payload".into(), W::event_payload(event));
        if let Some(key) = idempotency_key {
            ev.insert("idempotency_key".into(), Value::String(key.to_owned()));
        }
        let q = Sql::insert(&sql.events, &Shape::of(&sql.events)?, &ev)?;
        let returned = first_json(prepared::run(
            client,
            &q,
            &[JSONB],
            &[prepared::object_arg(&ev)?],
        )?)?
        .ok_or_else(|| {
            CoreError::Internal(format!("insert into {} returned nothing", W::TABLES.events))
        })?;
        let stored_event = Value::Object(merged(ev, returned));

        W::enqueue_effects(client, entity_id, &stored_event, transition.effects)?;
        Ok(Applied {
            state: transition.state,
            row,
            event: stored_event,
            replayed: false,
        })
    })
}
