//! `#[pg_test]`s for the core, and the small "door" workflow that exercises the event-store
//! runner. Everything here exists only in the pg_test build.

use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::JsonB;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::actor::Actor;
use super::error::CoreError;
use super::eventstore::{self, Tables, Workflow};
use super::workflow::{Reducer, Transition};

pgrx::extension_sql!(
    r#"
CREATE SCHEMA fg_test;
GRANT USAGE ON SCHEMA fg_test TO PUBLIC;
CREATE TABLE fg_test.doors (
    id           text PRIMARY KEY,
    state        text NOT NULL CHECK (state IN ('open', 'closed', 'locked')),
    opened_count int  NOT NULL DEFAULT 0,
    locked_by    text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE fg_test.door_events (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    door_id         text NOT NULL REFERENCES fg_test.doors (id),
    event_type      text NOT NULL,
    actor_id        text NOT NULL,
    actor_type      text NOT NULL,
    payload         jsonb NOT NULL DEFAULT '{}',
    idempotency_key text,
    from_state      text,
    to_state        text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (door_id, idempotency_key)
);
SELECT flowgate.make_append_only('fg_test.door_events');
CREATE TABLE fg_test.door_effects (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    door_id  text NOT NULL,
    event_id bigint NOT NULL,
    message  text NOT NULL
);
-- What the test response handlers saw.
CREATE TABLE fg_test.delivery_outcomes (
    delivery_id bigint NOT NULL,
    owner_id    text NOT NULL,
    outcome     text NOT NULL,
    status_code int,
    response    jsonb
);
-- The SQLSTATE a statement raises, or NULL: lets a test assert an exact error code and then
-- check that nothing was written, in one transaction.
CREATE FUNCTION fg_test.sqlstate_of(stmt text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE stmt;
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE;
END $$;
"#,
    name = "fg_test_tables",
    requires = ["core_bootstrap"]
);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Door {
    state: String,
    opened_count: i32,
    locked_by: Option<String>,
}

#[derive(Debug)]
enum DoorEvent {
    Install,
    Open,
    Close,
    Lock,
    Unlock,
}

impl DoorEvent {
    fn parse(name: &str) -> Result<DoorEvent, CoreError> {
        Ok(match name {
            "INSTALL" => DoorEvent::Install,
            "OPEN" => DoorEvent::Open,
            "CLOSE" => DoorEvent::Close,
            "LOCK" => DoorEvent::Lock,
            "UNLOCK" => DoorEvent::Unlock,
            other => {
                return Err(CoreError::invalid(
                    "event",
                    format!("{other:?}"),
                    "INSTALL, OPEN, CLOSE, LOCK, UNLOCK",
                ))
            }
        })
    }
}

struct DoorFlow;

impl Reducer for DoorFlow {
    type State = Door;
    type Event = DoorEvent;
    type Effect = String;
    type Error = CoreError;

    fn reduce(
        state: Option<&Door>,
        event: &DoorEvent,
        actor: &Actor,
    ) -> Result<Transition<Door, String>, CoreError> {
        let illegal = |s: &str, allowed: &[&str]| CoreError::IllegalTransition {
            state: s.into(),
            event: format!("{event:?}").to_uppercase(),
            allowed: allowed.iter().map(|a| a.to_string()).collect(),
        };
        let Some(door) = state else {
            return match event {
                DoorEvent::Install => Ok(Transition::to(Door {
                    state: "closed".into(),
                    opened_count: 0,
                    locked_by: None,
                })
                .with(format!("installed by {}", actor.id))),
                _ => Err(CoreError::not_found("door", "(new)")),
            };
        };
        let mut next = door.clone();
        match (door.state.as_str(), event) {
            ("closed", DoorEvent::Open) => {
                next.state = "open".into();
                next.opened_count += 1;
            }
            ("open", DoorEvent::Close) => next.state = "closed".into(),
            ("closed", DoorEvent::Lock) => {
                next.state = "locked".into();
                next.locked_by = Some(actor.id.clone());
            }
            ("locked", DoorEvent::Unlock) => {
                if door.locked_by.as_deref() != Some(actor.id.as_str()) {
                    return Err(CoreError::PermissionDenied {
                        actor: actor.id.clone(),
                        action: "unlock a door locked by someone else".into(),
                        allowed: "only the actor who locked it".into(),
                    });
                }
                next.state = "closed".into();
                next.locked_by = None;
            }
            ("closed", _) => return Err(illegal("closed", &["OPEN", "LOCK"])),
            ("open", _) => return Err(illegal("open", &["CLOSE"])),
            (s, _) => return Err(illegal(s, &["UNLOCK"])),
        }
        let note = format!("{} -> {}", door.state, next.state);
        Ok(Transition::to(next).with(note))
    }

    fn event_type(event: &DoorEvent) -> String {
        format!("{event:?}").to_uppercase()
    }

    fn event_payload(_event: &DoorEvent) -> Value {
        json!({})
    }

    fn event_extra(before: Option<&Door>, after: &Door) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("from_state".into(), before.map(|b| b.state.clone()).into());
        m.insert("to_state".into(), after.state.clone().into());
        m
    }
}

impl Workflow for DoorFlow {
    const TABLES: Tables = Tables {
        projection: "fg_test.doors",
        id_column: "id",
        id_type: "text",
        events: "fg_test.door_events",
        entity_column: "door_id",
        touch_column: Some("updated_at"),
    };

    fn enqueue_effects(
        client: &mut SpiClient<'_>,
        entity_id: &str,
        event: &Value,
        effects: Vec<String>,
    ) -> Result<(), CoreError> {
        let event_id = event["id"]
            .as_i64()
            .ok_or_else(|| CoreError::Internal("event row has no id".into()))?;
        for message in effects {
            client.update(
                "INSERT INTO fg_test.door_effects (door_id, event_id, message) VALUES ($1, $2, $3)",
                None,
                &[entity_id.into(), event_id.into(), message.into()],
            )?;
        }
        Ok(())
    }
}

/// Response handlers that exist only in the pg_test build.
pub fn outbox_handlers() -> Vec<(&'static str, crate::core::outbox::handlers::Handler)> {
    vec![
        ("fg_test.record", record_outcome),
        ("fg_test.explode", explode),
    ]
}

fn record_outcome(
    client: &mut SpiClient<'_>,
    call: &crate::core::outbox::handlers::HandlerCall<'_>,
) -> Result<(), CoreError> {
    client.update(
        "INSERT INTO fg_test.delivery_outcomes (delivery_id, owner_id, outcome, status_code, response) VALUES ($1, $2, $3, $4, $5)",
        None,
        &[
            call.delivery_id.into(),
            call.owner_id.into(),
            call.outcome.as_str().into(),
            call.status_code.into(),
            call.response.clone().map(JsonB).into(),
        ],
    )?;
    Ok(())
}

/// A handler that fails with a real SQL error, to prove handlers are isolated per delivery.
fn explode(
    client: &mut SpiClient<'_>,
    _call: &crate::core::outbox::handlers::HandlerCall<'_>,
) -> Result<(), CoreError> {
    client.update("SELECT 1 / 0", None, &[])?;
    Ok(())
}

mod jsonb;
mod outbox;

/// The single value a test query returns (tests only: a failure fails the test).
pub(crate) fn one<T: pgrx::IntoDatum + pgrx::FromDatum>(q: &str) -> T {
    Spi::get_one::<T>(q)
        .expect("query failed")
        .expect("query returned NULL")
}

/// The SQLSTATE `stmt` raises, or `None`: asserts an exact error code in the test's transaction.
pub(crate) fn sqlstate(stmt: &str) -> Option<String> {
    Spi::get_one_with_args::<String>("SELECT fg_test.sqlstate_of($1)", &[stmt.into()])
        .expect("sqlstate_of")
}

#[pg_schema]
mod tests {
    use super::*;
    use crate::core::store;
    use crate::core::tests::{one, sqlstate};

    /// Apply a door event as the session's actor (or on behalf of someone, if trusted).
    #[pg_extern]
    fn door(
        id: &str,
        event: &str,
        idempotency_key: default!(Option<&str>, "NULL"),
        on_behalf_of: default!(Option<&str>, "NULL"),
    ) -> Result<JsonB, pgrx::pg_sys::panic::ErrorReport> {
        let run = || -> Result<Value, CoreError> {
            let actor = store::acting_actor(on_behalf_of)?;
            let ev = DoorEvent::parse(event)?;
            let applied = eventstore::apply::<DoorFlow>(id, &ev, &actor, idempotency_key)?;
            Ok(
                json!({"state": applied.state, "row": applied.row, "event": applied.event, "replayed": applied.replayed}),
            )
        };
        run()
            .map(JsonB)
            .map_err(pgrx::pg_sys::panic::ErrorReport::from)
    }

    fn counts() -> (i64, i64) {
        (
            one("SELECT count(*) FROM fg_test.door_events"),
            one("SELECT count(*) FROM fg_test.door_effects"),
        )
    }

    // --- actor -------------------------------------------------------------------------------

    #[pg_test]
    fn current_actor_falls_back_to_current_user() {
        assert_eq!(
            one::<String>("SELECT flowgate.current_actor()"),
            one::<String>("SELECT current_user::text")
        );
    }

    #[pg_test]
    fn current_actor_reads_the_jwt_the_way_postgrest_sets_it() {
        Spi::run("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'fg_authenticated') THEN CREATE ROLE fg_authenticated NOLOGIN; END IF; END $$").unwrap();
        Spi::run("GRANT USAGE ON SCHEMA flowgate TO fg_authenticated").unwrap();
        Spi::run("SET LOCAL ROLE fg_authenticated").unwrap();
        Spi::run(r#"SELECT set_config('request.jwt.claims', '{"sub":"9f0c1f6e-1111-4d4e-8c2a-5b3f7a1e2d3c","role":"fg_authenticated"}', true)"#).unwrap();
        assert_eq!(
            one::<String>("SELECT flowgate.current_actor()"),
            "9f0c1f6e-1111-4d4e-8c2a-5b3f7a1e2d3c"
        );
        let info: JsonB = one("SELECT flowgate.current_actor_info()");
        assert_eq!(info.0["source"], "jwt");
        assert_eq!(info.0["role"], "fg_authenticated");
        assert_eq!(info.0["trusted"], false);
        // An untrusted session may not name another actor.
        assert_eq!(
            sqlstate("SELECT flowgate.current_actor_info('someone-else')").as_deref(),
            Some("42501")
        );
        // Claims without sub (the anon key) fall back to the role.
        Spi::run(r#"SELECT set_config('request.jwt.claims', '{"role":"fg_authenticated"}', true)"#)
            .unwrap();
        assert_eq!(
            one::<String>("SELECT flowgate.current_actor()"),
            "fg_authenticated"
        );
        Spi::run("RESET ROLE").unwrap();
    }

    #[pg_test]
    fn malformed_claims_raise_22p02() {
        Spi::run("SELECT set_config('request.jwt.claims', '{oops', true)").unwrap();
        assert_eq!(
            sqlstate("SELECT flowgate.current_actor()").as_deref(),
            Some("22P02")
        );
    }

    #[pg_test]
    fn superuser_may_act_on_behalf() {
        let info: JsonB = one("SELECT flowgate.current_actor_info('U024BE7LH')");
        assert_eq!(info.0["id"], "U024BE7LH");
        assert_eq!(info.0["source"], "on_behalf");
        assert_eq!(info.0["actor_type"], "delegated");
    }

    // --- settings ----------------------------------------------------------------------------

    #[pg_test]
    fn settings_round_trip_with_typed_reads() {
        assert_eq!(store::get_i64("fg_test.batch").unwrap(), 100);
        Spi::run(r#"SELECT flowgate.set_setting('fg_test.batch', '250')"#).unwrap();
        assert_eq!(store::get_i64("fg_test.batch").unwrap(), 250);
        assert_eq!(
            one::<String>("SELECT updated_by FROM flowgate.settings WHERE key = 'fg_test.batch'"),
            one::<String>("SELECT current_user::text")
        );
        Spi::run(r#"SELECT flowgate.set_setting('fg_test.mode', '"manual"')"#).unwrap();
        assert_eq!(store::get_text("fg_test.mode").unwrap(), "manual");
        Spi::run(r#"SELECT flowgate.set_setting('fg_test.flag', 'true')"#).unwrap();
        assert!(store::get_bool("fg_test.flag").unwrap());
        assert_eq!(
            store::get_list("flowgate.trusted_roles").unwrap(),
            vec!["service_role".to_string()]
        );
        let reset: JsonB = one("SELECT flowgate.reset_setting('fg_test.batch')");
        assert_eq!(reset.0, json!(100));
        assert_eq!(store::get_i64("fg_test.batch").unwrap(), 100);
    }

    #[pg_test]
    fn bad_settings_raise_22023_and_store_nothing() {
        let before: i64 = one("SELECT count(*) FROM flowgate.settings");
        for stmt in [
            "SELECT flowgate.set_setting('fg_test.batch', '0')",
            "SELECT flowgate.set_setting('fg_test.batch', '\"ten\"')",
            "SELECT flowgate.set_setting('fg_test.mode', '\"sometimes\"')",
            "SELECT flowgate.set_setting('flowgate.no_such_key', '1')",
            "SELECT flowgate.get_setting('flowgate.no_such_key')",
            // The trigger guards direct writes too.
            "INSERT INTO flowgate.settings (key, value) VALUES ('fg_test.batch', '5000')",
            "INSERT INTO flowgate.settings (key, value) VALUES ('flowgate.trusted_roles', '\"x\"')",
        ] {
            assert_eq!(sqlstate(stmt).as_deref(), Some("22023"), "{stmt}");
        }
        assert_eq!(one::<i64>("SELECT count(*) FROM flowgate.settings"), before);
    }

    #[pg_test]
    fn definitions_are_listed() {
        let n: i64 = one("SELECT count(*) FROM flowgate.setting_definitions() WHERE key = 'flowgate.trusted_roles' AND NOT is_set");
        assert_eq!(n, 1);
    }

    // --- event-store runner ------------------------------------------------------------------

    #[pg_test]
    fn runner_creates_transitions_and_records_events_with_effects() {
        let created: JsonB = one("SELECT tests.door('d1', 'INSTALL')");
        assert_eq!(created.0["state"]["state"], "closed");
        let opened: JsonB = one("SELECT tests.door('d1', 'OPEN')");
        assert_eq!(opened.0["row"]["opened_count"], 1);
        assert_eq!(opened.0["event"]["from_state"], "closed");
        assert_eq!(opened.0["event"]["to_state"], "open");
        assert_eq!(opened.0["event"]["actor_type"], "role");
        Spi::run("SELECT tests.door('d1', 'CLOSE')").unwrap();
        Spi::run("SELECT tests.door('d1', 'OPEN')").unwrap();
        assert_eq!(
            one::<String>("SELECT state FROM fg_test.doors WHERE id = 'd1'"),
            "open"
        );
        assert_eq!(
            one::<i32>("SELECT opened_count FROM fg_test.doors WHERE id = 'd1'"),
            2
        );
        assert_eq!(counts(), (4, 4), "one event and one effect per transition");
        let linked: i64 = one(
            "SELECT count(*) FROM fg_test.door_effects f JOIN fg_test.door_events e ON e.id = f.event_id AND e.door_id = f.door_id",
        );
        assert_eq!(linked, 4, "every effect points at the event that caused it");
        let messages: String =
            one("SELECT string_agg(message, ',' ORDER BY id) FROM fg_test.door_effects");
        let me: String = one("SELECT current_user::text");
        assert_eq!(
            messages,
            format!("installed by {me},closed -> open,open -> closed,closed -> open")
        );
    }

    #[pg_test]
    fn illegal_transitions_raise_55000_and_write_nothing() {
        Spi::run("SELECT tests.door('d2', 'INSTALL')").unwrap();
        let before = counts();
        assert_eq!(
            sqlstate("SELECT tests.door('d2', 'CLOSE')").as_deref(),
            Some("55000")
        );
        assert_eq!(
            sqlstate("SELECT tests.door('d2', 'UNLOCK')").as_deref(),
            Some("55000")
        );
        assert_eq!(
            sqlstate("SELECT tests.door('nowhere', 'OPEN')").as_deref(),
            Some("P0002")
        );
        assert_eq!(
            sqlstate("SELECT tests.door('d2', 'KICK')").as_deref(),
            Some("22023")
        );
        assert_eq!(counts(), before);
        assert_eq!(
            one::<String>("SELECT state FROM fg_test.doors WHERE id = 'd2'"),
            "closed"
        );
        assert_eq!(
            one::<i64>("SELECT count(*) FROM fg_test.doors WHERE id = 'nowhere'"),
            0
        );
    }

    #[pg_test]
    fn the_illegal_transition_message_names_state_and_allowed_events() {
        Spi::run("SELECT tests.door('d3', 'INSTALL')").unwrap();
        let msg: String = one(
            "DO $$ BEGIN PERFORM tests.door('d3', 'CLOSE'); EXCEPTION WHEN SQLSTATE '55000' THEN \
             DECLARE m text; h text; BEGIN GET STACKED DIAGNOSTICS m = MESSAGE_TEXT, h = PG_EXCEPTION_HINT; \
             PERFORM set_config('fg_test.msg', m || ' | ' || h, true); END; END $$; SELECT current_setting('fg_test.msg')",
        );
        assert_eq!(
            msg,
            "CLOSE is not allowed in state closed | events allowed in closed: OPEN, LOCK"
        );
    }

    /// The runner reads back only what Postgres decided, yet answers with the rows as stored:
    /// defaults, identities and touched columns included, and whatever a BEFORE row trigger
    /// changed.
    #[pg_test]
    fn the_answer_is_the_rows_as_stored() {
        let stored = |answer: &JsonB| {
            let row: JsonB = one("SELECT to_jsonb(d) FROM fg_test.doors d WHERE id = 'd9'");
            let event: JsonB = one(
                "SELECT to_jsonb(e) FROM fg_test.door_events e WHERE door_id = 'd9' ORDER BY id DESC LIMIT 1",
            );
            assert_eq!(answer.0["row"], row.0, "row");
            assert_eq!(answer.0["event"], event.0, "event");
        };
        stored(&one("SELECT tests.door('d9', 'INSTALL')"));
        // The touched column is read back: now() is the same all through this test's
        // transaction, so the stored value is moved away from it first.
        Spi::run("UPDATE fg_test.doors SET updated_at = '2000-01-01 00:00:00+00' WHERE id = 'd9'")
            .unwrap();
        let opened: JsonB = one("SELECT tests.door('d9', 'OPEN')");
        stored(&opened);
        assert!(one::<bool>(
            "SELECT updated_at = now() FROM fg_test.doors WHERE id = 'd9'"
        ));
        // CLOSE's statement (the update and the append in one) is built and kept now; a column
        // added to the event table must be read back by the next CLOSE all the same (the kept
        // statements are dropped on the invalidation).
        stored(&one("SELECT tests.door('d9', 'CLOSE')"));
        stored(&one("SELECT tests.door('d9', 'OPEN')"));
        Spi::run("ALTER TABLE fg_test.door_events ADD COLUMN note text DEFAULT 'added later'")
            .unwrap();
        let closed: JsonB = one("SELECT tests.door('d9', 'CLOSE')");
        stored(&closed);
        assert_eq!(closed.0["event"]["note"], json!("added later"));
        stored(&one("SELECT tests.door('d9', 'OPEN')"));
        // With triggers of their own on these writes, the update and the append are two
        // statements again, and each sees what the triggers did.
        Spi::run(
            "CREATE FUNCTION fg_test.stamp() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN \
               IF TG_TABLE_NAME = 'doors' THEN NEW.created_at := '2001-02-03 04:05:06+00'; \
               ELSE NEW.payload := '{\"stamped\": true}'; END IF; \
               RETURN NEW; \
             END $$; \
             CREATE TRIGGER stamp BEFORE UPDATE ON fg_test.doors FOR EACH ROW EXECUTE FUNCTION fg_test.stamp(); \
             CREATE TRIGGER stamp BEFORE INSERT ON fg_test.door_events FOR EACH ROW EXECUTE FUNCTION fg_test.stamp()",
        )
        .unwrap();
        let closed: JsonB = one("SELECT tests.door('d9', 'CLOSE')");
        stored(&closed);
        assert!(one::<bool>(
            "SELECT created_at = '2001-02-03 04:05:06+00' FROM fg_test.doors WHERE id = 'd9'"
        ));
        assert_eq!(closed.0["event"]["payload"], json!({"stamped": true}));
    }

    #[pg_test]
    fn idempotency_keys_replay_the_first_result_and_write_nothing() {
        Spi::run("SELECT tests.door('d4', 'INSTALL')").unwrap();
        let first: JsonB = one("SELECT tests.door('d4', 'OPEN', 'retry-1')");
        let before = counts();
        let again: JsonB = one("SELECT tests.door('d4', 'OPEN', 'retry-1')");
        assert_eq!(again.0["replayed"], true);
        assert_eq!(again.0["event"]["id"], first.0["event"]["id"]);
        assert_eq!(counts(), before);
        // The key is per entity and per event, so a different key is a new (here illegal) event.
        assert_eq!(
            sqlstate("SELECT tests.door('d4', 'OPEN', 'retry-2')").as_deref(),
            Some("55000")
        );
    }

    #[pg_test]
    fn event_tables_are_append_only() {
        Spi::run("SELECT tests.door('d5', 'INSTALL')").unwrap();
        assert_eq!(
            sqlstate("UPDATE fg_test.door_events SET event_type = 'X'").as_deref(),
            Some("55000")
        );
        assert_eq!(
            sqlstate("DELETE FROM fg_test.door_events").as_deref(),
            Some("55000")
        );
        assert_eq!(
            sqlstate("TRUNCATE fg_test.door_events CASCADE").as_deref(),
            Some("55000")
        );
        assert_eq!(counts().0, 1);
    }

    #[pg_test]
    fn actors_are_recorded_and_checked_by_the_reducer() {
        Spi::run("SELECT tests.door('d6', 'INSTALL')").unwrap();
        Spi::run("SELECT tests.door('d6', 'LOCK', NULL, 'alice')").unwrap();
        assert_eq!(
            one::<String>("SELECT locked_by FROM fg_test.doors WHERE id = 'd6'"),
            "alice"
        );
        let before = counts();
        assert_eq!(
            sqlstate("SELECT tests.door('d6', 'UNLOCK', NULL, 'bob')").as_deref(),
            Some("42501")
        );
        assert_eq!(counts(), before);
        Spi::run("SELECT tests.door('d6', 'UNLOCK', NULL, 'alice')").unwrap();
        let actors: String = one("SELECT string_agg(actor_id || ':' || actor_type, ',' ORDER BY id) FROM fg_test.door_events WHERE door_id = 'd6'");
        let me: String = one("SELECT current_user::text");
        assert_eq!(actors, format!("{me}:role,alice:delegated,alice:delegated"));
    }
}
