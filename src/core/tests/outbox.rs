//! `#[pg_test]`s of the outbox against a real HTTP server on 127.0.0.1 (started inside the
//! test backend on its own threads; see the flowgate-testserver crate in pg_test/testserver).

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;
    use pgrx::JsonB;

    use crate::core::outbox::engine;
    use crate::core::tests::{one, sqlstate};
    use flowgate_testserver::{base_url, closed_url, hit_count, TEST_TOKEN};

    /// Enqueue a POST to `path` on the test server with the recording handler.
    fn enqueue(path: &str, key: &str, extra: &str) -> i64 {
        let url = format!("{}{}", base_url(), path);
        one(&format!(
            "SELECT flowgate.enqueue_delivery('fg_test', 'owner-{key}', '{url}', '{key}', '{{\"n\":1}}', handler => 'fg_test.record'{extra})"
        ))
    }

    /// One run of the outbox engine with every step in the test's transaction (a `#[pg_test]`
    /// cannot commit; CALL flowgate.run_outbox() is covered by pgTAP and the fault suite).
    /// A statement of its own, as a CALL's steps are: it sees everything the test wrote.
    #[pg_extern]
    fn outbox_run_in_test_transaction() -> JsonB {
        let limits = engine::Limits {
            batch: 1000,
            max_deliveries: 1000,
            budget: std::time::Duration::from_secs(60),
        };
        JsonB(
            engine::run(&mut engine::InOneTransaction, limits)
                .unwrap()
                .to_json(),
        )
    }

    fn dispatch() -> serde_json::Value {
        one::<JsonB>("SELECT tests.outbox_run_in_test_transaction()").0
    }

    fn status(id: i64) -> String {
        one(&format!(
            "SELECT status::text FROM flowgate.deliveries WHERE id = {id}"
        ))
    }

    /// Pretend the back-off has elapsed.
    fn make_due(id: i64) {
        Spi::run(&format!(
            "UPDATE flowgate.deliveries SET next_attempt_at = now() WHERE id = {id}"
        ))
        .unwrap();
    }

    fn force_native() {
        Spi::run(r#"SELECT flowgate.set_setting('flowgate.http_transport', '"native"')"#).unwrap();
    }

    #[pg_test]
    fn success_is_delivered_and_the_handler_sees_the_response() {
        force_native();
        let id = enqueue("/ok", "ok-1", "");
        let summary = dispatch();
        assert_eq!(summary["claimed"], 1);
        assert_eq!(summary["delivered"], 1);
        assert_eq!(status(id), "delivered");
        assert_eq!(
            one::<i32>(&format!(
                "SELECT attempts FROM flowgate.deliveries WHERE id = {id}"
            )),
            1
        );
        let resp: JsonB = one("SELECT response FROM fg_test.delivery_outcomes WHERE owner_id = 'owner-ok-1' AND outcome = 'delivered'");
        assert_eq!(
            resp.0["key"], "ok-1",
            "the Idempotency-Key header reached the server"
        );
        assert_eq!(
            resp.0["len"], 8,
            "the JSON body reached the server as jsonb text (8 bytes)"
        );
        assert_eq!(dispatch()["claimed"], 0, "nothing left to send");
    }

    #[pg_test]
    fn a_500_is_retried_with_the_same_key_then_delivered() {
        force_native();
        let id = enqueue("/flaky/1", "flaky-1", "");
        assert_eq!(dispatch()["retry"], 1);
        assert_eq!(status(id), "pending");
        assert!(one::<bool>(&format!(
            "SELECT last_status_code = 500 AND last_error = 'HTTP 500' AND next_attempt_at > claimed_at IS NOT TRUE FROM flowgate.deliveries WHERE id = {id}"
        )));
        assert_eq!(dispatch()["claimed"], 0, "not due before its back-off");
        make_due(id);
        assert_eq!(dispatch()["delivered"], 1);
        assert_eq!(status(id), "delivered");
        assert_eq!(
            hit_count("/flaky/1", "flaky-1"),
            2,
            "exactly two sends, both with the same key"
        );
    }

    /// A record step that stalled past its lease must not take a later claim of the same
    /// delivery for its own: after a death and `replay_dead` (attempts back to 0), the next
    /// claim has the stalled one's attempt number again, but not its claim time.
    #[pg_test]
    fn a_stale_record_after_a_replay_does_not_match_the_new_claim() {
        force_native();
        let id = enqueue("/ok", "stale-1", ", max_attempts => 1");
        let first = engine::claim(10).unwrap();
        assert_eq!(first.native.len(), 1);
        let stalled = engine::send(first.native, 1, &|| false);
        assert_eq!(stalled[0].lease.attempt, 1);
        // Meanwhile its lease ran out, it died, an operator replayed it, and it was claimed again.
        Spi::run(&format!(
            "UPDATE flowgate.deliveries SET status = 'dead', claimed_at = NULL WHERE id = {id}"
        ))
        .unwrap();
        assert_eq!(
            one::<i32>(&format!(
                "SELECT (flowgate.replay_dead(ARRAY[{id}]) ->> 'replayed')::int"
            )),
            1
        );
        let again = engine::claim(10).unwrap();
        assert_eq!(again.native.len(), 1);
        assert_eq!(again.native[0].lease.attempt, 1, "the same attempt number");
        // The stalled step records now: skipped, the new claim untouched.
        let counts = engine::record(&stalled).unwrap();
        assert_eq!(counts.to_json()["skipped"], 1, "{:?}", counts.to_json());
        assert_eq!(status(id), "in_flight");
        // Its own record lands.
        let sent = engine::send(again.native, 1, &|| false);
        assert_eq!(engine::record(&sent).unwrap().to_json()["delivered"], 1);
        assert_eq!(status(id), "delivered");
        assert_eq!(hit_count("/ok", "stale-1"), 2, "sent twice, with one key");
    }

    #[pg_test]
    fn a_429_honours_retry_after() {
        force_native();
        let id = enqueue("/ratelimit/30", "rl-1", "");
        assert_eq!(dispatch()["retry"], 1);
        assert!(one::<bool>(&format!(
            "SELECT next_attempt_at >= now() + interval '29 seconds' AND last_status_code = 429 FROM flowgate.deliveries WHERE id = {id}"
        )));
        // The whole destination waits, not only the delivery that got the 429.
        let same_host = enqueue("/ok", "rl-2", "");
        let elsewhere = enqueue("/ok", "rl-3", ", flow_key => 'fg-test-elsewhere'");
        make_due(id);
        let summary = dispatch();
        assert_eq!(summary["delivered"], 1, "{summary}");
        assert_eq!(status(elsewhere), "delivered");
        assert_eq!(status(same_host), "pending");
        assert_eq!(status(id), "pending");
        assert!(one::<bool>(&format!(
            "SELECT next_attempt_at >= now() + interval '25 seconds' FROM flowgate.deliveries WHERE id = {same_host}"
        )), "held back until the pause ends");
        // The pause ends.
        Spi::run("UPDATE flowgate.flow_state SET paused_until = now() - interval '1 second'")
            .unwrap();
        make_due(id);
        make_due(same_host);
        assert_eq!(dispatch()["delivered"], 2);
    }

    #[pg_test]
    fn a_rate_limited_flow_key_gets_its_tokens_and_no_more() {
        force_native();
        Spi::run(
            r#"SELECT flowgate.set_setting('flowgate.flow_limits', '{"fg-test-slow*": {"per_second": 0.5, "burst": 3}, "fg-test-capped": {"max_in_flight": 2}}')"#,
        )
        .unwrap();
        let ids: Vec<i64> = (1..=5)
            .map(|i| enqueue("/ok", &format!("tb-{i}"), ", flow_key => 'fg-test-slow-1'"))
            .collect();
        assert_eq!(dispatch()["delivered"], 3, "the burst");
        let waiting: Vec<f64> = ids
            .iter()
            .filter(|id| status(**id) == "pending")
            .map(|id| {
                one::<f64>(&format!(
                    "SELECT extract(epoch FROM next_attempt_at - clock_timestamp())::float8 FROM flowgate.deliveries WHERE id = {id}"
                ))
            })
            .collect();
        assert_eq!(waiting.len(), 2);
        assert!(
            waiting.iter().all(|w| *w > 1.0),
            "spaced by the rate: {waiting:?}"
        );
        assert_eq!(
            dispatch()["claimed"],
            0,
            "nothing more before the tokens come back"
        );
        // Two of a capped key are in flight elsewhere: the cap leaves no room.
        let capped: Vec<i64> = (1..=3)
            .map(|i| enqueue("/ok", &format!("cap-{i}"), ", flow_key => 'fg-test-capped'"))
            .collect();
        Spi::run(&format!(
            "UPDATE flowgate.deliveries SET status = 'in_flight', attempts = 1, claimed_at = now() WHERE id IN ({}, {})",
            capped[0], capped[1]
        ))
        .unwrap();
        assert_eq!(dispatch()["claimed"], 0, "two in flight, cap two");
        assert_eq!(status(capped[2]), "pending");
    }

    #[pg_test]
    fn timeouts_and_refused_connections_are_retried() {
        force_native();
        let slow = enqueue("/slow/2000", "slow-timeout", ", timeout_ms => 300");
        let url = format!("{}/ok", closed_url());
        let refused: i64 = one(&format!(
            "SELECT flowgate.enqueue_delivery('fg_test', 'o', '{url}', 'refused-1')"
        ));
        let summary = dispatch();
        // Each was retried, none delivered. The back-off has full jitter (it may be near zero),
        // so the refused one can come due again and be retried once more while the slow one
        // times out: at least two retries, not exactly two.
        assert_eq!(summary["delivered"], 0, "{summary}");
        assert!(summary["retry"].as_i64() >= Some(2), "{summary}");
        assert_eq!(
            one::<String>(&format!(
                "SELECT last_error FROM flowgate.deliveries WHERE id = {slow}"
            )),
            "timed out"
        );
        assert!(one::<String>(&format!(
            "SELECT last_error FROM flowgate.deliveries WHERE id = {refused}"
        ))
        .starts_with("connection failed"));
    }

    #[pg_test]
    fn a_slow_server_within_the_timeout_is_fine() {
        force_native();
        let id = enqueue("/slow/300", "slow-ok", ", timeout_ms => 5000");
        assert_eq!(dispatch()["delivered"], 1);
        assert_eq!(status(id), "delivered");
    }

    #[pg_test]
    fn a_400_fails_at_once_and_tells_the_owner() {
        force_native();
        let id = enqueue("/status/400", "bad-1", "");
        assert_eq!(dispatch()["failed"], 1);
        assert_eq!(status(id), "failed");
        assert_eq!(
            one::<i32>(&format!(
                "SELECT attempts FROM flowgate.deliveries WHERE id = {id}"
            )),
            1
        );
        assert_eq!(
            one::<String>(
                "SELECT outcome FROM fg_test.delivery_outcomes WHERE owner_id = 'owner-bad-1'"
            ),
            "failed"
        );
    }

    #[pg_test]
    fn retries_run_out_into_dead_and_replay_requeues() {
        force_native();
        let id = enqueue("/status/503", "dead-1", ", max_attempts => 2");
        assert_eq!(dispatch()["retry"], 1);
        make_due(id);
        assert_eq!(dispatch()["dead"], 1);
        assert_eq!(status(id), "dead");
        assert_eq!(
            one::<String>(
                "SELECT outcome FROM fg_test.delivery_outcomes WHERE owner_id = 'owner-dead-1'"
            ),
            "dead"
        );
        assert_eq!(
            one::<i32>(&format!(
                "SELECT (flowgate.replay_dead(ARRAY[{id}, 999999]) ->> 'replayed')::int"
            )),
            1
        );
        assert!(one::<bool>(&format!(
            "SELECT status = 'pending' AND attempts = 0 FROM flowgate.deliveries WHERE id = {id}"
        )));
        assert_eq!(
            one::<i32>(&format!(
                "SELECT (flowgate.replay_dead(ARRAY[{id}]) ->> 'replayed')::int"
            )),
            0,
            "only dead or failed rows"
        );
    }

    #[pg_test]
    fn a_thousand_deliveries_in_one_batch() {
        force_native();
        let url = format!("{}/ok", base_url());
        Spi::run(&format!(
            "SELECT flowgate.enqueue_delivery('fg_test', 'bulk', '{url}', 'bulk-' || g, jsonb_build_object('g', g)) FROM generate_series(1, 1000) g"
        ))
        .unwrap();
        let summary = dispatch();
        assert_eq!(summary["claimed"], 1000);
        assert_eq!(summary["delivered"], 1000, "{summary}");
        assert_eq!(one::<i64>("SELECT count(*) FROM flowgate.deliveries WHERE owner_id = 'bulk' AND status = 'delivered'"), 1000);
        assert_eq!(hit_count("/ok", "bulk-777"), 1);
    }

    #[pg_test]
    fn enqueue_is_idempotent_per_key_and_owner() {
        let a = enqueue("/ok", "same-key", "");
        let b = enqueue("/ok", "same-key", "");
        assert_eq!(a, b);
        assert_eq!(
            one::<i64>(
                "SELECT count(*) FROM flowgate.deliveries WHERE idempotency_key = 'same-key'"
            ),
            1
        );
        let url = format!("{}/ok", base_url());
        assert_eq!(
            sqlstate(&format!(
                "SELECT flowgate.enqueue_delivery('fg_test', 'someone-else', '{url}', 'same-key')"
            ))
            .as_deref(),
            Some("23505")
        );
    }

    #[pg_test]
    fn bad_deliveries_are_refused_and_write_nothing() {
        let before: i64 = one("SELECT count(*) FROM flowgate.deliveries");
        for stmt in [
            "SELECT flowgate.enqueue_delivery('fg_test', 'o', 'ftp://x/y', 'k1')",
            "SELECT flowgate.enqueue_delivery('fg_test', 'o', 'https://u:p@x/y', 'k2')",
            "SELECT flowgate.enqueue_delivery('fg_test', 'o', 'https://x/y', 'k3', headers => '{\"Authorization\":\"Bearer s\"}')",
            "SELECT flowgate.enqueue_delivery('fg_test', 'o', 'https://x/y', 'k4', method => 'TRACE')",
            "SELECT flowgate.enqueue_delivery('fg_test', 'o', 'https://x/y', 'k5', handler => 'no.such')",
            "SELECT flowgate.enqueue_delivery('fg_test', 'o', 'https://x/y', 'k6', headers => '[]')",
            "SELECT flowgate.enqueue_delivery('Bad Module', 'o', 'https://x/y', 'k7')",
        ] {
            assert_eq!(sqlstate(stmt).as_deref(), Some("22023"), "{stmt}");
        }
        assert_eq!(
            sqlstate("CALL flowgate.run_outbox()").as_deref(),
            Some("2D000"),
            "the outbox never sends inside a transaction"
        );
        assert_eq!(
            one::<i64>("SELECT count(*) FROM flowgate.deliveries"),
            before
        );
    }

    #[pg_test]
    fn secrets_are_resolved_at_send_time_and_never_stored() {
        force_native();
        let id = enqueue("/auth", "auth-1", ", auth_secret => 'fg_slack_token'");
        assert_eq!(
            dispatch()["failed"],
            1,
            "a missing secret fails without a request"
        );
        assert!(one::<String>(&format!(
            "SELECT last_error FROM flowgate.deliveries WHERE id = {id}"
        ))
        .contains("fg_slack_token"));
        assert_eq!(hit_count("/auth", "auth-1"), 0);
        // Without Vault, secrets are pgcrypto ciphertext under the configured passphrase.
        Spi::run("CREATE EXTENSION IF NOT EXISTS pgcrypto").unwrap();
        Spi::run("SET LOCAL flowgate.tenant_key_passphrase = 'pgrx-test-passphrase-0123456789'")
            .unwrap();
        Spi::run_with_args(
            "SELECT flowgate.set_secret('fg_slack_token', $1)",
            &[TEST_TOKEN.into()],
        )
        .unwrap();
        assert_eq!(
            one::<i32>(&format!(
                "SELECT (flowgate.replay_dead(ARRAY[{id}]) ->> 'replayed')::int"
            )),
            1
        );
        let summary = dispatch();
        assert_eq!(
            summary["delivered"], 1,
            "the server accepted the bearer token: {summary}"
        );
        let leaks: i64 = Spi::get_one_with_args(
            "SELECT count(*) FROM flowgate.deliveries d WHERE strpos(d::text, $1) > 0",
            &[TEST_TOKEN.into()],
        )
        .unwrap()
        .unwrap();
        assert_eq!(leaks, 0, "the token appears in no deliveries column");
        let plain: i64 = Spi::get_one_with_args(
            "SELECT count(*) FROM flowgate.secrets s WHERE strpos(encode(s.value_encrypted, 'escape'), $1) > 0",
            &[TEST_TOKEN.into()],
        )
        .unwrap()
        .unwrap();
        assert_eq!(plain, 0, "flowgate.secrets holds ciphertext only");
    }

    #[pg_test]
    fn a_failing_handler_is_isolated_to_its_delivery() {
        force_native();
        let bad = enqueue("/ok", "explode-1", "");
        Spi::run(&format!(
            "UPDATE flowgate.deliveries SET handler = 'fg_test.explode' WHERE id = {bad}"
        ))
        .unwrap();
        let good = enqueue("/ok", "fine-1", "");
        let summary = dispatch();
        assert_eq!(summary["handler_error"], 1, "{summary}");
        assert_eq!(summary["delivered"], 1, "{summary}");
        assert_eq!(status(good), "delivered");
        assert!(
            one::<bool>(&format!(
                "SELECT status = 'delivered' AND handler_error = '22012: division by zero' AND last_status_code = 200 FROM flowgate.deliveries WHERE id = {bad}"
            )),
            "a 2xx stays delivered (never re-sent); only its handler failed"
        );
        assert_eq!(
            one::<i32>(&format!(
                "SELECT (flowgate.replay_dead(ARRAY[{bad}]) ->> 'replayed')::int"
            )),
            0,
            "nothing to re-send"
        );
        // Fix the handler, then re-run it on the stored response: no second request.
        Spi::run(&format!(
            "UPDATE flowgate.deliveries SET handler = 'fg_test.record' WHERE id = {bad}"
        ))
        .unwrap();
        assert_eq!(
            one::<i32>(&format!("SELECT flowgate.rerun_handlers(ARRAY[{bad}])")),
            1
        );
        assert_eq!(hit_count("/ok", "explode-1"), 1);
        assert!(one::<bool>(&format!(
            "SELECT handler_error IS NULL FROM flowgate.deliveries WHERE id = {bad}"
        )));
        assert_eq!(
            one::<i64>(
                "SELECT count(*) FROM fg_test.delivery_outcomes WHERE owner_id = 'owner-explode-1'"
            ),
            1
        );
        assert_eq!(
            one::<i64>(
                "SELECT count(*) FROM fg_test.delivery_outcomes WHERE owner_id = 'owner-fine-1'"
            ),
            1
        );
    }

    #[pg_test]
    fn pg_net_is_required_when_asked_for() {
        Spi::run(r#"SELECT flowgate.set_setting('flowgate.http_transport', '"pg_net"')"#).unwrap();
        let has_pg_net: bool =
            one("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_net')");
        if !has_pg_net {
            assert_eq!(
                sqlstate("SELECT flowgate.effective_transport()").as_deref(),
                Some("0A000")
            );
        }
        Spi::run(r#"SELECT flowgate.set_setting('flowgate.http_transport', '"auto"')"#).unwrap();
        let expected = if has_pg_net { "pg_net" } else { "native" };
        assert_eq!(
            one::<String>("SELECT flowgate.effective_transport()"),
            expected
        );
    }

    #[pg_test]
    fn stale_in_flight_rows_expire_into_a_retry() {
        let id = enqueue("/ok", "stale-1", "");
        Spi::run(&format!(
            "UPDATE flowgate.deliveries SET status = 'in_flight', attempts = 1, transport = 'pg_net', claimed_at = now() - interval '1 hour' WHERE id = {id}"
        ))
        .unwrap();
        let summary: JsonB = one("SELECT flowgate.collect()");
        assert_eq!(summary.0["expired"], 1);
        assert!(one::<bool>(&format!(
            "SELECT status = 'pending' AND last_error = 'timed out' FROM flowgate.deliveries WHERE id = {id}"
        )));
    }

    #[pg_test]
    fn schedules_need_pg_cron() {
        let has_cron: bool =
            one("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_cron')");
        if !has_cron {
            assert_eq!(
                sqlstate("SELECT * FROM flowgate.install_schedules()").as_deref(),
                Some("0A000")
            );
        }
    }

    #[pg_test]
    fn pruning_removes_old_delivered_rows_only() {
        force_native();
        let old = enqueue("/ok", "prune-old", "");
        let recent = enqueue("/ok", "prune-recent", "");
        let dead = enqueue("/status/503", "prune-dead", ", max_attempts => 1");
        let summary = dispatch();
        assert_eq!(summary["delivered"], 2, "{summary}");
        assert_eq!(summary["dead"], 1, "{summary}");
        Spi::run(&format!(
            "UPDATE flowgate.deliveries SET delivered_at = now() - interval '200 hours', updated_at = now() - interval '200 hours' WHERE id IN ({old}, {dead})"
        ))
        .unwrap();
        assert_eq!(one::<i32>("SELECT flowgate.prune_deliveries()"), 1);
        let left: String = one(&format!(
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM flowgate.deliveries WHERE id IN ({old}, {recent}, {dead})"
        ));
        assert_eq!(
            left,
            format!("{recent},{dead}"),
            "the recent delivery and the dead letter stay"
        );
    }
}
