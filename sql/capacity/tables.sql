-- Capacity Request workflow: enums, projection, append-only events, tasks.
CREATE SCHEMA IF NOT EXISTS capacity;
COMMENT ON SCHEMA capacity IS 'Capacity Requests for instances above 16XL: approval gates, confirmation TTL, cancellation ownership';
GRANT USAGE ON SCHEMA capacity TO PUBLIC;

CREATE TYPE capacity.cr_state AS ENUM (
    'SUBMITTED', 'COMMERCIAL_APPROVAL_REQUIRED', 'TECHNICAL_REVIEW_REQUIRED', 'CUSTOMER_CONFIRMATION_REQUIRED',
    'PROVISIONING_IN_PROGRESS', 'READY_FOR_CUSTOMER', 'ACTIVATED', 'CANCELLED', 'EXPIRED', 'FAILED');
CREATE TYPE capacity.cr_event AS ENUM (
    'REQUEST_SUBMITTED', 'COMMERCIAL_APPROVED', 'COMMERCIAL_REJECTED', 'TECH_REVIEW_APPROVED', 'TECH_REVIEW_REJECTED',
    'CUSTOMER_CONFIRMED', 'CUSTOMER_DECLINED', 'CUSTOMER_CONFIRMATION_TIMEOUT', 'AWS_PROCUREMENT_STARTED',
    'AWS_CAPACITY_READY', 'AWS_PROCUREMENT_FAILED', 'CANCEL_APPROVED', 'ACTIVATION_CONFIRMED');

-- CR-<year>-<number>: the year in UTC, the number zero-padded to at least 6 digits; unique,
-- gap-tolerant (a rolled-back creation burns a number).
CREATE SEQUENCE capacity.request_number_seq;
SELECT pg_catalog.pg_extension_config_dump('capacity.request_number_seq', '');

CREATE TABLE capacity.capacity_requests (
    id                                text PRIMARY KEY CHECK (id ~ '^CR-[0-9]{4}-[0-9]{6,}$'),
    state                             capacity.cr_state NOT NULL,
    created_at                        timestamptz NOT NULL DEFAULT now(),
    updated_at                        timestamptz NOT NULL DEFAULT now(),
    requester_user_id                 text NOT NULL CHECK (length(requester_user_id) BETWEEN 1 AND 256),
    commercial_owner_user_id          text NOT NULL CHECK (length(commercial_owner_user_id) BETWEEN 1 AND 256),
    infra_owner_group                 text NOT NULL CHECK (infra_owner_group ~ '^[A-Za-z0-9_.-]{1,63}$'),
    -- A few customer identifiers: at most 4 KiB of JSON text and 5 levels of objects and arrays
    -- ({"a": 1} is 1 deep; a container at level 5, the root being level 0, is one too many).
    -- capacity.create_capacity_request reports the same limits with 22023 before writing.
    customer_ref                      jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(customer_ref) = 'object'
                                          AND octet_length(customer_ref::text) <= 4096
                                          AND NOT jsonb_path_exists(customer_ref,
                                              'strict $.**{5} ? (@.type() == "object" || @.type() == "array")')),
    requested_size                    text NOT NULL CHECK (length(requested_size) BETWEEN 1 AND 32
                                          AND requested_size !~ '[[:cntrl:]]'),
    quantity                          int NOT NULL CHECK (quantity BETWEEN 1 AND 10000),
    region                            text NOT NULL CHECK (length(region) <= 32 AND region ~ '^[a-z]{2}(-[a-z]+)+-[0-9]+$'),
    needed_by_date                    date,
    expected_duration_days            int CHECK (expected_duration_days > 0),
    estimated_monthly_cost_usd        numeric(14, 2) CHECK (estimated_monthly_cost_usd >= 0),
    slack_channel_id                  text,
    slack_thread_ts                   text,
    linear_issue_id                   text,
    customer_confirmation_deadline_at timestamptz,
    last_notified_at                  timestamptz,
    cancellation_reason               text CHECK (length(cancellation_reason) <= 2000),
    cancellation_authorizer_user_id   text CHECK (length(cancellation_authorizer_user_id) <= 256),
    procurement_started_at            timestamptz
);
COMMENT ON TABLE capacity.capacity_requests IS
  'Current state of each Capacity Request (projection of capacity.capacity_request_events; change it only through '
  'capacity.create_capacity_request and capacity.record_capacity_event).';
CREATE INDEX capacity_requests_confirmation_due ON capacity.capacity_requests (customer_confirmation_deadline_at)
    WHERE state = 'CUSTOMER_CONFIRMATION_REQUIRED';
CREATE INDEX capacity_requests_requester ON capacity.capacity_requests (requester_user_id);
CREATE INDEX capacity_requests_owner ON capacity.capacity_requests (commercial_owner_user_id);
CREATE INDEX capacity_requests_state ON capacity.capacity_requests (state, updated_at);
SELECT pg_catalog.pg_extension_config_dump('capacity.capacity_requests', '');

