#!/usr/bin/env bash
# Hostile input, every function, every caller: keeps the hardening closed.
#
# Every public function of flowgate's five schemas (read from the catalog, so a new function is
# covered without touching this file) is called by ten callers — anon, authenticated (a signed-in
# user who belongs to no group), service_role, the six ops personas and a plain login that
# forges its own JWT claims — with one hostile argument at a time (every other argument gets a
# plausible neutral value), with every argument NULL, and with every argument neutral. Every
# call runs twice in a row (replayed keys). Each call is its own top-level statement with
# statement_timeout = 5s, wrapped by hostile.try(), which records the SQLSTATE it ended with.
#
# Checks: no internal error (class XX, 58, P0004, 2F005); only the SQLSTATEs the README
# documents, or those Postgres itself raises for the argument types before flowgate runs; every
# call answered (no stall past 5 s, no session lost); no backend crashed; each caller's backend
# peaked under 512 MB; and the callers who may write nothing (anon, authenticated, audit_reader,
# the plain login) changed no row of any flowgate table (nor of pgmq's queues), but for what the
# design lets every signed-in user write in their own name (hostile.allowed() below).
#
# It all happens in a database of its own (hostile_<pid>), created here and dropped at the end,
# so nothing a call does can reach the test database or this harness' own session.
#
# Output: "# ..." lines (the SQLSTATE table, timings, offending calls), then one "ok N - ..." line.
# Set HOSTILE_KEEP=1 to keep the database (table hostile.results: one row per call, caller and
# replay) for inspection; HOSTILE_JOBS=N runs N writer callers at once (default 2);
# HOSTILE_CALLER_BUDGET caps one caller's run (default 180 s; a call that ignores
# statement_timeout is ended there); HOSTILE_PGLOG names the server log to search for crashes
# (default: <dirname $FLOWGATE_PGDATA>/log, as test.sh lays clusters out).
set -euo pipefail
t0=$(date +%s)
ADMIN_DB=${PGDATABASE:-postgres}
DB=hostile_$$
WORK=$(mktemp -d /tmp/hostile.XXXXXX)
chmod 755 "$WORK"
JOBS=${HOSTILE_JOBS:-2}
MEM_LIMIT_KB=$((512 * 1024))
CALLER_BUDGET=${HOSTILE_CALLER_BUDGET:-180}   # seconds for one caller's run (each call: 5 s)
SENTINEL_PID=
DROP_LOGIN=0
checks=0

fail() { echo "not ok: $*" >&2; exit 1; }
# Failures are collected in a file: writers run in background subshells.
note() { printf '%s\n' "$*" >> "$WORK/failures"; }
q() { psql -X -q -v ON_ERROR_STOP=1 -tA -d "$DB" -c "$1"; }
qa() { psql -X -q -v ON_ERROR_STOP=1 -tA -d "$ADMIN_DB" -c "$1"; }
# After a crash the postmaster restarts every backend and recovers: wait until it answers again.
wait_server() { for _ in $(seq 1 300); do qa "SELECT 1" >/dev/null 2>&1 && return 0; sleep 0.2; done; return 1; }

cleanup() {
  set +e
  if [ -n "$SENTINEL_PID" ]; then
    qa "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'hostile_sentinel_$$'" >/dev/null 2>&1
    kill "$SENTINEL_PID" 2>/dev/null; wait "$SENTINEL_PID" 2>/dev/null
  fi
  if [ "${HOSTILE_KEEP:-0}" != 1 ]; then
    wait_server
    qa "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
    [ "$DROP_LOGIN" = 1 ] && qa "DROP ROLE IF EXISTS fg_hostile_login" >/dev/null 2>&1
    rm -rf "$WORK"
  else
    echo "# kept database $DB and $WORK" >&2
  fi
}
trap cleanup EXIT
trap 'echo "not ok: hostile: unexpected failure at line $LINENO: $BASH_COMMAND" >&2' ERR

# Callers ---------------------------------------------------------------------------------------
# name|how the session becomes it|request.jwt.claims|may write nothing (fingerprinted)|its identity
# (the plain login forges the claims of ae-1: a session that did not log in as PostgREST's
# authenticator is not believed, so it must act as itself)
CALLERS=(
  "anon|SET ROLE anon|{\"role\":\"anon\"}|1|"
  "authenticated|SET ROLE authenticated|{\"sub\":\"hostile-user\",\"role\":\"authenticated\"}|1|hostile-user"
  "audit_reader|SET ROLE audit_reader|{\"sub\":\"hostile-audit_reader\",\"role\":\"audit_reader\"}|1|hostile-audit_reader"
  "fg_hostile_login|SET SESSION AUTHORIZATION fg_hostile_login|{\"sub\":\"ae-1\",\"role\":\"authenticated\"}|1|fg_hostile_login"
  "service_role|SET ROLE service_role|{\"role\":\"service_role\"}|0"
  "ci_service_role|SET ROLE ci_service_role|{\"sub\":\"hostile-ci_service_role\",\"role\":\"ci_service_role\"}|0"
  "release_manager|SET ROLE release_manager|{\"sub\":\"hostile-release_manager\",\"role\":\"release_manager\"}|0"
  "qa_tester|SET ROLE qa_tester|{\"sub\":\"hostile-qa_tester\",\"role\":\"qa_tester\"}|0"
  "sre|SET ROLE sre|{\"sub\":\"hostile-sre\",\"role\":\"sre\"}|0"
  "developer|SET ROLE developer|{\"sub\":\"hostile-developer\",\"role\":\"developer\"}|0"
)

