use super::*;
use crate::capacity::machine::{EVENTS, STATES};
use crate::core::error::SqlError;
use chrono::TimeZone;

fn request(state: State) -> Request {
    Request {
        state,
        requester_user_id: "sa-1".into(),
        commercial_owner_user_id: "ae-1".into(),
        infra_owner_group: "infra".into(),
        customer_ref: serde_json::json!({"org": "acme"}),
        requested_size: "24XL".into(),
        quantity: 2,
        region: "us-east-1".into(),
        needed_by_date: None,
        expected_duration_days: Some(90),
        estimated_monthly_cost_usd: Some(serde_json::json!(48000)),
        customer_confirmation_deadline_at: None,
        cancellation_reason: None,
        cancellation_authorizer_user_id: None,
        procurement_started_at: None,
    }
}

fn admin_cmd(event: Event) -> Command {
    let mut payload = Map::new();
    payload.insert("reason".into(), "customer withdrew".into());
    Command {
        event,
        payload,
        standing: Standing {
            is_admin: true,
            ..Default::default()
        },
        now: Utc.with_ymd_and_hms(2026, 11, 20, 15, 0, 0).unwrap(),
        confirmation_ttl_business_days: 5,
        new_request: Some(request(State::Submitted)),
    }
}

fn admin() -> Actor {
    Actor::system()
}

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

/// Start times on every day of the week, late on a Friday, on weekends and across month
/// and year ends, with the deadline 1 and 5 business days later written out by hand.
#[test]
fn business_days_over_a_table_of_start_times() {
    #[rustfmt::skip]
    let table = [
        // start,                     +1 business day,          +5 business days
        (utc(2026, 11, 23, 9, 0),   utc(2026, 11, 24, 9, 0),   utc(2026, 11, 30, 9, 0)),   // Monday
        (utc(2026, 11, 24, 9, 0),   utc(2026, 11, 25, 9, 0),   utc(2026, 12, 1, 9, 0)),    // Tuesday, across November's end
        (utc(2026, 11, 25, 14, 5),  utc(2026, 11, 26, 14, 5),  utc(2026, 12, 2, 14, 5)),   // Wednesday
        (utc(2026, 11, 26, 0, 0),   utc(2026, 11, 27, 0, 0),   utc(2026, 12, 3, 0, 0)),    // Thursday midnight
        (utc(2026, 11, 27, 15, 0),  utc(2026, 11, 30, 15, 0),  utc(2026, 12, 4, 15, 0)),   // Friday afternoon
        (utc(2026, 11, 27, 23, 59), utc(2026, 11, 30, 23, 59), utc(2026, 12, 4, 23, 59)),  // Friday 23:59
        (utc(2026, 11, 28, 0, 0),   utc(2026, 11, 30, 0, 0),   utc(2026, 12, 4, 0, 0)),    // Saturday 00:00
        (utc(2026, 11, 28, 9, 30),  utc(2026, 11, 30, 9, 30),  utc(2026, 12, 4, 9, 30)),   // Saturday
        (utc(2026, 11, 29, 1, 43),  utc(2026, 11, 30, 1, 43),  utc(2026, 12, 4, 1, 43)),   // Sunday
        (utc(2026, 11, 29, 23, 59), utc(2026, 11, 30, 23, 59), utc(2026, 12, 4, 23, 59)),  // Sunday 23:59
        (utc(2026, 12, 31, 12, 0),  utc(2027, 1, 1, 12, 0),    utc(2027, 1, 7, 12, 0)),    // Thursday, year end
        (utc(2027, 12, 31, 23, 59), utc(2028, 1, 3, 23, 59),   utc(2028, 1, 7, 23, 59)),   // Friday, year end
        (utc(2028, 2, 28, 10, 0),   utc(2028, 2, 29, 10, 0),   utc(2028, 3, 6, 10, 0)),    // Monday before a leap day
        (utc(2027, 1, 31, 8, 0),    utc(2027, 2, 1, 8, 0),     utc(2027, 2, 5, 8, 0)),     // Sunday, month end
    ];
    for (start, one, five) in table {
        assert_eq!(add_business_days(start, 1), one, "{start} + 1");
        assert_eq!(add_business_days(start, 5), five, "{start} + 5");
        assert_eq!(add_business_days(start, 0), start, "{start} + 0");
    }
}