CREATE TABLE capacity.capacity_request_events (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    capacity_request_id text NOT NULL REFERENCES capacity.capacity_requests (id),
    event_type          capacity.cr_event NOT NULL,
    actor_type          text NOT NULL,
    actor_id            text NOT NULL CHECK (length(actor_id) BETWEEN 1 AND 256),
    -- At most 16 KiB of JSON text, 8 levels deep (what capacity.record_capacity_event accepts).
    payload             jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(payload) = 'object'
                            AND octet_length(payload::text) <= 16384
                            AND NOT jsonb_path_exists(payload,
                                'strict $.**{8} ? (@.type() == "object" || @.type() == "array")')),
    idempotency_key     text CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    from_state          capacity.cr_state,
    to_state            capacity.cr_state NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    seq                 bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    UNIQUE (capacity_request_id, idempotency_key)
);
COMMENT ON TABLE capacity.capacity_request_events IS
  'Append-only history of every Capacity Request: who sent which event, from which state to which.';
CREATE INDEX capacity_request_events_request ON capacity.capacity_request_events (capacity_request_id, seq);
CREATE UNIQUE INDEX capacity_request_events_submit_key ON capacity.capacity_request_events (actor_id, idempotency_key)
    WHERE event_type = 'REQUEST_SUBMITTED';
SELECT flowgate.make_append_only('capacity.capacity_request_events');
SELECT pg_catalog.pg_extension_config_dump('capacity.capacity_request_events', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('capacity.capacity_request_events', 'seq'), '');

CREATE TABLE capacity.capacity_request_tasks (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    capacity_request_id text NOT NULL REFERENCES capacity.capacity_requests (id),
    task_type           text NOT NULL CHECK (task_type IN ('cancellation_decision')),
    assigned_to         text NOT NULL CHECK (length(assigned_to) BETWEEN 1 AND 256),
    due_at              timestamptz,
    status              text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'done', 'cancelled')),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE capacity.capacity_request_tasks IS
  'Decisions owed by a person, e.g. the commercial owner''s cancellation decision after a request expired.';
CREATE UNIQUE INDEX capacity_request_tasks_one_open ON capacity.capacity_request_tasks (capacity_request_id, task_type)
    WHERE status = 'open';
CREATE INDEX capacity_request_tasks_assignee ON capacity.capacity_request_tasks (assigned_to) WHERE status = 'open';
SELECT pg_catalog.pg_extension_config_dump('capacity.capacity_request_tasks', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('capacity.capacity_request_tasks', 'id'), '');

-- Who belongs to an infra owner group (actors are JWT subjects or Slack ids, not roles).
CREATE TABLE capacity.group_members (
    group_name text NOT NULL CHECK (group_name ~ '^[A-Za-z0-9_.-]{1,63}$'),
    user_id    text NOT NULL CHECK (length(user_id) BETWEEN 1 AND 256),
    PRIMARY KEY (group_name, user_id)
);
COMMENT ON TABLE capacity.group_members IS 'Members of infra owner groups: they may record technical reviews and AWS signals.';
SELECT pg_catalog.pg_extension_config_dump('capacity.group_members', '');

-- Reads go through RLS; writes only through the capacity functions, which run with the
-- owner's rights and a pinned search_path.
REVOKE ALL ON capacity.capacity_requests, capacity.capacity_request_events, capacity.capacity_request_tasks,
              capacity.group_members FROM PUBLIC;
GRANT SELECT ON capacity.capacity_requests, capacity.capacity_request_events, capacity.capacity_request_tasks TO PUBLIC;
ALTER TABLE capacity.capacity_requests ENABLE ROW LEVEL SECURITY;
ALTER TABLE capacity.capacity_request_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE capacity.capacity_request_tasks ENABLE ROW LEVEL SECURITY;

-- Signed Slack requests handled lately, with their answers: a request sent again (Slack, an
-- edge function retrying, or anyone who saw it) within its signature's window gets the answer
-- it got and changes nothing, even when the request it acts on has moved on since (a refused
-- click stays refused). Kept at least 15 minutes (a signature is accepted 5 minutes either side
-- of its timestamp), pruned as later requests come; not dumped: a restored database starts
-- with none.
CREATE TABLE capacity.slack_requests (
    signature   text PRIMARY KEY CHECK (signature ~ '^v0=[0-9a-f]{64}$'),
    received_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    answer      jsonb
);
COMMENT ON TABLE capacity.slack_requests IS
  'Signed Slack requests and their answers, kept at least 15 minutes (pruned as later requests come): a request sent again gets the same answer and changes nothing.';
REVOKE ALL ON capacity.slack_requests FROM PUBLIC;
