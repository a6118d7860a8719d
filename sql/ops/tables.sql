-- Release gates control plane: the 11 ops.* tables and the per-environment
-- gate requirements. Functions, triggers, RLS policies,
-- grants and views that name Rust functions are in surface.sql.
CREATE SCHEMA IF NOT EXISTS ops;
COMMENT ON SCHEMA ops IS 'Release gates control plane: releases, G1-G4 gates, checks, approvals, evidence, exceptions, deployments, ingest log';

-- The six persona roles, their grants and policies come from the persona matrix
-- (src/ops/personas.rs), run by surface.sql. So do the CHECKs of the columns that hold a value
-- list (statuses, environments, gate codes, severities, ...): ops.ingest_event checks envelopes
-- against the same lists (src/ops/values.rs), and surface.sql adds them as <table>_<column>_check.

CREATE TYPE ops.ops_event_type AS ENUM (
    'release_created', 'gate_configured', 'build_complete', 'check_result', 'gate_signoff',
    'approval', 'evidence_attached', 'exception_requested', 'exception_decided',
    'deployment_started', 'deployment_finished', 'health_check', 'rollback',
    'environment_event', 'incident_opened', 'incident_resolved', 'recovery_drill'
);
COMMENT ON TYPE ops.ops_event_type IS 'Event types ops.ingest_event accepts (schema_version 1.0).';

-- What ops.ingest_event accepts as a value is what the CHECK constraints below accept: direct
-- writes by personas (surface.sql) hold to the rules of ingest, and CHECKs hold for every
-- writer. ops.is_valid_text and ops.is_absolute_uri are the envelope checks themselves
-- (src/ops/envelope/checks.rs), as C functions: a CHECK calls them without parsing or planning
-- anything per statement. A NULL passes (NOT NULL is said separately).

