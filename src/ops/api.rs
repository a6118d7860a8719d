//! SQL surface of the release-gates control plane (schema `ops`).

#[pgrx::pg_schema]
mod ops {
    use flowgate_macros::documented;
    use pgrx::pg_sys::panic::ErrorReport;
    use pgrx::prelude::*;
    use pgrx::JsonB;
    use serde_json::{json, Value};

    use crate::core::answer::JsonbAnswer;
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
    use crate::ops::store::{self, HeldKey, Outcome, Precheck, Received};

    /// How many times a sender looks for an accepted row and tries to take the key.
    const CLAIM_ROUNDS: usize = 3;

    /// Ingest one event envelope; returns
    /// `{ingest_id, status: accepted|duplicate|rejected|error, detail}` and sets PostgREST's
    /// `response.status` (200, 400, 403, 409, 413, 422, 500). Every call, rejections included, is
    /// logged in `ops.event_ingest_log`. For the sending personas: ci_service_role,
    /// release_manager, qa_tester, sre, developer.
    ///
    /// The statuses: 200 accepted or duplicate (a duplicate returns the original result and writes
    /// nothing else; a key accepted from another sender is a 409), 400 missing or ill-typed fields or an unknown event_type, 403 a sender whose
    /// persona may not send the event, 409 an unknown release or an event that contradicts the
    /// record, 413 an envelope over 64 KiB, 422 an unsupported schema_version, 500 an internal
    /// error (logged to the server log). Two sessions sending the same key at once get one accepted
    /// and one duplicate. A serialization failure or a deadlock is raised (SQLSTATE class 40) and
    /// logs nothing: the caller retries its transaction.
    #[documented]
    #[pg_extern(volatile, security_definer)]
    #[search_path(pg_catalog, pg_temp)]
    fn ingest_event(envelope: Option<RawJsonb>) -> Result<JsonbAnswer, ErrorReport> {
        Ok(ingest(envelope)?)
    }

