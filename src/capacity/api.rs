//! SQL surface of the capacity module (schema `capacity`). The write functions are SECURITY
//! DEFINER with a pinned search_path: callers (PostgREST's `authenticated`) cannot write the
//! tables directly; these functions decide who may do what from `flowgate.current_actor()`.

#[pgrx::pg_schema]
mod capacity {
    use flowgate_macros::documented;
    use pgrx::pg_sys::panic::ErrorReport;
    use pgrx::prelude::*;
    use pgrx::JsonB;
    use serde_json::{json, Value};

    use crate::capacity::flow::Request;
    use crate::capacity::machine::{allowed_events, Event, State};
    use crate::capacity::{replays, store};
    use crate::core::actor::{validate_actor_id, Actor};
    use crate::core::answer::JsonbAnswer;
    use crate::core::args::{check_size, required, RawJsonb, MAX_JSON_ARG_BYTES};
    use crate::core::error::{CoreError, SqlError};
    use crate::core::eventstore::Applied;
    use crate::core::store as core_store;

    fn parse_event(name: &str) -> Result<Event, CoreError> {
        crate::capacity::flow::check_lookup("event_type", name)?;
        Event::parse(name).ok_or_else(|| {
            CoreError::invalid(
                "event_type",
                format!(
                    "{} is not a capacity event",
                    crate::core::error::quoted(name)
                ),
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
    fn result(applied: Applied<Request>) -> Result<JsonbAnswer, CoreError> {
        let allowed: Vec<String> = allowed_events(applied.state.state)
            .iter()
            .map(|e| e.as_str())
            .collect();
        JsonbAnswer::from_value(json!({
            "request": applied.row,
            "event": applied.event,
            "replayed": applied.replayed,
            "allowed_events": allowed,
        }))
    }

    /// Create a Capacity Request (id `CR-<year>-<number>`: the year in UTC, the number at least 6
    /// digits) as the caller, or as `requester_user_id` from a trusted session; returns it with its
    /// events and allowed events. A retried `idempotency_key` returns the first request. 42501 for
    /// anonymous callers, 22023 for bad arguments (e.g. the requester named as commercial owner).
    ///
    /// The request starts in COMMERCIAL_APPROVAL_REQUIRED, or TECHNICAL_REVIEW_REQUIRED when its
    /// cost is under `capacity.auto_approve_below_usd` (a requester's own estimate counts only with
    /// `capacity.auto_approve_requester_estimates`). A key reused for a different request is 23505.
    #[documented]
    #[pg_extern(volatile, security_definer)]
    #[search_path(pg_catalog, pg_temp)]
    #[allow(clippy::too_many_arguments)]
    fn create_capacity_request(
        commercial_owner_user_id: Option<&str>,
        infra_owner_group: Option<&str>,
        requested_size: Option<&str>,
        quantity: Option<i32>,
        region: Option<&str>,
        customer_ref: default!(Option<RawJsonb>, "'{}'"),
        needed_by_date: default!(Option<pgrx::datum::Date>, "NULL"),
        expected_duration_days: default!(Option<i32>, "NULL"),
        estimated_monthly_cost_usd: default!(Option<pgrx::AnyNumeric>, "NULL"),
        requester_user_id: default!(Option<&str>, "NULL"),
        idempotency_key: default!(Option<&str>, "NULL"),
    ) -> Result<JsonB, ErrorReport> {
        let run = || -> Result<JsonB, CoreError> {
            let actor = core_store::acting_actor(requester_user_id)?;
            store::refuse_anonymous(&actor)?;
            let commercial_owner_user_id =
                required("commercial_owner_user_id", commercial_owner_user_id)?;
            let infra_owner_group = required("infra_owner_group", infra_owner_group)?;
            let requested_size = required("requested_size", requested_size)?;
            let quantity = required("quantity", quantity)?;
            let region = required("region", region)?;
            let customer_ref = required("customer_ref", customer_ref)?;
            store::check_user_key(idempotency_key)?;
            validate_actor_id("commercial_owner_user_id", commercial_owner_user_id)?;
            if commercial_owner_user_id == actor.id && !actor.trusted {
                return Err(CoreError::invalid(
                    "commercial_owner_user_id",
                    "the requester cannot be the commercial owner of their own request",
                    "the account executive or sales lead who owns the commercial decision",
                ));
            }
            let customer_ref = customer_ref.value("customer_ref", MAX_JSON_ARG_BYTES)?;
            crate::capacity::flow::check_customer_ref(&customer_ref)?;
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
                customer_ref,
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
        run().map_err(|e| e.report("capacity"))
    }

    /// Record an event on a request after checking the caller's permission; returns
    /// `{request, event, replayed, allowed_events}`. A retried `idempotency_key` returns the first
    /// result and writes nothing. 42501 when the caller may not, 55000 when the request's state
    /// does not accept the event, P0002 for an unknown request.
    ///
    /// A trusted session may pass `on_behalf_of` (e.g. the Slack user behind a button).
    #[documented]
    #[pg_extern(volatile, security_definer)]
    #[search_path(pg_catalog, pg_temp)]
    fn record_capacity_event(
        request_id: Option<&str>,
        event_type: Option<&str>,
        payload: default!(Option<RawJsonb>, "'{}'"),
        idempotency_key: default!(Option<&str>, "NULL"),
        on_behalf_of: default!(Option<&str>, "NULL"),
    ) -> Result<JsonbAnswer, ErrorReport> {
        let run = || -> Result<JsonbAnswer, CoreError> {
            let actor = core_store::acting_actor(on_behalf_of)?;
            store::refuse_anonymous(&actor)?;
            let request_id = required("request_id", request_id)?;
            let event_type = required("event_type", event_type)?;
            let payload = required("payload", payload)?;
            store::check_user_key(idempotency_key)?;
            let event = parse_event(event_type)?;
            // The size now; the conversion once the caller's standing on the request is known
            // (a stranger learns nothing, not even that the payload would not parse).
            check_size("payload", payload.size(), MAX_JSON_ARG_BYTES)?;
            let payload = || payload.value("payload", MAX_JSON_ARG_BYTES);
            let applied = store::apply(request_id, event, payload, &actor, idempotency_key)?;
            result(applied)
        };
        run().map_err(|e| e.report("capacity"))
    }

    /// The reducer entry point for trusted sessions (42501 otherwise), with the event named as
    /// text: apply one event to a request as the session's actor, with an admin's standing; returns
    /// `{request, event, replayed, allowed_events}`. Users call `capacity.record_capacity_event`,
    /// which adds per-actor permissions and idempotency.
    ///
    /// For operators and integrations; SQL callers usually go through its typed wrapper
    /// `capacity.apply_event(text, capacity.cr_event, jsonb)`.
    #[documented]
    #[pg_extern(volatile, security_definer, name = "apply_event_by_name")]
    #[search_path(pg_catalog, pg_temp)]
    fn apply_event_by_name(
        request_id: &str,
        event: &str,
        payload: default!(RawJsonb, "'{}'"),
    ) -> Result<JsonbAnswer, ErrorReport> {
        let run = || -> Result<JsonbAnswer, CoreError> {
            let session = core_store::session_actor(true)?;
            if !session.trusted {
                return Err(CoreError::PermissionDenied {
                    actor: session.id,
                    action: "call capacity.apply_event".into(),
                    allowed: "trusted sessions only; use capacity.record_capacity_event".into(),
                });
            }
            let payload = payload.value("payload", MAX_JSON_ARG_BYTES)?;
            let applied = store::apply(
                request_id,
                parse_event(event)?,
                || Ok(payload),
                &session,
                None,
            )?;
            result(applied)
        };
        run().map_err(|e| e.report("capacity"))
    }

    /// A request's current state, its `recent_events` latest events (1 to 1000) and the events it
    /// accepts now, as `{request, events, allowed_events}`. Runs with the caller's rights: a
    /// request the caller may not see does not exist (P0002).
    #[documented]
    #[pg_extern(stable)]
    #[search_path(pg_catalog, pg_temp)]
    fn get_capacity_request(
        request_id: Option<&str>,
        recent_events: default!(Option<i32>, "20"),
    ) -> Result<JsonB, ErrorReport> {
        let (request_id, recent_events) = required("request_id", request_id)
            .and_then(|r| Ok((r, required("recent_events", recent_events)?)))
            .map_err(|e| e.report("capacity"))?;
        if !(1..=1000).contains(&recent_events) {
            return Err(CoreError::invalid(
                "recent_events",
                recent_events.to_string(),
                "1 to 1000",
            )
            .report("capacity"));
        }
        store::describe(request_id, recent_events as i64)
            .map(JsonB)
            .map_err(|e| e.report("capacity"))
    }

    /// Expire requests past their customer confirmation deadline (CUSTOMER_CONFIRMATION_TIMEOUT,
    /// with a cancellation-decision task for the commercial owner) and warn those close to it;
    /// returns `{expired, warned}` counts. Idempotent; overlapping runs skip each other's rows.
    /// Owner only (the schedule runs it).
    ///
    /// `as_of` runs the timers as of another moment: what they will do at that time, with no
    /// deadline edited by hand.
    #[documented]
    #[pg_extern(volatile)]
    #[search_path(pg_catalog, pg_temp)]
    fn run_capacity_request_timers(
        as_of: default!(Option<pgrx::datum::TimestampWithTimeZone>, "NULL"),
    ) -> Result<JsonB, ErrorReport> {
        if let Some(t) = as_of.filter(|t| t.is_infinity() || t.is_neg_infinity()) {
            return Err(
                CoreError::invalid("as_of", t.to_iso_string(), "a finite time").report("capacity"),
            );
        }
        let as_of = as_of.map(|t| t.to_iso_string());
        crate::capacity::timers::run_timers(as_of.as_deref())
            .map(JsonB)
            .map_err(|e| e.report("capacity"))
    }

    /// The caller's own standing on a request, for UIs:
    /// `{actor, requester, commercial_owner, infra_group, admin}`. A request the caller has no part
    /// in does not exist (P0002), exactly as under the tables' row-level security.
    ///
    /// SECURITY DEFINER because group membership is not readable by callers; it reports only the
    /// caller's own standing.
    #[documented]
    #[pg_extern(stable, security_definer)]
    #[search_path(pg_catalog, pg_temp)]
    fn my_standing(request_id: Option<&str>) -> Result<JsonB, ErrorReport> {
        let run = || -> Result<JsonB, CoreError> {
            let request_id = required("request_id", request_id)?;
            let actor: Actor = core_store::session_actor(true)?;
            let s = store::standing(request_id, &actor)?;
            if !s.has_any() {
                return Err(CoreError::not_found("capacity request", request_id));
            }
            Ok(JsonB(json!({
                "actor": actor.id, "requester": s.is_requester, "commercial_owner": s.is_commercial_owner,
                "infra_group": s.in_infra_group, "admin": s.is_admin,
            })))
        };
        run().map_err(|e| e.report("capacity"))
    }

    /// The actor behind a verified Slack request: the actor the Slack user id is linked to
    /// (`flowgate.link_identity('slack', ...)`), else the Slack user id itself.
    /// Most bytes of a Slack request body: a slash command is a few hundred, an interaction
    /// payload (the message's blocks included) a few tens of KiB.
    const MAX_SLACK_BODY_BYTES: usize = 256 * 1024;

    fn slack_actor(user_id: &str) -> Result<Actor, CoreError> {
        validate_actor_id("Slack user_id", user_id)?;
        let linked = core_store::linked_actor("slack", user_id)?;
        Ok(Actor {
            id: linked.unwrap_or_else(|| user_id.to_string()),
            role: "slack".into(),
            source: crate::core::actor::ActorSource::OnBehalf,
            trusted: false,
            delegated_by: Some(format!("slack:{user_id}")),
            nameless: false,
            anonymous_sign_in: false,
        })
    }

    /// 42501 unless every Slack workspace named (the request's team, the user's own team) is
    /// one of `capacity.slack_team_ids`, when that is set: an app installed org-wide or used in a
    /// shared channel also hears users of other workspaces.
    fn check_slack_teams(teams: &[Option<&str>]) -> Result<(), CoreError> {
        let allowed = core_store::get_list("capacity.slack_team_ids")?;
        if allowed.is_empty() {
            return Ok(());
        }
        for team in teams {
            if !team.is_some_and(|t| allowed.iter().any(|a| a == t)) {
                return Err(CoreError::PermissionDenied {
                    actor: format!("a user of Slack workspace {}", team.unwrap_or("(none)")),
                    action: "use this Slack app".into(),
                    allowed: "users of the workspaces listed in capacity.slack_team_ids".into(),
                });
            }
        }
        Ok(())
    }

    /// A Slack handler's three arguments, none NULL (22023).
    fn slack_arguments<'a>(
        body: Option<&'a str>,
        request_timestamp: Option<&'a str>,
        signature: Option<&'a str>,
    ) -> Result<(&'a str, &'a str, &'a str), CoreError> {
        Ok((
            required("body", body)?,
            required("request_timestamp", request_timestamp)?,
            required("signature", signature)?,
        ))
    }

    fn verify_slack(body: &str, request_timestamp: &str, signature: &str) -> Result<(), CoreError> {
        // Anyone may call (Slack signs, it does not log in): the size first, so no caller makes
        // the database hash or parse a body no Slack request has.
        crate::core::args::check_text_size("Slack request body", body, MAX_SLACK_BODY_BYTES)?;
        crate::capacity::slack::check_header_sizes(request_timestamp, signature)?;
        let name = core_store::get_text("capacity.slack_signing_secret")?;
        let secret =
            Spi::connect(|client| crate::core::outbox::store::resolve_secret(client, &name))?
                .ok_or_else(|| {
                    CoreError::MissingDependency {
            feature: "Slack request verification".into(),
            dependency: format!("the secret {name:?}"),
            hint: "store the Slack app's signing secret in Vault or with flowgate.set_secret()"
                .into(),
        }
                })?;
        // The clock, not the transaction's start: a transaction held open does not stretch the
        // window a signed request is accepted in.
        let now = store::clock_now()?.timestamp();
        crate::capacity::slack::verify(&secret, request_timestamp, body, signature, now)
    }

    /// What Slack shows the user for a refusal decided before anything was written (not
    /// allowed, not permitted, unknown request). Other errors abort the transaction.
    fn ephemeral(core: CoreError) -> Result<JsonB, CoreError> {
        match core {
            CoreError::IllegalTransition { .. }
            | CoreError::PermissionDenied { .. }
            | CoreError::NotFound { .. } => {
                let hint = core.hint().map(|h| format!("\n{h}")).unwrap_or_default();
                Ok(JsonB(json!({
                    "response_type": "ephemeral",
                    "text": crate::capacity::slack::escape(&format!("{core}{hint}")),
                })))
            }
            _ => Err(core),
        }
    }

    /// Slack slash command
    /// (`/capacity create owner=@ana group=infra size=24XL qty=2 region=us-east-1 cost=48000`):
    /// creates a Capacity Request for the Slack user and returns Slack's response JSON. `body` is
    /// the raw form-encoded request body, `request_timestamp` and `signature` its Slack headers;
    /// 42501 unless signed by the app within 5 minutes.
    ///
    /// The headers are X-Slack-Request-Timestamp and X-Slack-Signature. The Slack user acts as the
    /// actor their Slack id is linked to, else as the Slack id; the trigger_id is the idempotency
    /// key. Usage errors and refusals decided before anything is written come back as an ephemeral
    /// message. `/capacity link CODE` links the Slack user to whoever asked for the code signed in
    /// (`flowgate.request_identity_link`). The same signed request sent again within its window
    /// gets the answer it got and changes nothing (`capacity.slack_requests`).
    #[documented]
    #[pg_extern(volatile, security_definer)]
    #[search_path(pg_catalog, pg_temp)]
    fn handle_slack_command(
        body: Option<&str>,
        request_timestamp: Option<&str>,
        signature: Option<&str>,
    ) -> Result<JsonB, ErrorReport> {
        let run = || -> Result<JsonB, CoreError> {
            let (body, request_timestamp, signature) =
                slack_arguments(body, request_timestamp, signature)?;
            verify_slack(body, request_timestamp, signature)?;
            let form = |k: &str| crate::capacity::slack::form_field(body, k);
            check_slack_teams(&[form("team_id").as_deref()])?;
            once_per_request(signature, || slack_command(&form))
        };
        run().map_err(|e| e.report("capacity"))
    }

    /// Handle a verified Slack request (by `signature`) once: the same request sent again gets
    /// the answer it got, even when what it acts on has moved on since (a refused click stays
    /// refused; see `replays::slack_replay`).
    fn once_per_request(
        signature: &str,
        handle: impl FnOnce() -> Result<JsonB, CoreError>,
    ) -> Result<JsonB, CoreError> {
        if let Some(answer) = replays::slack_replay(signature)? {
            return Ok(JsonB(answer));
        }
        let answer = handle()?;
        replays::slack_answered(signature, &answer.0)?;
        Ok(answer)
    }

    /// A verified slash command from a served workspace, handled for the first time.
    fn slack_command(form: &dyn Fn(&str) -> Option<String>) -> Result<JsonB, CoreError> {
        let user = form("user_id").unwrap_or_default();
        let actor = slack_actor(&user)?;
        let text = form("text").unwrap_or_default();
        if let Some(code) = crate::capacity::slack::link_command(&text) {
            // The Slack user Slack signed for redeems the code its owner asked for signed in.
            let reply = match core_store::redeem_link_code("slack", &user, &code) {
                Ok(link) => crate::capacity::slack::link_reply(
                    &user,
                    link["actor_id"].as_str().unwrap_or("?"),
                ),
                // Nothing was written: the answer says why, privately.
                Err(
                    e @ (CoreError::PermissionDenied { .. } | CoreError::InvalidArgument { .. }),
                ) => crate::capacity::slack::escape(&format!("{e}")),
                Err(e) => return Err(e),
            };
            return Ok(JsonB(json!({"response_type": "ephemeral", "text": reply})));
        }
        let cmd = match crate::capacity::slack::parse_command(&text) {
            Ok(c) => c,
            Err(e) => {
                let hint = e.hint().map(|h| format!("\n{h}")).unwrap_or_default();
                return Ok(JsonB(json!({
                    "response_type": "ephemeral",
                    "text": crate::capacity::slack::escape(&format!("{e}{hint}")),
                })));
            }
        };
        // The owner is named as a Slack user: the same person as their linked actor.
        let owner = slack_actor(&cmd.commercial_owner)?.id;
        if owner == actor.id {
            return Ok(JsonB(json!({
                "response_type": "ephemeral",
                "text": "you cannot be the commercial owner of your own request",
            })));
        }
        let request = Request {
            state: State::Submitted,
            requester_user_id: actor.id.clone(),
            commercial_owner_user_id: owner,
            infra_owner_group: cmd.infra_group,
            customer_ref: json!({}),
            requested_size: cmd.size,
            quantity: cmd.quantity,
            region: cmd.region,
            needed_by_date: None,
            expected_duration_days: None,
            estimated_monthly_cost_usd: cmd.monthly_cost_usd.map(|c| json!(c)),
            customer_confirmation_deadline_at: None,
            cancellation_reason: None,
            cancellation_authorizer_user_id: None,
            procurement_started_at: None,
        };
        // Out-of-bounds fields, or an owner who is not a commercial approver, get the usage
        // privately, like a malformed command (both are checked again by the creation).
        if let Err(e) = request
            .check_new()
            .and_then(|_| store::check_commercial_owner(&request.commercial_owner_user_id))
        {
            let hint = e.hint().map(|h| format!("\n{h}")).unwrap_or_default();
            return Ok(JsonB(json!({
                "response_type": "ephemeral",
                "text": crate::capacity::slack::escape(&format!("{e}{hint}")),
            })));
        }
        let key = form("trigger_id").map(|t| format!("slack:{t}"));
        // A key the events table cannot hold is refused here (22023), not by its CHECK.
        store::check_user_key(key.as_deref())?;
        let (id, _) = match store::create(request, &actor, key.as_deref()) {
            Ok(created) => created,
            Err(e) => return ephemeral(e),
        };
        let state = store::describe(&id, 1)?["request"]["state"].clone();
        Ok(JsonB(
            json!({"response_type": "in_channel", "text": format!("Created {id} ({})", state.as_str().unwrap_or("?"))}),
        ))
    }

    /// Slack interactivity (a button on a request message): records the button's event, value
    /// `<request id>:<EVENT>`, for the clicking Slack user, once per click, and returns Slack's
    /// response JSON. `body` is the raw form-encoded request (`payload=<json>`), verified like a
    /// slash command (42501 unless signed by the app within 5 minutes).
    ///
    /// The click's action_ts is the idempotency key. Refusals decided before anything was written
    /// (not allowed, not permitted, unknown request) come back as an ephemeral message; other
    /// errors abort the transaction. The same signed click sent again within its window gets the
    /// answer it got and changes nothing, even when the request has moved on since: a refused
    /// click stays refused (`capacity.slack_requests`).
    #[documented]
    #[pg_extern(volatile, security_definer)]
    #[search_path(pg_catalog, pg_temp)]
    fn handle_slack_action(
        body: Option<&str>,
        request_timestamp: Option<&str>,
        signature: Option<&str>,
    ) -> Result<JsonB, ErrorReport> {
        let run = || -> Result<JsonB, CoreError> {
            let (body, request_timestamp, signature) =
                slack_arguments(body, request_timestamp, signature)?;
            verify_slack(body, request_timestamp, signature)?;
            let payload: Value = crate::capacity::slack::form_field(body, "payload")
                .and_then(|p| serde_json::from_str(&p).ok())
                .ok_or_else(|| {
                    CoreError::invalid(
                        "Slack interaction",
                        "no JSON payload field",
                        "payload=<JSON> as Slack sends it",
                    )
                })?;
            if payload["type"] != "block_actions" {
                return Err(CoreError::invalid(
                    "Slack interaction type",
                    format!("{}", payload["type"]),
                    "block_actions",
                ));
            }
            let mut teams = vec![payload["team"]["id"].as_str()];
            if let Some(own) = payload["user"]["team_id"].as_str() {
                teams.push(Some(own));
            }
            check_slack_teams(&teams)?;
            once_per_request(signature, || slack_action(&payload))
        };
        run().map_err(|e| e.report("capacity"))
    }

    /// A verified click from a served workspace, handled for the first time.
    fn slack_action(payload: &Value) -> Result<JsonB, CoreError> {
        let slack_user = payload["user"]["id"].as_str().unwrap_or("");
        let actor = slack_actor(slack_user)?;
        let action = &payload["actions"][0];
        let (id, event) =
            crate::capacity::slack::parse_action_value(action["value"].as_str().unwrap_or(""))?;
        // One Slack app sends every interactive element's clicks to one URL: only capacity's
        // own buttons (`capacity:<EVENT>`, naming the value's event) act on a request.
        let action_id = action["action_id"].as_str().unwrap_or("");
        let own = format!("capacity:{}", event.as_str());
        if action_id != own {
            return Err(CoreError::invalid(
                "Slack action_id",
                crate::core::error::quoted(action_id),
                format!("{own} (a capacity button)"),
            ));
        }
        let key = format!("slack:{}", action["action_ts"].as_str().unwrap_or(""));
        store::check_user_key(Some(&key))?;
        let note = json!({"via": "slack", "channel": payload["channel"]["id"], "message_ts": payload["message"]["ts"]});
        match store::apply(&id, event, || Ok(note), &actor, Some(&key)) {
            Ok(applied) => Ok(JsonB(json!({
                "response_type": "in_channel",
                "replace_original": false,
                "text": format!(
                    "{}: {} by {} → {}",
                    crate::capacity::slack::escape(&id),
                    event.as_str(),
                    crate::capacity::slack::mention(slack_user),
                    applied.state.state.as_str()
                ),
            }))),
            Err(e) => ephemeral(e),
        }
    }
}
