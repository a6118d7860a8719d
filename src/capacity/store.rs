//! Data access of the capacity module: the runner binding, facts about the actor, effects.

use chrono::{DateTime, Utc};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::JsonB;
use serde_json::{json, Map, Value};

use super::flow::{CapacityFlow, Command, Effect, Request};
use super::machine::{Event, Standing};
use crate::core::actor::Actor;
use crate::core::error::{CoreError, CoreResult};
use crate::core::eventstore::{self, Applied, Tables, Workflow};
use crate::core::prepared;
use crate::core::store as core_store;

impl Workflow for CapacityFlow {
    const TABLES: Tables = Tables {
        projection: "capacity.capacity_requests",
        id_column: "id",
        id_type: "text",
        events: "capacity.capacity_request_events",
        entity_column: "capacity_request_id",
        touch_column: Some("updated_at"),
    };

    fn enqueue_effects(
        client: &mut SpiClient<'_>,
        id: &str,
        event: &Value,
        effects: Vec<Effect>,
    ) -> Result<(), CoreError> {
        for effect in effects {
            match effect {
                Effect::Announce { from, to } => {
                    let note = json!({
                        "request_id": id,
                        "event": event["event_type"],
                        "from": from.map(|s| s.as_str()),
                        "to": to.as_str(),
                        "actor_id": event["actor_id"],
                    });
                    // pg_notify itself, called directly: no statement to plan and run.
                    // SAFETY: pg_notify is Postgres' own fmgr function taking two texts.
                    unsafe {
                        pgrx::direct_function_call::<()>(
                            pgrx::pg_sys::pg_notify,
                            &[
                                "flowgate_capacity".into_datum(),
                                note.to_string().into_datum(),
                            ],
                        );
                    }
                    super::notify::announce(client, id, event, from, to)?;
                }
                Effect::CancellationTask {
                    assigned_to,
                    due_at,
                } => {
                    client
                        .update(
                            "INSERT INTO capacity.capacity_request_tasks (capacity_request_id, task_type, assigned_to, due_at) \
                             VALUES ($1, 'cancellation_decision', $2, $3::timestamptz) \
                             ON CONFLICT (capacity_request_id, task_type) WHERE status = 'open' DO NOTHING",
                            None,
                            &[id.into(), assigned_to.into(), due_at.into()],
                        )
                        .map_err(CoreError::from)?;
                }
                Effect::CloseCancellationTasks => {
                    client
                        .update(
                            "UPDATE capacity.capacity_request_tasks SET status = 'done', updated_at = now() \
                             WHERE capacity_request_id = $1 AND task_type = 'cancellation_decision' AND status = 'open'",
                            None,
                            &[id.into()],
                        )
                        .map_err(CoreError::from)?;
                }
            }
        }
        Ok(())
    }
}

/// A Postgres timestamp (microseconds since 2000-01-01) as a UTC time.
fn from_pg_micros(pg_micros: i64, what: &str) -> CoreResult<DateTime<Utc>> {
    // Unix time counts from 1970-01-01.
    DateTime::from_timestamp_micros(pg_micros + 946_684_800_000_000)
        .ok_or_else(|| CoreError::Internal(format!("{what} out of range")))
}

/// The clock now (`clock_timestamp()`): for a deadline that must not stretch with a long
/// transaction, such as the age of a signed request.
pub fn clock_now() -> CoreResult<DateTime<Utc>> {
    // SAFETY: reads the system clock as Postgres does; no state.
    from_pg_micros(
        unsafe { pgrx::pg_sys::GetCurrentTimestamp() },
        "clock_timestamp()",
    )
}

/// `now()` of the current transaction, read without a query.
pub fn db_now() -> CoreResult<DateTime<Utc>> {
    // SAFETY: the transaction start timestamp is always set inside a transaction.
    from_pg_micros(
        unsafe { pgrx::pg_sys::GetCurrentTransactionStartTimestamp() },
        "now()",
    )
}

