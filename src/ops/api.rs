//! SQL surface of the release-gates control plane (schema `ops`).

#[pgrx::pg_schema]
mod ops {
    use flowgate_macros::documented;
    use pgrx::pg_sys::panic::ErrorReport;
    use pgrx::prelude::*;
    use pgrx::JsonB;
    use serde_json::{json, Value};

    use crate::core::args::RawJsonb;
    use crate::core::error::CoreError;
    use crate::core::prepared::uuid_text;
    use crate::core::store as core_store;
    use crate::core::subxact;
    use crate::ops::apply::{self, Apply};
    use crate::ops::envelope;
    use crate::ops::error::{OpsError, OpsResult};
    use crate::ops::evaluation;
    use crate::ops::gates::ALL_GATES;
    use crate::ops::roles;
    use crate::ops::roles::Caller;
    use crate::ops::store::{self, Outcome, Received};

    /// How many times a sender looks for an accepted row and tries to take the key.
    const CLAIM_ROUNDS: usize = 3;

    fn rejection_body(ingest_id: &str, e: &OpsError) -> Value {
        let mut detail = json!({
            "error": e.kind(),
            "http_status": e.http_status(),
            "message": e.to_string(),
        });
        if let Some(a) = e.allowed() {
            detail["allowed"] = json!(a);
        }
        json!({"ingest_id": ingest_id, "status": "rejected", "detail": detail})
    }

    /// Ingest one event envelope; returns
    /// `{ingest_id, status: accepted|duplicate|rejected|error, detail}` and sets PostgREST's
    /// `response.status` (200, 400, 403, 409, 413, 422, 500). Every call, rejections included, is
    /// logged in `ops.event_ingest_log`. For the sending personas: ci_service_role,
    /// release_manager, qa_tester, sre, developer.
    ///
    /// The statuses: 200 accepted or duplicate (a duplicate returns the original result and writes
    /// nothing else), 400 missing or ill-typed fields or an unknown event_type, 403 a sender whose
    /// persona may not send the event, 409 an unknown release or an event that contradicts the
    /// record, 413 an envelope over 64 KiB, 422 an unsupported schema_version, 500 an internal
    /// error (logged to the server log). Two sessions sending the same key at once get one accepted
    /// and one duplicate.
    #[documented]
    #[pg_extern(volatile, security_definer)]
    #[search_path(pg_catalog, pg_temp)]
    fn ingest_event(envelope: Option<RawJsonb>) -> Result<JsonB, ErrorReport> {
        Ok(ingest(envelope).map(JsonB)?)
    }

