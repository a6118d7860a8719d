#!/usr/bin/env bash
# Release gates benchmarks, each beside a floor run in the same invocation:
#  1. ops.ingest_event events per second at 1, 8 and 32 clients, 30% of sends repeating an
#     already-accepted key, check_result events spread over 100 releases; the floor is a plain
#     INSERT ... ON CONFLICT (idempotency_key) DO NOTHING of the same envelope into a table of
#     the ingest log's shape (no validation, no handler, no gate evaluation: no ingest can beat it).
#     Each client count runs in five alternating turns (ingest, then the floor; see
#     pg_test/bench/turns.sh), so both are timed in the same minutes.
#  2. Promotion eligibility over 10,000 releases (70% eligible, 15% with a failed G2 check, 15%
#     without a G3 approval of which a third are bypassed by an exception): v_promotion_eligibility
#     (one query, with the blocking reasons) and ops.is_eligible_for_promotion called once per
#     release, both reading the stored statuses, and ops.evaluate_gate per gate (a fresh
#     evaluation from facts), beside a GROUP BY over the stored gate statuses (the floor: what a
#     report reading ops.release_gates costs).
#   pg_test/bench/ops.sh [seconds per client count and side]   (default 10)
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
SECS=${1:-10}
BENCH_DIR=/var/tmp/flowgate/bench
BENCH_PORT=5596
BENCH_DB=flowgate_bench

install_dependencies >/dev/null
install_flowgate >/dev/null
cluster_stop "$BENCH_DIR"; "${SUDO[@]}" rm -rf "$BENCH_DIR"
cluster_start "$BENCH_DIR" "$BENCH_PORT" "$BENCH_DB"
trap 'cluster_stop "$BENCH_DIR"' EXIT
q() { psql_at "$BENCH_PORT" "$BENCH_DB" -q "$@"; }
q -c "CREATE EXTENSION pgmq; CREATE EXTENSION flowgate;"

# ---- 1. ingest --------------------------------------------------------------------------------
q <<'SQL'
SELECT ops.ingest_event(jsonb_build_object('schema_version', '1.0', 'idempotency_key', 'bench/release/' || r, 'event_type', 'release_created',
       'source_system', 'bench', 'release_id', 'b0b0b0b0-0000-4000-8000-' || lpad(r::text, 12, '0'), 'version', 'bench-' || r))
  FROM generate_series(1, 100) r \g /dev/null
-- The keys that later sends repeat.
SELECT ops.ingest_event(jsonb_build_object('schema_version', '1.0', 'idempotency_key', 'warm/' || m, 'event_type', 'check_result',
       'source_system', 'bench', 'release_id', 'b0b0b0b0-0000-4000-8000-' || lpad((1 + m % 100)::text, 12, '0'),
       'gate_code', 'G1', 'check_name', 'suite-' || m % 20, 'status', 'pass'))
  FROM generate_series(1, 1000) m \g /dev/null
CREATE SEQUENCE public.bench_seq;
CREATE SCHEMA bench_floor;
CREATE TABLE bench_floor.ingest_log (LIKE ops.event_ingest_log INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
CREATE UNIQUE INDEX ON bench_floor.ingest_log (idempotency_key);
INSERT INTO bench_floor.ingest_log SELECT * FROM ops.event_ingest_log;
ALTER TABLE bench_floor.ingest_log ADD PRIMARY KEY (ingest_id);
VACUUM ANALYZE;
SQL
envelope="jsonb_build_object('schema_version', '1.0',
    'idempotency_key', CASE WHEN :r <= 30 THEN 'warm/' || :m ELSE 'new/' || nextval('public.bench_seq') END,
    'event_type', 'check_result', 'source_system', 'bench', 'release_id', 'b0b0b0b0-0000-4000-8000-' || lpad((1 + :m % 100)::text, 12, '0'),
    'gate_code', 'G1', 'check_name', 'suite-' || :m % 20, 'status', 'pass')"
printf '%s\n' '\set r random(1, 100)' '\set m random(1, 1000)' "SELECT ops.ingest_event($envelope);" > /tmp/fg-bench-ingest.sql
printf '%s\n' '\set r random(1, 100)' '\set m random(1, 1000)' \
  "WITH e AS (SELECT $envelope AS v)
   INSERT INTO bench_floor.ingest_log (idempotency_key, event_type, received_event_type, schema_version, source_system, release_id,
                                       processing_status, http_status, envelope, envelope_bytes, received_by)
   SELECT v->>'idempotency_key', (v->>'event_type')::ops.ops_event_type, v->>'event_type', v->>'schema_version', v->>'source_system',
          (v->>'release_id')::uuid, 'accepted', 200, v, length(v::text), current_user FROM e
   ON CONFLICT (idempotency_key) DO NOTHING;" > /tmp/fg-bench-floor.sql
