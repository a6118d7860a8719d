#!/usr/bin/env bash
# Capacity transitions per second through capacity.record_capacity_event at 1, 8 and 32
# clients, beside the PL/pgSQL reference reducer (pg_test/bench/capacity_reference.sql) run in
# the same invocation. Workload: 10,000 requests in PROVISIONING_IN_PROGRESS; each transaction
# records AWS_PROCUREMENT_STARTED (a legal transition that keeps the state and appends an event)
# on a random request, as an admin.
# Each client count runs in five alternating turns (flowgate, then the reference; see
# pg_test/bench/turns.sh), so both are timed in the same minutes.
#   pg_test/bench/capacity.sh [seconds per client count and side]   (default 10)
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
psql_at "$BENCH_PORT" "$BENCH_DB" -q -c "CREATE EXTENSION pgmq; CREATE EXTENSION flowgate;"
psql_at "$BENCH_PORT" "$BENCH_DB" -q -f "$FLOWGATE_ROOT/pg_test/bench/capacity_reference.sql"
psql_at "$BENCH_PORT" "$BENCH_DB" -q <<'SQL'
INSERT INTO capacity.capacity_requests (id, state, requester_user_id, commercial_owner_user_id, infra_owner_group, requested_size, quantity, region)
SELECT 'CR-2026-' || lpad(g::text, 6, '0'), 'PROVISIONING_IN_PROGRESS', 'sa-1', 'ae-1', 'infra', '24XL', 1, 'us-east-1'
  FROM generate_series(1, 10000) g;
INSERT INTO bench_ref.capacity_requests SELECT * FROM capacity.capacity_requests;
VACUUM ANALYZE;
SQL

# The reference answers what flowgate answers: the same keys and values, apart from the new
# event's id, sequence and time (its own sequence, clock_timestamp()) and the time procurement
# started (each side's first event sets it); checked in a transaction rolled back, so the timed
# runs start from the same rows.
same=$(psql_at "$BENCH_PORT" "$BENCH_DB" -tA <<'SQL'
BEGIN;
WITH x AS (SELECT capacity.record_capacity_event('CR-2026-000001', 'AWS_PROCUREMENT_STARTED') AS a,
                  bench_ref.record_event('CR-2026-000001', 'AWS_PROCUREMENT_STARTED') AS b)
SELECT a - 'request' - 'event' = b - 'request' - 'event'
   AND (a -> 'request') - 'procurement_started_at' = (b -> 'request') - 'procurement_started_at'
   AND (a -> 'event') - 'id' - 'seq' - 'created_at' = (b -> 'event') - 'id' - 'seq' - 'created_at'
  FROM x;
ROLLBACK;
SQL
)
if [ "$(echo "$same" | grep -x -c -e t)" != 1 ]; then
  echo "capacity.sh: the reference does not answer as record_capacity_event does" >&2; exit 1
fi

printf '%s\n' '\set n random(1, 10000)' \
  "SELECT capacity.record_capacity_event('CR-2026-' || lpad(:n::text, 6, '0'), 'AWS_PROCUREMENT_STARTED');" > /tmp/fg-bench-rust.sql
printf '%s\n' '\set n random(1, 10000)' \
  "SELECT bench_ref.record_event('CR-2026-' || lpad(:n::text, 6, '0'), 'AWS_PROCUREMENT_STARTED');" > /tmp/fg-bench-plpgsql.sql
source "$FLOWGATE_ROOT/pg_test/bench/turns.sh"
BENCH_TURN=$(bench_turn_seconds "$SECS")
idle_busy=$(bench_machine_check)
rows=()
for c in 1 8 32; do rows+=("$c|$(bench_alternate "$c" /tmp/fg-bench-rust.sql /tmp/fg-bench-plpgsql.sql)"); done
events=$(psql_at "$BENCH_PORT" "$BENCH_DB" -tAc "SELECT count(*) FROM capacity.capacity_request_events")

printf '\nCapacity transitions per second (%s turns of %s s per side and client count, 10,000 requests, %s cores, %s%% busy before; %s events recorded by flowgate)\n\n' "$BENCH_ROUNDS" "$BENCH_TURN" "$(nproc)" "$idle_busy" "$events"
printf '| %7s | %29s | %26s | %7s | %29s |\n' "clients" "record_capacity_event (tps)" "PL/pgSQL reference (tps)" "ratio" "ratio per turn"
printf '|%s|%s|%s|%s|%s|\n' "---------" "-------------------------------" "----------------------------" "---------" "-------------------------------"
for row in "${rows[@]}"; do
  IFS='|' read -r a b c d e <<<"$row"
  printf '| %7s | %29s | %26s | %7s | %29s |\n' "$a" "$b" "$c" "$d" "$e"
done
