//! Projections of a request into Slack and Linear, through the outbox. Enqueued in the
//! transition's transaction; the response handlers store the Slack thread ts and the Linear
//! issue id. Replies and comments enqueued before those ids are known are parked
//! (`next_attempt_at = 'infinity'`) and released by the handler that learns the id.

use pgrx::spi::SpiClient;
use pgrx::JsonB;
use serde_json::Value;

use super::machine::State;
use super::{linear, slack};
use crate::core::error::{CoreError, CoreResult};
use crate::core::outbox::delivery::NewDelivery;
use crate::core::outbox::handlers::{Handler, HandlerCall, Outcome};
use crate::core::outbox::store as outbox;
use crate::core::store as settings;

pub const HANDLERS: &[(&str, Handler)] = &[
    ("capacity.slack_root", slack_root),
    ("capacity.slack_reply", slack_reply),
    ("capacity.linear_issue", linear_issue),
    ("capacity.linear_comment", linear_comment),
];

/// Slack's errors that pass (tried again); any other `ok: false` waits for its cause to be fixed.
const SLACK_TRANSIENT: &[&str] = &[
    "internal_error",
    "fatal_error",
    "service_unavailable",
    "request_timeout",
    "ratelimited",
];

/// Slack answers HTTP 200 with `ok: false` when it posted nothing (invalid_auth,
/// channel_not_found, not_in_channel, ...): the delivery is not delivered (CoreError::Refused).
fn slack_posted(call: &HandlerCall<'_>) -> CoreResult<Value> {
    let response = call.response.clone().unwrap_or(Value::Null);
    if response["ok"].as_bool() == Some(true) {
        return Ok(response);
    }
    let error: String = response["error"]
        .as_str()
        .unwrap_or("no ok: true in its answer")
        .chars()
        .take(100)
        .collect();
    Err(CoreError::Refused {
        service: "Slack".into(),
        transient: SLACK_TRANSIENT.contains(&error.as_str()),
        answer: error,
        hint: "check capacity.slack_channel (the bot must be in it) and the secret capacity.slack_token_secret names; \
               then flowgate.replay_dead() with this delivery's id (nothing was posted)"
            .into(),
    })
}

/// Linear answers HTTP 200 with an `errors` list when it did nothing: the delivery is not
/// delivered (rate limits are tried again).
fn linear_done(call: &HandlerCall<'_>) -> CoreResult<Value> {
    let response = call.response.clone().unwrap_or(Value::Null);
    let Some(errors) = response.get("errors").filter(|e| !e.is_null()) else {
        return Ok(response);
    };
    let text = errors.to_string();
    Err(CoreError::Refused {
        service: "Linear".into(),
        transient: text.contains("RATELIMITED"),
        answer: text.chars().take(300).collect(),
        hint: "check capacity.linear_team_id and the secret capacity.linear_token_secret names; \
               then flowgate.replay_dead() with this delivery's id (nothing was created)"
            .into(),
    })
}

/// A thread reply or warning: posted, or refused (`slack_posted`).
fn slack_reply(_client: &mut SpiClient<'_>, call: &HandlerCall<'_>) -> CoreResult<()> {
    if delivered(call) {
        slack_posted(call)?;
    }
    Ok(())
}

/// A comment on the request's issue: created, or refused (`linear_done`).
fn linear_comment(_client: &mut SpiClient<'_>, call: &HandlerCall<'_>) -> CoreResult<()> {
    if delivered(call) {
        linear_done(call)?;
    }
    Ok(())
}

fn setting(key: &str) -> CoreResult<String> {
    Ok(settings::get_text(key)?.trim().to_string())
}

