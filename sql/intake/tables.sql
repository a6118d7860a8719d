-- Intake engine: burst-absorbing claims, pgmq intents, the drain to a validation
-- webhook and a ledger, the ledger itself (finalize_transaction), metrics.
CREATE SCHEMA IF NOT EXISTS intake;
COMMENT ON SCHEMA intake IS 'Burst-to-Queue ledger: claim inventory at thundering-herd speed, queue intents in pgmq';
GRANT USAGE ON SCHEMA intake TO PUBLIC;

CREATE TABLE intake.engine_config (
    pool_id                    text PRIMARY KEY CHECK (pool_id ~ '^[a-z][a-z0-9_]{0,39}$'),
    inventory                  int NOT NULL CHECK (inventory BETWEEN 0 AND 100000000),
    batch_size                 int NOT NULL DEFAULT 100 CHECK (batch_size BETWEEN 1 AND 10000),
    visibility_timeout_seconds int NOT NULL DEFAULT 45 CHECK (visibility_timeout_seconds BETWEEN 1 AND 86400),
    validation_webhook_url     text CHECK (flowgate.is_endpoint_url(validation_webhook_url)),
    validation_auth_secret     text CHECK (validation_auth_secret ~ '^[A-Za-z][A-Za-z0-9_.-]{0,127}$'),
    commit_target              text CHECK (flowgate.is_endpoint_url(commit_target)),
    commit_auth_secret         text CHECK (commit_auth_secret ~ '^[A-Za-z][A-Za-z0-9_.-]{0,127}$'),
    request_timeout_ms         int NOT NULL DEFAULT 10000 CHECK (request_timeout_ms BETWEEN 100 AND 120000),
    max_retries                int NOT NULL DEFAULT 5 CHECK (max_retries BETWEEN 1 AND 100),
    max_claims_per_user        int NOT NULL DEFAULT 1 CHECK (max_claims_per_user BETWEEN 1 AND 1000000),
    rate_limit_per_second      int CHECK (rate_limit_per_second > 0),
    paused                     boolean NOT NULL DEFAULT false,
    drain_mode                 text NOT NULL DEFAULT 'scheduled' CHECK (drain_mode IN ('scheduled', 'external')),
    created_at                 timestamptz NOT NULL DEFAULT now(),
    updated_at                 timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE intake.engine_config IS
  'One row per pool; read live by every claim and drain (change batch_size, paused, ... to throttle).';
COMMENT ON COLUMN intake.engine_config.validation_webhook_url IS
  'POSTed each intent with idempotency_key = its msg_id; 2xx validates, other 4xx rejects (the slot returns to the pool), 5xx/408/429/timeouts retry after the visibility timeout. NULL: no validation step.';
COMMENT ON COLUMN intake.engine_config.commit_target IS
  'The ledger: a URL POSTed {"payload": ...} (e.g. PostgREST /rpc/finalize_transaction of the core database), or NULL for intake.finalize_transaction in this database.';
COMMENT ON COLUMN intake.engine_config.validation_auth_secret IS
  'Name of a secret (Vault or flowgate.secrets) sent as Authorization: Bearer to the validation webhook; never the secret itself.';
COMMENT ON COLUMN intake.engine_config.commit_auth_secret IS
  'Name of the secret sent as Authorization: Bearer to the commit target (the ledger''s service key).';
COMMENT ON COLUMN intake.engine_config.drain_mode IS
  'scheduled: intake.drain_all() (pg_cron or the background worker) drains the pool; external: only explicit intake.drain() '
  'calls or an external worker (read_intents/report_*) do.';
COMMENT ON COLUMN intake.engine_config.max_retries IS
  'A message read more than this many times goes to the dead-letter queue (intake.replay_dlq re-queues it).';
COMMENT ON COLUMN intake.engine_config.rate_limit_per_second IS
  'Most intents the drain takes per second from this pool (NULL: batch_size per drain call).';
SELECT pg_catalog.pg_extension_config_dump('intake.engine_config', '');

-- A slot's state. An enum, not a text column with a CHECK: Postgres re-reads a CHECK's stored
-- expression in every statement that writes the table, and every claim writes this one.
CREATE TYPE intake.slot_status AS ENUM ('available', 'locked', 'consumed');

-- Inventory: UNLOGGED for speed. A crash empties it; the pool's pgmq messages are the logged
-- record of every claim (slot, resource, user), from which it can be rebuilt.
-- No foreign key, like user_claims below: its trigger would run in every claim's UPDATE;
-- intake.drop_pool deletes these rows itself.
CREATE UNLOGGED TABLE intake.allocations (
    pool_id     text NOT NULL,
    slot        int NOT NULL,
    resource_id uuid NOT NULL DEFAULT gen_random_uuid(),
    status      intake.slot_status NOT NULL DEFAULT 'available',
    locked_by   text,
    locked_at   timestamptz,
    msg_id      bigint,
    PRIMARY KEY (pool_id, slot)
) WITH (fillfactor = 70);  -- room for HOT updates: a claim changes no indexed column
COMMENT ON TABLE intake.allocations IS
  'UNLOGGED inventory, one row per sellable slot. Claims take slots by primary key (a per-pool sequence hands '
  'out slot numbers), so a claim costs the same whether the pool is full or nearly empty.';

-- Slots handed out but given back (a 4xx validation, a claim that aborted after taking its
-- number): served before "sold out" is declared.
CREATE UNLOGGED TABLE intake.released_slots (
    pool_id text NOT NULL REFERENCES intake.engine_config (pool_id) ON DELETE CASCADE,
    slot    int NOT NULL,
    PRIMARY KEY (pool_id, slot)
);

-- Claims per user and pool, for max_claims_per_user (one row lock per user, never a pool-wide one).
-- No foreign key: almost every claim of a sale is a user's first, and its check would take a
-- KEY SHARE lock on the pool's one engine_config row in every claim (a shared-lock hot spot
-- worth a quarter of the claim rate); intake.drop_pool deletes these rows itself.
CREATE UNLOGGED TABLE intake.user_claims (
    pool_id text NOT NULL,
    user_id text NOT NULL,
    claims  int NOT NULL,
    PRIMARY KEY (pool_id, user_id)
);