    fn ingest(envelope: Option<RawJsonb>) -> OpsResult<Value> {
        let actor = core_store::acting_actor(None)?;
        // The stored size first: an envelope far over the limit is refused (413, logged by size)
        // without being detoasted or converted. The exact limit is on the JSON text, below.
        let stored = envelope.as_ref().map_or(0, RawJsonb::size);
        let raw = if stored > envelope::MAX_ENVELOPE_STORED_BYTES {
            None
        } else {
            envelope::value_of(envelope)?
        };
        let bytes = raw.as_ref().map_or(stored, |v| v.to_string().len());
        let raw = raw.unwrap_or(Value::Null);
        let (header, parsed) = envelope::parse(&raw, bytes);
        let keep_envelope = (bytes <= envelope::MAX_ENVELOPE_BYTES).then_some(&raw);

        // Who is sending, and may they send this?
        let caller = Caller {
            actor_id: actor.id.clone(),
            trusted: actor.trusted,
            memberships: store::memberships(),
        };
        let parsed = parsed.and_then(|env| {
            roles::authorize(
                env.event_type,
                &caller.actor_id,
                &caller.memberships,
                caller.trusted,
            )
            .map(|_| env)
        });
        let env = match parsed {
            Ok(env) => env,
            Err(e) => {
                return Spi::connect_mut(|client| {
                    let r = Received {
                        header: &header,
                        envelope: keep_envelope,
                        envelope_bytes: bytes,
                        occurred_at: None,
                        received_by: &caller.actor_id,
                    };
                    let mut body = rejection_body("", &e);
                    let id = store::log(
                        client,
                        &r,
                        &Outcome {
                            status: "rejected",
                            http_status: e.http_status(),
                            error: Some(e.kind()),
                            error_message: Some(&e.to_string()),
                            result: &body,
                            original_ingest_id: None,
                        },
                    )?;
                    body["ingest_id"] = json!(id);
                    Ok(body)
                });
            }
        };

        let received = Received {
            header: &header,
            envelope: keep_envelope,
            envelope_bytes: bytes,
            occurred_at: env.occurred_at.as_deref(),
            received_by: &caller.actor_id,
        };

        // Duplicate, or take the key.
        let claimed = Spi::connect_mut(|client| -> OpsResult<Result<String, Value>> {
            let key = &env.idempotency_key;
            // Twice is enough: a claim that loses waits for the winner's commit, and the next
            // look (a new snapshot) sees it. A third round means the key changed hands again
            // meanwhile; the caller retries.
            for _ in 0..CLAIM_ROUNDS {
                let (original, result) = match store::claim_key(client, &received)? {
                    store::Claim::Taken(id) => return Ok(Ok(id)),
                    store::Claim::Held(original, result) => (original, result),
                    // The sender that held the key committed after this statement began, or
                    // released it (a rejection): go round once more.
                    store::Claim::Contended => continue,
                };
                let id = store::log(
                    client,
                    &received,
                    &Outcome {
                        status: "duplicate",
                        http_status: 200,
                        error: None,
                        error_message: None,
                        result: &Value::Null,
                        original_ingest_id: Some(&original),
                    },
                )?;
                let mut body = result;
                if let Value::Object(m) = &mut body {
                    m.insert("status".into(), json!("duplicate"));
                    m.insert("receipt_id".into(), json!(id));
                }
                return Ok(Err(body));
            }
            Err(OpsError::Core(CoreError::Busy {
                what: format!("idempotency_key {:?}", key),
                hint: "the key is being accepted and released by concurrent senders; send the envelope again".into(),
            }))
        })?;
        let ingest_id = match claimed {
            Ok(id) => id,
            Err(duplicate) => return Ok(duplicate),
        };

        // Apply in a subtransaction, so a failing handler leaves nothing but the log row.
        let ctx = Apply {
            ingest_id: &ingest_id,
            caller: &caller,
        };
        let applied = subxact::run(|| {
            let _applying = env
                .release_id()
                .and_then(|r| uuid::Uuid::parse_str(r).ok())
                .map(evaluation::Applying::start);
            Spi::connect_mut(|client| apply::apply(client, &ctx, &env))
        });

        Spi::connect_mut(|client| {
            let (body, outcome_status, http, error, message): (
                Value,
                &str,
                u16,
                Option<&str>,
                Option<String>,
            ) = match applied {
                Ok(Ok(detail)) => (
                    json!({"ingest_id": ingest_id, "status": "accepted", "detail": detail}),
                    "accepted",
                    200,
                    None,
                    None,
                ),
                Ok(Err(e)) if e.http_status() < 500 => {
                    let body = rejection_body(&ingest_id, &e);
                    (
                        body,
                        "rejected",
                        e.http_status(),
                        Some(e.kind()),
                        Some(e.to_string()),
                    )
                }
                Ok(Err(e)) => internal(&ingest_id, &e.to_string()),
                // A foreign key or unique violation raised by Postgres itself: the event
                // contradicts the record (e.g. a release deleted meanwhile).
                Err(c) if c.sqlstate.starts_with("23") => {
                    let e = OpsError::Conflict(c.message.clone());
                    let body = rejection_body(&ingest_id, &e);
                    (body, "rejected", 409, Some("conflict"), Some(c.message))
                }
                Err(c) => internal(&ingest_id, &format!("{} ({})", c.message, c.sqlstate)),
            };
            store::finish(
                client,
                &ingest_id,
                &Outcome {
                    status: outcome_status,
                    http_status: http,
                    error,
                    error_message: message.as_deref(),
                    result: &body,
                    original_ingest_id: None,
                },
            )?;
            Ok(body)
        })
    }

    /// A 500: the real message goes to the server log and the log row, the caller gets the
    /// ingest_id to look it up.
    fn internal(
        ingest_id: &str,
        message: &str,
    ) -> (
        Value,
        &'static str,
        u16,
        Option<&'static str>,
        Option<String>,
    ) {
        pgrx::log!("ops.ingest_event: internal error for ingest_id {ingest_id}: {message}");
        (
            json!({
                "ingest_id": ingest_id,
                "status": "error",
                "detail": {
                    "error": "internal_error",
                    "http_status": 500,
                    "message": "the event could not be applied; nothing but the ingest log row was written (see the server log for this ingest_id)",
                },
            }),
            "error",
            500,
            Some("internal_error"),
            Some(message.to_owned()),
        )
    }

    /// The current status of a gate, computed from its release's facts at this moment: pending,
    /// in_progress, passed, failed or bypassed (only while an exception is approved and not
    /// expired). P0002 for an unknown gate.
    #[documented]
    #[pg_extern(stable, strict, security_definer)]
    #[search_path(pg_catalog, pg_temp)]
    fn evaluate_gate(gate_id: pgrx::Uuid) -> Result<String, ErrorReport> {
        let gate = uuid_text(gate_id);
        Ok(Spi::connect(|client| {
            evaluation::gate_status(client, &gate)
        })?)
    }

