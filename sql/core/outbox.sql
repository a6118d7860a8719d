-- The outbox: every HTTP side effect flowgate makes is a row here first.

CREATE TYPE flowgate.delivery_status AS ENUM ('pending', 'in_flight', 'delivered', 'failed', 'dead');
COMMENT ON TYPE flowgate.delivery_status IS
  'pending: waiting for its next attempt; in_flight: claimed by a dispatcher; delivered: 2xx; '
  'failed: permanent error (4xx other than 408/425/429, missing secret, handler error); dead: retries exhausted';

CREATE TABLE flowgate.deliveries (
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner_module          text NOT NULL CHECK (owner_module ~ '^[a-z][a-z0-9_]{0,62}$'),
    owner_id              text NOT NULL CHECK (length(owner_id) BETWEEN 1 AND 256),
    handler               text CHECK (handler ~ '^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$'),
    method                text NOT NULL DEFAULT 'POST' CHECK (method IN ('GET', 'POST', 'PUT', 'PATCH', 'DELETE')),
    url                   text NOT NULL CHECK (flowgate.is_endpoint_url(url)),
    headers               jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(headers) = 'object'),
    auth_secret           text,
    auth_header           text NOT NULL DEFAULT 'Authorization',
    auth_scheme           text NOT NULL DEFAULT 'Bearer',
    body                  jsonb,
    idempotency_key       text NOT NULL UNIQUE CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    -- The Idempotency-Key header when several rows are attempts of one logical request (intake
    -- paces its retries by the queue's visibility timeout); NULL: idempotency_key.
    wire_key              text CHECK (length(wire_key) BETWEEN 1 AND 255),
    -- The request and response carry secrets (a database password, API keys): the response body
    -- is never stored and the request body is replaced by {"redacted": true} once the delivery ends.
    sensitive             boolean NOT NULL DEFAULT false,
    -- The destination it shares flow limits with (flowgate.flow_limits): the URL's host:port,
    -- or what its module chose (slack:<channel>, supabase-management-api).
    flow_key              text NOT NULL CHECK (length(flow_key) BETWEEN 1 AND 255),
    status                flowgate.delivery_status NOT NULL DEFAULT 'pending',
    attempts              int NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts          int NOT NULL DEFAULT 8 CHECK (max_attempts BETWEEN 1 AND 100),
    timeout_ms            int NOT NULL DEFAULT 10000 CHECK (timeout_ms BETWEEN 100 AND 300000),
    next_attempt_at       timestamptz NOT NULL DEFAULT now(),
    transport             text CHECK (transport IN ('native', 'pg_net')),
    transport_ref         bigint,
    claimed_at            timestamptz,
    last_status_code      int,
    last_error            text,
    handler_error         text,
    response_body         text,
    response_content_type text,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    delivered_at          timestamptz,
    -- Body fields that are secrets, by secret name ({"db_pass": "<name>"}): set in the body when
    -- the request is built, as auth_secret is, so the row (and a dump, and the WAL) never holds them.
    body_secrets          jsonb CHECK (jsonb_typeof(body_secrets) = 'object'),
    -- The pg_net epoch (flowgate.pg_net_epoch) transport_ref was handed out in.
    transport_epoch       uuid
);
COMMENT ON TABLE flowgate.deliveries IS
  'Outbox of HTTP deliveries. Enqueued inside a workflow transaction, sent by CALL flowgate.run_outbox() or the background worker '
  '(pg_net or native transport), outcomes recorded with retries, dead letters and owner handlers. '
  'Secrets are referenced by name (auth_secret) and resolved at send time; they are never stored here.';
COMMENT ON COLUMN flowgate.deliveries.auth_secret IS
  'Name of a secret (Supabase Vault, else flowgate.secrets) sent as "<auth_header>: <auth_scheme> <secret>".';
COMMENT ON COLUMN flowgate.deliveries.transport_ref IS 'pg_net request id while in flight on pg_net.';
COMMENT ON COLUMN flowgate.deliveries.transport_epoch IS
  'The epoch its attempt was handed out in: on pg_net the pg_net epoch (flowgate.pg_net_epoch) its transport_ref belongs to (a response is this delivery''s only in the same epoch); natively the server run (flowgate.server_run) that sends it.';
