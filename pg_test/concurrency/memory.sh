#!/usr/bin/env bash
# A 30 MB jsonb argument costs a backend less than 64 MB of memory whatever function it is
# sent to and whoever sends it: permission is checked first, then the argument's stored size,
# and only then is it read. Each call runs in a fresh backend whose peak memory (VmHWM in
# /proc/<pid>/status, read by the backend itself) is taken before and after the call; the
# 30 MB value was written by another session, so it reaches the function as a toast pointer
# exactly as a large PostgREST argument stored in a table would.
set -euo pipefail
q() { psql -X -q -v ON_ERROR_STOP=1 -tAc "$1"; }
fail() { echo "not ok: $*" >&2; exit 1; }
LIMIT_KB=$((64 * 1024))

q "DROP TABLE IF EXISTS public.fg_big"
# ~30 MB of JSON text that does not compress to nothing (md5 hex), as one jsonb value.
q "CREATE TABLE public.fg_big AS
   SELECT jsonb_build_object('schema_version', '1.0', 'idempotency_key', 'mem/1', 'event_type', 'release_created',
            'source_system', 'github_actions', 'release_id', 'a0000000-0000-4000-8000-00000000beef',
            'blob', string_agg(md5(i::text), '')) AS v
     FROM generate_series(1, 960000) i;
   GRANT SELECT ON public.fg_big TO PUBLIC"
size=$(q "SELECT pg_column_size(v) || ' stored, ' || octet_length(v::text) || ' as text' FROM public.fg_big")
q "DO \$\$ BEGIN
     IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'anon') THEN CREATE ROLE anon NOLOGIN; END IF;
     IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN CREATE ROLE authenticated NOLOGIN; END IF;
     IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'service_role') THEN CREATE ROLE service_role NOLOGIN; END IF;
   END \$\$"

# probe ROLE CLAIMS CALL EXPECTED_SQLSTATE: run CALL as ROLE in a fresh backend; print the
# SQLSTATE and the growth of the backend's peak memory in kB.
probe() {
  local role=$1 claims=$2 call=$3 want=$4 out state grew
  out=$(psql -X -q -tA -v ON_ERROR_STOP=1 <<SQL
CREATE FUNCTION pg_temp.hwm() RETURNS bigint LANGUAGE sql AS
  \$\$ SELECT (regexp_match(pg_read_file('/proc/self/status'), 'VmHWM:\s+(\d+)'))[1]::bigint \$\$;
SELECT pg_temp.hwm() AS before \gset
CREATE TEMP TABLE result (state text);
GRANT ALL ON result TO PUBLIC;
SET ROLE $role;
SELECT set_config('request.jwt.claims', '$claims', false) \g /dev/null
DO \$\$ BEGIN PERFORM $call; INSERT INTO result VALUES ('00000');
      EXCEPTION WHEN OTHERS THEN INSERT INTO result VALUES (SQLSTATE); END \$\$;
RESET ROLE;
SELECT state || ' ' || (pg_temp.hwm() - :before) FROM result;
SQL
)
  read -r state grew <<<"$out"
  [ "$state" = "$want" ] || fail "$call as $role: SQLSTATE $state, wanted $want"
  [ "$grew" -lt "$LIMIT_KB" ] || fail "$call as $role: the backend's peak memory grew by $grew kB (limit $LIMIT_KB kB)"
  calls=$((calls + 1))
  max=$(( grew > max ? grew : max ))
}
calls=0 max=0
big="(SELECT v FROM public.fg_big)"
probe anon '{"role":"anon"}' "capacity.create_capacity_request('ae-1', 'infra', '24XL', 1, 'us-east-1', $big)" 42501
probe authenticated '{"sub":"u-1","role":"authenticated"}' "capacity.create_capacity_request('ae-1', 'infra', '24XL', 1, 'us-east-1', $big)" 22023
probe authenticated '{"sub":"u-1","role":"authenticated"}' "capacity.record_capacity_event('CR-2026-000001', 'COMMERCIAL_APPROVED', $big)" 22023
probe postgres '' "ops.ingest_event($big)" 00000
probe postgres '' "intake.finalize_transaction($big)" 22023
probe postgres '' "flowgate.set_setting('flowgate.trusted_roles', $big)" 22023
probe postgres '' "flowgate.enqueue_delivery('core', 'x', 'http://127.0.0.1:1/', 'mem-1', $big)" 22023
q "SELECT count(*) FROM ops.event_ingest_log WHERE http_status = 413 AND envelope IS NULL" | grep -qv '^0$' \
  || fail "the oversized envelope was not logged as a 413 without its body"
