//! SQL surface of the intake engine (schema `intake`): pools and the claim hot path.

#[pgrx::pg_schema]
mod intake {
    use flowgate_macros::documented;
    use pgrx::pg_sys::panic::ErrorReport;
    use pgrx::prelude::*;
    use pgrx::JsonB;
    use serde_json::{json, Map, Value};

    use crate::core::actor::validate_actor_id;
    use crate::core::answer::JsonbAnswer;
    use crate::core::args::{
        self, RawJsonb, MAX_ERROR_TEXT_BYTES, MAX_JSON_ARG_BYTES, MAX_RESPONSE_ARG_BYTES,
    };
    use crate::core::error::{CoreError, CoreResult};
    use crate::intake::pool::PoolId;
    use crate::intake::{
        book, claim, drain, ledger, metrics, pools, recovery, replies, requests, store,
    };

    const CONFIG_KEYS: &[&str] = &[
        "batch_size",
        "visibility_timeout_seconds",
        "validation_webhook_url",
        "validation_auth_secret",
        "commit_target",
        "commit_auth_secret",
        "request_timeout_ms",
        "max_retries",
        "max_claims_per_user",
        "rate_limit_per_second",
        "paused",
        "drain_mode",
    ];

    /// Create a pool: its configuration, `inventory` available slots in `intake.allocations`, its
    /// pgmq queue and dead-letter queue, and the sequence that hands out slot numbers; returns
    /// `{pool_id, inventory, queue, dlq}`. `config` may set any `intake.engine_config` column
    /// (batch_size, max_claims_per_user, ...); 22023 for an unknown key. Owner only unless granted.
    #[documented]
    #[pg_extern(volatile)]
    #[search_path(pg_catalog, pg_temp)]
    fn create_pool(
        pool_id: &str,
        inventory: i32,
        config: default!(RawJsonb, "'{}'"),
    ) -> Result<JsonB, ErrorReport> {
        let run = || -> CoreResult<JsonB> {
            let pool = PoolId::parse(pool_id)?;
            let config = JsonB(config.value("config", MAX_JSON_ARG_BYTES)?);
            if !(0..=100_000_000).contains(&inventory) {
                return Err(CoreError::invalid(
                    "inventory",
                    inventory.to_string(),
                    "0 to 100000000",
                ));
            }
            let mut cfg: Map<String, Value> = match config.0 {
                Value::Object(m) => m,
                other => {
                    return Err(CoreError::invalid(
                        "config",
                        format!("got {other}"),
                        "a JSON object",
                    ))
                }
            };
            if let Some(bad) = cfg.keys().find(|k| !CONFIG_KEYS.contains(&k.as_str())) {
                return Err(CoreError::invalid(
                    "config",
                    format!("unknown key {}", crate::core::error::quoted(bad)),
                    CONFIG_KEYS.join(", "),
                ));
            }
            // Each value as its column takes it: JSON integers, a JSON boolean, JSON strings
            // (a cast would turn "yes" into true, or 1.5 into an error without a hint).
            for (key, value) in &cfg {
                let fits = match key.as_str() {
                    "batch_size"
                    | "visibility_timeout_seconds"
                    | "request_timeout_ms"
                    | "max_retries"
                    | "max_claims_per_user" => {
                        value.as_i64().is_some_and(|n| i32::try_from(n).is_ok())
                    }
                    "rate_limit_per_second" => {
                        value.is_null() || value.as_i64().is_some_and(|n| i32::try_from(n).is_ok())
                    }
                    "paused" => value.is_boolean(),
                    "drain_mode" => value.is_string(),
                    _ => value.is_null() || value.is_string(),
                };
                if !fits {
                    return Err(CoreError::invalid(
                        key.as_str(),
                        format!("got a JSON {}", args::json_kind(value)),
                        match key.as_str() {
                            "paused" => "true or false",
                            "drain_mode" => "a JSON string",
                            "rate_limit_per_second" => "a JSON integer, or null",
                            "batch_size"
                            | "visibility_timeout_seconds"
                            | "request_timeout_ms"
                            | "max_retries"
                            | "max_claims_per_user" => "a JSON integer",
                            _ => "a JSON string, or null",
                        },
                    ));
                }
            }
            for key in ["validation_webhook_url", "commit_target"] {
                let url = match cfg.get(key) {
                    None | Some(Value::Null) => None,
                    Some(Value::String(url)) => Some(url),
                    Some(other) => {
                        return Err(CoreError::invalid(
                            key,
                            format!("got a JSON {}", args::json_kind(other)),
                            "an http:// or https:// URL (a JSON string), or null",
                        ))
                    }
                };
                if let Some(url) = url {
                    // The reason only: the URL may carry the very credentials it is refused for.
                    crate::core::outbox::delivery::validate_url(url).map_err(|e| match e {
                        CoreError::InvalidArgument {
                            problem, allowed, ..
                        } => CoreError::invalid(key, problem, allowed),
                        other => other,
                    })?;
                }
            }
            cfg.insert("pool_id".into(), pool.as_str().into());
            cfg.insert("inventory".into(), inventory.into());
            // A value out of its column's range is the caller's: 22023 with the rule it broke,
            // not the CHECK's 23514 (every other error stands as raised).
            let created = crate::core::subxact::run_only(&["23514", "22003"], || {
                Spi::connect_mut(|client| pools::create(client, &pool, inventory, cfg))
            });
            match created {
                Ok(r) => r?,
                Err(caught) => {
                    return Err(CoreError::invalid(
                        "config",
                        caught.message,
                        "the values the README's intake.engine_config table allows (batch_size 1-10000, visibility_timeout_seconds 1-86400, request_timeout_ms 100-120000, max_retries 1-100, max_claims_per_user 1-1000000, rate_limit_per_second 1 or more, drain_mode scheduled or external)",
                    ))
                }
            }
            Ok(JsonB(
                json!({"pool_id": pool.as_str(), "inventory": inventory, "queue": pool.queue(), "dlq": pool.dlq()}),
            ))
        };
        Ok(run()?)
    }

