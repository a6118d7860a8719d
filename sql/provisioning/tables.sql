-- Tenant provisioning: clients, their provisioning jobs (a projection driven by the
-- core event-store runner), the append-only job events, and the canonical migration set.
-- Functions, policies and views that name Rust functions are in surface.sql.
CREATE SCHEMA IF NOT EXISTS provisioning;
COMMENT ON SCHEMA provisioning IS 'Tenant provisioning: one Supabase project per client, created and schema-synced by jobs';

CREATE TABLE provisioning.clients (
    client_id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    slug                      text NOT NULL UNIQUE CHECK (slug ~ '^[a-z][a-z0-9-]{2,39}$'),
    display_name              text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 200),
    owner_id                  text NOT NULL,
    region                    text CHECK (region ~ '^[a-z]{2}-[a-z]+-[0-9]$'),
    plan                      text CHECK (plan IN ('free', 'pro', 'team', 'enterprise')),
    provisioning_status       text NOT NULL DEFAULT 'queued'
                              CHECK (provisioning_status IN ('queued', 'creating_project', 'schema_syncing', 'ready', 'failed')),
    project_ref               text UNIQUE CHECK (project_ref ~ '^[a-z0-9]{20}$'),
    schema_version            int NOT NULL DEFAULT 0 CHECK (schema_version >= 0),
    additional_settings       jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(additional_settings) = 'object'),
    provisioning_error        text,
    provisioning_started_at   timestamptz,
    provisioning_completed_at timestamptz,
    -- Tenant secrets, never in plain text: pgcrypto ciphertext, or Supabase Vault secret ids.
    key_storage               text CHECK (key_storage IN ('vault', 'pgcrypto')),
    anon_key_encrypted        bytea,
    service_key_encrypted     bytea,
    db_pass_encrypted         bytea,
    anon_key_secret_id        uuid,
    service_key_secret_id     uuid,
    db_pass_secret_id         uuid,
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE provisioning.clients IS
  'One row per tenant. provisioning_status follows its jobs: queued → creating_project → schema_syncing → ready, or failed.';
SELECT pg_catalog.pg_extension_config_dump('provisioning.clients', '');

CREATE TABLE provisioning.client_provisioning_jobs (
    job_id           uuid PRIMARY KEY,
    client_id        uuid NOT NULL REFERENCES provisioning.clients (client_id) ON DELETE CASCADE,
    job_type         text NOT NULL CHECK (job_type IN ('create_project', 'schema_sync', 'smoke_checks')),
    status           text NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    attempts         int NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts     int NOT NULL DEFAULT 5 CHECK (max_attempts BETWEEN 1 AND 100),
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    claimed_at       timestamptz,
    claimed_by       text,
    lease_expires_at timestamptz,
    last_error       text,
    last_status_code int,
    finished_at      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'running') = (claimed_at IS NOT NULL AND claimed_by IS NOT NULL AND lease_expires_at IS NOT NULL))
);
COMMENT ON TABLE provisioning.client_provisioning_jobs IS
  'Projection of each job''s events (provisioning.job_events); written only through the job reducer, but for a running attempt''s lease, which each answer of its steps renews.';
-- The claim scans: due queued jobs oldest first, and running jobs whose lease ran out.
CREATE INDEX jobs_due ON provisioning.client_provisioning_jobs (next_attempt_at, created_at) WHERE status = 'queued';
CREATE INDEX jobs_lease ON provisioning.client_provisioning_jobs (lease_expires_at) WHERE status = 'running';
CREATE INDEX jobs_client ON provisioning.client_provisioning_jobs (client_id, created_at);
-- At most one open job of a type per client.
CREATE UNIQUE INDEX jobs_one_open ON provisioning.client_provisioning_jobs (client_id, job_type)
    WHERE status IN ('queued', 'running');
SELECT pg_catalog.pg_extension_config_dump('provisioning.client_provisioning_jobs', '');

CREATE TABLE provisioning.job_events (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id          uuid NOT NULL REFERENCES provisioning.client_provisioning_jobs (job_id) ON DELETE CASCADE,
    event_type      text NOT NULL,
    actor_id        text NOT NULL,
    actor_type      text NOT NULL,
    payload         jsonb NOT NULL DEFAULT '{}',
    idempotency_key text,
    from_status     text,
    to_status       text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (job_id, idempotency_key)
);
COMMENT ON TABLE provisioning.job_events IS 'Append-only history of every job: enqueued, claimed, attempt failed, succeeded, lease expired, reset.';
CREATE INDEX job_events_job ON provisioning.job_events (job_id, id);
SELECT flowgate.make_append_only('provisioning.job_events');
SELECT pg_catalog.pg_extension_config_dump('provisioning.job_events', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('provisioning.job_events', 'id'), '');

CREATE TABLE provisioning.migrations (
    version    int PRIMARY KEY CHECK (version > 0),
    name       text NOT NULL CHECK (name ~ '^[a-z0-9_]{1,100}$'),
    sql        text NOT NULL CHECK (length(sql) BETWEEN 1 AND 1000000),
    checksum   text GENERATED ALWAYS AS (md5(sql)) STORED,
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE provisioning.migrations IS
  'The canonical migration set applied to every tenant project in version order, one at a time; clients.schema_version is the last applied.';
SELECT pg_catalog.pg_extension_config_dump('provisioning.migrations', '');

REVOKE ALL ON ALL TABLES IN SCHEMA provisioning FROM PUBLIC;
ALTER TABLE provisioning.clients ENABLE ROW LEVEL SECURITY;
ALTER TABLE provisioning.client_provisioning_jobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE provisioning.job_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE provisioning.migrations ENABLE ROW LEVEL SECURITY;