proptest::proptest! {
    /// For any start and any n: the deadline falls on a weekday at the same time of day,
    /// and exactly n weekdays lie in (start, deadline].
    #[test]
    fn business_days_count_exactly_n_weekdays(secs in 0i64..4_102_444_800, n in 1u32..=60) {
        let start = DateTime::from_timestamp(secs, 0).unwrap();
        let end = add_business_days(start, n);
        proptest::prop_assert!(!matches!(end.weekday(), Weekday::Sat | Weekday::Sun));
        proptest::prop_assert_eq!(end.time(), start.time());
        let weekdays = (1..=(end - start).num_days())
            .map(|k| start + Duration::days(k))
            .filter(|d| !matches!(d.weekday(), Weekday::Sat | Weekday::Sun))
            .count();
        proptest::prop_assert_eq!(weekdays, n as usize);
        proptest::prop_assert!((end - start).num_days() >= i64::from(n));
    }
}

#[test]
fn the_reducer_agrees_with_the_table_for_every_cell() {
    for s in STATES {
        for e in EVENTS {
            let result = CapacityFlow::reduce(Some(&request(s)), &admin_cmd(e), &admin());
            match next_state(s, e) {
                Some(to) => assert_eq!(result.unwrap().state.state, to, "{s:?} × {e:?}"),
                None => {
                    let core = result.unwrap_err();
                    assert_eq!(core.sqlstate(), "55000", "{s:?} × {e:?}");
                    assert!(
                        core.to_string().contains(&s.as_str()),
                        "the error names the state"
                    );
                }
            }
        }
    }
}

#[test]
fn cancellation_needs_a_reason_and_records_the_authorizer() {
    let mut cmd = admin_cmd(Event::CancelApproved);
    cmd.payload.clear();
    let core = CapacityFlow::reduce(Some(&request(State::Expired)), &cmd, &admin()).unwrap_err();
    assert_eq!(core.sqlstate(), "22023");
    let t = CapacityFlow::reduce(
        Some(&request(State::Expired)),
        &admin_cmd(Event::CancelApproved),
        &admin(),
    )
    .unwrap();
    assert_eq!(
        t.state.cancellation_reason.as_deref(),
        Some("customer withdrew")
    );
    assert_eq!(
        t.state.cancellation_authorizer_user_id.as_deref(),
        Some("system")
    );
    assert!(t.effects.contains(&Effect::CloseCancellationTasks));
}

#[test]
fn tech_approval_sets_the_business_day_deadline_and_timeout_assigns_the_owner() {
    let t = CapacityFlow::reduce(
        Some(&request(State::TechnicalReviewRequired)),
        &admin_cmd(Event::TechReviewApproved),
        &admin(),
    )
    .unwrap();
    assert_eq!(
        t.state.customer_confirmation_deadline_at.as_deref(),
        Some("2026-11-27T15:00:00.000000Z")
    );
    let t = CapacityFlow::reduce(
        Some(&request(State::CustomerConfirmationRequired)),
        &admin_cmd(Event::CustomerConfirmationTimeout),
        &admin(),
    )
    .unwrap();
    assert_eq!(t.state.state, State::Expired);
    // Due two business days after the expiry: from Friday 2026-11-20 15:00, Tuesday.
    assert!(t.effects.contains(&Effect::CancellationTask {
        assigned_to: "ae-1".into(),
        due_at: "2026-11-24T15:00:00.000000Z".into(),
    }));
}

#[test]
fn procurement_started_is_recorded_without_leaving_the_state() {
    let t = CapacityFlow::reduce(
        Some(&request(State::ProvisioningInProgress)),
        &admin_cmd(Event::AwsProcurementStarted),
        &admin(),
    )
    .unwrap();
    assert_eq!(t.state.state, State::ProvisioningInProgress);
    assert!(t.state.procurement_started_at.is_some());
    assert!(t.effects.is_empty(), "no state change, no announcement");
}

#[test]
fn the_wrong_actor_is_refused_with_42501() {
    let mut cmd = admin_cmd(Event::CommercialApproved);
    cmd.standing = Standing {
        is_requester: true,
        ..Default::default()
    };
    let core = CapacityFlow::reduce(
        Some(&request(State::CommercialApprovalRequired)),
        &cmd,
        &admin(),
    )
    .unwrap_err();
    assert_eq!(core.sqlstate(), "42501");
}