/// The actor's standing on a request: the request's parties (which never change after
/// creation, so reading them before the runner takes its lock is safe) and the actor's
/// membership of its infra group in one statement, then the `capacity.admins` setting.
/// P0002 when the request does not exist.
pub fn standing(id: &str, actor: &Actor) -> CoreResult<Standing> {
    super::flow::check_lookup("request_id", id)?;
    let (requester, owner, in_group) = Spi::connect(|client| {
        let rows = prepared::query(
            client,
            "SELECT r.requester_user_id, r.commercial_owner_user_id, \
                    EXISTS (SELECT FROM capacity.group_members m \
                             WHERE m.group_name = r.infra_owner_group AND m.user_id = $2) \
               FROM capacity.capacity_requests r WHERE r.id = $1",
            &[prepared::TEXT, prepared::TEXT],
            &[id.into(), actor.id.as_str().into()],
        )?;
        if rows.is_empty() {
            return Err(CoreError::not_found("capacity request", id));
        }
        let (r, o, g) = rows.first().get_three::<String, String, bool>()?;
        Ok((
            r.unwrap_or_default(),
            o.unwrap_or_default(),
            g.unwrap_or(false),
        ))
    })?;
    let is_admin = core_store::get_list("capacity.admins")?
        .iter()
        .any(|a| a == &actor.id);
    Ok(Standing::of(actor, &requester, &owner, in_group, is_admin))
}

fn payload_object(payload: Value) -> CoreResult<Map<String, Value>> {
    super::flow::check_json_object(
        "payload",
        &payload,
        super::flow::MAX_PAYLOAD,
        super::flow::MAX_PAYLOAD_DEPTH,
        r#"{"reason": "customer withdrew"}"#,
    )?;
    match payload {
        Value::Object(m) => Ok(m),
        _ => Err(CoreError::Internal(
            "a checked payload is not an object".into(),
        )),
    }
}

/// Apply one event to an existing request as `actor` (permissions decided by the reducer).
pub fn apply(
    id: &str,
    event: Event,
    payload: impl FnOnce() -> Result<Value, CoreError>,
    actor: &Actor,
    key: Option<&str>,
) -> Result<Applied<Request>, CoreError> {
    apply_at(id, event, payload, actor, key, None)
}

/// [`apply`] with the reducer's clock at `at` (the timers' `as_of`); None: the call's own time,
/// the transaction's start, or for a confirmation the clock once the request is locked (a
/// transaction open since before the deadline, or one that waited for the lock past it, does
/// not confirm after it).
pub fn apply_at(
    id: &str,
    event: Event,
    payload: impl FnOnce() -> Result<Value, CoreError>,
    actor: &Actor,
    key: Option<&str>,
    at: Option<DateTime<Utc>>,
) -> Result<Applied<Request>, CoreError> {
    if event == Event::RequestSubmitted {
        return Err(CoreError::invalid(
            "event",
            "REQUEST_SUBMITTED creates a request",
            "capacity.create_capacity_request(...) to create; any other event for an existing request",
        ));
    }
    // Only technical approval starts the confirmation clock.
    let confirmation_ttl_business_days = if event == Event::TechReviewApproved {
        core_store::get_i64("capacity.confirmation_ttl_business_days")? as u32
    } else {
        0
    };
    // Permission first (a stranger learns nothing, not even that the payload is malformed),
    // then the payload.
    let Some((row, standing)) = lock_for(id, actor)? else {
        // Strangers learn nothing: not the state, not whether the request exists.
        return Err(CoreError::not_found("capacity request", id));
    };
    let now = match at {
        Some(at) => at,
        None if event == Event::CustomerConfirmed => clock_now()?,
        None => db_now()?,
    };
    let cmd = Command {
        event,
        payload: payload_object(payload()?)?,
        standing,
        now,
        confirmation_ttl_business_days,
        new_request: None,
    };
    eventstore::apply_locked::<CapacityFlow>(id, Some(row), &cmd, actor, key)
}