/// Enqueue the Slack and Linear projections of one announced transition.
pub fn announce(
    client: &mut SpiClient<'_>,
    id: &str,
    event: &Value,
    from: Option<State>,
    to: State,
) -> CoreResult<()> {
    let targets = settings::read_settings(&["capacity.slack_channel", "capacity.linear_team_id"])?;
    let channel = targets.text("capacity.slack_channel")?.trim().to_owned();
    let team = targets.text("capacity.linear_team_id")?.trim().to_owned();
    if channel.is_empty() && team.is_empty() {
        return Ok(());
    }
    let rows = client.select(
        "SELECT to_jsonb(r) FROM capacity.capacity_requests r WHERE id = $1",
        Some(1),
        &[id.into()],
    )?;
    let request = rows
        .first()
        .get_one::<JsonB>()?
        .map(|j| j.0)
        .unwrap_or(Value::Null);
    let event_id = event["id"].as_str().unwrap_or("unknown").to_string();
    let event_type = event["event_type"].as_str().unwrap_or("?").to_string();
    let actor = event["actor_id"].as_str().unwrap_or("?").to_string();

    if !channel.is_empty() {
        let url = format!(
            "{}/chat.postMessage",
            setting("capacity.slack_api_url")?.trim_end_matches('/')
        );
        let from = root_first(
            client,
            from,
            &request["slack_thread_ts"],
            &format!("capacity:{id}:slack:root"),
        )?;
        let mut d = match from {
            None => {
                let mut d = NewDelivery::post_json(
                    "capacity",
                    id,
                    &url,
                    slack::root_message(&channel, id, &request),
                    &format!("capacity:{id}:slack:root"),
                );
                d.handler = Some("capacity.slack_root".into());
                d
            }
            Some(from) => {
                let ts = request["slack_thread_ts"].as_str();
                let body = slack::transition_reply(&channel, ts, id, from, to, &event_type, &actor);
                let mut d = NewDelivery::post_json(
                    "capacity",
                    id,
                    &url,
                    body,
                    &format!("capacity:{id}:slack:reply:{event_id}"),
                );
                d.parked = ts.is_none();
                d.handler = Some("capacity.slack_reply".into());
                d
            }
        };
        d.auth_secret = Some(setting("capacity.slack_token_secret")?);
        // Slack allows about one message per second per channel (flowgate.flow_limits).
        d.flow_key = Some(format!("slack:{channel}"));
        d.headers.insert(
            "Content-Type".into(),
            "application/json; charset=utf-8".into(),
        );
        outbox::enqueue(client, &d)?;
    }
    if !team.is_empty() {
        let url = setting("capacity.linear_api_url")?;
        let from = root_first(
            client,
            from,
            &request["linear_issue_id"],
            &format!("capacity:{id}:linear:issue"),
        )?;
        let mut d = match from {
            None => {
                let mut d = NewDelivery::post_json(
                    "capacity",
                    id,
                    &url,
                    linear::issue_create(&team, id, &request),
                    &format!("capacity:{id}:linear:issue"),
                );
                d.handler = Some("capacity.linear_issue".into());
                d
            }
            Some(from) => {
                let issue = request["linear_issue_id"].as_str();
                let text = format!(
                    "{} → {} ({event_type} by {})",
                    from.as_str(),
                    to.as_str(),
                    linear::markdown_literal(&actor)
                );
                let mut d = NewDelivery::post_json(
                    "capacity",
                    id,
                    &url,
                    linear::comment_create(issue, &text),
                    &format!("capacity:{id}:linear:comment:{event_id}"),
                );
                d.parked = issue.is_none();
                d.handler = Some("capacity.linear_comment".into());
                d
            }
        };
        // Linear API keys go in Authorization without a scheme.
        d.auth_secret = Some(setting("capacity.linear_token_secret")?);
        d.auth_scheme = String::new();
        outbox::enqueue(client, &d)?;
    }
    Ok(())
}

/// A thread reply warning that the customer's confirmation is due soon (inside the warning window).
pub fn warn(client: &mut SpiClient<'_>, id: &str, deadline: &str) -> CoreResult<()> {
    let channel = setting("capacity.slack_channel")?;
    if channel.is_empty() {
        return Ok(());
    }
    let rows = client.select(
        "SELECT slack_thread_ts, commercial_owner_user_id FROM capacity.capacity_requests WHERE id = $1",
        Some(1),
        &[id.into()],
    )?;
    let (ts, owner) = rows.first().get_two::<String, String>()?;
    let body = slack::confirmation_warning(
        &channel,
        ts.as_deref(),
        id,
        deadline,
        &owner.unwrap_or_default(),
    );
    let url = format!(
        "{}/chat.postMessage",
        setting("capacity.slack_api_url")?.trim_end_matches('/')
    );
    let mut d = NewDelivery::post_json(
        "capacity",
        id,
        &url,
        body,
        &format!("capacity:{id}:slack:reply:warning:{deadline}"),
    );
    d.parked = ts.is_none();
    d.handler = Some("capacity.slack_reply".into());
    d.auth_secret = Some(setting("capacity.slack_token_secret")?);
    // Paced with the channel's other messages (flowgate.flow_limits), as announce does.
    d.flow_key = Some(format!("slack:{channel}"));
    d.headers.insert(
        "Content-Type".into(),
        "application/json; charset=utf-8".into(),
    );
    outbox::enqueue(client, &d)?;
    Ok(())
}

