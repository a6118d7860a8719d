//! Slack: request signature verification (v0, HMAC-SHA256, 5-minute replay window), slash
//! command parsing, and the message payloads flowgate posts (chat.postMessage). Pure.

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use super::machine::{allowed_events, Event, State};
use crate::core::error::CoreError;

/// Slack's replay window: requests older (or newer) than this are refused.
pub const REPLAY_WINDOW_SECS: i64 = 300;

fn forbidden(why: &str) -> CoreError {
    CoreError::PermissionDenied {
        actor: "slack request".into(),
        action: format!("be accepted ({why})"),
        allowed: "requests signed with the app's signing secret (X-Slack-Signature v0) within 5 minutes of X-Slack-Request-Timestamp".into(),
    }
}

/// Verify `X-Slack-Signature` for `body` sent at `timestamp` (Unix seconds, as text), given
/// the signing secret and the current time.
pub fn verify(
    signing_secret: &str,
    timestamp: &str,
    body: &str,
    signature: &str,
    now_unix: i64,
) -> Result<(), CoreError> {
    if signing_secret.is_empty() {
        return Err(forbidden("no signing secret is configured"));
    }
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| forbidden("the timestamp is not a number"))?;
    if now_unix.abs_diff(ts) > REPLAY_WINDOW_SECS as u64 {
        return Err(forbidden("the timestamp is outside the 5-minute window"));
    }
    let hex = signature
        .strip_prefix("v0=")
        .ok_or_else(|| forbidden("the signature is not v0"))?;
    let expected = decode_hex(hex).ok_or_else(|| forbidden("the signature is not hex"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(signing_secret.as_bytes())
        .map_err(|_| forbidden("no signing secret"))?;
    mac.update(b"v0:");
    mac.update(timestamp.trim().as_bytes());
    mac.update(b":");
    mac.update(body.as_bytes());
    mac.verify_slice(&expected)
        .map_err(|_| forbidden("the signature does not match"))
}

/// Longest X-Slack-Request-Timestamp accepted (Unix seconds with room to spare).
const MAX_TIMESTAMP_BYTES: usize = 20;
/// Longest X-Slack-Signature accepted: `v0=` and 64 hex digits.
const MAX_SIGNATURE_BYTES: usize = 3 + 64;

/// 22023 unless the two Slack headers fit their formats' sizes: checked before anything is
/// hashed, decoded or looked up.
pub fn check_header_sizes(timestamp: &str, signature: &str) -> Result<(), CoreError> {
    crate::core::args::check_text_size("request_timestamp", timestamp, MAX_TIMESTAMP_BYTES)?;
    crate::core::args::check_text_size("signature", signature, MAX_SIGNATURE_BYTES)
}

/// The v0 signature of `body` (for tests and for documentation of the scheme).
pub fn sign(signing_secret: &str, timestamp: &str, body: &str) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(signing_secret.as_bytes()) else {
        return String::new();
    };
    mac.update(format!("v0:{timestamp}:{body}").as_bytes());
    let bytes = mac.finalize().into_bytes();
    format!(
        "v0={}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    // Hex digits only: from_str_radix would also take a sign ("+a"), another spelling of a
    // signature that a request sent again could use.
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The value of `name` in an application/x-www-form-urlencoded body.
pub fn form_field(body: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(body.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `/capacity create owner=<@U123> group=infra size=24XL qty=2 region=us-east-1 cost=48000`
#[derive(Debug, Clone, PartialEq)]
pub struct CreateCommand {
    pub commercial_owner: String,
    pub infra_group: String,
    pub size: String,
    pub quantity: i32,
    pub region: String,
    pub monthly_cost_usd: Option<f64>,
}

pub const COMMAND_USAGE: &str =
    "create owner=@user group=<infra group> size=<e.g. 24XL> qty=<n> region=<e.g. us-east-1> [cost=<USD per month>], or link <code from flowgate.request_identity_link('slack')>";

/// The code of `/capacity link CODE` (its groups may be typed apart), when the slash command is
/// that.
pub fn link_command(text: &str) -> Option<String> {
    let mut words = text.split_whitespace();
    if !words.next()?.eq_ignore_ascii_case("link") {
        return None;
    }
    let code: String = words.collect();
    (!code.is_empty()).then_some(code)
}

/// The private answer to `/capacity link CODE` once linked.
pub fn link_reply(user_id: &str, actor: &str) -> String {
    format!(
        "Linked: as {}, you act from Slack as {}.",
        mention(user_id),
        literal(actor)
    )
}

/// Parse the text of the slash command.
pub fn parse_command(text: &str) -> Result<CreateCommand, CoreError> {
    let bad = |p: String| CoreError::invalid("slash command", p, COMMAND_USAGE);
    let mut words = text.split_whitespace();
    match words.next() {
        Some("create") => {}
        other => {
            return Err(bad(format!(
                "unknown subcommand {}",
                crate::core::error::quoted(other.unwrap_or(""))
            )))
        }
    }
    let (mut owner, mut group, mut size, mut qty, mut region, mut cost) =
        (None, None, None, None, None, None);
    for w in words {
        let (k, v) = w.split_once('=').ok_or_else(|| {
            bad(format!(
                "{} is not key=value",
                crate::core::error::quoted(w)
            ))
        })?;
        match k {
            // Slack escapes mentions as <@U123|name> or <@U123>.
            "owner" => {
                owner = Some(
                    v.trim_start_matches("<@")
                        .trim_end_matches('>')
                        .split('|')
                        .next()
                        .unwrap_or("")
                        .trim_start_matches('@')
                        .to_string(),
                )
            }
            "group" => group = Some(v.to_string()),
            "size" => size = Some(v.to_string()),
            "qty" => {
                qty = Some(v.parse::<i32>().map_err(|_| {
                    bad(format!(
                        "qty {} is not a whole number",
                        crate::core::error::quoted(v)
                    ))
                })?)
            }
            "region" => region = Some(v.to_string()),
            "cost" => {
                cost = Some(v.parse::<f64>().map_err(|_| {
                    bad(format!(
                        "cost {} is not a number",
                        crate::core::error::quoted(v)
                    ))
                })?)
            }
            other => {
                return Err(bad(format!(
                    "unknown key {}",
                    crate::core::error::quoted(other)
                )))
            }
        }
    }
    let need = |v: Option<String>, k: &str| {
        v.filter(|s| !s.is_empty())
            .ok_or_else(|| bad(format!("{k}= is missing")))
    };
    Ok(CreateCommand {
        commercial_owner: need(owner, "owner")?,
        infra_group: need(group, "group")?,
        size: need(size, "size")?,
        quantity: qty.ok_or_else(|| bad("qty= is missing".into()))?,
        region: need(region, "region")?,
        monthly_cost_usd: cost,
    })
}

/// An interactive button's value: `<request id>:<EVENT>`.
pub fn parse_action_value(value: &str) -> Result<(String, Event), CoreError> {
    let bad = || {
        CoreError::invalid(
            "action value",
            crate::core::error::quoted(value),
            "CR-<year>-<number>:<EVENT>",
        )
    };
    let (id, ev) = value.split_once(':').ok_or_else(bad)?;
    if !id.starts_with("CR-") {
        return Err(bad());
    }
    Ok((id.to_string(), Event::parse(ev).ok_or_else(bad)?))
}

fn buttons(id: &str, state: State) -> Value {
    let elements: Vec<Value> = allowed_events(state)
        .into_iter()
        // Timeouts are the system's; a cancellation needs a written reason (API or admin).
        .filter(|e| {
            !matches!(
                e,
                Event::CustomerConfirmationTimeout | Event::CancelApproved
            )
        })
        .take(5)
        .map(|e| {
            json!({
                "type": "button",
                "text": {"type": "plain_text", "text": e.as_str().replace('_', " ").to_lowercase()},
                "action_id": format!("capacity:{}", e.as_str()),
                "value": format!("{id}:{}", e.as_str()),
            })
        })
        .collect();
    json!({"type": "actions", "block_id": format!("capacity:{id}"), "elements": elements})
}

/// Escape user text for Slack mrkdwn as Slack documents it (`&` → `&amp;`, `<` → `&lt;`,
/// `>` → `&gt;`), so `<!channel>`, a mention or a fake link in a field stays text.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Caller-supplied text as inline code: Slack neither links, formats nor mentions anything in
/// it (a size of `https://evil.example`, `*APPROVED*` or `evil.com` stays text). Backticks are
/// dropped, so the text cannot close the code span.
pub fn literal(s: &str) -> String {
    let text: String = s.chars().filter(|c| *c != '`').collect();
    let text = if text.trim().is_empty() {
        "?".to_owned()
    } else {
        text
    };
    format!("`{}`", escape(&text))
}

/// Whether `id` looks like a Slack user id (`U…` or, on Enterprise Grid, `W…`, then upper-case
/// letters and digits): only those become `<@…>` mentions.
pub fn is_slack_user_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some('U' | 'W'))
        && id.len() >= 3
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

/// An actor in mrkdwn text: a mention for a Slack user id, the id as a [`literal`] for
/// anything else (a JWT subject, or an id crafted to break out of `<@…>`).
pub fn mention(id: &str) -> String {
    if is_slack_user_id(id) {
        format!("<@{id}>")
    } else {
        literal(id)
    }
}

/// The request's root message (chat.postMessage).
pub fn root_message(channel: &str, id: &str, request: &Value) -> Value {
    let text = format!(
        "{}: {} x {} in {} requested by {} (commercial owner {}, infra {})",
        escape(id),
        request["quantity"],
        literal(request["requested_size"].as_str().unwrap_or("?")),
        literal(request["region"].as_str().unwrap_or("?")),
        mention(request["requester_user_id"].as_str().unwrap_or("?")),
        mention(request["commercial_owner_user_id"].as_str().unwrap_or("?")),
        literal(request["infra_owner_group"].as_str().unwrap_or("?")),
    );
    let state: Option<State> = serde_json::from_value(request["state"].clone()).ok();
    let mut blocks = vec![json!({"type": "section", "text": {"type": "mrkdwn", "text": text}})];
    if let Some(s) = state {
        blocks.push(buttons(id, s));
    }
    json!({"channel": channel, "text": text, "blocks": blocks, "unfurl_links": false})
}

/// A thread reply for a transition; `thread_ts` is filled in once the root message is known.
pub fn transition_reply(
    channel: &str,
    thread_ts: Option<&str>,
    id: &str,
    from: State,
    to: State,
    event: &str,
    actor: &str,
) -> Value {
    let text = format!(
        "{}: {} → {} ({} by {})",
        escape(id),
        from.as_str(),
        to.as_str(),
        escape(event),
        mention(actor)
    );
    let mut body = json!({"channel": channel, "text": text, "blocks": [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        buttons(id, to),
    ]});
    if let Some(ts) = thread_ts {
        body["thread_ts"] = ts.into();
    }
    body
}

/// The thread reply warning that the customer's confirmation is due by `deadline`, asking the
/// commercial owner to chase it; `thread_ts` is filled in once the root message is known.
pub fn confirmation_warning(
    channel: &str,
    thread_ts: Option<&str>,
    id: &str,
    deadline: &str,
    owner: &str,
) -> Value {
    let text = format!(
        "{}: the customer's confirmation is due by {}; {} please chase it, or the request expires",
        escape(id),
        escape(deadline),
        mention(owner)
    );
    let mut body = json!({"channel": channel, "text": text});
    if let Some(ts) = thread_ts {
        body["thread_ts"] = ts.into();
    }
    body
}

#[cfg(test)]
mod unit_tests;