source "$FLOWGATE_ROOT/pg_test/bench/turns.sh"
BENCH_TURN=$(bench_turn_seconds "$SECS")
idle_busy=$(bench_machine_check)
rows=()
for c in 1 8 32; do rows+=("$c|$(bench_alternate "$c" /tmp/fg-bench-ingest.sql /tmp/fg-bench-floor.sql)"); done
read -r accepted dup other <<<"$(psql_at "$BENCH_PORT" "$BENCH_DB" -tAc "SELECT count(*) FILTER (WHERE processing_status = 'accepted'),
    count(*) FILTER (WHERE processing_status = 'duplicate'), count(*) FILTER (WHERE processing_status NOT IN ('accepted', 'duplicate'))
    FROM ops.event_ingest_log WHERE idempotency_key LIKE 'new/%' OR idempotency_key LIKE 'warm/%'" | tr '|' ' ')"

# ---- 2. eligibility over 10,000 releases ------------------------------------------------------------
q <<'SQL'
SET session_replication_role = replica;  -- bulk load: no per-row triggers; gates are evaluated once below
INSERT INTO ops.releases (release_id, version, created_by, source_system)
SELECT ('e1e1e1e1-0000-4000-8000-' || lpad(r::text, 12, '0'))::uuid, 'v' || r, 'bench', 'bench' FROM generate_series(1, 10000) r;
INSERT INTO ops.release_gates (release_id, gate_code)
SELECT release_id, g FROM ops.releases, unnest(ARRAY['G1', 'G2', 'G3', 'G4']) g WHERE created_by = 'bench';
INSERT INTO ops.gate_checks (gate_id, release_id, check_name, status, reported_by, source_system)
SELECT gate_id, release_id, c, 'pass', 'bench', 'bench' FROM ops.release_gates g, unnest(ARRAY['build', 'unit']) c
 WHERE gate_code = 'G1' AND release_id::text LIKE 'e1e1e1e1-%';
INSERT INTO ops.gate_checks (gate_id, release_id, check_name, status, required, reported_by, source_system)
SELECT gate_id, release_id, 'e2e', CASE WHEN right(release_id::text, 4)::int % 100 BETWEEN 70 AND 84 THEN 'fail' ELSE 'pass' END, false, 'bench', 'bench'
  FROM ops.release_gates WHERE gate_code = 'G2' AND release_id::text LIKE 'e1e1e1e1-%';
INSERT INTO ops.evidence_artifacts (release_id, gate_id, artifact_type, uri, submitted_by)
SELECT release_id, gate_id, CASE gate_code WHEN 'G2' THEN 'test_report' ELSE 'rollback_plan' END,
       'https://evidence/' || gate_id, 'bench'
  FROM ops.release_gates WHERE gate_code IN ('G2', 'G3') AND release_id::text LIKE 'e1e1e1e1-%';
INSERT INTO ops.approvals (release_id, gate_id, approver_id, persona_role, decision)
SELECT release_id, gate_id, 'rm', 'release_manager', 'approved' FROM ops.release_gates
 WHERE gate_code = 'G3' AND release_id::text LIKE 'e1e1e1e1-%' AND right(release_id::text, 4)::int % 100 < 85;
INSERT INTO ops.exceptions (release_id, gate_id, reason, requested_by, status, decided_by, decided_at, expires_at)
SELECT release_id, gate_id, 'bench', 'dev', 'approved', 'rm', now(), now() + interval '1 day' FROM ops.release_gates
 WHERE gate_code = 'G3' AND release_id::text LIKE 'e1e1e1e1-%' AND right(release_id::text, 4)::int % 100 BETWEEN 85 AND 89;
INSERT INTO ops.deployments (release_id, environment, status, g4_status, deployed_by)
SELECT release_id, 'staging', 'succeeded', 'passed', 'bench' FROM ops.releases WHERE release_id::text LIKE 'e1e1e1e1-%';
-- The health check evidence of each staging deployment, attached after it (a later transaction).
INSERT INTO ops.evidence_artifacts (release_id, gate_id, artifact_type, uri, submitted_by)
SELECT release_id, gate_id, 'health_check', 'https://evidence/' || gate_id, 'bench'
  FROM ops.release_gates WHERE gate_code = 'G4' AND release_id::text LIKE 'e1e1e1e1-%';