    /// Remove a pool: its queues, slot sequence, inventory and configuration; true when done, P0002
    /// for an unknown pool. Owner only unless granted.
    #[documented]
    #[pg_extern(volatile, strict)]
    #[search_path(pg_catalog, pg_temp)]
    fn drop_pool(pool_id: &str) -> Result<bool, ErrorReport> {
        let run = || -> CoreResult<bool> {
            let pool = PoolId::parse(pool_id)?;
            Spi::connect_mut(|client| pools::drop(client, &pool))
        };
        Ok(run()?)
    }

    /// For trusted backends only (superusers, members of a role in `flowgate.trusted_roles` such as
    /// service_role; 42501 otherwise): claim one resource of `pool_id` for `user_id`. Returns
    /// `{status: "claimed", resource_id, slot, msg_id}`, or status sold_out, limit_reached or
    /// paused; never the same resource twice. Grant EXECUTE to the service role; signed-in users
    /// call `intake.claim`.
    ///
    /// The intent (pool, slot, resource, user) is sent to the pool's pgmq queue in the same
    /// transaction. Slots come from a per-pool sequence and are taken by primary key, so a claim's
    /// cost does not grow as the pool drains; the only locks are the claimed row and the user's
    /// claim counter.
    ///
    /// It names the user, so it runs with the owner's rights after checking that the caller is
    /// trusted.
    #[documented]
    #[pg_extern(volatile, strict, security_definer)]
    #[search_path(pg_catalog, pg_temp)]
    fn claim_resource(pool_id: &str, user_id: &str) -> Result<JsonbAnswer, ErrorReport> {
        let run = || -> CoreResult<JsonbAnswer> {
            if !crate::core::store::session_is_trusted()? {
                return Err(CoreError::PermissionDenied {
                    actor: crate::core::store::current_user(),
                    action: "claim in a named user's name".into(),
                    allowed: "trusted backends (superuser, or members of a role in flowgate.trusted_roles); signed-in users call intake.claim(pool_id)".into(),
                });
            }
            claim_for(pool_id, user_id)
        };
        Ok(run()?)
    }