/// The lengths Postgres prints for these values as jsonb (`octet_length(v::jsonb::text)`)
/// and their nesting, so the functions' limits are the tables' CHECK limits.
#[test]
fn json_is_measured_as_postgres_prints_jsonb() {
    for (json, pg_len, depth) in [
        (r#"{}"#, 2, 1),
        (r#"{"a":1}"#, 8, 1),
        (r#"{"a":[1]}"#, 10, 2),
        (r#"{"a":{"b":[]}}"#, 16, 3),
        (
            r#"{"a":"x\"y\n\u0001é","b":[1,2.5,null,true,{"c":[]}]}"#,
            61,
            4,
        ),
        (r#"{"k":"€ <!channel>","l":[[],{}]}"#, 38, 3),
    ] {
        let v: Value = serde_json::from_str(json).unwrap();
        assert_eq!(jsonb_text_len(&v), pg_len, "{json}");
        assert_eq!(json_depth(&v), depth, "{json}");
    }
}

#[test]
fn customer_ref_is_a_small_shallow_object() {
    let sized = |n: usize| serde_json::json!({"blob": "x".repeat(n)});
    assert!(check_customer_ref(&sized(MAX_CUSTOMER_REF - 12)).is_ok());
    let e = check_customer_ref(&sized(MAX_CUSTOMER_REF - 11)).unwrap_err();
    assert_eq!(e.sqlstate(), "22023");
    assert!(e.to_string().contains("4097 bytes"), "{e}");
    assert!(e.hint().unwrap().contains("at most 4096 bytes"));
    let deep: Value = serde_json::from_str(r#"{"a":{"b":{"c":{"d":{"e":1}}}}}"#).unwrap();
    assert!(check_customer_ref(&deep).is_ok());
    let deeper: Value = serde_json::from_str(r#"{"a":{"b":{"c":{"d":{"e":[1]}}}}}"#).unwrap();
    let e = check_customer_ref(&deeper).unwrap_err();
    assert!(e.to_string().contains("nested 6 levels deep"), "{e}");
    for not_an_object in ["[]", "\"acme\"", "null", "42"] {
        let v: Value = serde_json::from_str(not_an_object).unwrap();
        assert_eq!(check_customer_ref(&v).unwrap_err().sqlstate(), "22023");
    }
}

#[test]
fn regions_and_quantities_are_checked_up_front() {
    for ok in ["us-east-1", "eu-west-2", "ap-southeast-1", "us-gov-west-1"] {
        assert!(is_region(ok), "{ok}");
    }
    for bad in [
        "mars",
        "us-east",
        "US-east-1",
        "u-east-1",
        "us--1",
        "us-east-1a",
        "-east-1",
        "",
    ] {
        assert!(!is_region(bad), "{bad}");
    }
    let mut r = request(State::Submitted);
    r.infra_owner_group = "infra team".into();
    assert_eq!(r.check_new().unwrap_err().sqlstate(), "22023");
    let mut r = request(State::Submitted);
    r.expected_duration_days = Some(0);
    assert_eq!(r.check_new().unwrap_err().sqlstate(), "22023");
    for cost in [serde_json::json!(-1), serde_json::json!(1e30)] {
        let mut r = request(State::Submitted);
        r.estimated_monthly_cost_usd = Some(cost);
        assert_eq!(r.check_new().unwrap_err().sqlstate(), "22023");
    }
    for q in [0, -1, MAX_QUANTITY + 1] {
        let mut r = request(State::Submitted);
        r.quantity = q;
        assert_eq!(r.check_new().unwrap_err().sqlstate(), "22023", "{q}");
    }
}

#[test]
fn a_new_request_is_bounded_before_anything_is_written() {
    assert!(request(State::Submitted).check_new().is_ok());
    type Breaks = fn(&mut Request);
    let cases: [(&str, Breaks); 7] = [
        ("requested_size", |r| r.requested_size = "X".repeat(33)),
        ("requested_size", |r| {
            r.requested_size = "24XL\n<!channel>".into()
        }),
        ("region", |r| {
            r.region = format!("us{}-1", "-east".repeat(10))
        }),
        ("region", |r| r.region.clear()),
        ("infra_owner_group", |r| {
            r.infra_owner_group = "g".repeat(64)
        }),
        ("commercial_owner_user_id", |r| {
            r.commercial_owner_user_id = "o".repeat(257)
        }),
        ("customer_ref", |r| {
            r.customer_ref = serde_json::json!({"x": "y".repeat(5000)})
        }),
    ];
    for (field, spoil) in cases {
        let mut r = request(State::Submitted);
        spoil(&mut r);
        let e = r.check_new().unwrap_err();
        assert_eq!(e.sqlstate(), "22023", "{field}");
        assert!(
            e.to_string().starts_with(&format!("invalid {field}")),
            "{e}"
        );
        assert!(e.hint().is_some(), "{field}: a hint says what is allowed");
    }
    assert!(check_lookup("request_id", "CR-2026-000123").is_ok());
    assert_eq!(
        check_lookup("request_id", &"CR".repeat(33))
            .unwrap_err()
            .sqlstate(),
        "22023"
    );
}

mod props {
    use super::*;
    use proptest::prelude::*;

    const GATES: [Event; 3] = [
        Event::CommercialApproved,
        Event::TechReviewApproved,
        Event::CustomerConfirmed,
    ];

    proptest! {
        /// Any sequence of events (applied by an admin, so only the table decides): no
        /// terminal state is ever left except EXPIRED → CANCELLED, and no request reaches
        /// provisioning or beyond without having passed all three gates in order.
        #[test]
        fn no_sequence_leaves_a_terminal_state_or_skips_a_gate(seq in proptest::collection::vec(0usize..13, 0..40)) {
            let mut r = CapacityFlow::reduce(None, &admin_cmd(Event::RequestSubmitted), &admin()).unwrap().state;
            let mut passed: Vec<Event> = Vec::new();
            for i in seq {
                let e = EVENTS[i];
                let before = r.state;
                if let Ok(t) = CapacityFlow::reduce(Some(&r), &admin_cmd(e), &admin()) {
                    if before.is_terminal() {
                        prop_assert!(before == State::Expired && t.state.state == State::Cancelled);
                    }
                    if GATES.contains(&e) { passed.push(e); }
                    r = t.state;
                }
                if matches!(r.state, State::ProvisioningInProgress | State::ReadyForCustomer | State::Activated) {
                    prop_assert_eq!(&passed[..], &GATES[..]);
                }
            }
        }
    }
}

/// A confirmation at or after the deadline is refused (55000, naming the deadline), whoever
/// sends it and however late the timers run; one a microsecond before it is accepted.
#[test]
fn a_confirmation_after_the_deadline_is_refused() {
    let deadline = utc(2026, 11, 27, 15, 0);
    let mut waiting = request(State::CustomerConfirmationRequired);
    waiting.customer_confirmation_deadline_at = Some(ts(deadline));
    for (now, accepted) in [
        (deadline - Duration::microseconds(1), true),
        (deadline, false),
        (deadline + Duration::days(3), false),
    ] {
        let mut cmd = admin_cmd(Event::CustomerConfirmed);
        cmd.now = now;
        match CapacityFlow::reduce(Some(&waiting), &cmd, &admin()) {
            Ok(r) => {
                assert!(accepted, "{now}");
                assert_eq!(r.state.state, State::ProvisioningInProgress);
            }
            Err(e) => {
                assert!(!accepted, "{now}: {e}");
                assert_eq!(e.sqlstate(), "55000");
                assert!(e.to_string().contains("2026-11-27T15:00:00"), "{e}");
            }
        }
    }
    // Declining late, or the timers' own timeout, are not affected.
    let mut cmd = admin_cmd(Event::CustomerConfirmationTimeout);
    cmd.now = deadline + Duration::days(1);
    let r = CapacityFlow::reduce(Some(&waiting), &cmd, &admin()).unwrap();
    assert_eq!(r.state.state, State::Expired);
}

/// A timeout before the deadline is refused (55000, naming the deadline), even from an admin;
/// one at the deadline expires the request.
#[test]
fn a_timeout_before_the_deadline_is_refused() {
    let deadline = utc(2026, 11, 27, 15, 0);
    let mut waiting = request(State::CustomerConfirmationRequired);
    waiting.customer_confirmation_deadline_at = Some(ts(deadline));
    for (now, accepted) in [
        (deadline - Duration::days(4), false),
        (deadline - Duration::microseconds(1), false),
        (deadline, true),
        (deadline + Duration::days(3), true),
    ] {
        let mut cmd = admin_cmd(Event::CustomerConfirmationTimeout);
        cmd.now = now;
        match CapacityFlow::reduce(Some(&waiting), &cmd, &admin()) {
            Ok(r) => {
                assert!(accepted, "{now}");
                assert_eq!(r.state.state, State::Expired);
            }
            Err(e) => {
                assert!(!accepted, "{now}: {e}");
                assert_eq!(e.sqlstate(), "55000");
                assert!(e.to_string().contains("2026-11-27T15:00:00"), "{e}");
            }
        }
    }
}