    fn ingest(envelope: Option<RawJsonb>) -> OpsResult<JsonbAnswer> {
        let actor = core_store::acting_actor(None)?;
        // The stored size first: an envelope far over the limit is refused (413, logged by size)
        // without being detoasted or converted. The exact limit is on the JSON text, below.
        let stored = envelope.as_ref().map_or(0, RawJsonb::size);
        // Logged as sent (the argument itself), not printed and parsed again.
        let sent = envelope.as_ref().and_then(RawJsonb::datum);
        let raw = if stored > envelope::MAX_ENVELOPE_STORED_BYTES {
            Ok(None)
        } else {
            envelope::value_of(envelope).map_err(envelope::unreadable)
        };
        let bytes = match &raw {
            Ok(Some(v)) => v.to_string().len(),
            _ => stored,
        };
        let (header, parsed) = match raw {
            Ok(v) => envelope::parse(&v.unwrap_or(Value::Null), bytes),
            Err(e) => (envelope::Header::default(), Err(e)),
        };
        // A SQL NULL envelope is logged as JSON null (a NULL log column means "over the limit").
        let null_envelope = match sent {
            None => Some(answer(Value::Null)?),
            Some(_) => None,
        };
        let keep_envelope = sent
            .or(null_envelope.as_ref().map(JsonbAnswer::datum))
            .filter(|_| bytes <= envelope::MAX_ENVELOPE_BYTES);

        // Who is sending, and may they send this?
        let caller = Caller {
            actor_id: actor.id.clone(),
            trusted: actor.trusted,
            memberships: store::memberships(),
        };
        // Anonymous callers (the anon role, a JWT without a subject) first, before anything
        // the parse found: every one of them would be the same actor, so an approval in its
        // name would be no one's (403, logged), and they learn nothing of the envelope's
        // checks. Then the parse, then whether the sender's personas may send this event.
        let parsed = match actor.refuse_anonymous("send ops events anonymously") {
            Err(e) => Err(OpsError::Core(e)),
            Ok(()) => parsed.and_then(|env| {
                roles::authorize(
                    env.event_type,
                    &caller.actor_id,
                    &caller.memberships,
                    caller.trusted,
                )
                .map(|_| env)
            }),
        };
        let mut received = Received {
            header: &header,
            envelope: keep_envelope,
            envelope_bytes: bytes,
            occurred_at: None,
            received_by: &caller.actor_id,
        };
        // The envelope's log row's id, whatever its outcome (a duplicate's receipt_id).
        let ingest_id = core_store::new_id();
        let env = match parsed {
            Ok(env) => env,
            Err(e) => return Finished::refused(&ingest_id, &e).log(&ingest_id, &received),
        };
        received.occurred_at = env.occurred_at.as_deref();

        // One statement finds the accepted row that holds the key (this envelope is then its
        // duplicate and writes only its log row) or else locks the release the envelope is
        // about. The event is applied in a subtransaction, and the accepted log row, written
        // last, takes the key; when a concurrent sender took it meanwhile (the insert waits for
        // its commit, then raises a unique violation), the subtransaction is rolled back and the
        // envelope is a duplicate of that sender's. A refused or failing event leaves nothing
        // but its log row.
        let key = &env.idempotency_key;
        // Twice is enough: losing the key means its holder committed, and the next look (a new
        // snapshot) sees it. A third round means the key changed hands again meanwhile; the
        // caller retries.
        for _ in 0..CLAIM_ROUNDS {
            // A check result that repeats its check's latest one changes nothing but the log:
            // under READ COMMITTED it is recorded without the release's turn (a transaction
            // that reads one snapshot throughout takes the turn, below, which fails it with
            // 40001 when that snapshot missed an event of the release that changed something).
            if let Some((release, report)) =
                apply::repeat_candidate(&env).filter(|_| !core_store::snapshot_per_transaction())
            {
                match accept_repeat(&received, &ingest_id, key, release, report)? {
                    Repeat::Answered(body) => return Ok(body),
                    Repeat::KeyTaken => continue,
                    Repeat::NotOne => {}
                }
            }
            let lock = match Spi::connect_mut(|client| {
                store::precheck(client, key, &ingest_id, apply::release_to_lock(&env))
            })? {
                Precheck::Held(held) => return answer_held(&received, &ingest_id, held),
                Precheck::Clear(lock) => lock,
            };
            let ctx = Apply {
                ingest_id: &ingest_id,
                caller: &caller,
                lock,
            };
            // Set while the accepted row is written: a unique violation then is the key's.
            let logging = std::cell::Cell::new(false);
            let applied = subxact::run(|| -> OpsResult<JsonbAnswer> {
                // The handler's reads run read-only while its subtransaction has no transaction
                // id, and a read-only statement uses the calling statement's snapshot, taken
                // before this sender waited for the release lock: it would judge the event (a
                // deployment's eligibility, a gate or check looked up) without what the lock's
                // previous holder committed. With an id, each statement reads a fresh snapshot.
                // (The handler writes anyway, so this assigns an id it would have taken.)
                // SAFETY: inside the subtransaction subxact::run began; assigns its id.
                unsafe { pgrx::pg_sys::GetCurrentTransactionId() };
                let _applying = env
                    .release_id()
                    .and_then(|r| uuid::Uuid::parse_str(r).ok())
                    .map(evaluation::Applying::start);
                let detail = Spi::connect_mut(|client| apply::apply(client, &ctx, &env))?;
                let body = accepted_answer(&ingest_id, detail)?;
                logging.set(true);
                Spi::connect_mut(|client| {
                    store::log(client, &ingest_id, &received, &Outcome::accepted(&body))
                })?;
                Ok(body)
            });
            let failure = match applied {
                Ok(Ok(body)) => return Ok(body),
                // A concurrent sender's accepted row took the key first: the next look finds it,
                // unless the transaction reads one snapshot throughout (then it must be retried
                // as a whole, as for a serialization failure).
                Err(c) if logging.get() && c.sqlstate == "23505" => {
                    if core_store::snapshot_per_transaction() {
                        // This transaction's snapshot can never see that sender's row.
                        return Err(busy(
                            key,
                            "a concurrent sender's envelope took the key after this transaction's snapshot; retry the transaction".into(),
                        ));
                    }
                    continue;
                }
                // A serialization failure or a deadlock: the caller's transaction has to be
                // retried as a whole, so it is not this envelope's outcome.
                Err(c) if c.sqlstate == "40001" || c.sqlstate == "40P01" => {
                    return Err(busy(
                        key,
                        format!("{} ({}); retry the transaction", c.message, c.sqlstate),
                    ))
                }
                // The handler (or the log write) refused the event, or failed.
                Ok(Err(e)) => Ok(e),
                Err(c) => Err(c),
            };
            // A concurrent sender of the same key may have committed while this one waited
            // (for the release lock, or on a row that sender wrote) and looked for the key
            // before that: the event then fails on that sender's effects (its release exists,
            // its exception is decided). Answer with that sender's outcome, as a duplicate.
            if let Precheck::Held(held) =
                Spi::connect_mut(|client| store::precheck(client, key, &ingest_id, None))?
            {
                return answer_held(&received, &ingest_id, held);
            }
            let finished = match failure {
                Ok(e) if e.http_status() < 500 => Finished::refused(&ingest_id, &e),
                Ok(e) => Finished::internal(&ingest_id, &e.to_string()),
                // A foreign key or unique violation raised by Postgres itself: the event
                // contradicts the record (e.g. a release deleted meanwhile).
                Err(c) if c.sqlstate.starts_with("23") => {
                    Finished::refused(&ingest_id, &OpsError::Conflict(c.message))
                }
                Err(c) => {
                    Finished::internal(&ingest_id, &format!("{} ({})", c.message, c.sqlstate))
                }
            };
            return finished.log(&ingest_id, &received);
        }
        Err(busy(
            key,
            "the key is being accepted and released by concurrent senders; send the envelope again"
                .into(),
        ))
    }

