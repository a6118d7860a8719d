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

/// Escape user text for Slack mrkdwn as Slack documents it (`&` → `&amp;`, `<` → `&lt;`,
/// `>` → `&gt;`), so `<!channel>`, a mention or a fake link in a field stays text.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Whether `id` looks like a Slack user id (`U…` or, on Enterprise Grid, `W…`, then upper-case
/// letters and digits): only those become `<@…>` mentions.
pub fn is_slack_user_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some('U' | 'W'))
        && id.len() >= 3
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

/// An actor in mrkdwn text: a mention for a Slack user id, the escaped id as plain text for
/// anything else (a JWT subject, or an id crafted to break out of `<@…>`).
pub fn mention(id: &str) -> String {
    if is_slack_user_id(id) {
        format!("<@{id}>")
    } else {
        escape(id)
    }
}

/// The request's root message (chat.postMessage).
pub fn root_message(channel: &str, id: &str, request: &Value) -> Value {
    let text = format!(
        "{}: {} x {} in {} requested by {} (commercial owner {}, infra {})",
        escape(id),
        request["quantity"],
        escape(request["requested_size"].as_str().unwrap_or("?")),
        escape(request["region"].as_str().unwrap_or("?")),
        mention(request["requester_user_id"].as_str().unwrap_or("?")),
        mention(request["commercial_owner_user_id"].as_str().unwrap_or("?")),
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
mod unit_tests {
    use super::*;
    use crate::core::error::SqlError;

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

    /// Whether every `<` and `>` in mrkdwn text belongs to a `<@…>` mention of a Slack user id:
    /// then nothing a caller typed can ping a channel, mention someone or make a link.
    fn only_safe_markup(text: &str) -> bool {
        let mut rest = text;
        let mut plain = String::new();
        while let Some(i) = rest.find("<@") {
            plain.push_str(&rest[..i]);
            let tail = &rest[i + 2..];
            let Some(end) = tail.find('>') else {
                return false;
            };
            if !is_slack_user_id(&tail[..end]) {
                return false;
            }
            rest = &tail[end + 1..];
        }
        plain.push_str(rest);
        !plain.contains('<') && !plain.contains('>')
    }

    const HOSTILE: [&str; 7] = [
        "U9> <!channel",
        "<!here>",
        "<!subteam^S0123|admins>",
        "<https://evil.example|click here>",
        "U123|x>",
        "W0B4D <@U0ADMIN>",
        "&lt;!channel&gt; & co",
    ];

    #[test]
    fn mentions_only_for_slack_user_ids() {
        assert_eq!(mention("U024BE7LH"), "<@U024BE7LH>");
        assert_eq!(mention("W0123ABC"), "<@W0123ABC>");
        assert_eq!(mention("U9> <!channel"), "U9&gt; &lt;!channel");
        for not_an_id in [
            "sa-1",
            "u024be7lh",
            "U1",
            "X024BE7LH",
            "U024 BE7",
            "U024BE7LH>",
            "",
            "6a1f3c2e-0000-4000-8000-000000000001",
        ] {
            assert!(!is_slack_user_id(not_an_id), "{not_an_id:?}");
            assert!(!mention(not_an_id).contains('<'), "{not_an_id:?}");
        }
        assert_eq!(mention("ae-1 & <co>"), "ae-1 &amp; &lt;co&gt;");
    }

    #[test]
    fn the_confirmation_warning_cannot_ping_the_channel() {
        let body = confirmation_warning(
            "C1",
            Some("1700000000.000100"),
            "CR-2026-000001",
            "2026-12-04 15:00:00+00",
            "U9> <!channel",
        );
        let text = body["text"].as_str().unwrap();
        assert!(
            !text.contains("<!channel>") && !text.contains("<@U9>"),
            "{text}"
        );
        assert!(
            text.contains("; U9&gt; &lt;!channel please chase it"),
            "{text}"
        );
        assert!(only_safe_markup(text), "{text}");
        assert_eq!(body["thread_ts"], "1700000000.000100");
        assert_eq!(body["channel"], "C1");

        let body = confirmation_warning("C1", None, "CR-2026-000001", "2026-12-04", "U0AE");
        assert_eq!(
            body["text"],
            "CR-2026-000001: the customer's confirmation is due by 2026-12-04; <@U0AE> please chase it, or the request expires"
        );
        assert!(
            body.get("thread_ts").is_none(),
            "parked until the thread is known"
        );
    }

    #[test]
    fn every_message_keeps_hostile_fields_as_text() {
        for h in HOSTILE {
            let request = json!({
                "state": "COMMERCIAL_APPROVAL_REQUIRED", "quantity": 1, "requested_size": h, "region": h,
                "requester_user_id": h, "commercial_owner_user_id": h, "infra_owner_group": h,
            });
            let root = root_message("C1", "CR-2026-000001", &request);
            assert!(only_safe_markup(root["text"].as_str().unwrap()), "{h}");
            assert_eq!(root["blocks"][0]["text"]["text"], root["text"]);
            let reply = transition_reply(
                "C1",
                None,
                "CR-2026-000001",
                State::CommercialApprovalRequired,
                State::TechnicalReviewRequired,
                "COMMERCIAL_APPROVED",
                h,
            );
            assert!(only_safe_markup(reply["text"].as_str().unwrap()), "{h}");
            let warning = confirmation_warning("C1", None, h, h, h);
            assert!(only_safe_markup(warning["text"].as_str().unwrap()), "{h}");
        }
        let root = root_message(
            "C1",
            "CR-2026-000001",
            &json!({"quantity": 2, "requested_size": "24XL", "region": "us-east-1",
                    "requester_user_id": "U0SA", "commercial_owner_user_id": "ae-1", "infra_owner_group": "infra"}),
        );
        assert_eq!(
            root["text"],
            "CR-2026-000001: 2 x 24XL in us-east-1 requested by <@U0SA> (commercial owner ae-1, infra infra)"
        );
        let reply = transition_reply(
            "C1",
            Some("1.2"),
            "CR-2026-000001",
            State::CommercialApprovalRequired,
            State::TechnicalReviewRequired,
            "COMMERCIAL_APPROVED",
            "U0AE",
        );
        assert!(reply["text"]
            .as_str()
            .unwrap()
            .ends_with("(COMMERCIAL_APPROVED by <@U0AE>)"));
    }

    proptest::proptest! {
        /// Whatever the caller-supplied fields hold, the only markup in a message is a mention
        /// of a Slack user id.
        #[test]
        fn no_field_value_adds_markup(
            actor in "[<>@!&|^#UWC0-9A-Za-z :/.-]{0,24}",
            field in "[<>@!&|^#UWC0-9A-Za-z :/.-]{0,24}",
        ) {
            let request = json!({"quantity": 1, "requested_size": field, "region": field,
                                 "requester_user_id": actor, "commercial_owner_user_id": actor,
                                 "infra_owner_group": field});
            let root = root_message("C1", "CR-2026-000001", &request);
            proptest::prop_assert!(only_safe_markup(root["text"].as_str().unwrap()));
            let reply = transition_reply("C1", None, "CR-2026-000001", State::Expired, State::Cancelled,
                                         "CANCEL_APPROVED", &actor);
            proptest::prop_assert!(only_safe_markup(reply["text"].as_str().unwrap()));
            let warning = confirmation_warning("C1", None, "CR-2026-000001", &field, &actor);
            proptest::prop_assert!(only_safe_markup(warning["text"].as_str().unwrap()));
        }
    }
}