/// Lock a request for an event from `actor`, reading the actor's standing on it (its parties,
/// the actor's membership of its infra group, `capacity.admins`) in the same statement. A
/// stranger's call locks nothing and finds nothing, so it can neither delay the request's
/// parties nor tell whether the request exists. Returns the locked row (`to_jsonb`) and the
/// standing, or `None`.
fn lock_for(id: &str, actor: &Actor) -> CoreResult<Option<(Value, Standing)>> {
    super::flow::check_lookup("request_id", id)?;
    let admins = crate::core::settings::definition("capacity.admins")?;
    // Admin by session (trusted) or the system: standing on every request.
    let own = Standing::of(actor, "", "", false, false);
    Spi::connect_mut(|client| {
        let rows = prepared::run(
            client,
            "WITH a AS (SELECT coalesce((SELECT s.value FROM flowgate.settings s WHERE s.key = 'capacity.admins'), $4) AS admins) \
             SELECT to_jsonb(r), g.in_group, a.admins \
               FROM capacity.capacity_requests r CROSS JOIN a \
               CROSS JOIN LATERAL (SELECT EXISTS (SELECT FROM capacity.group_members m \
                                                   WHERE m.group_name = r.infra_owner_group AND m.user_id = $2) AS in_group) g \
              WHERE r.id = $1 \
                AND ($3 OR r.requester_user_id = $2 OR r.commercial_owner_user_id = $2 OR g.in_group \
                     OR (jsonb_typeof(a.admins) = 'array' AND a.admins ? $2)) \
                FOR UPDATE OF r",
            &[prepared::TEXT, prepared::TEXT, prepared::BOOL, prepared::JSONB],
            &[
                id.into(),
                actor.id.as_str().into(),
                (own.is_admin || own.is_system).into(),
                prepared::jsonb_arg(&admins.default_value())?,
            ],
        )?;
        if rows.is_empty() {
            return Ok(None);
        }
        let first = rows.first();
        let row = prepared::json_at(&first, 1)?.unwrap_or(Value::Null);
        let in_group = first.get::<bool>(2)?;
        let listed = crate::core::settings::as_list(admins, prepared::json_at(&first, 3)?)?;
        // Parties are actors: a Slack id linked since the request was made was replaced by its
        // actor when it was linked (capacity.adopt_linked_parties).
        let party = |column: &str| row[column].as_str().unwrap_or_default().to_owned();
        let standing = Standing::of(
            actor,
            &party("requester_user_id"),
            &party("commercial_owner_user_id"),
            in_group.unwrap_or(false),
            listed.iter().any(|a| a == &actor.id),
        );
        Ok(Some((row, standing)))
    })
}

/// 22023 unless `owner` may be named commercial owner: a member of the group in
/// `capacity.commercial_approvers_group` (when that is not "").
pub fn check_commercial_owner(owner: &str) -> CoreResult<()> {
    let group = core_store::get_text("capacity.commercial_approvers_group")?;
    if group.is_empty() {
        return Ok(());
    }
    let member = Spi::connect(|client| -> CoreResult<bool> {
        let rows = prepared::query(
            client,
            "SELECT EXISTS (SELECT FROM capacity.group_members WHERE group_name = $1 AND user_id = $2)",
            &[prepared::TEXT, prepared::TEXT],
            &[group.as_str().into(), owner.into()],
        )?;
        Ok(rows.first().get_one::<bool>()?.unwrap_or(false))
    })?;
    if member {
        return Ok(());
    }
    Err(CoreError::invalid(
        "commercial_owner_user_id",
        format!("{owner:?} is not a commercial approver"),
        format!(
            "a member of the capacity group {group:?} (capacity.commercial_approvers_group); an operator adds one with INSERT INTO capacity.group_members VALUES ('{}', '<actor id>')",
            group.replace('\'', "''")
        ),
    ))
}

/// 40001 for a creation whose key a concurrent call used after this transaction's snapshot.
fn key_taken_since_snapshot(key: &str) -> CoreError {
    CoreError::Busy {
        what: format!("idempotency key {key:?} (a concurrent call used it: what it made is not in this transaction's snapshot)"),
        hint: "retry the transaction: the retry returns the request that call made".into(),
    }
}