# Roles are cluster-wide: create the missing ones before the extension, so its grants see them.
qa "DO \$\$ BEGIN
     IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'anon') THEN CREATE ROLE anon NOLOGIN; END IF;
     IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN CREATE ROLE authenticated NOLOGIN; END IF;
     IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'service_role') THEN CREATE ROLE service_role NOLOGIN; END IF;
   END \$\$"
if [ "$(qa "SELECT count(*) FROM pg_roles WHERE rolname = 'fg_hostile_login'")" = 0 ]; then
  qa "CREATE ROLE fg_hostile_login LOGIN"
  DROP_LOGIN=1
fi
for p in ci_service_role release_manager qa_tester sre developer audit_reader; do
  [ "$(qa "SELECT count(*) FROM pg_roles WHERE rolname = '$p'")" = 1 ] || fail "persona role $p does not exist (the extension creates it)"
done
start_time=$(qa "SELECT pg_postmaster_start_time()")

# The server log, when this cluster's layout tells where it is (test.sh: <dir>/data, <dir>/log).
PGLOG=${HOSTILE_PGLOG:-}
if [ -z "$PGLOG" ] && [ -n "${FLOWGATE_PGDATA:-}" ] && [ -r "$(dirname "$FLOWGATE_PGDATA")/log" ]; then PGLOG=$(dirname "$FLOWGATE_PGDATA")/log; fi
log_offset=0
[ -n "$PGLOG" ] && [ -r "$PGLOG" ] && log_offset=$(stat -c %s "$PGLOG")

# The database ----------------------------------------------------------------------------------
if [ "$(qa "SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = current_database()")" = UTF8 ]; then
  qa "CREATE DATABASE $DB"
else
  qa "CREATE DATABASE $DB TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C'"
fi
# Installed as a Supabase project gets it: the installing role's default privileges grant every
# new table, sequence and function to anon and authenticated (flowgate must revoke what it does
# not mean to expose), and PostgREST exposes every schema (USAGE for everyone).
q "CREATE EXTENSION pgcrypto; CREATE EXTENSION pgmq;
   ALTER DEFAULT PRIVILEGES GRANT ALL ON TABLES TO anon, authenticated;
   ALTER DEFAULT PRIVILEGES GRANT ALL ON SEQUENCES TO anon, authenticated;
   ALTER DEFAULT PRIVILEGES GRANT EXECUTE ON FUNCTIONS TO anon, authenticated;
   CREATE EXTENSION flowgate;
   ALTER DEFAULT PRIVILEGES REVOKE ALL ON TABLES FROM anon, authenticated;
   ALTER DEFAULT PRIVILEGES REVOKE ALL ON SEQUENCES FROM anon, authenticated;
   ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM anon, authenticated;
   GRANT USAGE ON SCHEMA flowgate, capacity, intake, ops, provisioning TO PUBLIC"
# Nothing leaves this machine: every URL a function could call points at a closed port.
q "SELECT flowgate.set_setting(k, '\"http://127.0.0.1:1\"')
     FROM unnest(ARRAY['capacity.slack_api_url', 'capacity.linear_api_url', 'provisioning.management_api_url']) k" >/dev/null
q "SELECT flowgate.set_setting('provisioning.request_timeout_ms', '1000'), flowgate.set_setting('flowgate.http_timeout_ms', '1000')" >/dev/null

# The harness: its values, calls, results and helpers, owned by the superuser. Callers may read
# the calls and values and add results, nothing else.
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null <<'SQL' || fail "the harness could not be set up"
CREATE SCHEMA hostile;
GRANT USAGE ON SCHEMA hostile TO PUBLIC;
CREATE TABLE hostile.dummy (id int);
CREATE TABLE hostile.hostile_values (k text PRIMARY KEY, t text, j jsonb);
CREATE TABLE hostile.calls (n int PRIMARY KEY, fn text NOT NULL, variant text NOT NULL, call text NOT NULL);
CREATE TABLE hostile.results (n int, rep int, caller text, fn text, variant text, sqlstate text, message text, ms numeric);
CREATE TABLE hostile.fp (label text, tbl text, n bigint, h bigint);
GRANT SELECT ON hostile.hostile_values, hostile.calls TO PUBLIC;
GRANT INSERT ON hostile.results TO PUBLIC;

-- One call, as the caller; its SQLSTATE ('00000' when it succeeded) and message are recorded.
-- A statement timeout (57014) is not caught by WHEN OTHERS: it leaves no row. {key} in a call
-- (neutral idempotency keys, slugs) becomes <caller>-<n>: unique per call and caller, the same
-- in the replay.
CREATE FUNCTION hostile.try(p_n int, p_rep int) RETURNS void LANGUAGE plpgsql AS $$
DECLARE c hostile.calls; st text := '00000'; msg text; t0 timestamptz := clock_timestamp();
BEGIN
    SELECT * INTO STRICT c FROM hostile.calls WHERE n = p_n;
    BEGIN
        EXECUTE replace(c.call, '{key}', replace(current_setting('hostile.caller'), '_', '-') || '-' || p_n);
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
    END;
    INSERT INTO hostile.results
    VALUES (p_n, p_rep, current_setting('hostile.caller'), c.fn, c.variant, st, left(msg, 200),
            round(extract(epoch FROM clock_timestamp() - t0)::numeric * 1000, 1));
END $$;
GRANT EXECUTE ON FUNCTION hostile.try(int, int) TO PUBLIC;