    /// Claim one resource of `pool_id` for the signed-in caller (the JWT `sub`): what a browser
    /// calls through PostgREST's `/rpc/claim`. Same results as `intake.claim_resource`. A session
    /// without a JWT subject gets 42501 unless trusted, so no caller can claim in another user's
    /// name.
    #[documented]
    #[pg_extern(volatile, security_definer)]
    #[search_path(pg_catalog, pg_temp)]
    fn claim(pool_id: Option<&str>) -> Result<JsonbAnswer, ErrorReport> {
        let run = || -> CoreResult<JsonbAnswer> {
            let pool_id = args::required("pool_id", pool_id)?;
            let actor = crate::core::store::acting_actor(None)?;
            if actor.source != crate::core::actor::ActorSource::Jwt && !actor.trusted {
                return Err(CoreError::PermissionDenied {
                    actor: actor.id,
                    action: "claim without a signed-in user".into(),
                    allowed: "requests with a JWT sub claim (PostgREST) and trusted sessions"
                        .into(),
                });
            }
            // A Supabase anonymous sign-in is a new subject per sign-in: per-user limits would
            // not hold (unless flowgate.allow_anonymous_users).
            actor.refuse_anonymous("claim as an anonymous sign-in")?;
            claim_for(pool_id, &actor.id)
        };
        Ok(run()?)
    }

    /// The claim's answer: the datum its statement built, or (no claim) one built here once
    /// the SPI connection is closed.
    fn claim_for(pool_id: &str, user_id: &str) -> CoreResult<JsonbAnswer> {
        let pool = PoolId::parse(pool_id)?;
        validate_actor_id("user_id", user_id)?;
        Spi::connect_mut(|client| claim::claim(client, &pool, user_id))?.into_jsonb()
    }

    /// Rebuild a pool's UNLOGGED inventory, released slots, user claim counts and a missing slot
    /// sequence from its logged pgmq intents, after a crash or a restore; returns the resulting
    /// counts. Blocks the pool's claims (not other pools') while it runs. Owner only unless granted.
    ///
    /// Every intent in the pool's queue, archive and dead-letter queue is a claim. Claimed slots
    /// become `locked` (or `consumed` when committed) again with their resource and user, the rest
    /// `available`; slots below the counter that no intent holds are given back. The first claim
    /// that finds the state gone runs the same rebuild by itself.
    #[documented]
    #[pg_extern(volatile, strict)]
    #[search_path(pg_catalog, pg_temp)]
    fn recover_pool(pool_id: &str) -> Result<JsonB, ErrorReport> {
        let run = || -> CoreResult<JsonB> {
            let pool = PoolId::parse(pool_id)?;
            Spi::connect_mut(|client| recovery::rebuild(client, &pool)).map(JsonB)
        };
        Ok(run()?)
    }

    /// Give back slots taken by claims that aborted after drawing their number (the slot sequence
    /// does not roll back); returns how many. Safe to run any time. Owner only unless granted.
    ///
    /// Those are the available slots at or below the counter that no claim holds; a claim re-checks
    /// `status = 'available'` before it takes a slot.
    #[documented]
    #[pg_extern(volatile, strict)]
    #[search_path(pg_catalog, pg_temp)]
    fn reclaim_slots(pool_id: &str) -> Result<i64, ErrorReport> {
        let run = || -> CoreResult<i64> {
            let pool = PoolId::parse(pool_id)?;
            Spi::connect_mut(|client| {
                // After a crash or a restore the pool is rebuilt first (which gives back what
                // no intent holds); its slot sequence may not even exist before.
                recovery::heal(client, &pool)?;
                pools::held(client, &pool)?;
                pools::reclaim_slots(client, &pool)
            })
        };
        Ok(run()?)
    }

