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
    // One signature, one spelling (but for the case of its hex digits): "+a", which Rust's
    // integer parsing reads as 0a, is not hex.
    assert_eq!(decode_hex("+a"), None);
    assert_eq!(decode_hex("0A"), Some(vec![10]));
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

/// The text outside inline code spans, where Slack links and formats.
fn outside_code(text: &str) -> String {
    text.split('`').step_by(2).collect()
}

#[test]
fn caller_text_is_inline_code_so_slack_neither_links_nor_formats_it() {
    for h in [
        "https://evil.example/x",
        "evil.com",
        "*APPROVED by CFO*",
        "`24XL` <https://x|y>",
        "~_x_~",
        "",
    ] {
        let request = json!({"quantity": 2, "requested_size": h, "region": h,
                             "requester_user_id": h, "commercial_owner_user_id": "U0AE", "infra_owner_group": h});
        let text = root_message("C1", "CR-2026-000001", &request)["text"]
            .as_str()
            .unwrap()
            .to_owned();
        let plain = outside_code(&text);
        for marker in ["evil", "http", "*", "~", "_x"] {
            assert!(
                !plain.contains(marker),
                "{h:?} left {marker:?} outside code: {text}"
            );
        }
        assert!(only_safe_markup(&text), "{text}");
    }
    assert_eq!(literal("a`b"), "`ab`");
    assert_eq!(literal("``"), "`?`");
}

#[test]
fn link_commands_take_the_code_however_it_is_typed() {
    assert_eq!(
        link_command("link K7QX-M2PA-9ZHT").as_deref(),
        Some("K7QX-M2PA-9ZHT")
    );
    assert_eq!(
        link_command(" Link k7qx m2pa 9zht ").as_deref(),
        Some("k7qxm2pa9zht")
    );
    assert_eq!(link_command("link"), None);
    assert_eq!(link_command("create owner=@ana"), None);
    assert_eq!(link_command("linked ABC"), None);
}

#[test]
fn mentions_only_for_slack_user_ids() {
    assert_eq!(mention("U024BE7LH"), "<@U024BE7LH>");
    assert_eq!(mention("W0123ABC"), "<@W0123ABC>");
    assert_eq!(mention("U9> <!channel"), "`U9&gt; &lt;!channel`");
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
    assert_eq!(mention("ae-1 & <co>"), "`ae-1 &amp; &lt;co&gt;`");
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
        text.contains("; `U9&gt; &lt;!channel` please chase it"),
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
        "CR-2026-000001: 2 x `24XL` in `us-east-1` requested by <@U0SA> (commercial owner `ae-1`, infra `infra`)"
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