    /// 40001-class (`Busy`): the envelope of `key` cannot be judged now; `hint` says whether to
    /// send it again or to retry the caller's whole transaction. Nothing is logged.
    fn busy(key: &str, hint: String) -> OpsError {
        OpsError::Core(CoreError::Busy {
            what: format!("idempotency_key {}", crate::core::error::quoted(key)),
            hint,
        })
    }

    /// What [`accept_repeat`] did.
    enum Repeat {
        /// The envelope was logged and answered: as a repeat, or as a held key's duplicate.
        Answered(JsonbAnswer),
        /// A concurrent sender's accepted row took the key first: look again.
        KeyTaken,
        /// Not a repeat of its check's latest result (or its log row failed): apply it under
        /// the release's lock.
        NotOne,
    }

    /// Record a check result that repeats its check's latest result without the release's lock
    /// (`evaluation::unchanged_repeat`): the key's look, the repeat's look, and the log row in a
    /// subtransaction, answered as `apply` answers it. A report that changes a result, a
    /// release or gate that does not exist, an expired bypass, or any failure of the log row
    /// leaves the envelope to the locked path, which judges and logs it.
    fn accept_repeat(
        received: &Received<'_>,
        ingest_id: &str,
        key: &str,
        release: &str,
        report: &crate::ops::envelope::CheckReport,
    ) -> OpsResult<Repeat> {
        if let Precheck::Held(held) =
            Spi::connect_mut(|client| store::precheck(client, key, ingest_id, None))?
        {
            return answer_held(received, ingest_id, held).map(Repeat::Answered);
        }
        let Some(repeat) =
            Spi::connect_mut(|client| evaluation::unchanged_repeat(client, release, report))?
        else {
            return Ok(Repeat::NotOne);
        };
        let body = accepted_answer(
            ingest_id,
            apply::repeated_check_detail(release, report, &repeat.check_id, repeat.statuses),
        )?;
        Ok(
            match subxact::run(|| {
                Spi::connect_mut(|client| {
                    store::log(client, ingest_id, received, &Outcome::accepted(&body))
                })
            }) {
                Ok(Ok(())) => Repeat::Answered(body),
                Err(c) if c.sqlstate == "23505" => Repeat::KeyTaken,
                // As on the locked path: the caller's transaction is retried as a whole.
                Err(c) if c.sqlstate == "40001" || c.sqlstate == "40P01" => {
                    return Err(busy(
                        key,
                        format!("{} ({}); retry the transaction", c.message, c.sqlstate),
                    ))
                }
                Ok(Err(_)) | Err(_) => Repeat::NotOne,
            },
        )
    }

