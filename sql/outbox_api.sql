-- Outbox orchestration. PL/pgSQL so that each delivery's outcome and owner handler run in a
-- subtransaction (an EXCEPTION block): one failing handler never undoes the rest of a batch.

CREATE FUNCTION flowgate.record_attempt_isolated(
    p_id bigint, p_status_code int, p_retry_after text, p_body text, p_content_type text,
    p_error_kind text, p_error text
) RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    msg text;
    state text;
BEGIN
    RETURN flowgate.record_attempt(p_id, p_status_code, p_retry_after, p_body, p_content_type, p_error_kind, p_error);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, state = RETURNED_SQLSTATE;
    -- The request itself may have succeeded: a 2xx stays delivered (re-sending could post a
    -- Slack message twice); flowgate.rerun_handlers() retries just the handler.
    UPDATE flowgate.deliveries
       SET status = CASE WHEN p_status_code BETWEEN 200 AND 299 THEN 'delivered' ELSE 'failed' END::flowgate.delivery_status,
           delivered_at = CASE WHEN p_status_code BETWEEN 200 AND 299 THEN clock_timestamp() END,
           last_status_code = p_status_code, response_body = p_body, response_content_type = p_content_type,
           last_error = CASE WHEN p_status_code BETWEEN 200 AND 299
                             THEN 'delivered, but the response handler failed; fix it, then flowgate.rerun_handlers()'
                             ELSE 'recording the outcome or running the response handler failed; fix the cause, then flowgate.replay_dead()' END,
           handler_error = state || ': ' || msg, claimed_at = NULL, updated_at = clock_timestamp()
     WHERE id = p_id AND status = 'in_flight';
    RETURN 'handler_error';
END
$$;

-- Record one attempt; only deliveries with a response handler pay for a subtransaction
-- (a busy batch of plain webhooks would otherwise overflow the 64-entry subxid cache).
CREATE FUNCTION flowgate.record_attempt_checked(
    p_id bigint, p_status_code int, p_retry_after text, p_body text, p_content_type text,
    p_error_kind text, p_error text
) RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT FROM flowgate.deliveries WHERE id = p_id AND handler IS NOT NULL) THEN
        RETURN flowgate.record_attempt_isolated(p_id, p_status_code, p_retry_after, p_body, p_content_type, p_error_kind, p_error);
    END IF;
    RETURN flowgate.record_attempt(p_id, p_status_code, p_retry_after, p_body, p_content_type, p_error_kind, p_error);
END
$$;

CREATE FUNCTION flowgate.dispatch(max_deliveries int DEFAULT NULL) RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n int := coalesce(max_deliveries, (flowgate.get_setting('flowgate.dispatch_batch_size'))::int);
    chosen text := flowgate.effective_transport();
    ids bigint[];
    native_ids bigint[] := '{}';
    r record;
    verdict text;
    counts jsonb := '{"delivered": 0, "retry": 0, "failed": 0, "dead": 0, "skipped": 0, "handler_error": 0}';
BEGIN
    IF n IS NULL OR n NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('invalid max_deliveries: %s', n), HINT = 'allowed: 1 to 10000, or NULL for the setting';
    END IF;

    WITH due AS (
        SELECT id FROM flowgate.deliveries
         WHERE status = 'pending' AND next_attempt_at <= now()
         ORDER BY next_attempt_at, id
         LIMIT n
           FOR UPDATE SKIP LOCKED
    ), claimed AS (
        UPDATE flowgate.deliveries d
           SET status = 'in_flight', attempts = d.attempts + 1, claimed_at = now(),
               transport = chosen, transport_ref = NULL, updated_at = now()
          FROM due
         WHERE d.id = due.id
        RETURNING d.id
    )
    SELECT coalesce(array_agg(id ORDER BY id), '{}') INTO ids FROM claimed;

    IF cardinality(ids) = 0 THEN
        RETURN jsonb_build_object('transport', chosen, 'claimed', 0, 'queued', 0) || counts;
    END IF;

    IF chosen = 'pg_net' THEN
        FOR r IN SELECT * FROM flowgate.transport_pg_net(ids) LOOP
            IF r.error_kind = 'native' THEN
                native_ids := native_ids || r.id;
            ELSE
                verdict := flowgate.record_attempt_checked(r.id, NULL, NULL, NULL, NULL, r.error_kind, r.error);
                counts := jsonb_set(counts, ARRAY[verdict], to_jsonb((counts ->> verdict)::int + 1));
            END IF;
        END LOOP;
        UPDATE flowgate.deliveries SET transport = 'native' WHERE id = ANY (native_ids);
    ELSE
        native_ids := ids;
    END IF;

    IF cardinality(native_ids) > 0 THEN
        FOR r IN SELECT * FROM flowgate.transport_native(native_ids) LOOP
            verdict := flowgate.record_attempt_checked(r.id, r.status_code, r.retry_after, r.body,
                                                        r.content_type, r.error_kind, r.error);
            counts := jsonb_set(counts, ARRAY[verdict], to_jsonb((counts ->> verdict)::int + 1));
        END LOOP;
    END IF;

    RETURN jsonb_build_object('transport', chosen, 'claimed', cardinality(ids),
                              'queued', CASE WHEN chosen = 'pg_net'
                                             THEN cardinality(ids) - cardinality(native_ids)
                                                  - (counts ->> 'failed')::int - (counts ->> 'handler_error')::int
                                             ELSE 0 END)
           || counts;