-- Row counts and a hash of every row of every table of flowgate's schemas (and pgmq's queues);
-- the rows themselves too, to tell what changed when the fingerprint differs.
CREATE TABLE hostile.snap (label text, tbl text, r jsonb);
CREATE FUNCTION hostile.fingerprint(p_label text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE r record; cnt bigint; h bigint;
BEGIN
    FOR r IN SELECT s.nspname || '.' || c.relname AS name, c.oid::regclass AS rel
               FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace
              WHERE s.nspname IN ('flowgate', 'capacity', 'intake', 'ops', 'provisioning', 'pgmq')
                AND c.relkind IN ('r', 'p') ORDER BY 1
    LOOP
        EXECUTE format('SELECT count(*), coalesce(sum(hashtext(t::text)), 0) FROM %s t', r.rel) INTO cnt, h;
        INSERT INTO hostile.fp VALUES (p_label, r.name, cnt, h);
        EXECUTE format('INSERT INTO hostile.snap SELECT %L, %L, to_jsonb(t) FROM %s t', p_label, r.name, r.rel);
    END LOOP;
END $$;

-- What a caller who may write nothing may still write, by design, in its own name only (me: its
-- identity, the JWT sub or, for the plain login, its role: never the sub it forged; anon has none):
--  * a capacity request and its REQUEST_SUBMITTED event (capacity.create_capacity_request is for
--    every signed-in user and every login acting as itself; anon is refused);
--  * its own Slack link code (flowgate.request_identity_link: a code only the identity can redeem)
--    and its own Slack link (unlink_identity removes it);
--  * an intake claim: intake.claim locks a free slot for the caller, counts the claim and queues
--    the intent in the pool's pgmq queue;
--  * the answer to a Slack request signed with the app's secret (capacity.slack_requests: only a
--    verified request gets one, so that the same request sent again gets the same answer).
-- A row version that left a table is "removed", one that appeared "added" (an update is both).
CREATE FUNCTION hostile.allowed(tbl text, change text, r jsonb, me text) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(CASE
        WHEN tbl = 'capacity.capacity_requests' THEN change = 'added' AND r->>'requester_user_id' = me
        WHEN tbl = 'capacity.capacity_request_events' THEN change = 'added' AND r->>'actor_id' = me
                                                          AND r->>'event_type' = 'REQUEST_SUBMITTED'
        WHEN tbl = 'flowgate.identity_links' THEN r->>'actor_id' = me
        WHEN tbl = 'flowgate.identity_link_codes' THEN r->>'actor_id' = me
        WHEN tbl = 'intake.user_claims' THEN r->>'user_id' = me
        WHEN tbl = 'capacity.slack_requests' THEN change = 'added' AND r->>'signature' ~ '^v0=[0-9a-f]{64}$'
        WHEN tbl = 'intake.allocations' THEN (change = 'removed' AND r->>'status' = 'available')
                                          OR (change = 'added' AND r->>'locked_by' = me)
        WHEN tbl LIKE 'pgmq.q\_intake\_%' THEN change = 'added' AND r->'message'->>'user_id' = me
        ELSE false END, false) $$;

-- The changes between two snapshots that no rule allows.
CREATE FUNCTION hostile.forbidden(p_before text, p_after text, me text) RETURNS TABLE (change text, tbl text, r jsonb)
LANGUAGE sql AS $$
    WITH b AS (SELECT tbl, r FROM hostile.snap WHERE label = p_before),
         a AS (SELECT tbl, r FROM hostile.snap WHERE label = p_after),
         d AS ((SELECT 'removed' AS change, * FROM (SELECT * FROM b EXCEPT ALL SELECT * FROM a) x)
               UNION ALL (SELECT 'added', * FROM (SELECT * FROM a EXCEPT ALL SELECT * FROM b) y))
    SELECT * FROM d WHERE NOT hostile.allowed(d.tbl, d.change, d.r, me) $$;
SQL

# Big values, written by this (separate) session so that calls get them as toast pointers.
q "INSERT INTO hostile.hostile_values (k, t) SELECT 'text_1mb', string_agg(md5(i::text), '') FROM generate_series(1, 32768) i;
   INSERT INTO hostile.hostile_values (k, j)
   SELECT 'json_30mb', jsonb_build_object('schema_version', '1.0', 'idempotency_key', 'hostile/big', 'event_type', 'release_created',
            'source_system', 'hostile', 'release_id', '00000000-0000-4000-8000-0000000000f1', 'key', 'flowgate.http_timeout_ms',
            'blob', string_agg(md5(i::text), ''))
     FROM generate_series(1, 960000) i"
big=$(q "SELECT string_agg(k || ' ' || pg_size_pretty(coalesce(pg_column_size(t), pg_column_size(j))::bigint), ', ' ORDER BY k) FROM hostile.hostile_values")

# Fixtures, so that neutral arguments name things that exist and a hostile argument reaches the
# code behind the lookups: a release (with its gates), a capacity request, an intake pool, a
# provisioning client and its job, a delivery, secrets.
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null <<'SQL' || fail "the fixtures could not be created"
SELECT ops.ingest_event('{"schema_version": "1.0", "idempotency_key": "hostile/fixture/release", "event_type": "release_created",
    "source_system": "hostile", "release_id": "00000000-0000-4000-8000-0000000000f1", "version": "1.0.0"}');
INSERT INTO capacity.group_members VALUES ('commercial_approvers', 'ae-2');
SELECT capacity.create_capacity_request('ae-2', 'infra', '24XL', 1, 'us-east-1', '{}', NULL, NULL, NULL, 'ae-1', 'hostile/fixture');
SELECT intake.create_pool('hostile_pool', 100, '{}');
SELECT provisioning.enqueue_client('hostile-client', 'Hostile Client');
SELECT flowgate.enqueue_delivery('core', 'hostile', 'http://127.0.0.1:1/', 'hostile/fixture/delivery', '{}');
SELECT flowgate.set_secret('hostile_secret', 'hostile-secret-value');
-- Slack requests get past "no signing secret" (0A000) to the verification of their signature.
SELECT flowgate.set_secret('slack_signing_secret', 'hostile-signing-secret');
SQL

