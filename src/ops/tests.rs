//! `#[pg_test]`s for the release-gates SQL functions and the subtransaction helper they use.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::core::subxact;

    fn text(sql: &str) -> String {
        Spi::get_one::<String>(sql).expect(sql).expect("NULL")
    }

    fn count(sql: &str) -> i64 {
        Spi::get_one::<i64>(sql).expect(sql).expect("NULL")
    }

    fn send(key: &str, event_type: &str, release: &str, fields: &str) -> String {
        text(&format!(
            "SELECT ops.ingest_event(jsonb_build_object('schema_version', '1.0', 'idempotency_key', '{key}', \
             'event_type', '{event_type}', 'source_system', 'pg_test', 'release_id', '{release}') || '{fields}'::jsonb)::text"
        ))
    }

    const R: &str = "d0d0d0d0-0000-4000-8000-000000000001";

    #[pg_test]
    fn pg_subtransactions_keep_or_undo_a_step() {
        Spi::run("CREATE TEMP TABLE steps (n int)").unwrap();
        let kept = subxact::run(|| Spi::run("INSERT INTO steps VALUES (1)").map(|_| "kept"));
        assert_eq!(kept, Ok(Ok("kept")));
        let returned: Result<Result<(), &str>, _> = subxact::run(|| {
            Spi::run("INSERT INTO steps VALUES (2)").unwrap();
            Err("changed my mind")
        });
        assert_eq!(returned, Ok(Err("changed my mind")));
        let raised = subxact::run(|| Spi::run("INSERT INTO steps VALUES (3), (1 / 0)"));
        let caught = raised.unwrap_err();
        assert_eq!(caught.sqlstate, "22012");
        assert_eq!(caught.message, "division by zero");
        // Only the first step's row survived, and the transaction is still usable.
        assert_eq!(count("SELECT count(*) FROM steps"), 1);
        assert_eq!(count("SELECT sum(n)::bigint FROM steps"), 1);
    }

    #[pg_test]
    fn pg_ingest_accepts_once_and_answers_duplicates_with_the_original() {
        let created = send("pgt/release", "release_created", R, r#"{"version": "1"}"#);
        assert!(created.contains(r#""status": "accepted""#), "{created}");
        let first = send("pgt/build/1", "build_complete", R, r#"{"status": "pass"}"#);
        let again = send("pgt/build/1", "build_complete", R, r#"{"status": "pass"}"#);
        let first: serde_json::Value = serde_json::from_str(&first).unwrap();
        let again: serde_json::Value = serde_json::from_str(&again).unwrap();
        assert_eq!(first["status"], "accepted");
        assert_eq!(again["status"], "duplicate");
        assert_eq!(again["ingest_id"], first["ingest_id"]);
        assert_eq!(again["detail"], first["detail"]);
        assert_eq!(first["detail"]["gates"]["G1"], "passed");
        assert_eq!(count("SELECT count(*) FROM ops.gate_checks"), 1);
        assert_eq!(
            count(
                "SELECT count(*) FROM ops.event_ingest_log WHERE idempotency_key = 'pgt/build/1'"
            ),
            2
        );
    }

    #[pg_test]
    fn pg_rejections_write_only_the_log_row_and_set_the_http_status() {
        let r = send("pgt/ghost", "build_complete", R, r#"{"status": "pass"}"#);
        assert!(r.contains(r#""error": "unknown_release""#), "{r}");
        assert_eq!(text("SELECT current_setting('response.status')"), "409");
        assert_eq!(count("SELECT count(*) FROM ops.gate_checks"), 0);
        assert_eq!(
            text("SELECT processing_status || ' ' || http_status FROM ops.event_ingest_log WHERE idempotency_key = 'pgt/ghost'"),
            "rejected 409"
        );
    }

    #[pg_test]
    fn pg_gates_follow_the_facts_and_decide_promotion() {
        send("pgt/r", "release_created", R, r#"{"version": "1"}"#);
        send("pgt/b", "build_complete", R, r#"{"status": "pass"}"#);
        assert_eq!(
            text(&format!("SELECT ops.evaluate_gate(gate_id) FROM ops.release_gates WHERE release_id = '{R}' AND gate_code = 'G1'")),
            "passed"
        );
        let eligible = |env: &str| {
            Spi::get_one::<bool>(&format!(
                "SELECT ops.is_eligible_for_promotion('{R}', '{env}')"
            ))
            .unwrap()
            .unwrap()
        };
        assert!(!eligible("staging"));
        send("pgt/qa", "gate_signoff", R, "{}");
        assert!(eligible("staging"));
        assert!(!eligible("production"));
        assert!(eligible("dev"), "dev requires no gate");
    }
}