    /// Drain one pool: move up to batch_size intents (fewer under rate_limit_per_second) one step
    /// on, to the validation webhook, then to the ledger commit, both through the outbox; intents
    /// read more than max_retries times go to the DLQ. Returns what it did. Safe to run
    /// concurrently; owner only unless granted.
    ///
    /// Intents are read with the visibility timeout, and pgmq hands each to one reader. Nothing is
    /// sent here: each request is handed to the outbox (CALL flowgate.run_outbox() or the worker
    /// sends it with no transaction open) and its answer moves the intent on.
    #[documented]
    #[pg_extern(volatile, strict)]
    #[search_path(pg_catalog, pg_temp)]
    fn drain(pool_id: &str) -> Result<JsonB, ErrorReport> {
        let run = || -> CoreResult<Value> {
            let pool = PoolId::parse(pool_id)?;
            Spi::connect_mut(|client| store::drain(client, &pool))
        };
        Ok(run().map(JsonB)?)
    }

    /// A pool at a glance: inventory by status (available, claimed, consumed, released), the queue
    /// (due, invisible, validated and waiting for the ledger), dead letters, the next retry, the
    /// latest error, commits per second over the last minute and whether its UNLOGGED state is
    /// intact. Counts rows: for operators, not for a hot path.
    ///
    /// Invisible intents are backing off or in flight; commits per second come from engine_metrics.
    #[documented]
    #[pg_extern(stable, strict)]
    #[search_path(pg_catalog, pg_temp)]
    fn pool_status(pool_id: &str) -> Result<JsonB, ErrorReport> {
        let run = || -> CoreResult<Value> {
            let pool = PoolId::parse(pool_id)?;
            Spi::connect(|client| metrics::status(client, &pool))
        };
        Ok(run().map(JsonB)?)
    }

    /// Re-queue a pool's dead-lettered intents (all, or the DLQ `msg_ids` listed), keeping their
    /// idempotency key and validation; returns `{pool_id, replayed, msg_ids}` with the new queue
    /// message ids. Owner only unless granted.
    ///
    /// Each intent keeps its first message id as idempotency key (the webhook and the ledger
    /// de-duplicate), and a validated intent goes straight to the commit step.
    #[documented]
    #[pg_extern(volatile)]
    #[search_path(pg_catalog, pg_temp)]
    fn replay_dlq(
        pool_id: Option<&str>,
        msg_ids: default!(Option<Vec<i64>>, "NULL"),
    ) -> Result<JsonB, ErrorReport> {
        let run = || -> CoreResult<Value> {
            let pool = PoolId::parse(args::required("pool_id", pool_id)?)?;
            Spi::connect_mut(|client| {
                pools::held(client, &pool)?;
                let ids = pools::replay(client, &pool, msg_ids)?;
                Ok(json!({"pool_id": pool.as_str(), "replayed": ids.len(), "msg_ids": ids}))
            })
        };
        Ok(run().map(JsonB)?)
    }