END
$$;

CREATE FUNCTION flowgate.collect() RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    lease int := (flowgate.get_setting('flowgate.in_flight_lease_seconds'))::int;
    r record;
    verdict text;
    collected int := 0;
    expired int := 0;
    counts jsonb := '{"delivered": 0, "retry": 0, "failed": 0, "dead": 0, "skipped": 0, "handler_error": 0}';
BEGIN
    -- Responses pg_net has stored for deliveries it sent.
    IF to_regclass('net._http_response') IS NOT NULL THEN
        FOR r IN EXECUTE $q$
            SELECT d.id, resp.status_code,
                   (SELECT h.value FROM jsonb_each_text(coalesce(resp.headers, '{}'::jsonb)) h
                     WHERE lower(h.key) = 'retry-after' LIMIT 1) AS retry_after,
                   left(resp.content, 65536) AS body, resp.content_type,
                   CASE WHEN resp.timed_out THEN 'timeout'
                        WHEN resp.error_msg IS NOT NULL THEN 'transport' END AS error_kind,
                   resp.error_msg AS error
              FROM flowgate.deliveries d
              JOIN net._http_response resp ON resp.id = d.transport_ref
             WHERE d.status = 'in_flight' AND d.transport = 'pg_net'
             ORDER BY d.id
             LIMIT 500
               FOR UPDATE OF d SKIP LOCKED
        $q$ LOOP
            verdict := flowgate.record_attempt_checked(r.id, r.status_code, r.retry_after, r.body,
                                                        r.content_type, r.error_kind, r.error);
            counts := jsonb_set(counts, ARRAY[verdict], to_jsonb((counts ->> verdict)::int + 1));
            collected := collected + 1;
        END LOOP;
    END IF;

    -- In flight for longer than the lease (and never less than its own timeout plus 30 s) with
    -- no response recorded: a timed-out attempt.
    FOR r IN SELECT id FROM flowgate.deliveries
              WHERE status = 'in_flight'
                AND claimed_at < now() - make_interval(secs => greatest(lease, timeout_ms / 1000 + 30))
              ORDER BY id
              LIMIT 500
                FOR UPDATE SKIP LOCKED LOOP
        verdict := flowgate.record_attempt_checked(r.id, NULL, NULL, NULL, NULL, 'timeout',
                                                    'no response recorded within the in-flight lease');
        counts := jsonb_set(counts, ARRAY[verdict], to_jsonb((counts ->> verdict)::int + 1));
        expired := expired + 1;
    END LOOP;

    RETURN jsonb_build_object('collected', collected, 'expired', expired) || counts;
END
$$;

CREATE FUNCTION flowgate.replay_dead(ids bigint[]) RETURNS integer
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    WITH replayed AS (
        UPDATE flowgate.deliveries
           SET status = 'pending', attempts = 0, next_attempt_at = now(), last_error = NULL,
               handler_error = NULL, claimed_at = NULL, transport_ref = NULL, updated_at = now()
         WHERE id = ANY (ids) AND status IN ('dead', 'failed')
        RETURNING 1
    )
    SELECT count(*)::int FROM replayed
$$;

CREATE FUNCTION flowgate.set_secret(name text, value text) RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO flowgate.secrets AS s (name, value) VALUES (set_secret.name, set_secret.value)
    ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, updated_at = now()
$$;

CREATE FUNCTION flowgate.drop_secret(name text) RETURNS boolean
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    WITH gone AS (DELETE FROM flowgate.secrets s WHERE s.name = drop_secret.name RETURNING 1)
    SELECT count(*) > 0 FROM gone
$$;

CREATE FUNCTION flowgate.prune_deliveries(max_rows int DEFAULT 10000) RETURNS integer
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    WITH old AS (
        SELECT id FROM flowgate.deliveries
         WHERE status = 'delivered'
           AND delivered_at < now() - make_interval(hours => (flowgate.get_setting('flowgate.delivered_retention_hours'))::int)
         ORDER BY delivered_at
         LIMIT max_rows
           FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM flowgate.deliveries d USING old WHERE d.id = old.id RETURNING 1
    )
    SELECT count(*)::int FROM gone
$$;
