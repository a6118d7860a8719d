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
//! 5. append the event row (entity id, type, actor, payload, idempotency key, extras), in the
//!    same statement as the update when there is one and neither table has a trigger of its
//!    own on those writes;
//! 6. hand the effects to the workflow, which enqueues them (outbox rows, tasks, ...).
//!
//! The statements are built from each table's shape and kept per backend
//! ([`statements`]); values cross as `jsonb` datums (`core::jsonb`), never as JSON text.
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
use serde::Deserialize;
use serde_json::{Map, Value};

use super::actor::Actor;
use super::error::CoreError;
use super::prepared::{self, first_json, JSONB, TEXT};
use super::workflow::{changed_columns, state_columns, Reducer};

mod statements;
use statements::Sql;

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
            sql.lock(),
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
        &*Sql::for_tables(&W::TABLES)?,
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
            // Read from the row in place: a copy of every column would be made only to be read.
            Some(row) => Some(W::State::deserialize(row).map_err(CoreError::from)?),
            None => None,
        };

        if let (Some(key), Some(row)) = (idempotency_key, &current) {
            let found = prepared::query(
                client,
                sql.find_key(),
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
        let event_vanished =
            || CoreError::Internal(format!("insert into {} returned nothing", W::TABLES.events));
        let append = |client: &mut SpiClient<'_>, ev: &Map<String, Value>| {
            let q = sql.insert_event(ev)?;
            first_json(prepared::run(
                client,
                &q,
                &[JSONB],
                &[prepared::object_arg(ev)?],
            )?)?
            .ok_or_else(event_vanished)
        };

        // The projection row written (or kept), and what Postgres decided of the event row.
        let (row, event_returned) = match (&before, current) {
            (None, _) => {
                let mut cols: Map<String, Value> = after_cols
                    .into_iter()
                    .filter(|(_, v)| !v.is_null())
                    .collect();
                cols.insert(
                    W::TABLES.id_column.to_owned(),
                    Value::String(entity_id.to_owned()),
                );
                let q = sql.insert_projection(&cols)?;
                let returned = first_json(prepared::run(
                    client,
                    &q,
                    &[JSONB],
                    &[prepared::object_arg(&cols)?],
                )?)?
                .ok_or_else(vanished)?;
                (Value::Object(merged(cols, returned)), append(client, &ev)?)
            }
            (Some(_), None) => return Err(vanished().into()),
            (Some(b), Some(current)) => {
                let Value::Object(locked) = current else {
                    return Err(CoreError::Internal(format!(
                        "{} row {entity_id} was not read as an object",
                        W::TABLES.projection
                    ))
                    .into());
                };
                let changed = changed_columns(&state_columns(b)?, &after_cols);
                if changed.is_empty() && !sql.touches() {
                    (Value::Object(locked), append(client, &ev)?)
                } else if let Some(q) = sql.update_and_append(&changed, &ev)? {
                    // One statement updates the row and appends the event.
                    let t = prepared::run(
                        client,
                        &q,
                        &[TEXT, JSONB, JSONB],
                        &[
                            entity_id.into(),
                            prepared::object_arg(&changed)?,
                            prepared::object_arg(&ev)?,
                        ],
                    )?;
                    if t.is_empty() {
                        return Err(vanished().into());
                    }
                    let first = t.first();
                    let updated = prepared::json_at(&first, 1)?.ok_or_else(vanished)?;
                    let appended = prepared::json_at(&first, 2)?.ok_or_else(event_vanished)?;
                    (Value::Object(merged(locked, updated)), appended)
                } else {
                    let q = sql.update(&changed)?;
                    let updated = first_json(prepared::run(
                        client,
                        &q,
                        &[TEXT, JSONB],
                        &[entity_id.into(), prepared::object_arg(&changed)?],
                    )?)?
                    .ok_or_else(vanished)?;
                    (Value::Object(merged(locked, updated)), append(client, &ev)?)
                }
            }
        };
        let stored_event = Value::Object(merged(ev, event_returned));

        W::enqueue_effects(client, entity_id, &stored_event, transition.effects)?;
        Ok(Applied {
            state: transition.state,
            row,
            event: stored_event,
            replayed: false,
        })
    })
}