    /// External worker API: read up to `max` intents of a pool (default batch_size; none while
    /// paused), each with the step to perform, the URL, the auth secret's name, the idempotency key
    /// and the body to POST. Report each reply with `intake.report_validation` or
    /// `intake.report_commit`. Owner only unless granted (grant it to the worker's role).
    ///
    /// For an external worker (an Edge Function) doing the drain itself. Intents read more than
    /// max_retries times are moved to the DLQ here and not returned.
    #[documented]
    #[pg_extern(volatile)]
    #[search_path(pg_catalog, pg_temp)]
    #[allow(clippy::type_complexity)]
    fn read_intents(
        pool_id: Option<&str>,
        max: default!(Option<i32>, "NULL"),
    ) -> Result<
        TableIterator<
            'static,
            (
                name!(msg_id, i64),
                name!(read_ct, i32),
                name!(step, String),
                name!(url, Option<String>),
                name!(auth_secret, Option<String>),
                name!(idempotency_key, String),
                name!(body, JsonB),
            ),
        >,
        ErrorReport,
    > {
        let run = || -> CoreResult<Vec<(i64, i32, String, Option<String>, Option<String>, String, JsonB)>> {
            let pool = PoolId::parse(args::required("pool_id", pool_id)?)?;
            Spi::connect_mut(|client| {
                let cfg = pools::held_config(client, &pool)?;
                if cfg.paused {
                    return Ok(vec![]);
                }
                let n = max.unwrap_or(cfg.batch_size);
                if !(1..=10_000).contains(&n) {
                    return Err(CoreError::invalid("max", n.to_string(), "1 to 10000, or NULL for batch_size"));
                }
                let mut out = Vec::new();
                for intent in store::read(client, &pool, cfg.visibility_timeout, n)? {
                    let stage = match drain::plan(intent.state(), intent.read_ct, cfg.max_retries, cfg.webhook.is_some()) {
                        drain::Step::Validate => drain::Stage::Validate,
                        drain::Step::Commit => drain::Stage::Commit,
                        drain::Step::DeadLetter(_) | drain::Step::Finish => {
                            // The same bookkeeping as the drain's own path.
                            store::settle(client, &pool, &cfg, &intent)?;
                            continue;
                        }
                    };
                    let req = requests::stage_request(&cfg, &pool, &intent, stage);
                    out.push((intent.msg_id, intent.read_ct, stage.as_str().to_owned(), req.url, req.secret, req.wire_key, JsonB(req.body)));
                }
                Ok(out)
            })
        };
        Ok(run().map(TableIterator::new)?)
    }

    /// External worker API: apply the validation webhook's reply for an intent read with
    /// `intake.read_intents`: 2xx validates it, other 4xx release its resource to the pool,
    /// anything else (5xx, 408, 425, 429, NULL for no response) retries it after the visibility
    /// timeout. Returns what happened. Owner only unless granted.
    ///
    /// A validated intent is committed at once when the ledger is this database.
    #[documented]
    #[pg_extern(volatile)]
    #[search_path(pg_catalog, pg_temp)]
    fn report_validation(
        pool_id: Option<&str>,
        msg_id: Option<i64>,
        status_code: Option<i32>,
        response: default!(Option<RawJsonb>, "NULL"),
        error: default!(Option<&str>, "NULL"),
    ) -> Result<String, ErrorReport> {
        let run = || -> CoreResult<String> {
            let pool = PoolId::parse(args::required("pool_id", pool_id)?)?;
            let msg_id = args::required("msg_id", msg_id)?;
            check_status(status_code)?;
            if let Some(e) = error {
                args::check_text_size("error", e, MAX_ERROR_TEXT_BYTES)?;
            }
            let r = args::optional(response, "response", MAX_RESPONSE_ARG_BYTES)?;
            Spi::connect_mut(|client| {
                pools::held(client, &pool)?;
                replies::apply_validation(
                    client,
                    &pool,
                    msg_id,
                    &replies::HttpReply {
                        status: status_code,
                        response: r.as_ref(),
                        text: "",
                        error,
                    },
                    false,
                )
                .map(str::to_owned)
            })
        };
        Ok(run()?)
    }