    /// Whether every gate `target_env` requires (`ops.environment_gate_requirements`) is passed, or
    /// bypassed by an approved exception that has not expired, at this moment. P0002 for an unknown
    /// release, 22023 for an environment other than dev, staging or production.
    #[documented]
    #[pg_extern(stable, strict, security_definer)]
    #[search_path(pg_catalog, pg_temp)]
    fn is_eligible_for_promotion(
        release_id: pgrx::Uuid,
        target_env: &str,
    ) -> Result<bool, ErrorReport> {
        let run = || -> OpsResult<bool> {
            let release = uuid_text(release_id);
            Spi::connect(|client| Ok(evaluation::promotion(client, &release, target_env)?.0))
        };
        Ok(run()?)
    }

    /// Promotion eligibility of a release to `target_env` with the blocking gates and why:
    /// `{release_id, environment, eligible, blocking: ["G3 pending: waiting for ...", ...]}`. The
    /// same rule as `ops.is_eligible_for_promotion`, with the same errors.
    #[documented]
    #[pg_extern(stable, strict, security_definer)]
    #[search_path(pg_catalog, pg_temp)]
    fn promotion_status(release_id: pgrx::Uuid, target_env: &str) -> Result<JsonB, ErrorReport> {
        let run = || -> OpsResult<Value> {
            let release = uuid_text(release_id);
            Spi::connect(|client| {
                let (ok, blocking) = evaluation::promotion(client, &release, target_env)?;
                Ok(
                    json!({"release_id": release, "environment": target_env, "eligible": ok, "blocking": blocking}),
                )
            })
        };
        Ok(run().map(JsonB)?)
    }

    /// Recompute and store the statuses of a release's gates; returns the evaluations (none for a
    /// release that no longer exists). Run by the triggers on checks, evidence, approvals,
    /// exceptions and deployments; not granted to PUBLIC.
    #[documented]
    #[pg_extern(volatile, strict)]
    fn refresh_gates(release_id: pgrx::Uuid) -> Result<JsonB, ErrorReport> {
        let run = || -> OpsResult<Value> {
            let release = uuid_text(release_id);
            let evaluations = Spi::connect_mut(|client| evaluation::refresh(client, &release))?;
            Ok(serde_json::to_value(evaluations).unwrap_or(Value::Null))
        };
        Ok(run().map(JsonB)?)
    }

    /// Whether `ops.ingest_event` in this session is applying an event to the release right now;
    /// the gate triggers then leave the release's evaluation to the ingest.
    ///
    /// The triggers that re-evaluate a release's gates when a fact row is written skip such a
    /// release (their WHEN clause): the ingest evaluates it once, after all its writes.
    #[documented]
    #[pg_extern(volatile, strict, parallel_restricted)]
    fn ingest_applying(release_id: pgrx::Uuid) -> bool {
        evaluation::is_applying(uuid::Uuid::from_bytes(*release_id.as_bytes()))
    }

    /// Re-evaluate the releases whose bypassing exception has expired, so that
    /// `ops.release_gates.status` stays current with the clock; returns how many releases were
    /// re-evaluated. Run by the ops.expiry schedule (every minute by default); not granted to
    /// PUBLIC.
    #[documented]
    #[pg_extern(volatile)]
    fn expire_bypasses() -> Result<i32, ErrorReport> {
        Ok(Spi::connect_mut(evaluation::expire_bypasses)?)
    }

    /// The statements that give each persona its access, generated from the persona matrix: the
    /// roles, GRANTs, row-level security policies and the CHECK on an approval's persona. The
    /// install runs them; the owner reads them to see what each persona may do.
    #[documented]
    #[pg_extern(immutable, parallel_safe)]
    fn persona_privileges() -> SetOfIterator<'static, String> {
        SetOfIterator::new(crate::ops::personas::privileges())
    }

    /// The CHECK constraints that hold each value list of ops (statuses, environments,
    /// severities, ...) in its columns, generated from the lists ops.ingest_event checks
    /// envelopes against. The install runs them; owner only.
    #[documented]
    #[pg_extern(immutable, parallel_safe)]
    fn value_constraints() -> SetOfIterator<'static, String> {
        SetOfIterator::new(crate::ops::values::constraints())
    }

    /// What each gate (G1 to G4) requires: one row per gate with its name, the evidence types any
    /// of which counts, the approver personas, and the rule in words.
    #[allow(clippy::type_complexity)]
    #[documented]
    #[pg_extern(immutable, parallel_safe)]
    fn gate_rules() -> TableIterator<
        'static,
        (
            name!(gate_code, String),
            name!(name, String),
            name!(evidence_any_of, Vec<String>),
            name!(approver_roles, Vec<String>),
            name!(summary, String),
        ),
    > {
        TableIterator::new(ALL_GATES.into_iter().map(|code| {
            let r = code.rule();
            (
                code.as_str().to_owned(),
                r.name.to_owned(),
                r.evidence_any_of.iter().map(|s| s.to_string()).collect(),
                r.approver_roles.iter().map(|s| s.to_string()).collect(),
                r.summary.to_owned(),
            )
        }))
    }
}