-- One row per pool whose UNLOGGED state above is intact. A crash empties it with the rest, and
-- it is never dumped, so after a crash or a restore the first claim finds no row and rebuilds
-- the pool from its logged intents (once, under a per-pool lock) before it claims.
CREATE UNLOGGED TABLE intake.pool_state (
    pool_id    text PRIMARY KEY REFERENCES intake.engine_config (pool_id) ON DELETE CASCADE,
    built_at   timestamptz NOT NULL DEFAULT now(),
    built_from text NOT NULL DEFAULT 'create_pool' CHECK (built_from IN ('create_pool', 'recovery'))
);
COMMENT ON TABLE intake.pool_state IS
  'UNLOGGED marker: a pool has a row while its UNLOGGED inventory is intact. Missing after a crash or a restore; '
  'the next claim rebuilds the pool from its pgmq intents (intake.recover_pool does the same by hand).';

-- Drain outcomes not yet folded into the totals: one row per intent outcome, consumed (deleted)
-- by intake.collect_metrics, so metrics never count the queue or the inventory.
CREATE TABLE intake.outcome_log (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pool_id text NOT NULL REFERENCES intake.engine_config (pool_id) ON DELETE CASCADE,
    outcome text NOT NULL CHECK (outcome IN ('validated', 'committed', 'rejected', 'dead_lettered', 'replayed')),
    n       int NOT NULL DEFAULT 1,
    at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX ON intake.outcome_log (pool_id);

-- When each pool's rate-limited drain last took intents (its own row, so metrics never wait on a drain).
CREATE TABLE intake.drain_clock (
    pool_id       text PRIMARY KEY REFERENCES intake.engine_config (pool_id) ON DELETE CASCADE,
    last_drain_at timestamptz
);

-- Running totals per pool, folded from the outcome log.
CREATE TABLE intake.pool_totals (
    pool_id        text PRIMARY KEY REFERENCES intake.engine_config (pool_id) ON DELETE CASCADE,
    validated      bigint NOT NULL DEFAULT 0,
    committed      bigint NOT NULL DEFAULT 0,
    rejected       bigint NOT NULL DEFAULT 0,
    dead_lettered  bigint NOT NULL DEFAULT 0,
    replayed       bigint NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- One row per pool and collection (every 5 seconds where the scheduler allows).
CREATE TABLE intake.engine_metrics (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pool_id             text NOT NULL REFERENCES intake.engine_config (pool_id) ON DELETE CASCADE,
    collected_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    available_slots     bigint NOT NULL,
    claimed             bigint NOT NULL,
    queue_depth         bigint NOT NULL,
    dlq_depth           bigint NOT NULL,
    committed           bigint NOT NULL,
    rejected            bigint NOT NULL,
    processing_velocity numeric(12, 2) NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON intake.engine_metrics (pool_id, collected_at DESC);
COMMENT ON TABLE intake.engine_metrics IS
  'Pool health over time, written by intake.collect_metrics() from sequences and folded outcome totals (no count(*) over the '
  'inventory or the queues). processing_velocity: intents committed per second since the previous row. Exact, except that a '
  'claim whose transaction aborts after its queue insert burns a message id and counts as claimed.';
SELECT pg_catalog.pg_extension_config_dump('intake.engine_metrics', '');
SELECT pg_catalog.pg_extension_config_dump('intake.engine_metrics_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('intake.pool_totals', '');
SELECT pg_catalog.pg_extension_config_dump('intake.outcome_log', '');
SELECT pg_catalog.pg_extension_config_dump('intake.outcome_log_id_seq', '');

-- The highest message id each dropped pool used: a pool made again under that id numbers its
-- intents after it, since their ledger keys and requests carry the pool id and message id (also
-- once the dropped pool's deliveries were pruned, or its ledger is another database's).
CREATE TABLE intake.retired_pools (
    pool_id     text PRIMARY KEY CHECK (pool_id ~ '^[a-z][a-z0-9_]{0,39}$'),
    last_msg_id bigint NOT NULL CHECK (last_msg_id >= 0),
    dropped_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE intake.retired_pools IS
  'The highest message id of each dropped pool, written by intake.drop_pool: a pool created again under its id numbers its intents after it.';
SELECT pg_catalog.pg_extension_config_dump('intake.retired_pools', '');
REVOKE ALL ON intake.retired_pools FROM PUBLIC;

-- The ledger (the core database's side; the same extension serves both roles). One finalized row per
-- idempotency key; each user reads only their own rows (RLS, flowgate.current_actor() = JWT sub).
CREATE TABLE intake.transactions (
    idempotency_key text PRIMARY KEY CHECK (length(idempotency_key) BETWEEN 1 AND 200),
    pool_id         text NOT NULL CHECK (pool_id ~ '^[a-z][a-z0-9_]{0,39}$'),
    msg_id          bigint,
    slot            int,
    resource_id     uuid NOT NULL,
    user_id         text NOT NULL,
    validation      jsonb,
    details         jsonb NOT NULL DEFAULT '{}',
    finalized_at    timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (pool_id, resource_id)
);
CREATE INDEX ON intake.transactions (user_id);
COMMENT ON TABLE intake.transactions IS
  'Finalized intents (the ledger). Written only by intake.finalize_transaction; readable by their user_id under RLS; '
  'published to supabase_realtime when that publication exists.';
SELECT pg_catalog.pg_extension_config_dump('intake.transactions', '');
ALTER TABLE intake.transactions ENABLE ROW LEVEL SECURITY;

-- A pool's id and inventory are fixed when it is made: its queue tables are named after its id,
-- and its slots (intake.allocations), slot counter and reclaims follow its inventory, which
-- nothing re-sizes (a larger one left claims drawing slots with no row; a smaller one sold past
-- it). Every other column is read live.
CREATE FUNCTION intake.fixed_pool_shape() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.pool_id IS DISTINCT FROM OLD.pool_id OR NEW.inventory IS DISTINCT FROM OLD.inventory THEN
        RAISE EXCEPTION 'pool % keeps the id and inventory it was created with', OLD.pool_id
            USING ERRCODE = '55000',
                  HINT = 'for more (or fewer) items, create another pool with intake.create_pool and pause or drop this one';
    END IF;
    RETURN NEW;
END
$$;
REVOKE EXECUTE ON FUNCTION intake.fixed_pool_shape() FROM PUBLIC;
COMMENT ON FUNCTION intake.fixed_pool_shape() IS
  'Trigger on intake.engine_config: a pool keeps the id and inventory it was created with (55000); its other settings are read live.';
CREATE TRIGGER fixed_pool_shape BEFORE UPDATE OF pool_id, inventory ON intake.engine_config
    FOR EACH ROW EXECUTE FUNCTION intake.fixed_pool_shape();

REVOKE ALL ON intake.engine_config, intake.allocations, intake.released_slots, intake.user_claims, intake.pool_state,
    intake.outcome_log, intake.pool_totals, intake.drain_clock, intake.engine_metrics, intake.transactions FROM PUBLIC;
-- engine_config names webhook URLs and secrets: only the owner and service_role read it.
-- engine_metrics holds counts only; transactions are read under RLS (each user their own rows).
GRANT SELECT ON intake.engine_metrics, intake.transactions TO PUBLIC;