    /// External worker API: apply the ledger's reply for an intent: 2xx completes it (resource
    /// consumed, intent archived), other 4xx dead-letter it, anything else (5xx, 408, 425, 429,
    /// NULL for no response) leaves it for a retry without validating again. Returns what happened.
    /// Owner only unless granted.
    #[documented]
    #[pg_extern(volatile)]
    #[search_path(pg_catalog, pg_temp)]
    fn report_commit(
        pool_id: Option<&str>,
        msg_id: Option<i64>,
        status_code: Option<i32>,
        error: default!(Option<&str>, "NULL"),
    ) -> Result<String, ErrorReport> {
        let run = || -> CoreResult<String> {
            let pool = PoolId::parse(args::required("pool_id", pool_id)?)?;
            let msg_id = args::required("msg_id", msg_id)?;
            check_status(status_code)?;
            if let Some(e) = error {
                args::check_text_size("error", e, MAX_ERROR_TEXT_BYTES)?;
            }
            Spi::connect_mut(|client| {
                pools::held(client, &pool)?;
                replies::apply_commit(client, &pool, msg_id, status_code, error).map(str::to_owned)
            })
        };
        Ok(run()?)
    }

    fn check_status(status: Option<i32>) -> CoreResult<()> {
        match status {
            Some(s) if !(100..=599).contains(&s) => Err(CoreError::invalid(
                "status_code",
                s.to_string(),
                "an HTTP status 100 to 599, or NULL when no response arrived",
            )),
            _ => Ok(()),
        }
    }

    /// The ledger RPC, for trusted backends only (superusers, members of a role in
    /// `flowgate.trusted_roles` such as service_role; 42501 otherwise): write one finalized row
    /// per idempotency key and return it; the same key again returns the first row as
    /// "duplicate" and writes nothing. 23505 for a key reused for another pool, resource or user,
    /// or a resource finalized under another key; 22023 for a bad payload. The drain posts here
    /// (through PostgREST) as a trusted role; signed-in users may not, since a row names its user.
    ///
    /// Rows are readable by their user_id only (RLS).
    #[documented]
    #[pg_extern(volatile, strict, security_definer)]
    #[search_path(pg_catalog, pg_temp)]
    fn finalize_transaction(payload: RawJsonb) -> Result<JsonB, ErrorReport> {
        let run = || -> CoreResult<Value> {
            if !crate::core::store::session_is_trusted()? {
                return Err(CoreError::PermissionDenied {
                    actor: crate::core::store::current_user(),
                    action: "write the ledger (a finalized row names its user)".into(),
                    allowed: "trusted backends (superuser, or members of a role in flowgate.trusted_roles), as the drain posts".into(),
                });
            }
            let payload = payload.value("payload", MAX_JSON_ARG_BYTES)?;
            let entry = ledger::parse(&payload)?;
            Spi::connect_mut(|client| book::finalize(client, &entry))
        };
        Ok(run().map(JsonB)?)
    }

    /// Sample every pool (or only `pool_id`) into `intake.engine_metrics` from sequences and folded
    /// outcome totals, never counting the inventory or the queues; a pool sampled less than
    /// `min_interval_seconds` ago is skipped. Returns the samples written. Owner only unless
    /// granted.
    ///
    /// The scheduler passes 4.5 so that a one-second background worker samples every 5 seconds.
    #[documented]
    #[pg_extern(volatile)]
    #[search_path(pg_catalog, pg_temp)]
    fn collect_metrics(
        pool_id: default!(Option<&str>, "NULL"),
        min_interval_seconds: default!(Option<f64>, "0"),
    ) -> Result<JsonB, ErrorReport> {
        let run = || -> CoreResult<Value> {
            let min_interval_seconds =
                args::required("min_interval_seconds", min_interval_seconds)?;
            // An interval holds about 292,000 years of seconds; NaN and infinity none.
            if !(0.0..=1e12).contains(&min_interval_seconds) {
                return Err(CoreError::invalid(
                    "min_interval_seconds",
                    min_interval_seconds.to_string(),
                    "0 to 1e12 seconds",
                ));
            }
            let only = pool_id.map(PoolId::parse).transpose()?;
            Spi::connect_mut(|client| {
                metrics::collect_due(client, only.as_ref(), min_interval_seconds)
            })
        };
        Ok(run().map(JsonB)?)
    }
}