COMMENT ON COLUMN flowgate.deliveries.body_secrets IS
  'Top-level body fields that are secrets, each with the name of its secret (Supabase Vault, else flowgate.secrets), set when the request is built; the stored body does not hold them.';

-- A row written without a flow key (an operator's INSERT) gets its URL's host and port, as
-- flowgate.enqueue_delivery does (core::outbox::flow::host_key).
CREATE FUNCTION flowgate.default_flow_key() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.flow_key IS NULL THEN
        NEW.flow_key := lower(substring(NEW.url FROM '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^/?#@]*@)?([^/?#]+)'));
    END IF;
    RETURN NEW;
END
$$;
REVOKE EXECUTE ON FUNCTION flowgate.default_flow_key() FROM PUBLIC;
CREATE TRIGGER default_flow_key BEFORE INSERT ON flowgate.deliveries
    FOR EACH ROW WHEN (NEW.flow_key IS NULL) EXECUTE FUNCTION flowgate.default_flow_key();

-- A sensitive delivery never keeps a response body, and its request body goes as soon as it
-- ends, whichever path ends it (a recorded outcome, a failing response handler, an expiry, an
-- operator's UPDATE). Its redacted body can no longer be sent, so it is never requeued.
CREATE FUNCTION flowgate.redact_sensitive() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.body = '{"redacted": true}'::jsonb AND NEW.status IN ('pending', 'in_flight') THEN
        RAISE EXCEPTION 'delivery % carried secrets and was redacted when it ended; it cannot be sent again', NEW.id
              USING ERRCODE = '55000',
                    HINT = 'its owner starts a new delivery (provisioning: provisioning.retry(client_id))';
    END IF;
    NEW.response_body := NULL;
    IF NEW.status IN ('delivered', 'failed', 'dead') THEN
        NEW.body := '{"redacted": true}'::jsonb;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER deliveries_redact_sensitive BEFORE INSERT OR UPDATE ON flowgate.deliveries
    FOR EACH ROW WHEN (NEW.sensitive) EXECUTE FUNCTION flowgate.redact_sensitive();

-- The outbox at a glance: per module, destination host and status.
CREATE VIEW flowgate.outbox_summary WITH (security_invoker = true) AS
SELECT owner_module AS module,
       substring(url FROM '^https?://([^/:?#]+)') AS destination,
       status,
       count(*) AS deliveries,
       min(created_at) AS oldest,
       min(next_attempt_at) FILTER (WHERE status = 'pending') AS next_attempt_at,
       max(updated_at) AS last_change,
       (array_agg(last_error ORDER BY updated_at DESC) FILTER (WHERE last_error IS NOT NULL))[1] AS last_error
  FROM flowgate.deliveries
 GROUP BY 1, 2, 3;
COMMENT ON VIEW flowgate.outbox_summary IS
  'Deliveries per module, destination host and status, with the oldest, the next attempt due and the latest error. '
  'Readable by whoever may read flowgate.deliveries (the owner).';

CREATE INDEX deliveries_due ON flowgate.deliveries (next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX deliveries_in_flight ON flowgate.deliveries (claimed_at) WHERE status = 'in_flight';
CREATE INDEX deliveries_in_flight_per_flow ON flowgate.deliveries (flow_key) WHERE status = 'in_flight';
CREATE INDEX deliveries_owner ON flowgate.deliveries (owner_module, owner_id);
CREATE INDEX deliveries_delivered ON flowgate.deliveries (delivered_at) WHERE status = 'delivered';
CREATE INDEX deliveries_problems ON flowgate.deliveries (updated_at) WHERE status IN ('failed', 'dead');

SELECT pg_catalog.pg_extension_config_dump('flowgate.deliveries', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('flowgate.deliveries', 'id'), '');
REVOKE ALL ON flowgate.deliveries FROM PUBLIC;

-- pg_net numbers its requests with the sequence of an UNLOGGED table, which a crash, an
-- immediate shutdown, a restore from a base backup or a promoted standby resets to 1 along with
-- pg_net's queue and responses: a request id then names another request. This UNLOGGED row is
-- reset with them, so the epoch it holds (begun by the first request queued after a reset) tells
-- whose ids a delivery's transport_ref belongs to. Not in dumps: a restored database begins an
-- epoch of its own. Owner-only.
CREATE UNLOGGED TABLE flowgate.pg_net_epoch (
    epoch     uuid NOT NULL,
    -- The pg_net the epoch was begun for (its response table): one dropped and created again
    -- numbers from 1 too, and is another epoch.
    net_relid oid NOT NULL,
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row)
);
COMMENT ON TABLE flowgate.pg_net_epoch IS
  'The current pg_net epoch: begun by the first delivery queued on pg_net since pg_net''s unlogged tables (and this one) were last reset, or pg_net was created again. '
  'A pg_net response is a delivery''s only when the delivery''s transport_epoch is this epoch; in-flight deliveries of an earlier epoch count as lost attempts, retried with the same key.';
REVOKE ALL ON flowgate.pg_net_epoch FROM PUBLIC;

-- A native request is sent by a backend of this server; one in flight when the server restarted
-- (a crash, a killed backend: Postgres reinitializes every session; an immediate or a clean
-- shutdown) has lost its sender. This UNLOGGED row names the server's run: a crash empties it,
-- and a restart makes it stale (it keeps the postmaster start time it was begun under, compared
-- for equality, never ordered: a clock stepped back does not move a run). A delivery claimed
-- natively keeps the run in transport_epoch; one of another run is a lost attempt at the next
-- collect, retried with its key. Not in dumps. Owner-only.
CREATE UNLOGGED TABLE flowgate.server_run (
    run      uuid NOT NULL,
    started  timestamptz NOT NULL,
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row)
);
COMMENT ON TABLE flowgate.server_run IS
  'The current run of this server: begun by the first native claim since the server started or crashed (the row is UNLOGGED, and keeps the postmaster start time it was begun under). '
  'A native delivery in flight whose transport_epoch is an earlier run lost its sender: it counts as a lost attempt, retried with the same key.';
REVOKE ALL ON flowgate.server_run FROM PUBLIC;

-- Secrets for deliveries when Supabase Vault is not installed: pgcrypto ciphertext under
-- flowgate.tenant_key_passphrase (server configuration only), so neither a read of this table
-- nor a dump reveals a value. Owner-only; written through flowgate.set_secret.
CREATE TABLE flowgate.secrets (
    name            text PRIMARY KEY CHECK (name ~ '^[A-Za-z][A-Za-z0-9_.-]{0,127}$'),
    value_encrypted bytea NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE flowgate.secrets IS
  'Named secrets (bot tokens, API keys) for deliveries, used when Supabase Vault has no secret of that name: '
  'pgcrypto ciphertext under flowgate.tenant_key_passphrase. Owner-only; write with flowgate.set_secret().';
REVOKE ALL ON flowgate.secrets FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('flowgate.secrets', '');

-- Flow control state per flow key: the token bucket and a pause from Retry-After. Runners lock a
-- key's row while they take their share, so limits hold across all of them. Transient by
-- nature (a crash refills the buckets), hence UNLOGGED and not dumped.
CREATE UNLOGGED TABLE flowgate.flow_state (
    flow_key     text PRIMARY KEY,
    tokens       float8 NOT NULL,
    refilled_at  timestamptz NOT NULL,
    paused_until timestamptz
);
COMMENT ON TABLE flowgate.flow_state IS
  'Per flow key: token bucket (tokens at refilled_at) and paused_until (a 429/503 Retry-After), kept by the outbox runners.';
REVOKE ALL ON flowgate.flow_state FROM PUBLIC;

COMMENT ON FUNCTION flowgate.default_flow_key() IS
  'Trigger: a delivery written without a flow key gets its URL''s host and port, as flowgate.enqueue_delivery does.';
COMMENT ON FUNCTION flowgate.redact_sensitive() IS
  'Trigger: a sensitive delivery keeps no response body, and its request body goes as soon as it ends, on every path.';
