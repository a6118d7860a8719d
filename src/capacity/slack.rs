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
    if !s.len().is_multiple_of(2) {
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
    "create owner=@user group=<infra group> size=<e.g. 24XL> qty=<n> region=<e.g. us-east-1> [cost=<USD per month>]";

/// Parse the text of the slash command.
pub fn parse_command(text: &str) -> Result<CreateCommand, CoreError> {
    let bad = |p: String| CoreError::invalid("slash command", p, COMMAND_USAGE);
    let mut words = text.split_whitespace();
    match words.next() {
        Some("create") => {}
        other => return Err(bad(format!("unknown subcommand {:?}", other.unwrap_or("")))),
    }
    let (mut owner, mut group, mut size, mut qty, mut region, mut cost) =
        (None, None, None, None, None, None);
    for w in words {
        let (k, v) = w
            .split_once('=')
            .ok_or_else(|| bad(format!("{w:?} is not key=value")))?;
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
                qty = Some(
                    v.parse::<i32>()
                        .map_err(|_| bad(format!("qty {v:?} is not a whole number")))?,
                )
            }
            "region" => region = Some(v.to_string()),
            "cost" => {
                cost = Some(
                    v.parse::<f64>()
                        .map_err(|_| bad(format!("cost {v:?} is not a number")))?,
                )
            }
            other => return Err(bad(format!("unknown key {other:?}"))),
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
            format!("{value:?}"),
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

/// Escape user text for Slack mrkdwn (`&`, `<`, `>`), so `<!channel>` or a fake link in a
/// field stays text.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The request's root message (chat.postMessage).
pub fn root_message(channel: &str, id: &str, request: &Value) -> Value {
    let text = format!(
        "{id}: {} x {} in {} requested by <@{}> (commercial owner <@{}>, infra {})",
        request["quantity"],
        escape(request["requested_size"].as_str().unwrap_or("?")),
        escape(request["region"].as_str().unwrap_or("?")),
        escape(request["requester_user_id"].as_str().unwrap_or("?")),
        escape(request["commercial_owner_user_id"].as_str().unwrap_or("?")),
        escape(request["infra_owner_group"].as_str().unwrap_or("?")),
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
        "{id}: {} → {} ({event} by <@{}>)",
        from.as_str(),
        to.as_str(),
        escape(actor)
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

#[cfg(test)]
mod unit_tests {
    use super::*;

    const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

    #[test]
    fn slacks_documented_example_verifies() {
        // From Slack's "Verifying requests from Slack" guide.
        let body = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let sig = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
        assert!(verify(SECRET, "1531420618", body, sig, 1531420618 + 60).is_ok());
        assert_eq!(sign(SECRET, "1531420618", body), sig);
    }

    #[test]
    fn tampering_stale_requests_and_garbage_are_refused_with_42501() {
        let body = "text=create";
        let sig = sign(SECRET, "1700000000", body);
        for (ts, b, s, now) in [
            ("1700000000", "text=create2", sig.as_str(), 1700000000),
            ("1700000000", body, sig.as_str(), 1700000000 + 301),
            ("1700000000", body, sig.as_str(), 1700000000 - 301),
            ("17e8", body, sig.as_str(), 1700000000),
            ("1700000000", body, "v1=00", 1700000000),
            ("1700000000", body, "v0=zz", 1700000000),
        ] {
            assert_eq!(
                verify(SECRET, ts, b, s, now).unwrap_err().sqlstate(),
                "42501",
                "{ts} {b} {s} {now}"
            );
        }
        assert!(verify(SECRET, "1700000000", body, &sig, 1700000000 + 299).is_ok());
    }

    #[test]
    fn slash_commands_parse_or_explain_the_usage() {
        let c = parse_command(
            "create owner=<@U024BE7LH|ana> group=infra size=24XL qty=2 region=us-east-1 cost=48000",
        )
        .unwrap();
        assert_eq!(c.commercial_owner, "U024BE7LH");
        assert_eq!((c.quantity, c.monthly_cost_usd), (2, Some(48000.0)));
        for bad in [
            "",
            "delete x",
            "create owner=@a",
            "create owner=@a group=g size=s qty=two region=r",
            "create nonsense",
        ] {
            let e = parse_command(bad).unwrap_err();
            assert_eq!(e.sqlstate(), "22023", "{bad}");
            assert!(e.hint().unwrap().contains("create owner="));
        }
    }

    #[test]
    fn user_text_cannot_ping_or_link() {
        assert_eq!(escape("<!channel> & co"), "&lt;!channel&gt; &amp; co");
        assert!(
            verify(
                "",
                "1700000000",
                "x",
                &sign("", "1700000000", "x"),
                1700000000
            )
            .is_err(),
            "an empty secret verifies nothing"
        );
        assert_eq!(
            verify(SECRET, &i64::MIN.to_string(), "x", "v0=00", i64::MAX)
                .unwrap_err()
                .sqlstate(),
            "42501",
            "no overflow"
        );
    }

    #[test]
    fn buttons_carry_request_and_event() {
        assert_eq!(
            parse_action_value("CR-2026-000123:COMMERCIAL_APPROVED").unwrap(),
            ("CR-2026-000123".into(), Event::CommercialApproved)
        );
        assert!(parse_action_value("CR-2026-000123:NOPE").is_err());
        assert!(parse_action_value("X:COMMERCIAL_APPROVED").is_err());
        let msg = root_message(
            "C1",
            "CR-2026-000123",
            &json!({"state": "COMMERCIAL_APPROVAL_REQUIRED", "quantity": 2, "requested_size": "24XL"}),
        );
        let values: Vec<&str> = msg["blocks"][1]["elements"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["value"].as_str().unwrap())
            .collect();
        assert_eq!(
            values,
            vec![
                "CR-2026-000123:COMMERCIAL_APPROVED",
                "CR-2026-000123:COMMERCIAL_REJECTED"
            ]
        );
        assert_eq!(
            form_field("a=1&payload=%7B%22x%22%3A1%7D", "payload").as_deref(),
            Some("{\"x\":1}")
        );
    }
}