/// Create a request (REQUEST_SUBMITTED), then auto-approve it when it is cheap enough.
/// Returns the request id and whether it already existed (idempotency key reused).
pub fn create(
    mut request: Request,
    actor: &Actor,
    key: Option<&str>,
) -> Result<(String, bool), CoreError> {
    request.check_new()?;
    check_commercial_owner(&request.commercial_owner_user_id)?;
    // A party named by a Slack id linked to its person is stored as that person's actor, as
    // the link would have rewritten it had the request come first (capacity.adopt_linked_parties):
    // one person is one party, here and in a restored copy alike. (Compared again as stored: a
    // requester cannot name themselves as commercial owner through their Slack id.)
    for party in [
        &mut request.requester_user_id,
        &mut request.commercial_owner_user_id,
    ] {
        if let Some(person) = crate::core::store::linked_actor("slack", party)? {
            *party = person;
        }
    }
    if request.commercial_owner_user_id == request.requester_user_id && !actor.trusted {
        return Err(CoreError::invalid(
            "commercial_owner_user_id",
            "it names the requester (a Slack id linked to them)",
            "another member of the commercial approvers' group: a requester does not approve their own request",
        ));
    }
    if let Some(k) = key {
        // Serialise creations that share an actor and key, then look for an earlier one. A
        // caller that had to wait, in a transaction whose snapshot is older than the lock
        // (REPEATABLE READ, SERIALIZABLE), could not see the request the other call committed
        // and would fail on the key's unique index: it retries instead (40001).
        let free = Spi::get_one_with_args::<bool>(
            "SELECT pg_catalog.pg_try_advisory_xact_lock(pg_catalog.hashtextextended('capacity.create:' || $1 || ':' || $2, 0))",
            &[actor.id.as_str().into(), k.into()],
        )
        .map_err(CoreError::from)?
        .unwrap_or(false);
        if !free {
            Spi::run_with_args(
                "SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('capacity.create:' || $1 || ':' || $2, 0))",
                &[actor.id.as_str().into(), k.into()],
            )
            .map_err(CoreError::from)?;
            if core_store::snapshot_per_transaction() {
                return Err(key_taken_since_snapshot(k));
            }
        }
        let earlier = Spi::connect(|client| -> CoreResult<Option<String>> {
            let rows = client.select(
                "SELECT capacity_request_id FROM capacity.capacity_request_events \
                 WHERE event_type = 'REQUEST_SUBMITTED' AND actor_id = $1 AND idempotency_key = $2",
                Some(1),
                &[actor.id.as_str().into(), k.into()],
            )?;
            if rows.is_empty() {
                return Ok(None);
            }
            Ok(rows.first().get_one::<String>()?)
        })?;
        if let Some(id) = earlier {
            // The same key must mean the same request; anything else is a client bug.
            let same = Spi::get_one_with_args::<bool>(
                "SELECT commercial_owner_user_id = $2 AND infra_owner_group = $3 AND requested_size = $4 \
                        AND quantity = $5 AND region = $6 \
                   FROM capacity.capacity_requests WHERE id = $1",
                &[
                    id.as_str().into(),
                    request.commercial_owner_user_id.as_str().into(),
                    request.infra_owner_group.as_str().into(),
                    request.requested_size.as_str().into(),
                    request.quantity.into(),
                    request.region.as_str().into(),
                ],
            )
            .map_err(CoreError::from)?
            .unwrap_or(false);
            if !same {
                return Err(CoreError::Duplicate {
                    kind: "idempotency key (used for a different request)".into(),
                    key: k.to_string(),
                });
            }
            return Ok((id, true));
        }
    }
    // The year in UTC (the session's time zone would give two ids of one instant two years
    // around New Year); the number padded to six digits, never cut (lpad truncates).
    let id = Spi::get_one::<String>(
        "SELECT 'CR-' || to_char(now() AT TIME ZONE 'UTC', 'YYYY') || '-' || lpad(n::text, greatest(6, length(n::text)), '0') \
           FROM (SELECT nextval('capacity.request_number_seq') AS n) s",
    )
    .map_err(CoreError::from)?
    .ok_or_else(|| CoreError::Internal("no request id".into()))?;
    let cost = request
        .estimated_monthly_cost_usd
        .as_ref()
        .and_then(Value::as_f64);
    let cmd = Command {
        event: Event::RequestSubmitted,
        payload: Map::new(),
        standing: Standing::default(),
        now: db_now()?,
        confirmation_ttl_business_days: core_store::get_i64(
            "capacity.confirmation_ttl_business_days",
        )? as u32,
        new_request: Some(request),
    };
    // A REPEATABLE READ or SERIALIZABLE caller whose snapshot is older than a concurrent
    // creation with the same key did not see it: the key's unique index refuses this one, and
    // the caller is told to retry (40001), which returns that request.
    if key.is_some() && core_store::snapshot_per_transaction() {
        let created = crate::core::subxact::run_only(&["23505"], || {
            eventstore::apply::<CapacityFlow>(&id, &cmd, actor, key)
        });
        match created {
            Ok(r) => {
                r?;
            }
            Err(_) => return Err(key_taken_since_snapshot(key.unwrap_or_default())),
        }
    } else {
        eventstore::apply::<CapacityFlow>(&id, &cmd, actor, key)?;
    }

    let threshold = core_store::get_i64("capacity.auto_approve_below_usd")?;
    // A requester's own estimate approves nothing unless the operator said it may.
    let estimate_counts =
        actor.trusted || core_store::get_bool("capacity.auto_approve_requester_estimates")?;
    if let Some(cost) = cost.filter(|_| estimate_counts) {
        if threshold > 0 && cost < threshold as f64 {
            let payload = json!({
                "reason": format!("auto-approved: estimated monthly cost {cost} USD is below the {threshold} USD threshold"),
            });
            apply(
                &id,
                Event::CommercialApproved,
                || Ok(payload),
                &Actor::system(),
                Some("sys:auto-approval"),
            )?;
        }
    }
    Ok((id, false))
}