    /// An envelope whose key an accepted row holds: from the same sender, a duplicate of it;
    /// from anyone else, a conflict (409) that says nothing of that row, logged with this
    /// envelope's ingest_id. A key is its sender's: another caller must not read the result of an
    /// event it did not send (an approval's ids, say).
    fn answer_held(
        received: &Received<'_>,
        ingest_id: &str,
        held: HeldKey,
    ) -> OpsResult<JsonbAnswer> {
        if held.sender != received.received_by {
            let e = OpsError::Conflict(
                "idempotency_key is taken by another sender's accepted envelope; send the event with a key of your own"
                    .into(),
            );
            return Finished::refused(ingest_id, &e).log(ingest_id, received);
        }
        duplicate(received, ingest_id, held)
    }

    /// Log this envelope (ingest id `receipt`) as a duplicate of the accepted row that holds its
    /// key, and answer with that row's result as the duplicate (built by the precheck).
    fn duplicate(received: &Received<'_>, receipt: &str, held: HeldKey) -> OpsResult<JsonbAnswer> {
        let outcome = Outcome {
            status: "duplicate",
            http_status: 200,
            error: None,
            error_message: None,
            result: None,
            original_ingest_id: Some(&held.ingest_id),
        };
        Spi::connect_mut(|client| store::log(client, receipt, received, &outcome))?;
        match held.answer {
            Some(answer) => Ok(answer),
            None => Err(OpsError::Core(CoreError::Internal(format!(
                "the accepted row {} has no result",
                held.ingest_id
            )))),
        }
    }

    /// The outcome of an envelope that was not accepted: its answer and what its log row says.
    struct Finished {
        body: Value,
        status: &'static str,
        http_status: u16,
        error: &'static str,
        message: String,
    }

    impl Finished {
        /// Refused (4xx): the caller is told why.
        fn refused(ingest_id: &str, e: &OpsError) -> Finished {
            let mut detail = json!({
                "error": e.kind(),
                "http_status": e.http_status(),
                "message": e.to_string(),
            });
            if let Some(a) = e.allowed() {
                detail["allowed"] = json!(a);
            }
            Finished {
                body: json!({"ingest_id": ingest_id, "status": "rejected", "detail": detail}),
                status: "rejected",
                http_status: e.http_status(),
                error: e.kind(),
                message: e.to_string(),
            }
        }

        /// A 500: the real message goes to the server log and the log row, the caller gets the
        /// ingest_id to look it up.
        fn internal(ingest_id: &str, message: &str) -> Finished {
            pgrx::log!("ops.ingest_event: internal error for ingest_id {ingest_id}: {message}");
            Finished {
                body: json!({
                    "ingest_id": ingest_id,
                    "status": "error",
                    "detail": {
                        "error": "internal_error",
                        "http_status": 500,
                        "message": "the event could not be applied; nothing but the ingest log row was written (see the server log for this ingest_id)",
                    },
                }),
                status: "error",
                http_status: 500,
                error: "internal_error",
                message: message.to_owned(),
            }
        }

        /// Write the log row and answer.
        fn log(self, ingest_id: &str, received: &Received<'_>) -> OpsResult<JsonbAnswer> {
            let body = answer(self.body)?;
            let outcome = Outcome {
                status: self.status,
                http_status: self.http_status,
                error: Some(self.error),
                error_message: Some(&self.message),
                result: Some(body.datum()),
                original_ingest_id: None,
            };
            Spi::connect_mut(|client| store::log(client, ingest_id, received, &outcome))?;
            Ok(body)
        }
    }

    /// The answer of an accepted envelope, built once, outside SPI: logged and answered as the
    /// same datum.
    fn accepted_answer(ingest_id: &str, detail: Value) -> OpsResult<JsonbAnswer> {
        answer(json!({"ingest_id": ingest_id, "status": "accepted", "detail": detail}))
    }