/// Treat a transition as the request's first announcement when its root (Slack message or
/// Linear issue) was never enqueued: the integration was enabled after the request was
/// created. Then the root is posted now and later replies have something to wait for.
fn root_first(
    client: &SpiClient<'_>,
    from: Option<State>,
    root_id: &Value,
    root_key: &str,
) -> CoreResult<Option<State>> {
    if from.is_none() || !root_id.is_null() {
        return Ok(from);
    }
    let rows = client.select(
        "SELECT FROM flowgate.deliveries WHERE idempotency_key = $1",
        Some(1),
        &[root_key.into()],
    )?;
    Ok(if rows.is_empty() { None } else { from })
}

fn delivered(call: &HandlerCall<'_>) -> bool {
    call.outcome == Outcome::Delivered
}

/// Slack answered chat.postMessage for the root message: keep channel and ts, release replies.
fn slack_root(client: &mut SpiClient<'_>, call: &HandlerCall<'_>) -> CoreResult<()> {
    if !delivered(call) {
        return Ok(());
    }
    let response = slack_posted(call)?;
    let (channel, ts) = match (response["channel"].as_str(), response["ts"].as_str()) {
        (Some(c), Some(t)) => (c.to_string(), t.to_string()),
        _ => {
            return Err(CoreError::MissingDependency {
                feature: format!("threading the Slack messages of request {}", call.owner_id),
                dependency: "a chat.postMessage answer with channel and ts".into(),
                hint: "check capacity.slack_api_url points at Slack's Web API, then flowgate.rerun_handlers()".into(),
            })
        }
    };
    client.update(
        "UPDATE capacity.capacity_requests SET slack_channel_id = $2, slack_thread_ts = $3 WHERE id = $1",
        None,
        &[call.owner_id.into(), channel.into(), ts.clone().into()],
    )?;
    client.update(
        "UPDATE flowgate.deliveries SET body = jsonb_set(body, '{thread_ts}', to_jsonb($2::text)), next_attempt_at = now(), updated_at = now() \
         WHERE owner_module = 'capacity' AND owner_id = $1 AND status = 'pending' AND next_attempt_at = 'infinity' \
           AND idempotency_key LIKE 'capacity:' || $1 || ':slack:reply:%'",
        None,
        &[call.owner_id.into(), ts.into()],
    )?;
    Ok(())
}

/// Linear created the issue: keep its id, release the comments.
fn linear_issue(client: &mut SpiClient<'_>, call: &HandlerCall<'_>) -> CoreResult<()> {
    if !delivered(call) {
        return Ok(());
    }
    let answer = linear_done(call)?;
    let issue =
        linear::created_issue_id(&answer).map_err(|problem| CoreError::MissingDependency {
            feature: format!("the Linear issue of request {}", call.owner_id),
            dependency: format!("an issueCreate answer with the issue's id ({problem})"),
            hint: "check capacity.linear_api_url points at Linear's GraphQL API".into(),
        })?;
    client.update(
        "UPDATE capacity.capacity_requests SET linear_issue_id = $2 WHERE id = $1",
        None,
        &[call.owner_id.into(), issue.clone().into()],
    )?;
    client.update(
        "UPDATE flowgate.deliveries SET body = jsonb_set(body, '{variables,input,issueId}', to_jsonb($2::text)), next_attempt_at = now(), updated_at = now() \
         WHERE owner_module = 'capacity' AND owner_id = $1 AND status = 'pending' AND next_attempt_at = 'infinity' \
           AND idempotency_key LIKE 'capacity:' || $1 || ':linear:comment:%'",
        None,
        &[call.owner_id.into(), issue.into()],
    )?;
    Ok(())
}
