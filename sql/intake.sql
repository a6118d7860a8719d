-- Intake engine (seed 002): burst-absorbing claims. First slice: pools, inventory, claims.
CREATE SCHEMA IF NOT EXISTS intake;
COMMENT ON SCHEMA intake IS 'Burst-to-Queue ledger: claim inventory at thundering-herd speed, queue intents in pgmq';
GRANT USAGE ON SCHEMA intake TO PUBLIC;

CREATE TABLE intake.engine_config (
    pool_id                    text PRIMARY KEY CHECK (pool_id ~ '^[a-z][a-z0-9_]{0,39}$'),
    inventory                  int NOT NULL CHECK (inventory BETWEEN 0 AND 100000000),
    batch_size                 int NOT NULL DEFAULT 100 CHECK (batch_size BETWEEN 1 AND 10000),
    visibility_timeout_seconds int NOT NULL DEFAULT 45 CHECK (visibility_timeout_seconds BETWEEN 1 AND 86400),
    validation_webhook_url     text CHECK (validation_webhook_url ~ '^https?://'),
    commit_target              text,
    max_retries                int NOT NULL DEFAULT 5 CHECK (max_retries BETWEEN 0 AND 100),
    max_claims_per_user        int NOT NULL DEFAULT 1 CHECK (max_claims_per_user BETWEEN 1 AND 1000000),
    rate_limit_per_second      int CHECK (rate_limit_per_second > 0),
    paused                     boolean NOT NULL DEFAULT false,
    created_at                 timestamptz NOT NULL DEFAULT now(),
    updated_at                 timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE intake.engine_config IS
  'One row per pool; read live by every claim and drain (change batch_size, paused, ... to throttle).';
SELECT pg_catalog.pg_extension_config_dump('intake.engine_config', '');

-- Inventory: UNLOGGED for speed. A crash empties it; the pool's pgmq messages are the logged
-- record of every claim (slot, resource, user), from which it can be rebuilt.
CREATE UNLOGGED TABLE intake.allocations (
    pool_id     text NOT NULL REFERENCES intake.engine_config (pool_id) ON DELETE CASCADE,
    slot        int NOT NULL,
    resource_id uuid NOT NULL DEFAULT gen_random_uuid(),
    status      text NOT NULL DEFAULT 'available' CHECK (status IN ('available', 'locked', 'consumed')),
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
CREATE UNLOGGED TABLE intake.user_claims (
    pool_id text NOT NULL REFERENCES intake.engine_config (pool_id) ON DELETE CASCADE,
    user_id text NOT NULL,
    claims  int NOT NULL,
    PRIMARY KEY (pool_id, user_id)
);

REVOKE ALL ON intake.engine_config, intake.allocations, intake.released_slots, intake.user_claims FROM PUBLIC;
GRANT SELECT ON intake.engine_config TO PUBLIC;
