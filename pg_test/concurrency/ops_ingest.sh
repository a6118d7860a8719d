#!/usr/bin/env bash
# 100 sessions send 1,000 ops events with 30% duplicate keys (each duplicate right behind its
# original, so the two race) at 10 releases, as ci_service_role the way PostgREST would.
# Invariants: one accepted outcome per key, every other send of a key a duplicate pointing at
# it, every envelope logged, every accepted event applied exactly once, and the stored gate
# statuses equal a fresh evaluation (no update lost between concurrent events of one release).
# Then 4 sessions at once on each of 40 release_created keys, an event that cannot be applied
# twice: one accepted per key, the others its duplicates (never a 409 "release exists").
set -euo pipefail
q() { psql -X -q -v ON_ERROR_STOP=1 -tAc "$1"; }
fail() { echo "not ok: $*" >&2; exit 1; }

q "DROP TABLE IF EXISTS public.fg_ops_events; DROP TABLE IF EXISTS public.fg_ops_creates; DROP SEQUENCE IF EXISTS public.fg_ops_seq"
q "DELETE FROM ops.event_ingest_log WHERE idempotency_key LIKE 'conc/%'; DELETE FROM ops.releases WHERE release_id::text LIKE 'c0c0c0c0-%'"
# 10 releases.
q "SELECT ops.ingest_event(jsonb_build_object('schema_version', '1.0', 'idempotency_key', 'conc/release/' || r, 'event_type', 'release_created',
       'source_system', 'github_actions', 'release_id', 'c0c0c0c0-0000-4000-8000-' || lpad(r::text, 12, '0'), 'version', 'conc-' || r))
     FROM generate_series(1, 10) r" >/dev/null
# 700 distinct keys; 300 of them sent twice, the copy right after the original: 1,000 sends.
q "CREATE TABLE public.fg_ops_events AS
   WITH keys AS (
     SELECT k, 'c0c0c0c0-0000-4000-8000-' || lpad((1 + k % 10)::text, 12, '0') AS release,
            (ARRAY['pass', 'pass', 'pass', 'fail'])[1 + (k * 7) % 4] AS status
       FROM generate_series(1, 700) k),
   sends AS (
     SELECT k, 0 AS copy, release, status FROM keys
     UNION ALL SELECT k, 1, release, status FROM keys WHERE k <= 300)
   SELECT row_number() OVER (ORDER BY k, copy) AS n, k,
          jsonb_build_object('schema_version', '1.0', 'idempotency_key', 'conc/github_actions/' || k || '/check',
                             'event_type', 'check_result', 'source_system', 'github_actions', 'release_id', release,
                             'gate_code', 'G1', 'check_name', 'suite-' || (k % 25), 'status', status, 'run_id', k) AS envelope
     FROM sends"
q "CREATE SEQUENCE public.fg_ops_seq; GRANT SELECT ON public.fg_ops_events TO ci_service_role; GRANT USAGE ON SEQUENCE public.fg_ops_seq TO ci_service_role"

# send TABLE CLIENTS TX: CLIENTS sessions send TX envelopes each from TABLE (in its column n
# order, one per transaction) as the CI persona, signed in through PostgREST's claims.
send() {
  local script; script=$(mktemp)
  cat > "$script" <<SQL
BEGIN;
SET LOCAL ROLE ci_service_role;
SET LOCAL request.jwt.claims = '{"sub": "github-actions[bot]", "role": "ci_service_role"}';
SELECT nextval('public.fg_ops_seq') AS n \\gset
SELECT ops.ingest_event(envelope) FROM $1 WHERE n = :n;
COMMIT;
SQL
  pgbench -n -c "$2" -j 2 -t "$3" -f "$script" >/dev/null 2>&1 || { rm -f "$script"; return 1; }
  rm -f "$script"
}
# outcomes KEY_PATTERN: "accepted duplicates other" among the log rows of those keys.
outcomes() {
  q "SELECT count(*) FILTER (WHERE processing_status = 'accepted'), count(*) FILTER (WHERE processing_status = 'duplicate'),
            count(*) FILTER (WHERE processing_status NOT IN ('accepted', 'duplicate'))
       FROM ops.event_ingest_log WHERE idempotency_key LIKE '$1'" | tr '|' ' '
}

t0=$(date +%s.%N)
send public.fg_ops_events 100 10 || fail "pgbench reported errors"
secs=$(echo "$(date +%s.%N) - $t0" | bc)

logged=$(q "SELECT count(*) FROM ops.event_ingest_log WHERE idempotency_key LIKE 'conc/github_actions/%'")
[ "$logged" -eq 1000 ] || fail "$logged of 1000 sends logged"
read -r accepted dup other <<<"$(outcomes 'conc/github_actions/%')"
[ "$other" -eq 0 ] || fail "$other sends were rejected or failed"
[ "$accepted" -eq 700 ] || fail "$accepted accepted outcomes for 700 keys"
[ "$dup" -eq 300 ] || fail "$dup duplicates for 300 repeated keys"
twice=$(q "SELECT count(*) FROM (SELECT idempotency_key FROM ops.event_ingest_log WHERE idempotency_key LIKE 'conc/github_actions/%'
                                   AND processing_status = 'accepted' GROUP BY 1 HAVING count(*) > 1) x")
