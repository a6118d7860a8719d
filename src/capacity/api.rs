//! SQL surface of the capacity module (schema `capacity`). The write functions are SECURITY
//! DEFINER with a pinned search_path: callers (PostgREST's `authenticated`) cannot write the
//! tables directly; these functions decide who may do what from `flowgate.current_actor()`.

#[pgrx::pg_schema]
mod capacity {
    use pgrx::pg_sys::panic::ErrorReport;
    use pgrx::prelude::*;
    use pgrx::JsonB;
    use serde_json::{json, Value};

    use crate::capacity::flow::{CapacityError, Request};
    use crate::capacity::machine::{allowed_events, Event, State};
    use crate::capacity::store;
    use crate::core::actor::{validate_actor_id, Actor};
    use crate::core::error::CoreError;
    use crate::core::eventstore::Applied;
    use crate::core::store as core_store;

    fn fail(e: impl Into<CapacityError>) -> ErrorReport {
        e.into().into()
    }

    fn parse_event(name: &str) -> Result<Event, CoreError> {
        Event::parse(name).ok_or_else(|| {
            CoreError::invalid(
                "event_type",
                format!("{name:?} is not a capacity event"),
                crate::capacity::machine::EVENTS
                    .iter()
                    .map(|e| e.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        })
    }

    /// What an event call returns: the request as stored, the event (or the earlier one for a
    /// replayed key) and the events the request accepts now. No further queries.
    fn result(applied: &Applied<Request>) -> JsonB {
        let allowed: Vec<String> = allowed_events(applied.state.state)
            .iter()
            .map(|e| e.as_str())
            .collect();
        JsonB(json!({
            "request": applied.row,
            "event": applied.event,
            "replayed": applied.replayed,
            "allowed_events": allowed,
        }))
    }

    /// Create a Capacity Request; returns it (json) in COMMERCIAL_APPROVAL_REQUIRED, or
    /// TECHNICAL_REVIEW_REQUIRED when its cost is under `capacity.auto_approve_below_usd`.
    /// The requester is the caller; a trusted session may name `requester_user_id`.
    #[pg_extern(volatile, security_definer)]
    #[search_path(pg_catalog, pg_temp)]
    #[allow(clippy::too_many_arguments)]
    fn create_capacity_request(
        commercial_owner_user_id: &str,
        infra_owner_group: &str,
        requested_size: &str,
        quantity: i32,
        region: &str,
        customer_ref: default!(JsonB, "'{}'"),
        needed_by_date: default!(Option<pgrx::datum::Date>, "NULL"),
        expected_duration_days: default!(Option<i32>, "NULL"),
        estimated_monthly_cost_usd: default!(Option<pgrx::AnyNumeric>, "NULL"),
        requester_user_id: default!(Option<&str>, "NULL"),
        idempotency_key: default!(Option<&str>, "NULL"),
    ) -> Result<JsonB, ErrorReport> {
        let run = || -> Result<JsonB, CapacityError> {
            let actor = core_store::acting_actor(requester_user_id)?;
            validate_actor_id("commercial_owner_user_id", commercial_owner_user_id)?;
            if !matches!(customer_ref.0, Value::Object(_)) {
                return Err(CoreError::invalid(
                    "customer_ref",
                    "it is not a JSON object",
                    "a JSON object of minimal customer identifiers",
                )
                .into());
            }
            let cost = match estimated_monthly_cost_usd {
                Some(n) => {
                    let text = n.to_string();
                    let v: Value = serde_json::from_str(&text).map_err(|_| {
                        CoreError::invalid("estimated_monthly_cost_usd", text.clone(), "a number")
                    })?;
                    Some(v)
                }
                None => None,
            };
            let request = Request {
                state: State::Submitted,
                requester_user_id: actor.id.clone(),
                commercial_owner_user_id: commercial_owner_user_id.into(),
                infra_owner_group: infra_owner_group.into(),
                customer_ref: customer_ref.0.clone(),
                requested_size: requested_size.into(),
                quantity,
                region: region.into(),
                needed_by_date: needed_by_date.map(|d| d.to_string()),
                expected_duration_days,
                estimated_monthly_cost_usd: cost,
                customer_confirmation_deadline_at: None,
                cancellation_reason: None,
                cancellation_authorizer_user_id: None,
                procurement_started_at: None,
            };
            let (id, existed) = store::create(request, &actor, idempotency_key)?;
            let mut out = store::describe(&id, 20)?;
            out["replayed"] = existed.into();
            Ok(JsonB(out))
        };
        run().map_err(fail)
    }

    /// Record an event with permission checks and idempotency: a retried `idempotency_key`
    /// returns the first result and writes nothing. A trusted session may pass `on_behalf_of`
    /// (e.g. the Slack user behind a button).
    #[pg_extern(volatile, security_definer)]
    #[search_path(pg_catalog, pg_temp)]
    fn record_capacity_event(
        request_id: &str,
        event_type: &str,
        payload: default!(JsonB, "'{}'"),
        idempotency_key: default!(Option<&str>, "NULL"),
        on_behalf_of: default!(Option<&str>, "NULL"),
    ) -> Result<JsonB, ErrorReport> {
        let run = || -> Result<JsonB, CapacityError> {
            let actor = core_store::acting_actor(on_behalf_of)?;
            let event = parse_event(event_type)?;
            let applied = store::apply(
                request_id,
                event,
                payload.0.clone(),
                &actor,
                idempotency_key,
            )?;
            Ok(result(&applied))
        };
        run().map_err(fail)
    }

    /// The raw reducer entry point for trusted sessions (operators, integrations): applies the
    /// event as the session's actor with an admin's standing. Users call
    /// `capacity.record_capacity_event`. (SQL wrapper: `capacity.apply_event(text, capacity.cr_event, jsonb)`.)
    #[pg_extern(volatile, security_definer, name = "apply_event_by_name")]
    #[search_path(pg_catalog, pg_temp)]
    fn apply_event_by_name(
        request_id: &str,
        event: &str,
        payload: default!(JsonB, "'{}'"),
    ) -> Result<JsonB, ErrorReport> {
        let run = || -> Result<JsonB, CapacityError> {
            let session = core_store::session_actor(true)?;
            if !session.trusted {
                return Err(CoreError::PermissionDenied {
                    actor: session.id,
                    action: "call capacity.apply_event".into(),
                    allowed: "trusted sessions only; use capacity.record_capacity_event".into(),
                }
                .into());
            }
            let applied = store::apply(
                request_id,
                parse_event(event)?,
                payload.0.clone(),
                &session,
                None,
            )?;
            Ok(result(&applied))
        };
        run().map_err(fail)
    }

    /// The request, its `recent_events` latest events and the events it accepts now. Runs with
    /// the caller's rights: a request the caller may not see does not exist (P0002).
    #[pg_extern(stable)]
    fn get_capacity_request(
        request_id: &str,
        recent_events: default!(i32, "20"),
    ) -> Result<JsonB, ErrorReport> {
        if !(1..=1000).contains(&recent_events) {
            return Err(fail(CoreError::invalid(
                "recent_events",
                recent_events.to_string(),
                "1 to 1000",
            )));
        }
        store::describe(request_id, recent_events as i64)
            .map(JsonB)
            .map_err(fail)
    }

    /// Emit CUSTOMER_CONFIRMATION_TIMEOUT for every passed deadline (→ EXPIRED, with a
    /// cancellation-decision task for the commercial owner) and warn requests close to theirs.
    /// Idempotent; overlapping runs skip each other's rows.
    #[pg_extern(volatile)]
    fn run_capacity_request_timers() -> Result<JsonB, ErrorReport> {
        store::run_timers().map(JsonB).map_err(fail)
    }

    /// Who am I to this request (for UIs): requester / owner / infra / admin flags.
    #[pg_extern(stable)]
    fn my_standing(request_id: &str) -> Result<JsonB, ErrorReport> {
        let run = || -> Result<JsonB, CapacityError> {
            let actor: Actor = core_store::session_actor(true)?;
            let (r, o, g) = store::parties(request_id)?;
            let s = store::standing(&actor, &r, &o, &g)?;
            Ok(JsonB(json!({
                "actor": actor.id, "requester": s.is_requester, "commercial_owner": s.is_commercial_owner,
                "infra_group": s.in_infra_group, "admin": s.is_admin,
            })))
        };
        run().map_err(fail)
    }
}

pgrx::extension_sql_file!(
    "../../sql/capacity_api.sql",
    name = "capacity_api",
    requires = [
        "capacity_tables",
        "outbox_api",
        capacity::apply_event_by_name,
        capacity::get_capacity_request,
        capacity::create_capacity_request,
        capacity::record_capacity_event,
        capacity::run_capacity_request_timers
    ]
);