/// The request as JSON with its most recent events (newest last) and the events it accepts.
pub fn describe(id: &str, recent: i64) -> CoreResult<Value> {
    super::flow::check_lookup("request_id", id)?;
    Spi::connect(|client| {
        let rows = client.select(
            "SELECT to_jsonb(r) FROM capacity.capacity_requests r WHERE id = $1",
            Some(1),
            &[id.into()],
        )?;
        if rows.is_empty() {
            return Err(CoreError::not_found("capacity request", id));
        }
        let request = rows
            .first()
            .get_one::<JsonB>()?
            .map(|j| j.0)
            .unwrap_or(Value::Null);
        let events = client
            .select(
                "SELECT coalesce(jsonb_agg(e ORDER BY e.seq), '[]') FROM ( \
                   SELECT seq, event_type, actor_type, actor_id, payload, from_state, to_state, created_at \
                   FROM capacity.capacity_request_events WHERE capacity_request_id = $1 ORDER BY seq DESC LIMIT $2) e",
                Some(1),
                &[id.into(), recent.into()],
            )?
            .first()
            .get_one::<JsonB>()?
            .map(|j| j.0)
            .unwrap_or(Value::Array(vec![]));
        let state = request["state"]
            .as_str()
            .and_then(|s| serde_json::from_value(Value::String(s.into())).ok());
        let allowed: Vec<String> = state
            .map(|s| {
                super::machine::allowed_events(s)
                    .iter()
                    .map(|e| e.as_str())
                    .collect()
            })
            .unwrap_or_default();
        Ok(json!({"request": request, "events": events, "allowed_events": allowed}))
    })
}

/// Keys starting with `sys:` belong to flowgate's own events (timers, threshold approvals).
pub fn check_user_key(key: Option<&str>) -> CoreResult<()> {
    match key {
        Some(k) if k.is_empty() || k.len() > 255 => Err(CoreError::invalid(
            "idempotency_key",
            "it is empty or longer than 255 bytes",
            "1 to 255 bytes",
        )),
        Some(k) if k.starts_with("sys:") => Err(CoreError::invalid(
            "idempotency_key",
            format!(
                "{} uses the reserved prefix sys:",
                crate::core::error::quoted(k)
            ),
            "any key not starting with sys:",
        )),
        _ => Ok(()),
    }
}

/// The Supabase anon key has no subject: every anonymous caller would be the same actor.
pub fn refuse_anonymous(actor: &Actor) -> CoreResult<()> {
    actor.refuse_anonymous("use capacity requests anonymously")
}
