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

use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::JsonB;
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
    lock: String,
    find_key: String,
    projection: QualifiedName,
    events: QualifiedName,
    id: Ident,
    id_type: Ident,
    touch: Option<Ident>,
}

impl Sql {
    fn for_tables(t: &Tables) -> Result<Sql, CoreError> {
        let projection = QualifiedName::parse(t.projection)?;
        let events = QualifiedName::parse(t.events)?;
        let id = Ident::new(t.id_column)?;
        let id_type = Ident::new(t.id_type)?;
        let entity = Ident::new(t.entity_column)?;
        let touch = t.touch_column.map(Ident::new).transpose()?;
        Ok(Sql {
            lock: format!(
                "SELECT to_jsonb(p) FROM {} p WHERE {} = $1::{} FOR UPDATE",
                projection.quoted(),
                id.quoted(),
                id_type.as_str()
            ),
            find_key: format!(
                "SELECT to_jsonb(e) FROM {} e WHERE {} = $1::{} AND idempotency_key = $2",
                events.quoted(),
                entity.quoted(),
                id_type.as_str()
            ),
            projection,
            events,
            id,
            id_type,
            touch,
        })
    }

    fn insert(table: &QualifiedName, row: &Map<String, Value>) -> Result<String, CoreError> {
        let cols = column_list(row.keys())?;
        let list = cols
            .iter()
            .map(Ident::quoted)
            .collect::<Vec<_>>()
            .join(", ");
        Ok(format!(
            "INSERT INTO {t} ({list}) SELECT {list} FROM jsonb_populate_record(NULL::{t}, $1) RETURNING to_jsonb({t}.*)",
            t = table.quoted()
        ))
    }

    fn update(&self, changed: &Map<String, Value>) -> Result<String, CoreError> {
        let cols = column_list(changed.keys())?;
        let mut sets: Vec<String> = cols
            .iter()
            .map(|c| format!("{c} = r.{c}", c = c.quoted()))
            .collect();
        if let Some(t) = &self.touch {
            if !changed.contains_key(t.as_str()) {
                sets.push(format!("{} = now()", t.quoted()));
            }
        }
        Ok(format!(
            "UPDATE {t} p SET {sets} FROM jsonb_populate_record(NULL::{t}, $2) r WHERE p.{id} = $1::{ty} RETURNING to_jsonb(p)",
            t = self.projection.quoted(),
            sets = sets.join(", "),
            id = self.id.quoted(),
            ty = self.id_type.as_str()
        ))
    }
}

/// Apply `event` to the entity `entity_id` of workflow `W` as `actor`.
pub fn apply<W: Workflow>(
    entity_id: &str,
    event: &W::Event,
    actor: &Actor,
    idempotency_key: Option<&str>,
) -> Result<Applied<W::State>, W::Error> {
    let sql = Sql::for_tables(&W::TABLES)?;
    Spi::connect_mut(|client| {
        let current = first_json(prepared::run(
            client,
            &sql.lock,
            &[TEXT],
            &[entity_id.into()],
        )?)?;
        let before: Option<W::State> = match &current {
            Some(row) => Some(serde_json::from_value(row.clone()).map_err(CoreError::from)?),
            None => None,
        };

        if let (Some(key), Some(row)) = (idempotency_key, &current) {
            let found = prepared::query(
                client,
                &sql.find_key,
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

        let row = match &before {
            None => {
                let mut cols: Map<String, Value> = after_cols
                    .into_iter()
                    .filter(|(_, v)| !v.is_null())
                    .collect();
                cols.insert(
                    W::TABLES.id_column.to_owned(),
                    Value::String(entity_id.to_owned()),
                );
                let q = Sql::insert(&sql.projection, &cols)?;
                first_json(prepared::run(
                    client,
                    &q,
                    &[JSONB],
                    &[JsonB(Value::Object(cols)).into()],
                )?)?
            }
            Some(b) => {
                let changed = changed_columns(&state_columns(b)?, &after_cols);
                if changed.is_empty() && sql.touch.is_none() {
                    current.clone()
                } else {
                    let q = sql.update(&changed)?;
                    first_json(prepared::run(
                        client,
                        &q,
                        &[TEXT, JSONB],
                        &[entity_id.into(), JsonB(Value::Object(changed)).into()],
                    )?)?
                }
            }
        }
        .ok_or_else(|| {
            CoreError::Internal(format!(
                "{} row {entity_id} vanished while locked",
                W::TABLES.projection
            ))
        })?;

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
        let q = Sql::insert(&sql.events, &ev)?;
        let stored_event = first_json(prepared::run(
            client,
            &q,
            &[JSONB],
            &[JsonB(Value::Object(ev)).into()],
        )?)?
        .ok_or_else(|| {
            CoreError::Internal(format!("insert into {} returned nothing", W::TABLES.events))
        })?;

        W::enqueue_effects(client, entity_id, &stored_event, transition.effects)?;
        Ok(Applied {
            state: transition.state,
            row,
            event: stored_event,
            replayed: false,
        })
    })
}