# Neutral values: by parameter name where a plausible one helps the call get past its first
# lookup, else by type. A new parameter name simply gets the value of its type.
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null <<'SQL' || fail "the calls could not be generated"
CREATE TABLE hostile.hint (param text, kind text, expr text NOT NULL, PRIMARY KEY (param, kind));
INSERT INTO hostile.hint (param, kind, expr) SELECT param, 'text', expr FROM (VALUES
  ('key', $$'flowgate.http_timeout_ms'$$), ('provider', $$'slack'$$), ('external_id', $$'U0HOSTILE1'$$),
  ('actor_id', 'NULL'), ('on_behalf_of', 'NULL'), ('requester_user_id', 'NULL'),
  ('commercial_owner_user_id', $$'ae-2'$$), ('user_id', $$'hostile-other'$$),
  ('infra_owner_group', $$'infra'$$), ('requested_size', $$'24XL'$$), ('region', $$'us-east-1'$$),
  ('request_id', quote_nullable((SELECT id FROM capacity.capacity_requests ORDER BY created_at LIMIT 1))),
  ('event_type', $$'COMMERCIAL_APPROVED'$$), ('event', $$'COMMERCIAL_APPROVED'$$),
  ('idempotency_key', $$'hostile/key/{key}'$$), ('url', $$'http://127.0.0.1:1/'$$), ('method', $$'POST'$$),
  ('owner_module', $$'core'$$), ('owner_id', $$'hostile'$$), ('auth_header', $$'Authorization'$$),
  ('auth_scheme', $$'Bearer'$$), ('chosen', $$'native'$$), ('pool_id', $$'hostile_pool'$$),
  ('worker', $$'hostile-worker'$$), ('slug', $$'hostile-{key}'$$), ('display_name', $$'Hostile Client 2'$$),
  ('plan', $$'free'$$), ('target_env', $$'staging'$$), ('name', $$'hostile_secret'$$),
  ('body', $$'command=%2Fcapacity&text=help&user_id=U0HOSTILE1'$$),
  ('request_timestamp', $$extract(epoch FROM now())::bigint::text$$), ('signature', $$'v0=00'$$)) v(param, expr);