[ "$twice" -eq 0 ] || fail "$twice keys accepted twice"
orphans=$(q "SELECT count(*) FROM ops.event_ingest_log d LEFT JOIN ops.event_ingest_log a ON a.ingest_id = d.original_ingest_id
              WHERE d.idempotency_key LIKE 'conc/github_actions/%' AND d.processing_status = 'duplicate'
                AND (a.idempotency_key IS DISTINCT FROM d.idempotency_key OR a.processing_status <> 'accepted')")
[ "$orphans" -eq 0 ] || fail "$orphans duplicates do not point at their key's accepted row"
# Every accepted event's answer names the check row that holds its result; a row was written
# exactly for the events that did not repeat their check's latest result, and so no check has
# two rows in a row with the same status.
unheld=$(q "SELECT count(*) FROM ops.event_ingest_log l LEFT JOIN ops.gate_checks c ON c.check_id = (l.result #>> '{detail,check_id}')::uuid
             WHERE l.idempotency_key LIKE 'conc/github_actions/%' AND l.processing_status = 'accepted'
               AND (c.check_id IS NULL OR c.release_id <> l.release_id OR c.check_name <> l.envelope ->> 'check_name'
                    OR c.status <> l.envelope ->> 'status' OR c.required <> coalesce((l.envelope ->> 'required')::boolean, true))")
[ "$unheld" -eq 0 ] || fail "$unheld accepted events name no check row that holds their result"
read -r rows written <<<"$(q "SELECT (SELECT count(*) FROM ops.gate_checks WHERE run_id::int BETWEEN 1 AND 700 AND release_id::text LIKE 'c0c0c0c0-%'),
                                     count(*) FILTER (WHERE result #> '{detail,repeated}' IS NULL)
                                FROM ops.event_ingest_log WHERE idempotency_key LIKE 'conc/github_actions/%' AND processing_status = 'accepted'" | tr '|' ' ')"
[ "$rows" -eq "$written" ] || fail "$rows check rows for $written accepted events that were not repeats"
[ "$rows" -lt 700 ] || fail "every one of 700 events wrote a check row: no repeat was recognised"
again=$(q "SELECT count(*) FROM (SELECT (status, required) AS result,
                                           lag((status, required)) OVER (PARTITION BY gate_id, check_name ORDER BY recorded_at) AS before
                                    FROM ops.gate_checks WHERE release_id::text LIKE 'c0c0c0c0-%') x WHERE result = before")
[ "$again" -eq 0 ] || fail "$again check rows repeat the result before them"
stale=$(q "SELECT count(*) FROM ops.release_gates g WHERE g.release_id::text LIKE 'c0c0c0c0-%' AND g.status <> ops.evaluate_gate(g.gate_id)")
[ "$stale" -eq 0 ] || fail "$stale gates store a status that differs from a fresh evaluation"
statuses=$(q "SELECT string_agg(DISTINCT status, ',') FROM ops.release_gates WHERE release_id::text LIKE 'c0c0c0c0-%' AND gate_code = 'G1'")
q "REVOKE ALL ON public.fg_ops_events FROM ci_service_role; REVOKE ALL ON SEQUENCE public.fg_ops_seq FROM ci_service_role;
   DROP TABLE public.fg_ops_events; DROP SEQUENCE public.fg_ops_seq"

# Same-key races of an event that cannot be applied twice: 4 sessions send each of 40
# release_created envelopes at once (the copies are consecutive, so different sessions take them
# together). The first to commit is accepted; the others wait on its release row, and are its
# duplicates, never a 409 "release exists".
q "DELETE FROM ops.event_ingest_log WHERE idempotency_key LIKE 'conc/create/%'; DELETE FROM ops.releases WHERE release_id::text LIKE 'c1c1c1c1-%'"
q "CREATE TABLE public.fg_ops_creates AS
   SELECT row_number() OVER (ORDER BY r, copy) AS n,
          jsonb_build_object('schema_version', '1.0', 'idempotency_key', 'conc/create/' || r, 'event_type', 'release_created',
                             'source_system', 'github_actions', 'release_id', 'c1c1c1c1-0000-4000-8000-' || lpad(r::text, 12, '0'),
                             'version', 'race-' || r) AS envelope
     FROM generate_series(1, 40) r, generate_series(1, 4) copy;
   CREATE SEQUENCE public.fg_ops_seq; GRANT SELECT ON public.fg_ops_creates TO ci_service_role;
   GRANT USAGE ON SEQUENCE public.fg_ops_seq TO ci_service_role"
send public.fg_ops_creates 40 4 || fail "pgbench reported errors (same-key creates)"
read -r c_accepted c_dup c_other <<<"$(outcomes 'conc/create/%')"
[ "$c_other" -eq 0 ] || fail "$c_other same-key release_created sends were rejected or failed: $(q "SELECT string_agg(DISTINCT http_status || ' ' || error, ', ')
                                                                                              FROM ops.event_ingest_log WHERE idempotency_key LIKE 'conc/create/%'
                                                                                               AND processing_status NOT IN ('accepted', 'duplicate')")"
[ "$c_accepted" -eq 40 ] || fail "$c_accepted accepted outcomes for 40 raced release_created keys"
[ "$c_dup" -eq 120 ] || fail "$c_dup duplicates for 120 raced copies"
gates=$(q "SELECT count(*) FROM ops.release_gates WHERE release_id::text LIKE 'c1c1c1c1-%'")
[ "$gates" -eq 160 ] || fail "$gates gates for 40 releases created"
q "REVOKE ALL ON public.fg_ops_creates FROM ci_service_role; REVOKE ALL ON SEQUENCE public.fg_ops_seq FROM ci_service_role;
   DROP TABLE public.fg_ops_creates; DROP SEQUENCE public.fg_ops_seq"
echo "ok 3 - ops ingest: 4 sessions at once on each of 40 release_created keys: 40 accepted, 120 duplicates, none refused, 160 gates"
echo "ok 6 - ops ingest: 100 sessions, 1000 sends of 700 keys (300 raced duplicates) in ${secs%.*}s: 700 accepted once each, 300 duplicates pointing at them, 1000 log rows, 700 checks applied ($rows rows for the results that changed, none repeating the one before), stored G1 statuses ($statuses) equal a fresh evaluation"