CREATE TABLE ops.releases (
    release_id    uuid PRIMARY KEY,
    version       text NOT NULL CHECK (ops.is_valid_text(version, 128, false)),
    title         text CHECK (ops.is_valid_text(title, 500, false)),
    repository    text CHECK (ops.is_valid_text(repository, 200, false)),
    commit_sha    text CHECK (commit_sha ~ '^[0-9a-f]{7,64}$'),
    status        text NOT NULL DEFAULT 'open',
    created_by    text NOT NULL,
    source_system text NOT NULL CHECK (source_system ~ '^[A-Za-z0-9_.:/-]{1,64}$'),
    ingest_id     uuid,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE ops.releases IS 'One row per release; created by a release_created event. Its four gates are created with it.';
CREATE INDEX releases_created_by ON ops.releases (created_by);
SELECT pg_catalog.pg_extension_config_dump('ops.releases', '');

-- Part of the lock the events of one release are applied under (ops::store::lock_release_row):
-- every writer that evaluates the release locks the release's row, then rewrites its row here
-- (an upsert that changes nothing), so a REPEATABLE READ writer whose snapshot misses an earlier
-- writer's commit fails with 40001 when it takes the row instead of storing statuses from stale
-- facts (a lock alone is not a concurrent update to Postgres). It holds no data: UNLOGGED (the
-- rewrite writes no WAL and checks none of ops.releases' constraints), emptied by a crash and
-- never dumped; a row comes back the next time its release is taken. Owner only.
CREATE UNLOGGED TABLE ops.release_locks (
    release_id uuid PRIMARY KEY
);
COMMENT ON TABLE ops.release_locks IS
  'One row per release an event was applied to since the server last crashed: the row writers of the release lock in '
  'turn (ops.ingest_event, the gate triggers). Holds no data; owner only, not dumped.';

CREATE TABLE ops.release_gates (
    gate_id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    release_id          uuid NOT NULL REFERENCES ops.releases (release_id) ON DELETE CASCADE,
    gate_code           text NOT NULL,
    status              text NOT NULL DEFAULT 'pending',
    status_reason       text,
    required_checks     text[] NOT NULL DEFAULT '{}',
    bypass_exception_id uuid,
    bypass_expires_at   timestamptz,
    evaluated_at        timestamptz,
    passed_at           timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (release_id, gate_code),
    UNIQUE (gate_id, release_id),
    CHECK ((status = 'bypassed') = (bypass_exception_id IS NOT NULL AND bypass_expires_at IS NOT NULL))
);
COMMENT ON TABLE ops.release_gates IS
  'G1-G4 per release. status is written only by the evaluator (ops.refresh_gates), recomputed whenever a check, '
  'evidence, approval, exception or deployment of the release lands, and when a bypassing exception expires.';
CREATE INDEX release_gates_bypass_expiry ON ops.release_gates (bypass_expires_at) WHERE status = 'bypassed';
SELECT pg_catalog.pg_extension_config_dump('ops.release_gates', '');

CREATE TABLE ops.gate_checks (
    check_id      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    gate_id       uuid NOT NULL,
    release_id    uuid NOT NULL,
    check_name    text NOT NULL CHECK (ops.is_valid_text(check_name, 128, false)),
    status        text NOT NULL,
    required      boolean NOT NULL DEFAULT true,
    run_id        text CHECK (ops.is_valid_text(run_id, 128, false)),
    details_url   text CHECK (ops.is_absolute_uri(details_url)),
    reported_by   text NOT NULL,
    source_system text NOT NULL CHECK (source_system ~ '^[A-Za-z0-9_.:/-]{1,64}$'),
    ingest_id     uuid,
    created_at    timestamptz NOT NULL DEFAULT now(),
    recorded_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    FOREIGN KEY (gate_id, release_id) REFERENCES ops.release_gates (gate_id, release_id) ON DELETE CASCADE
);
COMMENT ON TABLE ops.gate_checks IS
  'Check results as they change; the latest per (gate, check_name) counts. A report through ops.ingest_event that '
  'repeats its check''s latest result (same status and required flag, no evidence) adds no row: its accepted row in '
  'ops.event_ingest_log is the report (ops.v_check_reports lists every report), and its answer names the row that '
  'holds the result.';
-- The gate evaluator walks this index from check name to check name (bytewise order: it needs
-- the distinct names, not a language's sort order, and bytewise comparison is the cheap one).
CREATE INDEX gate_checks_latest ON ops.gate_checks (gate_id, check_name COLLATE "C", recorded_at DESC);
CREATE INDEX gate_checks_release ON ops.gate_checks (release_id);
SELECT pg_catalog.pg_extension_config_dump('ops.gate_checks', '');

CREATE TABLE ops.approvals (
    approval_id   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    release_id    uuid NOT NULL REFERENCES ops.releases (release_id) ON DELETE CASCADE,
    gate_id       uuid NOT NULL,
    approver_id   text NOT NULL,
    persona_role  text NOT NULL,   -- one of the personas: CHECK approvals_persona_role_check (surface.sql)
    decision      text NOT NULL,
    comment       text CHECK (ops.is_valid_text(comment, 4000, true)),
    ingest_id     uuid,
    created_at    timestamptz NOT NULL DEFAULT now(),
    recorded_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    FOREIGN KEY (gate_id, release_id) REFERENCES ops.release_gates (gate_id, release_id) ON DELETE CASCADE
);
COMMENT ON TABLE ops.approvals IS 'Signoffs (G2) and release approvals (G3); the latest by the gate''s approver personas counts.';
CREATE INDEX approvals_gate ON ops.approvals (gate_id, recorded_at);
CREATE INDEX approvals_release ON ops.approvals (release_id);
SELECT pg_catalog.pg_extension_config_dump('ops.approvals', '');

CREATE TABLE ops.evidence_artifacts (
    artifact_id   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    release_id    uuid REFERENCES ops.releases (release_id) ON DELETE CASCADE,
    gate_id       uuid REFERENCES ops.release_gates (gate_id) ON DELETE CASCADE,
    check_id      uuid REFERENCES ops.gate_checks (check_id) ON DELETE CASCADE,
    artifact_type text NOT NULL,
    uri           text NOT NULL CHECK (ops.is_absolute_uri(uri)),
    sha256        text CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    description   text CHECK (ops.is_valid_text(description, 2000, true)),
    submitted_by  text NOT NULL,
    ingest_id     uuid,
    created_at    timestamptz NOT NULL DEFAULT now(),
    -- When it was attached by the clock (G4 compares it with a deployment's recorded_at).
    recorded_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT evidence_is_attached CHECK (
        artifact_type = 'reference' OR release_id IS NOT NULL OR gate_id IS NOT NULL OR check_id IS NOT NULL)
);
COMMENT ON TABLE ops.evidence_artifacts IS
  'Evidence by reference (URI + optional SHA-256). Every artifact but a reference is attached to a release, gate or check.';
CREATE INDEX evidence_release ON ops.evidence_artifacts (release_id);
CREATE INDEX evidence_gate ON ops.evidence_artifacts (gate_id) WHERE gate_id IS NOT NULL;
CREATE INDEX evidence_check ON ops.evidence_artifacts (check_id) WHERE check_id IS NOT NULL;
SELECT pg_catalog.pg_extension_config_dump('ops.evidence_artifacts', '');

CREATE TABLE ops.exceptions (
    exception_id  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    release_id    uuid NOT NULL REFERENCES ops.releases (release_id) ON DELETE CASCADE,
    gate_id       uuid NOT NULL,
    reason        text NOT NULL CHECK (ops.is_valid_text(reason, 4000, true)),
    requested_by  text NOT NULL,
    status        text NOT NULL DEFAULT 'requested',
    decided_by    text,
    decided_at    timestamptz,
    decision_comment text CHECK (ops.is_valid_text(decision_comment, 4000, true)),
    expires_at    timestamptz NOT NULL,
    ingest_id     uuid,
    created_at    timestamptz NOT NULL DEFAULT now(),
    -- A revocation is recorded beside the approval it withdraws: decided_by, decided_at and
    -- decision_comment keep the approval.
    revoked_by    text,
    revoked_at    timestamptz,
    revoke_comment text CHECK (ops.is_valid_text(revoke_comment, 4000, true)),
    FOREIGN KEY (gate_id, release_id) REFERENCES ops.release_gates (gate_id, release_id) ON DELETE CASCADE,
    CONSTRAINT exception_revocation_recorded CHECK (CASE WHEN status = 'revoked'
        THEN revoked_by IS NOT NULL AND revoked_at IS NOT NULL AND revoked_by <> requested_by
        ELSE revoked_by IS NULL AND revoked_at IS NULL AND revoke_comment IS NULL END),
    CONSTRAINT exception_decision_recorded CHECK (CASE WHEN status = 'requested'
        THEN decided_by IS NULL AND decided_at IS NULL AND decision_comment IS NULL
        ELSE decided_by IS NOT NULL AND decided_at IS NOT NULL END),
    CONSTRAINT exception_four_eyes CHECK (decided_by IS NULL OR decided_by <> requested_by),
    -- ops.ingest_event: at most 90 days of 24 hours ahead (apply/exceptions.rs MAX_EXCEPTION_DAYS);
    -- that it is in the future when requested is checked by a trigger (surface.sql), as it
    -- depends on now(). In hours, so the check does not depend on the session's time zone; two
    -- more than 90 x 24 for rows 0.1.0 wrote in a zone whose clocks went back in those days.
    CONSTRAINT exception_expiry_within_90_days CHECK (expires_at <= created_at + interval '2162 hours')
);
COMMENT ON TABLE ops.exceptions IS
  'Gate bypasses. A gate counts as bypassed only while its exception is approved and expires_at is in the future '
  '(every exception expires: expires_at is required, at most 90 days after the request). The requester cannot decide their own exception. '
  'A revoked exception keeps its approval (decided_by, decided_at, decision_comment) beside its revocation (revoked_by, revoked_at, revoke_comment).';
CREATE INDEX exceptions_gate ON ops.exceptions (gate_id, status, expires_at);
CREATE INDEX exceptions_release ON ops.exceptions (release_id);
SELECT pg_catalog.pg_extension_config_dump('ops.exceptions', '');

CREATE TABLE ops.deployments (
    deployment_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    release_id    uuid NOT NULL REFERENCES ops.releases (release_id) ON DELETE CASCADE,
    environment   text NOT NULL,
    status        text NOT NULL DEFAULT 'started',
    g4_status     text NOT NULL DEFAULT 'pending',
    external_ref  text CHECK (ops.is_valid_text(external_ref, 256, false)),
    deployed_by   text NOT NULL,
    rollback_reason text CHECK (ops.is_valid_text(rollback_reason, 4000, true)),
    started_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at   timestamptz,
    rolled_back_at timestamptz,
    ingest_id     uuid,
    created_at    timestamptz NOT NULL DEFAULT now(),
    recorded_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- A health result (health_check event) follows a succeeded deployment, which may be rolled
    -- back later; a started or failed deployment has none.
    CONSTRAINT deployment_health_after_success CHECK (g4_status = 'pending' OR status IN ('succeeded', 'rolled_back'))
);
COMMENT ON TABLE ops.deployments IS
  'Deployments of a release. Starting one in staging or production requires ops.is_eligible_for_promotion (enforced by trigger).';
CREATE INDEX deployments_release ON ops.deployments (release_id, recorded_at);
SELECT pg_catalog.pg_extension_config_dump('ops.deployments', '');

CREATE TABLE ops.environment_events (
    event_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    environment   text NOT NULL,
    event_kind    text NOT NULL CHECK (event_kind ~ '^[a-z0-9_]{1,64}$'),
    release_id    uuid REFERENCES ops.releases (release_id),
    deployment_id uuid REFERENCES ops.deployments (deployment_id),
    detail        jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(detail) = 'object'),
    recorded_by   text NOT NULL,
    ingest_id     uuid,
    created_at    timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE ops.environment_events IS
  'Append-only timeline per environment (deployments, rollbacks, incidents, drills, config changes). A release or '
  'deployment it names cannot be deleted.';
SELECT flowgate.make_append_only('ops.environment_events');
CREATE INDEX environment_events_env ON ops.environment_events (environment, created_at);
SELECT pg_catalog.pg_extension_config_dump('ops.environment_events', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('ops.environment_events', 'event_id'), '');

CREATE TABLE ops.event_ingest_log (
    ingest_id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    idempotency_key    text CHECK (length(idempotency_key) <= 256),
    event_type         ops.ops_event_type,
    received_event_type text CHECK (length(received_event_type) <= 257),
    schema_version     text,
    source_system      text,
    release_id         uuid,
    processing_status  text NOT NULL,
    http_status        int NOT NULL CHECK (http_status BETWEEN 100 AND 599),
    error              text,
    error_message      text,
    result             jsonb,
    original_ingest_id uuid REFERENCES ops.event_ingest_log (ingest_id),
    envelope           jsonb,
    envelope_bytes     int NOT NULL,
    occurred_at        timestamptz,
    received_by        text NOT NULL,
    received_at        timestamptz NOT NULL DEFAULT now(),
    created_at         timestamptz NOT NULL DEFAULT now(),
    CHECK ((processing_status = 'duplicate') = (original_ingest_id IS NOT NULL))
);
COMMENT ON TABLE ops.event_ingest_log IS
  'One row per envelope received, whatever the outcome. At most one accepted row per idempotency_key (unique index); '
  'a retry of an accepted key is logged as duplicate pointing at it. Rejections and errors do not take the key, so a '
  'corrected envelope (or one sent after its release exists) can still be accepted.';
COMMENT ON COLUMN ops.event_ingest_log.envelope IS 'The envelope as received; NULL when it exceeded the size limit (envelope_bytes says how large it was).';
CREATE UNIQUE INDEX event_ingest_log_idempotency_key ON ops.event_ingest_log (idempotency_key)
    WHERE processing_status = 'accepted';
CREATE INDEX event_ingest_log_release ON ops.event_ingest_log (release_id, received_at) WHERE release_id IS NOT NULL;
-- The log is appended in time order: a BRIN index finds a time range as well, and an insert
-- leaves it untouched until the range is summarized (no hot right-most page, no WAL per row).
CREATE INDEX event_ingest_log_received ON ops.event_ingest_log USING brin (received_at) WITH (autosummarize = on);
SELECT pg_catalog.pg_extension_config_dump('ops.event_ingest_log', '');

CREATE TABLE ops.incidents (
    incident_id   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    environment   text NOT NULL,
    release_id    uuid REFERENCES ops.releases (release_id) ON DELETE SET NULL,
    deployment_id uuid REFERENCES ops.deployments (deployment_id) ON DELETE SET NULL,
    severity      text NOT NULL,
    summary       text NOT NULL CHECK (ops.is_valid_text(summary, 2000, true)),
    status        text NOT NULL DEFAULT 'open',
    resolution    text CHECK (ops.is_valid_text(resolution, 4000, true)),
    opened_by     text NOT NULL,
    opened_at     timestamptz NOT NULL DEFAULT now(),
    resolved_at   timestamptz,
    ingest_id     uuid,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'resolved') = (resolved_at IS NOT NULL))
);
CREATE INDEX incidents_open ON ops.incidents (environment) WHERE status = 'open';
SELECT pg_catalog.pg_extension_config_dump('ops.incidents', '');

CREATE TABLE ops.recovery_drills (
    drill_id      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    environment   text NOT NULL,
    release_id    uuid REFERENCES ops.releases (release_id) ON DELETE SET NULL,
    drill_type    text NOT NULL,
    outcome       text NOT NULL,
    rto_seconds   int CHECK (rto_seconds BETWEEN 0 AND 31536000),
    rpo_seconds   int CHECK (rpo_seconds BETWEEN 0 AND 31536000),
    evidence_uri  text CHECK (ops.is_absolute_uri(evidence_uri)),
    performed_by  text NOT NULL,
    ingest_id     uuid,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX recovery_drills_env ON ops.recovery_drills (environment, created_at);
SELECT pg_catalog.pg_extension_config_dump('ops.recovery_drills', '');

-- Which gates an environment requires (data, not code): staging G1+G2, production G1-G4.
CREATE TABLE ops.environment_gate_requirements (
    environment text NOT NULL,
    gate_code   text NOT NULL,
    is_default  boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (environment, gate_code)
);
COMMENT ON TABLE ops.environment_gate_requirements IS
  'Gates a release must have passed (or bypassed) before it is promoted to an environment. An environment with no rows requires nothing.';
INSERT INTO ops.environment_gate_requirements (environment, gate_code, is_default)
VALUES ('staging', 'G1', true), ('staging', 'G2', true),
       ('production', 'G1', true), ('production', 'G2', true), ('production', 'G3', true), ('production', 'G4', true);
-- Rows the operator added are dumped; the defaults come back with CREATE EXTENSION.
SELECT pg_catalog.pg_extension_config_dump('ops.environment_gate_requirements', 'WHERE NOT is_default');

-- Reads and writes of personas go through the grants and RLS policies in surface.sql; nothing
-- is granted to PUBLIC.
REVOKE ALL ON ALL TABLES IN SCHEMA ops FROM PUBLIC;
ALTER TABLE ops.releases ENABLE ROW LEVEL SECURITY;
ALTER TABLE ops.release_gates ENABLE ROW LEVEL SECURITY;
ALTER TABLE ops.gate_checks ENABLE ROW LEVEL SECURITY;
ALTER TABLE ops.approvals ENABLE ROW LEVEL SECURITY;
ALTER TABLE ops.evidence_artifacts ENABLE ROW LEVEL SECURITY;
ALTER TABLE ops.exceptions ENABLE ROW LEVEL SECURITY;
ALTER TABLE ops.deployments ENABLE ROW LEVEL SECURITY;
ALTER TABLE ops.environment_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE ops.event_ingest_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE ops.incidents ENABLE ROW LEVEL SECURITY;
ALTER TABLE ops.recovery_drills ENABLE ROW LEVEL SECURITY;
ALTER TABLE ops.environment_gate_requirements ENABLE ROW LEVEL SECURITY;
-- No policy: no one but the owner reads or writes the release locks, whatever is granted.
ALTER TABLE ops.release_locks ENABLE ROW LEVEL SECURITY;