INSERT INTO hostile.hint (param, kind, expr) VALUES
  ('envelope', 'json', quote_literal('{"schema_version": "1.0", "idempotency_key": "hostile/key/{key}", "event_type": "build_complete",
      "source_system": "hostile", "release_id": "00000000-0000-4000-8000-0000000000f1", "status": "pass"}')),
  ('release_id', 'uuid', $$'00000000-0000-4000-8000-0000000000f1'$$), ('release', 'uuid', $$'00000000-0000-4000-8000-0000000000f1'$$),
  ('gate_id', 'uuid', quote_nullable((SELECT gate_id FROM ops.release_gates ORDER BY gate_code LIMIT 1))),
  ('client_id', 'uuid', quote_nullable((SELECT client_id FROM provisioning.clients LIMIT 1))),
  ('job_id', 'uuid', quote_nullable((SELECT job_id FROM provisioning.client_provisioning_jobs LIMIT 1))),
  ('ids', 'array', format('ARRAY[%s]', (SELECT min(id) FROM flowgate.deliveries))),
  ('msg_ids', 'array', 'ARRAY[1]'), ('tbl', 'regclass', $$'hostile.dummy'$$);

-- A Slack request (body, request_timestamp, signature) is signed with the signing secret of the
-- fixtures whatever its body and timestamp, so that a hostile body or timestamp reaches the code
-- behind the signature check; only a hostile signature itself is unsigned.
CREATE FUNCTION hostile.slack_sign(ts text, body text) RETURNS text LANGUAGE sql STRICT
SET search_path = public, pg_catalog AS $$
    SELECT 'v0=' || encode(hmac(convert_to('v0:' || ts || ':' || body, 'UTF8'), convert_to('hostile-signing-secret', 'UTF8'), 'sha256'), 'hex') $$;
GRANT EXECUTE ON FUNCTION hostile.slack_sign(text, text) TO PUBLIC;

CREATE FUNCTION hostile.base(t oid) RETURNS oid LANGUAGE sql STABLE AS $$
    WITH RECURSIVE d(o, b) AS (SELECT oid, typbasetype FROM pg_type WHERE oid = t
                               UNION ALL SELECT pg_type.oid, pg_type.typbasetype FROM pg_type, d WHERE pg_type.oid = d.b)
    SELECT o FROM d WHERE b = 0 $$;

CREATE FUNCTION hostile.kind(t oid) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN b IN ('text'::regtype, 'varchar'::regtype, 'name'::regtype, 'bpchar'::regtype) THEN 'text'
        WHEN b IN ('jsonb'::regtype, 'json'::regtype) THEN 'json'
        WHEN b = 'int2'::regtype THEN 'int2' WHEN b = 'int4'::regtype THEN 'int4' WHEN b = 'int8'::regtype THEN 'int8'
        WHEN b = 'bool'::regtype THEN 'bool' WHEN b = 'uuid'::regtype THEN 'uuid'
        WHEN b IN ('timestamptz'::regtype, 'timestamp'::regtype) THEN 'timestamp' WHEN b = 'date'::regtype THEN 'date'
        WHEN b = 'numeric'::regtype THEN 'numeric' WHEN b IN ('float4'::regtype, 'float8'::regtype) THEN 'float'
        WHEN b = 'regclass'::regtype THEN 'regclass'
        WHEN (SELECT typtype FROM pg_type WHERE oid = b) = 'e' THEN 'enum'
        WHEN (SELECT typcategory FROM pg_type WHERE oid = b) = 'A' THEN 'array'
        ELSE 'other' END
    FROM (SELECT hostile.base(t) AS b) x $$;

-- A plausible value of type t for parameter pname, as an SQL expression.
CREATE FUNCTION hostile.neutral(t oid, pname text) RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE tn text := format_type(t, NULL); k text := hostile.kind(t); h text; e oid;
BEGIN
    SELECT expr INTO h FROM hostile.hint WHERE param = pname AND kind = k;
    IF h IS NOT NULL THEN RETURN format('(%s)::%s', h, tn); END IF;
    IF k = 'array' THEN
        SELECT typelem INTO e FROM pg_type WHERE oid = hostile.base(t);
        RETURN format('ARRAY[%s]::%s', hostile.neutral(e, NULL), tn);
    END IF;
    RETURN CASE k
        WHEN 'text' THEN format('%L::%s', 'hostile', tn)
        WHEN 'json' THEN format('%L::%s', '{}', tn)
        WHEN 'int2' THEN '1::int2' WHEN 'int4' THEN '1' WHEN 'int8' THEN '1::int8'
        WHEN 'bool' THEN 'true'
        WHEN 'uuid' THEN format('%L::uuid', '00000000-0000-4000-8000-0000000000f1')
        WHEN 'timestamp' THEN format('now()::%s', tn)
        WHEN 'date' THEN 'current_date + 30'
        WHEN 'numeric' THEN '100::numeric' WHEN 'float' THEN format('1::%s', tn)
        WHEN 'regclass' THEN $q$'hostile.dummy'::regclass$q$
        WHEN 'enum' THEN format('%L::%s', (SELECT enumlabel FROM pg_enum WHERE enumtypid = hostile.base(t) ORDER BY enumsortorder LIMIT 1), tn)
        ELSE format('NULL::%s', tn) END;
END $$;

-- The hostile values of type t: (label, SQL expression).
CREATE FUNCTION hostile.variants(t oid) RETURNS TABLE (label text, expr text) LANGUAGE plpgsql STABLE AS $fn$
DECLARE tn text := format_type(t, NULL); k text := hostile.kind(t); e oid; ek text;
BEGIN
    label := 'NULL'; expr := format('NULL::%s', tn); RETURN NEXT;
    IF k = 'text' THEN
        RETURN QUERY SELECT v.l, format('(%s)::%s', v.x, tn) FROM (VALUES
            ('empty', $v$''$v$),
            ('1MB', $v$(SELECT t FROM hostile.hostile_values WHERE k = 'text_1mb')$v$),
            ('sql', $v$'''; DROP TABLE flowgate.settings; --'$v$),
            ('like', $v$E'%_\\'$v$),
            ('bom', $v$E'\uFEFFhostile'$v$),
            ('rlo', $v$E'hos\u202Etile'$v$),
            ('combining', $v$E'ho\u0301\u0308\u0327stile'$v$),
            ('emoji', $v$E'\U0001F4A3'$v$),
            ('uffff', $v$E'\uFFFF'$v$),
            ('dotted-I', $v$'İ'$v$),
            ('control', $v$E'a\x01b\nc'$v$),
            ('300chars', $v$repeat('x', 300)$v$)) v(l, x);
    ELSIF k = 'json' THEN
        RETURN QUERY SELECT v.l, format('(%s)::%s', v.x, tn) FROM (VALUES
            ('[]', $v$'[]'$v$), ('"str"', $v$'"str"'$v$), ('42', $v$'42'$v$), ('null', $v$'null'$v$), ('{}', $v$'{}'$v$),
            ('deep200', format('%L', repeat('[', 200) || repeat(']', 200))),
            ('30MB', $v$(SELECT j FROM hostile.hostile_values WHERE k = 'json_30mb')$v$)) v(l, x);
    ELSIF k IN ('int2', 'int4', 'int8') THEN
        RETURN QUERY SELECT v.l, format('(%s)::%s', v.x, tn) FROM (VALUES ('0', '0'), ('-1', '-1'),
            ('max', CASE k WHEN 'int2' THEN '32767' WHEN 'int4' THEN '2147483647' ELSE '9223372036854775807' END)) v(l, x);
    ELSIF k = 'uuid' THEN
        label := 'random'; expr := format('%L::uuid', gen_random_uuid()); RETURN NEXT;
    ELSIF k = 'timestamp' THEN
        RETURN QUERY SELECT v.l, format('%L::%s', v.x, tn) FROM (VALUES ('-infinity', '-infinity'), ('infinity', 'infinity')) v(l, x);
    ELSIF k = 'date' THEN
        label := 'infinity'; expr := format('%L::%s', 'infinity', tn); RETURN NEXT;
    ELSIF k IN ('numeric', 'float') THEN
        RETURN QUERY SELECT v.l, format('%L::%s', v.x, tn) FROM (VALUES ('-1', '-1'), ('1e30', '1e30'), ('NaN', 'NaN')) v(l, x);
    ELSIF k = 'array' THEN
        SELECT typelem INTO e FROM pg_type WHERE oid = hostile.base(t);
        ek := hostile.kind(e);
        label := 'empty'; expr := format('%L::%s', '{}', tn); RETURN NEXT;
        label := '10000'; expr := CASE WHEN ek IN ('int2', 'int4', 'int8')
            THEN format('(SELECT array_agg(i)::%s FROM generate_series(1, 10000) i)', tn)
            ELSE format('array_fill(%s, ARRAY[10000])::%s', hostile.neutral(e, NULL), tn) END;
        RETURN NEXT;
    END IF;
END $fn$;

-- Every public function of flowgate's schemas; trigger functions and _helpers excepted.
CREATE VIEW hostile.functions AS
SELECT p.oid, p.prokind, quote_ident(s.nspname) || '.' || quote_ident(p.proname) AS qname,
       p.oid::regprocedure::text AS sig, p.pronargs,
       p.proargtypes::oid[] AS types, p.provariadic <> 0 AS variadic,
       (SELECT array_agg(u.nm ORDER BY u.o)
          FROM unnest(p.proargnames, coalesce(p.proargmodes, array_fill('i'::"char", ARRAY[coalesce(cardinality(p.proargnames), 0)])))
               WITH ORDINALITY u(nm, md, o)
         WHERE u.md IN ('i', 'b', 'v')) AS names
  FROM pg_proc p JOIN pg_namespace s ON s.oid = p.pronamespace
 WHERE s.nspname IN ('flowgate', 'capacity', 'intake', 'ops', 'provisioning')
   AND p.prokind IN ('f', 'p') AND p.prorettype <> 'trigger'::regtype AND p.proname NOT LIKE '\_%';

DO $$
DECLARE f record; i int; v record; args text[]; neutral text[]; n int := 0; callv text; sig int; ts int; body int;
BEGIN
    FOR f IN SELECT * FROM hostile.functions ORDER BY sig LOOP
        neutral := ARRAY[]::text[];
        FOR i IN 1 .. f.pronargs LOOP
            neutral := neutral || hostile.neutral(f.types[i - 1], f.names[i]);
        END LOOP;
        sig := array_position(f.names, 'signature');
        ts := array_position(f.names, 'request_timestamp');
        body := array_position(f.names, 'body');
        IF sig IS NOT NULL AND ts IS NOT NULL AND body IS NOT NULL THEN
            neutral[sig] := format('hostile.slack_sign(%s, %s)', neutral[ts], neutral[body]);
        END IF;
        callv := CASE f.prokind WHEN 'p' THEN 'CALL ' ELSE 'SELECT ' END || f.qname;
        IF f.variadic THEN neutral[f.pronargs] := 'VARIADIC ' || neutral[f.pronargs]; END IF;
        -- every argument neutral; every argument NULL
        n := n + 1;
        INSERT INTO hostile.calls VALUES (n, f.sig, 'neutral', callv || '(' || array_to_string(neutral, ', ') || ')');
        IF f.pronargs > 0 THEN
            n := n + 1;
            INSERT INTO hostile.calls VALUES (n, f.sig, 'all NULL', callv || '(' ||
                (SELECT string_agg(CASE WHEN f.variadic AND k = f.pronargs THEN 'VARIADIC ' ELSE '' END || format('NULL::%s', format_type(f.types[k - 1], NULL)), ', ' ORDER BY k)
                   FROM generate_series(1, f.pronargs) k) || ')');
        END IF;
        -- one hostile argument at a time
        FOR i IN 1 .. f.pronargs LOOP
            FOR v IN SELECT * FROM hostile.variants(f.types[i - 1]) LOOP
                args := neutral;
                args[i] := CASE WHEN f.variadic AND i = f.pronargs THEN 'VARIADIC ' ELSE '' END || v.expr;
                IF sig IS NOT NULL AND ts IS NOT NULL AND body IS NOT NULL AND i <> sig THEN
                    args[sig] := format('hostile.slack_sign(%s, %s)', args[ts], args[body]);
                END IF;
                n := n + 1;
                INSERT INTO hostile.calls VALUES (n, f.sig, coalesce(f.names[i], '$' || i) || '=' || v.label,
                    callv || '(' || array_to_string(args, ', ') || ')');
            END LOOP;
        END LOOP;
    END LOOP;
END $$;
SQL
nfun=$(q "SELECT count(*) FROM hostile.functions")
ncalls=$(q "SELECT count(*) FROM hostile.calls")
[ "$nfun" -gt 0 ] || fail "no functions found in flowgate's schemas"
echo "# $nfun functions, $ncalls argument variants each called twice by ${#CALLERS[@]} callers; big values: $big"

# A backend that lives through the whole run: a crashed backend makes the postmaster restart
# every backend, this one included (pg_postmaster_start_time() does not change then).
PGAPPNAME=hostile_sentinel_$$ psql -X -q -d "$DB" -c "SELECT pg_sleep(3600)" >/dev/null 2>&1 &
SENTINEL_PID=$!
for _ in $(seq 1 50); do
  sentinel=$(q "SELECT pid FROM pg_stat_activity WHERE application_name = 'hostile_sentinel_$$'")
  [ -n "$sentinel" ] && break; sleep 0.1
done
[ -n "$sentinel" ] || fail "the sentinel backend did not start"

server_alive() {
  local what=$1 now
  now=$(qa "SELECT pg_postmaster_start_time()") || { note "$what: the server does not answer"; return 1; }
  [ "$now" = "$start_time" ] || { note "$what: the server restarted (start time $start_time, now $now)"; return 1; }
  [ "$(qa "SELECT count(*) FROM pg_stat_activity WHERE pid = $sentinel")" = 1 ] \
    || { note "$what: a backend crashed (every backend was restarted, the sentinel $sentinel with them)"; return 1; }
  if [ -n "$PGLOG" ] && [ -r "$PGLOG" ] && tail -c +"$((log_offset + 1))" "$PGLOG" | grep -Eq 'terminated by signal|was terminated by exception|PANIC:'; then
    note "$what: the server log shows a crash: $(tail -c +"$((log_offset + 1))" "$PGLOG" | grep -E 'terminated by signal|was terminated by exception|PANIC:' | head -3)"
    return 1
  fi
  return 0
}

# run_caller NAME HOW CLAIMS: every call, twice, as that caller in one backend (a new one after a
# lost session, from the call after the one that lost it); then the backend's peak memory.
run_caller() {
  local name=$1 how=$2 claims=$3 from=0 tries=0 rc reset hwm last
  reset="RESET ROLE"; [[ "$how" == "SET SESSION AUTHORIZATION"* ]] && reset="RESET SESSION AUTHORIZATION"
  while :; do
    q "SELECT format('SELECT hostile.try(%s, 1);' || chr(10) || 'SELECT hostile.try(%s, 2);', n, n)
         FROM hostile.calls WHERE n > $from ORDER BY n" > "$WORK/calls.$name.sql"
    {
      echo "SET statement_timeout = '5s';"
      echo "SET hostile.caller = '$name';"
      echo "$how;"
      echo "SELECT set_config('request.jwt.claims', '$claims', false);"
      echo "\\i $WORK/calls.$name.sql"
      echo "$reset;"
      echo "RESET statement_timeout;"
      echo "SELECT (regexp_match(pg_read_file('/proc/self/status'), 'VmHWM:\\s+(\\d+)'))[1] \\g $WORK/hwm.$name"
    } > "$WORK/run.$name.sql"
    rm -f "$WORK/hwm.$name"
    set +e
    PGAPPNAME=hostile_${name}_$$ timeout "$CALLER_BUDGET" psql -X -q -tA -d "$DB" -f "$WORK/run.$name.sql" >/dev/null 2>>"$WORK/stderr.$name"
    rc=$?
    set -e
    [ "$rc" -eq 0 ] && break
    if [ "$rc" -eq 124 ]; then
      # A call that does not heed statement_timeout: end its backend (ours), go on after it.
      qa "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'hostile_${name}_$$'" >/dev/null || true
      echo "(the run took more than $CALLER_BUDGET s: a call did not stop at statement_timeout)" >> "$WORK/stderr.$name"
    fi
    # The session was lost: the first call without both results lost it (or was running when
    # another backend crashed: the postmaster then ends every session).
    wait_server || { note "$name: the server does not answer after the session was lost"; break; }
    last=$(q "SELECT min(c.n) FROM hostile.calls c WHERE c.n > $from
                AND (SELECT count(*) FROM hostile.results r WHERE r.n = c.n AND r.caller = '$name') < 2")
    note "$name: the session was lost (psql exit $rc) at call $last: $(q "SELECT fn || ' ' || variant FROM hostile.calls WHERE n = ${last:-0}")
    psql said: $(grep -v '^$' "$WORK/stderr.$name" | tail -n 3 | tr '\n' ' ')"
    tries=$((tries + 1))
    [ -n "$last" ] && [ "$tries" -lt 4 ] || break
    from=$last
  done
  hwm=$(cat "$WORK/hwm.$name" 2>/dev/null || echo 0)
  echo "$name $hwm" >> "$WORK/hwm"
}

fingerprint_diff() {
  q "SELECT string_agg(coalesce(a.tbl, b.tbl) || ' rows ' || coalesce(a.n, 0) || ' -> ' || coalesce(b.n, 0)
                       || CASE WHEN a.h IS DISTINCT FROM b.h AND a.n IS NOT DISTINCT FROM b.n THEN ' (changed)' ELSE '' END, '; ')
       FROM (SELECT * FROM hostile.fp WHERE label = '$1') a FULL JOIN (SELECT * FROM hostile.fp WHERE label = '$2') b USING (tbl)
      WHERE a.n IS DISTINCT FROM b.n OR a.h IS DISTINCT FROM b.h"
}

check_caller() {
  local name=$1 missing hwm
  wait_server || { note "$name: the server does not answer"; return 0; }
  missing=$(q "SELECT count(*) FROM hostile.calls c, generate_series(1, 2) rep
                WHERE NOT EXISTS (SELECT FROM hostile.results r WHERE r.n = c.n AND r.rep = rep AND r.caller = '$name')")
  if [ "$missing" -eq 0 ]; then checks=$((checks + 1)); else
    note "$name: $missing calls left no result (a stall past 5 s or a lost session); the first ones:
$(q "SELECT '    ' || c.fn || ' ' || c.variant || ' (rep ' || rep || '): ' || left(c.call, 300) FROM hostile.calls c, generate_series(1, 2) rep
      WHERE NOT EXISTS (SELECT FROM hostile.results r WHERE r.n = c.n AND r.rep = rep AND r.caller = '$name') ORDER BY c.n, rep LIMIT 10")
    psql said: $(grep -m3 ERROR "$WORK/stderr.$name" || true)"
  fi
  if server_alive "after $name"; then checks=$((checks + 1)); fi
  hwm=$(awk -v n="$name" '$1 == n {print $2}' "$WORK/hwm")
  if [ "${hwm:-0}" -gt 0 ] && [ "$hwm" -lt "$MEM_LIMIT_KB" ]; then checks=$((checks + 1)); else
    note "$name: the backend's peak memory was ${hwm:-unknown} kB (limit $MEM_LIMIT_KB kB)"
  fi
}

# The callers who may write nothing run one at a time, between two fingerprints; the writers
# (service_role and five personas) afterwards, $JOBS at a time.
for c in "${CALLERS[@]}"; do
  IFS='|' read -r name how claims readonly me <<<"$c"
  [ "$readonly" = 1 ] || continue
  t=$(date +%s)
  q "SELECT hostile.fingerprint('before $name')" >/dev/null
  run_caller "$name" "$how" "$claims"
  wait_server || fail "the server does not answer after $name's run"
  q "SELECT hostile.fingerprint('after $name')" >/dev/null
  diff=$(fingerprint_diff "before $name" "after $name")
  bad=$(q "SELECT count(*) FROM hostile.forbidden('before $name', 'after $name', nullif('$me', ''))")
  if [ "$bad" -eq 0 ]; then
    checks=$((checks + 1))
    [ -z "$diff" ] || echo "# $name wrote only what it may, as $me: $diff"
  else
    note "$name wrote $bad row versions it may not ($diff); the first ones:
$(q "SELECT format('    %s %s: %s', change, tbl, left(r::text, 300)) FROM hostile.forbidden('before $name', 'after $name', nullif('$me', '')) LIMIT 20")"
  fi
  check_caller "$name"
  echo "# $name: $(( $(date +%s) - t )) s"
done
t=$(date +%s)
writers=()
for c in "${CALLERS[@]}"; do
  IFS='|' read -r name how claims readonly me <<<"$c"
  [ "$readonly" = 0 ] && writers+=("$c")
done
pids=()
for lane in $(seq 0 $((JOBS - 1))); do
  (
    for i in "${!writers[@]}"; do
      [ $((i % JOBS)) -eq "$lane" ] || continue
      IFS='|' read -r name how claims readonly me <<<"${writers[$i]}"
      run_caller "$name" "$how" "$claims"
    done
  ) &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || note "a lane of writers stopped early (exit $?)"; done
for c in "${writers[@]}"; do
  IFS='|' read -r name how claims readonly me <<<"$c"
  check_caller "$name"
done
echo "# writers ($JOBS at a time): $(( $(date +%s) - t )) s"

# SQLSTATEs ---------------------------------------------------------------------------------------
wait_server || fail "the server does not answer any more"
# Documented in the README (Errors), or raised by Postgres itself for the argument types before
# flowgate runs: 22001 string too long, 22003 out of range, 22004 null not allowed, 22007/22008
# datetime format/overflow, 22P05 untranslatable character, 2200x data exceptions, 42883 no
# such function (a cast), 54000 program limit (a value too big for Postgres), 39004 a NULL where
# a STRICT-less function declares none.
DOCUMENTED='^(00000|22023|22P02|P0002|55000|42501|23505|23514|40001|0A000|22001|22003|22004|22007|22008|22P05|2200[0-9A-Z]|42883|54000|39004)$'
# offenders CONDITION: up to 20 (callers, function, variant, SQLSTATE, message) rows, the callers
# of one failing call folded into one row.
offenders() {
  q "SELECT format('    %s | %s | %s | %s | %s', string_agg(DISTINCT caller, ','), fn, variant, sqlstate, message)
       FROM hostile.results WHERE $1 GROUP BY fn, variant, sqlstate, message ORDER BY min(n) LIMIT 20"
}
echo "# SQLSTATE    calls  (callers x functions)"
q "SELECT format('# %-9s %7s  (%s x %s)', sqlstate, count(*), count(DISTINCT caller), count(DISTINCT fn))
     FROM hostile.results GROUP BY sqlstate ORDER BY count(*) DESC"
states=$(q "SELECT string_agg(sqlstate || ' ' || c, ', ' ORDER BY c DESC) FROM (SELECT sqlstate, count(*) c FROM hostile.results GROUP BY 1) s")
internal=$(q "SELECT count(*) FROM hostile.results WHERE sqlstate ~ '^(XX|58)' OR sqlstate IN ('P0004', '2F005')")
if [ "$internal" -eq 0 ]; then checks=$((checks + 1)); else
  note "$internal calls ended with an internal error, in $(q "SELECT string_agg(format('%s (%s variants)', fn, v), ', ')
      FROM (SELECT fn, count(DISTINCT variant) v FROM hostile.results WHERE sqlstate ~ '^(XX|58)' OR sqlstate IN ('P0004', '2F005') GROUP BY fn ORDER BY fn) x"):
$(offenders "sqlstate ~ '^(XX|58)' OR sqlstate IN ('P0004', '2F005')")"
fi
other=$(q "SELECT count(*) FROM hostile.results WHERE sqlstate !~ '$DOCUMENTED'")
if [ "$other" -eq 0 ]; then checks=$((checks + 1)); else
  rest="sqlstate !~ '$DOCUMENTED' AND NOT (sqlstate ~ '^(XX|58)' OR sqlstate IN ('P0004', '2F005'))"
  if [ "$(q "SELECT count(*) FROM hostile.results WHERE $rest")" -eq 0 ]; then
    note "$other calls ended with an undocumented SQLSTATE: the internal errors above"
  else
    note "$other calls ended with an undocumented SQLSTATE; besides the internal errors above:
$(offenders "$rest")"
  fi
fi
# Allowed, but worth knowing: a function answering with a table's CHECK (23514) or a column's
# range (22003) instead of validating its argument first (22023, README "Errors").
q "SELECT format('# note: %s answered %s for %s', fn, sqlstate, string_agg(DISTINCT variant, ', '))
     FROM hostile.results WHERE sqlstate IN ('23514', '22003') GROUP BY fn, sqlstate ORDER BY fn, sqlstate"
q "SELECT format('# slowest: %s ms %s %s %s', ms, caller, fn, variant) FROM hostile.results ORDER BY ms DESC LIMIT 3"

peak=$(awk '{ if ($2 > m) m = $2 } END { printf "%d", m / 1024 }' "$WORK/hwm")
total=$(q "SELECT count(*) FROM hostile.results")
secs=$(( $(date +%s) - t0 ))
if [ -s "$WORK/failures" ]; then
  cat "$WORK/failures" >&2
  fail "hostile: failures in $total calls of $nfun functions as ${#CALLERS[@]} roles (${secs}s)"
fi
echo "ok $checks - hostile: $total calls of $nfun functions as ${#CALLERS[@]} roles in ${secs}s: no XX000, only documented SQLSTATEs ($states), no backend died, peak memory $peak MB, nothing written by anon/authenticated/audit_reader/plain login (but their own capacity requests, Slack links and intake claims, and the answers to signed Slack requests)"
