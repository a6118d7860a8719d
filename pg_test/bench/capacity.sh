#!/usr/bin/env bash
# Capacity transitions per second through capacity.record_capacity_event at 1, 8 and 32
# clients, beside the PL/pgSQL reference reducer (pg_test/bench/capacity_reference.sql) and a
# floor, all run in the same invocation. Workload: 10,000 requests in PROVISIONING_IN_PROGRESS;
# each transaction records AWS_PROCUREMENT_STARTED (a legal transition that keeps the state and
# appends an event) on a random request, as an admin.
# The floor is the two writes every implementation of a transition makes, alone: the request's
# updated_at and the appended event, in one statement, into copies of capacity's tables (the
# same CHECKs, indexes and foreign key), with no read, no permission, no row lock of its own and
# no answer. No implementation that decides anything can be faster than it.
# Each client count runs in five rounds of turns (flowgate, the reference, the floor; see
# pg_test/bench/turns.sh), so all three are timed in the same minutes.
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
INSERT INTO bench_floor.capacity_requests SELECT * FROM capacity.capacity_requests;
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
printf '%s\n' '\set n random(1, 10000)' \
  "WITH u AS (UPDATE bench_floor.capacity_requests SET updated_at = now() WHERE id = 'CR-2026-' || lpad(:n::text, 6, '0') RETURNING id),
        e AS (INSERT INTO bench_floor.capacity_request_events (capacity_request_id, event_type, actor_type, actor_id, payload, from_state, to_state)
              SELECT id, 'AWS_PROCUREMENT_STARTED', 'role', 'postgres', '{}', 'PROVISIONING_IN_PROGRESS', 'PROVISIONING_IN_PROGRESS' FROM u RETURNING 1)
   SELECT count(*) FROM e;" > /tmp/fg-bench-floor.sql
source "$FLOWGATE_ROOT/pg_test/bench/turns.sh"
BENCH_TURN=$(bench_turn_seconds "$SECS")
idle_busy=$(bench_machine_check)
rows=()
for c in 1 8 32; do rows+=("$c|$(bench_alternate "$c" /tmp/fg-bench-rust.sql /tmp/fg-bench-plpgsql.sql /tmp/fg-bench-floor.sql)"); done
events=$(psql_at "$BENCH_PORT" "$BENCH_DB" -tAc "SELECT count(*) FROM capacity.capacity_request_events")
floor_events=$(psql_at "$BENCH_PORT" "$BENCH_DB" -tAc "SELECT count(*) FROM bench_floor.capacity_request_events")

printf '\nCapacity transitions per second (%s rounds of turns of %s s per side and client count, 10,000 requests, %s cores, %s%% busy before; %s events recorded by flowgate, %s by the floor)\n\n' "$BENCH_ROUNDS" "$BENCH_TURN" "$(nproc)" "$idle_busy" "$events" "$floor_events"
printf '| %7s | %16s | %15s | %7s | %29s | %18s | %17s | %16s |\n' "clients" "flowgate (tps)" "reference (tps)" "ratio" "ratio per turn" "floor: writes (tps)" "floor / reference" "flowgate / floor"
printf '|%s|%s|%s|%s|%s|%s|%s|%s|\n' "---------" "------------------" "-----------------" "---------" "-------------------------------" "---------------------" "-------------------" "------------------"
for row in "${rows[@]}"; do
  IFS='|' read -r c f r w ratio turns <<<"$row"
  printf '| %7s | %16s | %15s | %7s | %29s | %19s | %17s | %16s |\n' "$c" "$f" "$r" "$ratio" "$turns" "$w" \
    "$(awk -v a="$w" -v b="$r" 'BEGIN { printf "%.2f", a / b }')" "$(awk -v a="$f" -v b="$w" 'BEGIN { printf "%.2f", a / b }')"
done