    /// An answer as a `jsonb` datum of the call (outside any `Spi::connect`).
    fn answer(body: Value) -> OpsResult<JsonbAnswer> {
        Ok(JsonbAnswer::from_value(body)?)
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
            // A restore loading ops.deployments: the promotion block of a 0.1.0 install (its
            // trigger asks this function, and a dump restored into 0.1.0 before the update runs
            // it) lets past deployments in, as 0.1.1's own trigger does (ops.restore_loading).
            if crate::core::restore::restore_loading_into(c"ops", c"deployments") {
                return Ok(
                    json!({"release_id": release, "environment": target_env, "eligible": true,
                                 "blocking": [], "restoring": true}),
                );
            }
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
    #[search_path(pg_catalog, pg_temp)]
    fn refresh_gates(release_id: pgrx::Uuid) -> Result<JsonB, ErrorReport> {
        let run = || -> OpsResult<Value> {
            let release = uuid_text(release_id);
            let evaluations = Spi::connect_mut(|client| evaluation::refresh(client, &release))?;
            Ok(serde_json::to_value(evaluations).unwrap_or(Value::Null))
        };
        Ok(run().map(JsonB)?)
    }

    /// Whether `ops.ingest_event` in this session is applying an event to the release right now,
    /// or a restore is loading the table (a COPY by a role row security does not apply to); the
    /// gate triggers then leave the release's evaluation to the ingest, or its stored statuses
    /// as the dump has them.
    ///
    /// The triggers that re-evaluate a release's gates when a fact row is written skip such a
    /// release (their WHEN clause): the ingest evaluates it once, after all its writes. A
    /// restore loads the facts table by table, in an order of its own: evaluating a release
    /// from the facts loaded so far would overwrite the statuses the dump holds.
    #[documented]
    #[pg_extern(volatile, strict, parallel_restricted)]
    fn ingest_applying(release_id: pgrx::Uuid) -> bool {
        evaluation::is_applying(uuid::Uuid::from_bytes(*release_id.as_bytes()))
            || crate::core::restore::restore_loading(c"ops", c"gate_checks")
    }

    /// Whether a restore is loading ops.deployments now (a COPY into it by a role row security
    /// does not apply to, as pg_restore runs): the promotion block then lets past deployments in.
    #[documented]
    #[pg_extern(volatile, parallel_restricted)]
    fn restore_loading() -> bool {
        crate::core::restore::restore_loading_into(c"ops", c"deployments")
    }

    /// Re-evaluate the releases whose bypassing exception has expired, so that
    /// `ops.release_gates.status` stays current with the clock; returns how many releases were
    /// re-evaluated. Run by the ops.expiry schedule (every minute by default); not granted to
    /// PUBLIC.
    #[documented]
    #[pg_extern(volatile)]
    #[search_path(pg_catalog, pg_temp)]
    fn expire_bypasses() -> Result<i32, ErrorReport> {
        Ok(Spi::connect_mut(evaluation::expire_bypasses)?)
    }

    /// CHECK helper: not blank, at most max_chars characters, no control characters (newlines
    /// and tabs allowed when multiline). The rule ops.ingest_event checks free text with.
    #[documented]
    #[pg_extern(immutable, strict, parallel_safe)]
    fn is_valid_text(value: &str, max_chars: i32, multiline: bool) -> bool {
        usize::try_from(max_chars).is_ok_and(|max| envelope::text_ok(value, max, multiline))
    }

    /// CHECK helper: an absolute URI (a scheme), at most 2048 bytes, no whitespace or control
    /// characters. The rule ops.ingest_event checks URIs with.
    #[documented]
    #[pg_extern(immutable, strict, parallel_safe)]
    fn is_absolute_uri(value: &str) -> bool {
        envelope::uri_ok(value)
    }

    /// The statements that give each persona its access, generated from the persona matrix: the
    /// roles, GRANTs, row-level security policies and the CHECK on an approval's persona. The
    /// install runs them; the owner reads them to see what each persona may do.
    #[documented]
    #[pg_extern(stable, parallel_safe)]
    fn persona_privileges() -> SetOfIterator<'static, String> {
        let has_column = |table: &str, column: &str| match (
            std::ffi::CString::new(table),
            std::ffi::CString::new(column),
        ) {
            (Ok(t), Ok(c)) => core_store::column_exists(c"ops", &t, &c),
            _ => false,
        };
        SetOfIterator::new(crate::ops::personas::privileges(&has_column))
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