q "DELETE FROM ops.event_ingest_log WHERE http_status = 413; DROP TABLE public.fg_big"
big_calls=$calls

# Small as stored, huge as text: 3,000 numbers of 10^131000 take about 48 kB in jsonb and
# would print as 393 MB. Refused before anything is printed.
q "DROP TABLE IF EXISTS public.fg_wide"
q "CREATE TABLE public.fg_wide AS
   SELECT jsonb_build_object('schema_version', '1.0', 'idempotency_key', 'mem/2', 'event_type', 'release_created',
            'source_system', 'github_actions', 'release_id', 'a0000000-0000-4000-8000-00000000beef',
            'metadata', jsonb_build_object('n', jsonb_agg('1e131000'::numeric))) AS v
     FROM generate_series(1, 3000);
   GRANT SELECT ON public.fg_wide TO PUBLIC"
wide_size=$(q "SELECT pg_column_size(v || '{}'::jsonb) FROM public.fg_wide")   # uncompressed, never printed
wide="(SELECT v FROM public.fg_wide)"
probe authenticated '{"sub":"u-1","role":"authenticated"}' "capacity.create_capacity_request('ae-1', 'infra', '24XL', 1, 'us-east-1', $wide)" 22023
probe postgres '' "flowgate.check_setting('flowgate.http_timeout_ms', $wide)" 22023
probe postgres '' "ops.ingest_event($wide)" 00000
# Logged unread: a 400 saying why, by size (its key was not read either).
WIDE="FROM ops.event_ingest_log WHERE http_status = 400 AND error_message LIKE '%numbers print as more than%'"
q "SELECT count(*) $WIDE" | grep -qx 1 || fail "the envelope whose numbers print too wide was not logged as a 400"
q "DELETE $WIDE; DROP TABLE public.fg_wide"
wide_calls=$((calls - big_calls))

# A 30 MB text argument naming whom to act for, from a caller who may not: refused (42501)
# before the value is looked at, never copied into the error.
q "DROP TABLE IF EXISTS public.fg_long; CREATE TABLE public.fg_long AS SELECT repeat(chr(127), 30000000) AS v, 'sys:' || repeat(chr(127), 30000000) AS sys;
   GRANT SELECT ON public.fg_long TO PUBLIC"
long="(SELECT v FROM public.fg_long)"
probe authenticated '{"sub":"u-1","role":"authenticated"}' "flowgate.current_actor_info($long)" 42501
probe authenticated '{"sub":"u-1","role":"authenticated"}' "capacity.record_capacity_event('CR-2026-000001', 'COMMERCIAL_APPROVED', '{}', NULL, $long)" 42501
# The same 30 MB of control characters where a caller may send text that an error quotes (a
# pool id, an event name, an idempotency key, an environment): quoted whole, it would escape to
# 180 MB before the report was cut; the message quotes its first characters only.
probe authenticated '{"sub":"u-1","role":"authenticated"}' "intake.claim($long)" 22023
probe authenticated '{"sub":"u-1","role":"authenticated"}' "capacity.record_capacity_event('CR-2026-000001', $long)" 22023
probe authenticated '{"sub":"u-1","role":"authenticated"}' "capacity.record_capacity_event('CR-2026-000001', 'COMMERCIAL_APPROVED', '{}', (SELECT sys FROM public.fg_long))" 22023
probe postgres '' "ops.is_eligible_for_promotion('a0000000-0000-4000-8000-00000000beef', $long)" 22023
q "DROP TABLE public.fg_long"
echo "ok 1 - memory: $big_calls calls with a 30 MB jsonb argument ($size), $wide_calls with $wide_size bytes of jsonb numbers that print as 393 MB and $((calls - big_calls - wide_calls)) with 30 MB of control characters as on_behalf_of, a pool id, an event name, an idempotency key or an environment, each refused or answered with its SQLSTATE; peak memory grew at most $max kB (limit $LIMIT_KB kB)"
