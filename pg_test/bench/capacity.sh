#!/usr/bin/env bash
# Capacity transitions per second through capacity.record_capacity_event at 1, 8 and 32
# clients, beside the PL/pgSQL reference reducer (pg_test/bench/capacity_reference.sql) run in
# the same invocation. Workload: 10,000 requests in PROVISIONING_IN_PROGRESS; each transaction
# records AWS_PROCUREMENT_STARTED (a legal transition that keeps the state and appends an event)
# on a random request, as an admin.
#   pg_test/bench/capacity.sh [seconds per run]   (default 10)
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

printf '%s\n' '\set n random(1, 10000)' \
  "SELECT capacity.record_capacity_event('CR-2026-' || lpad(:n::text, 6, '0'), 'AWS_PROCUREMENT_STARTED');" > /tmp/fg-bench-rust.sql
printf '%s\n' '\set n random(1, 10000)' \
  "SELECT bench_ref.record_event('CR-2026-' || lpad(:n::text, 6, '0'), 'AWS_PROCUREMENT_STARTED');" > /tmp/fg-bench-plpgsql.sql
tps() {
  (cd / && pgbench -n -h "$SOCKET_DIR" -p "$BENCH_PORT" -U postgres -c "$1" -j "$(( $1 < 2 ? 1 : 2 ))" -T "$SECS" -f "$2" "$BENCH_DB" 2>&1) \
    | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1 | cut -d. -f1
}
rows=()
for c in 1 8 32; do
  r=$(tps "$c" /tmp/fg-bench-rust.sql)
  p=$(tps "$c" /tmp/fg-bench-plpgsql.sql)
  rows+=("$c|$r|$p|$(awk -v a="$r" -v b="$p" 'BEGIN { printf "%.2f", a / b }')")
done
events=$(psql_at "$BENCH_PORT" "$BENCH_DB" -tAc "SELECT count(*) FROM capacity.capacity_request_events")

printf '\nCapacity transitions per second (%s s per run, 10,000 requests, %s cores; %s events recorded by flowgate)\n\n' "$SECS" "$(nproc)" "$events"
printf '| %7s | %29s | %26s | %7s |\n' "clients" "record_capacity_event (tps)" "PL/pgSQL reference (tps)" "ratio"
printf '|%s|%s|%s|%s|\n' "---------" "-------------------------------" "----------------------------" "---------"
for row in "${rows[@]}"; do
  IFS='|' read -r a b c d <<<"$row"
  printf '| %7s | %29s | %26s | %7s |\n' "$a" "$b" "$c" "$d"
done
