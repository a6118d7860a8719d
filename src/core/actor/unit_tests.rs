use super::*;
use crate::core::error::SqlError;

pub(super) fn facts<'a>(claims: Option<&'a str>, user: &'a str) -> SessionFacts<'a> {
    SessionFacts {
        claims,
        current_user: user,
        login: None,
        claims_count: true,
        ..Default::default()
    }
}

#[test]
fn claims_written_by_an_ordinary_login_are_ignored() {
    let f = SessionFacts {
        claims: Some(r#"{"sub":"the-commercial-owner","role":"authenticated"}"#),
        legacy_sub: Some("someone-else"),
        current_user: "mallory",
        login: None,
        claims_count: false,
        ..Default::default()
    };
    assert!(f.has_claims());
    let a = resolve(&f).unwrap();
    assert_eq!((a.id.as_str(), a.role.as_str()), ("mallory", "mallory"));
    assert_eq!(a.source, ActorSource::Session);
    // Even malformed claims cannot make such a session fail: they are not read at all.
    let f = SessionFacts {
        claims: Some("{oops"),
        current_user: "mallory",
        login: None,
        ..Default::default()
    };
    assert_eq!(resolve(&f).unwrap().id, "mallory");
    assert!(!facts(Some("  "), "x").has_claims());
}

#[test]
fn jwt_subject_wins_over_the_role() {
    let a = resolve(&facts(
        Some(r#"{"sub":"0b6e-uuid","role":"authenticated"}"#),
        "authenticated",
    ))
    .unwrap();
    assert_eq!(a.id, "0b6e-uuid");
    assert_eq!(a.role, "authenticated");
    assert_eq!(a.source, ActorSource::Jwt);
    assert_eq!(a.actor_type(), "user");
}

#[test]
fn a_token_without_a_subject_is_refused_like_anon_unless_trusted() {
    let nameless = resolve(&facts(Some(r#"{"role":"authenticated"}"#), "authenticated")).unwrap();
    assert_eq!(nameless.id, "authenticated");
    assert!(nameless.refuse_anonymous("write").is_err());
    let signed_in = resolve(&facts(
        Some(r#"{"sub":"u1","role":"authenticated"}"#),
        "authenticated",
    ))
    .unwrap();
    assert!(signed_in.refuse_anonymous("write").is_ok());
    let mut trusted = facts(Some(r#"{"role":"service_role"}"#), "service_role");
    trusted.trusted = true;
    assert!(resolve(&trusted).unwrap().refuse_anonymous("write").is_ok());
    // A login without claims is its role, as ever (psql, pg_cron).
    let psql = resolve(&facts(None, "alice")).unwrap();
    assert!(psql.refuse_anonymous("write").is_ok());
}

#[test]
fn no_claims_or_empty_claims_fall_back_to_current_user() {
    for claims in [
        None,
        Some(""),
        Some("   "),
        Some("{}"),
        Some(r#"{"role":"anon"}"#),
        Some(r#"{"sub":""}"#),
    ] {
        let a = resolve(&facts(claims, "alice")).unwrap();
        assert_eq!(a.id, "alice", "{claims:?}");
        assert_eq!(a.source, ActorSource::Session);
    }
    let anon = resolve(&facts(Some(r#"{"role":"anon"}"#), "anon")).unwrap();
    assert_eq!(anon.role, "anon");
}

#[test]
fn legacy_per_claim_settings_are_read() {
    let f = SessionFacts {
        claims: None,
        legacy_sub: Some("u-legacy"),
        legacy_role: Some("authenticated"),
        current_user: "authenticator",
        login: None,
        trusted: false,
        claims_count: true,
    };
    let a = resolve(&f).unwrap();
    assert_eq!(
        (a.id.as_str(), a.role.as_str(), a.source),
        ("u-legacy", "authenticated", ActorSource::Jwt)
    );
}

#[test]
fn malformed_claims_are_rejected_with_json_or_argument_errors() {
    assert_eq!(
        resolve(&facts(Some("{not json"), "u"))
            .unwrap_err()
            .sqlstate(),
        "22P02"
    );
    assert_eq!(
        resolve(&facts(Some("[1,2]"), "u")).unwrap_err().sqlstate(),
        "22P02"
    );
    assert_eq!(
        resolve(&facts(Some(r#"{"sub":42}"#), "u"))
            .unwrap_err()
            .sqlstate(),
        "22023"
    );
    let long = format!(r#"{{"sub":"{}"}}"#, "x".repeat(MAX_ACTOR_ID_LEN + 1));
    assert_eq!(
        resolve(&facts(Some(&long), "u")).unwrap_err().sqlstate(),
        "22023"
    );
    assert_eq!(
        resolve(&facts(Some("{\"sub\":\"a\\nb\"}"), "u"))
            .unwrap_err()
            .sqlstate(),
        "22023"
    );
}

#[test]
fn only_trusted_sessions_act_on_behalf_of_others() {
    let user = resolve(&facts(Some(r#"{"sub":"u1"}"#), "authenticated")).unwrap();
    assert_eq!(act_on_behalf(user.clone(), None).unwrap(), user);
    assert_eq!(act_on_behalf(user.clone(), Some("u1")).unwrap(), user);
    let err = act_on_behalf(user, Some("u2")).unwrap_err();
    assert_eq!(err.sqlstate(), "42501");

    let bot = SessionFacts {
        current_user: "service_role",
        login: None,
        trusted: true,
        ..Default::default()
    };
    let bot = resolve(&bot).unwrap();
    let slack_user = act_on_behalf(bot, Some("U024BE7LH")).unwrap();
    assert_eq!(slack_user.id, "U024BE7LH");
    assert_eq!(slack_user.source, ActorSource::OnBehalf);
    assert_eq!(slack_user.delegated_by.as_deref(), Some("service_role"));
    assert!(!slack_user.trusted, "delegated actors do not inherit trust");
}

#[test]
fn people_link_only_with_a_code_and_trusted_sessions_anyone() {
    let me = resolve(&facts(Some(r#"{"sub":"ae-1"}"#), "authenticated")).unwrap();
    assert!(
        may_link(&me, Some("ae-1"), Some("ae-1")).is_ok(),
        "mine already"
    );
    assert!(may_link(&me, Some("ae-1"), None).is_ok(), "unlink my own");
    assert!(
        may_link(&me, None, None).is_ok(),
        "unlink what is not linked"
    );
    // Unlinking another's link is no refusal: it removes nothing, as for an unlinked id.
    assert!(may_link(&me, Some("boss"), None).is_ok());
    for (current, target) in [
        (None, Some("ae-1")),
        (None, Some("boss")),
        (Some("boss"), Some("ae-1")),
    ] {
        let e = may_link(&me, current, target).unwrap_err();
        assert_eq!(e.sqlstate(), "42501", "{current:?} -> {target:?}");
        // A refusal never says whom another's link names, nor whether there is one.
        assert!(!e.to_string().contains("boss"), "{e}");
    }
    assert_eq!(
        may_link(&me, None, Some("ae-1")).unwrap_err().to_string(),
        may_link(&me, Some("boss"), Some("ae-1"))
            .unwrap_err()
            .to_string()
    );
    let bot = SessionFacts {
        current_user: "service_role",
        login: None,
        trusted: true,
        ..Default::default()
    };
    assert!(may_link(&resolve(&bot).unwrap(), Some("boss"), Some("ae-1")).is_ok());
    assert!(validate_provider("slack").is_ok());
    for bad in ["", "Slack", "1x", "sl ack", &"a".repeat(33)] {
        assert_eq!(validate_provider(bad).unwrap_err().sqlstate(), "22023");
    }
}

#[test]
fn link_codes_are_unambiguous_and_typed_back_in_any_form() {
    let code = link_code([0, 1, 30, 31, 255, 128, 7, 8, 9, 10, 11, 12]);
    assert_eq!(code.len(), 14);
    assert_eq!(code.matches('-').count(), 2);
    assert!(code
        .chars()
        .all(|c| c == '-' || LINK_CODE_ALPHABET.contains(&(c as u8))));
    assert!(!code.contains(['0', 'O', '1', 'I', 'L']));
    let typed = format!(" {} ", code.to_lowercase().replace('-', " "));
    assert_eq!(normalize_link_code(&typed), code.replace('-', ""));
}

#[test]
fn system_actor_is_trusted_and_typed() {
    let s = Actor::system();
    assert!(s.trusted);
    assert_eq!(s.actor_type(), "system");
}

mod props {
    use super::super::unit_tests::facts;
    use super::super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever lands in request.jwt.claims, resolution never panics, and a successful
        /// resolution always yields a valid, non-empty actor id.
        #[test]
        fn resolution_is_total(claims in ".{0,64}", user in "[a-z_]{1,12}") {
            if let Ok(a) = resolve(&facts(Some(&claims), &user)) {
                prop_assert!(validate_actor_id("id", &a.id).is_ok() || a.id == user);
            }
        }

        #[test]
        fn any_string_sub_is_the_actor(sub in "[[:print:]]{1,40}") {
            prop_assume!(!sub.trim().is_empty());
            let claims = serde_json::json!({"sub": sub, "role": "authenticated"}).to_string();
            let a = resolve(&facts(Some(&claims), "authenticated")).unwrap();
            prop_assert_eq!(a.id, sub);
        }
    }
}