SET session_replication_role = origin;
SELECT count(ops.refresh_gates(release_id)) FROM ops.releases WHERE release_id::text LIKE 'e1e1e1e1-%' \g /dev/null
VACUUM ANALYZE;
SQL
timed() {  # seconds for a query, best of 5 in one session (psql's \timing: the query, not psql's start)
  local out
  out=$(psql -X -h "$SOCKET_DIR" -p "$BENCH_PORT" -U postgres -d "$BENCH_DB" -qAt -c '\timing on' \
          -c "$1" -c "$1" -c "$1" -c "$1" -c "$1")
  grep -v '^Time: ' <<<"$out" | head -1 >/tmp/fg-bench-out
  grep '^Time: ' <<<"$out" | awk '{ print $2 / 1000 }' | sort -g | head -1
}
view=$(timed "SELECT count(*) FILTER (WHERE eligible) FROM ops.v_promotion_eligibility WHERE environment = 'production' AND release_id::text LIKE 'e1e1e1e1-%'")
view_eligible=$(cat /tmp/fg-bench-out)
per_release=$(timed "SELECT count(*) FILTER (WHERE ops.is_eligible_for_promotion(release_id, 'production')) FROM ops.releases WHERE release_id::text LIKE 'e1e1e1e1-%'")
eligible=$(cat /tmp/fg-bench-out)
fresh=$(timed "SELECT count(*) FILTER (WHERE ok) FROM (SELECT g.release_id, bool_and(ops.evaluate_gate(g.gate_id) IN ('passed', 'bypassed')) AS ok
                 FROM ops.release_gates g JOIN ops.environment_gate_requirements q ON q.gate_code = g.gate_code AND q.environment = 'production'
                WHERE g.release_id::text LIKE 'e1e1e1e1-%' GROUP BY g.release_id) x")
fresh_eligible=$(cat /tmp/fg-bench-out)
stored=$(timed "SELECT count(*) FILTER (WHERE ok) FROM (SELECT g.release_id, bool_and(g.status IN ('passed', 'bypassed')) AS ok
                  FROM ops.release_gates g JOIN ops.environment_gate_requirements q ON q.gate_code = g.gate_code AND q.environment = 'production'
                 WHERE g.release_id::text LIKE 'e1e1e1e1-%' GROUP BY g.release_id) x")
stored_eligible=$(cat /tmp/fg-bench-out)

printf '\nops.ingest_event, events per second (%s turns of %s s per side and client count, 30%% repeated keys, 100 releases, %s cores, %s%% busy before)\n\n' "$BENCH_ROUNDS" "$BENCH_TURN" "$(nproc)" "$idle_busy"
printf '| %7s | %22s | %37s | %7s | %29s |\n' "clients" "ops.ingest_event (eps)" "floor: INSERT ... ON CONFLICT (eps)" "ratio" "ratio per turn"
printf '|%s|%s|%s|%s|%s|\n' "---------" "------------------------" "---------------------------------------" "---------" "-------------------------------"
for row in "${rows[@]}"; do
  IFS='|' read -r a b c d e <<<"$row"
  printf '| %7s | %22s | %37s | %7s | %29s |\n' "$a" "$b" "$c" "$d" "$e"
done
printf '\nOutcomes: %s accepted, %s duplicates, %s other (rejected or error)\n' "$accepted" "$dup" "$other"
printf '\nPromotion eligibility for production over 10,000 releases (best of 5 in one session)\n\n'
printf '| %-62s | %9s | %10s | %9s | %8s |\n' "method" "seconds" "releases/s" "eligible" "vs floor"
printf '|%s|%s|%s|%s|%s|\n' "----------------------------------------------------------------" "-----------" "------------" "-----------" "----------"
for row in "v_promotion_eligibility (stored statuses, blocking reasons)|$view|$view_eligible" \
           "ops.is_eligible_for_promotion, one call per release (stored)|$per_release|$eligible" \
           "ops.evaluate_gate per required gate (fresh from facts)|$fresh|$fresh_eligible" \
           "floor: GROUP BY over stored ops.release_gates statuses|$stored|$stored_eligible"; do
  IFS='|' read -r a b c <<<"$row"
  printf '| %-62s | %9.3f | %10s | %9s | %8s |\n' "$a" "$b" "$(awk -v s="$b" 'BEGIN { printf "%d", 10000 / s }')" "$c" \
    "$(awk -v s="$b" -v f="$stored" 'BEGIN { printf "%.2f", f / s }')"
done
