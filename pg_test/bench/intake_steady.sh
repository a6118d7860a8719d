#!/usr/bin/env bash
# Intake, steady state and end to end, each beside its reference in the same run:
#  1. claims/s and p50/p99 latency at 1, 16, 64 and 128 clients on a 1,000,000-item pool, for
#     intake.claim_resource and for the plain SKIP LOCKED reference (pg_test/bench/intake_reference.sql);
#  2. the end-to-end drain rate (intents validated by a webhook and committed to an HTTP ledger,
#     both flowgate-testd on 127.0.0.1) with 1 and 4 concurrent drain sessions, beside the rate
#     of the two plain HTTP requests per intent that a drain cannot beat (flowgate-testd blast).
#   pg_test/bench/intake_steady.sh [seconds per run] [intents to drain]   (defaults 8, 20000)
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
SECS=${1:-8}
DRAIN_N=${2:-20000}
POOL=1000000
BENCH_DIR=/var/tmp/flowgate/bench
BENCH_PORT=5596
BENCH_DB=flowgate_bench

install_dependencies >/dev/null
install_flowgate >/dev/null
cluster_stop "$BENCH_DIR"; "${SUDO[@]}" rm -rf "$BENCH_DIR"
cluster_start "$BENCH_DIR" "$BENCH_PORT" "$BENCH_DB"
q() { psql_at "$BENCH_PORT" "$BENCH_DB" -tAc "$1"; }
q "ALTER SYSTEM SET max_connections = 200" >/dev/null
as_postgres "$PGBIN/pg_ctl" -D "$BENCH_DIR/data" -l "$BENCH_DIR/log" -w restart >/dev/null
start_testd
trap 'stop_testd; cluster_stop "$BENCH_DIR"' EXIT
q "CREATE EXTENSION pgmq; CREATE EXTENSION flowgate;" >/dev/null
psql_at "$BENCH_PORT" "$BENCH_DB" -q -f "$FLOWGATE_ROOT/pg_test/bench/intake_reference.sql" >/dev/null
q "SELECT intake.create_pool('steady', $POOL, '{\"max_claims_per_user\": 1000000, \"drain_mode\": \"external\"}')" >/dev/null
q "INSERT INTO bench_ref.allocations (pool_id) SELECT 'steady' FROM generate_series(1, $POOL)" >/dev/null
q "VACUUM ANALYZE" >/dev/null

printf '%s\n' '\set u random(1, 1000000)' "SELECT intake.claim_resource('steady', 'user-:u');" > /tmp/fg-steady-flowgate.sql
printf '%s\n' '\set u random(1, 1000000)' "SELECT bench_ref.claim_resource('steady', 'user-:u');" > /tmp/fg-steady-reference.sql
LOGS=$(mktemp -d); chmod 777 "$LOGS"
# run SCRIPT CLIENTS: "tps p50_ms p99_ms" from pgbench's per-transaction log (latency in µs, column 3)
run() {
  local script=$1 c=$2 tps
  rm -f "$LOGS"/pgbench_log.*
  tps=$(cd "$LOGS" && pgbench -n -h "$SOCKET_DIR" -p "$BENCH_PORT" -U postgres -c "$c" -j 2 -T "$SECS" -l -f "$script" "$BENCH_DB" 2>&1 \
        | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1 | cut -d. -f1)
  cat "$LOGS"/pgbench_log.* | awk '{print $3}' | sort -n | awk -v tps="$tps" '{ v[NR] = $1 } END {
      i = int(NR * 0.50); if (i < 1) i = 1; j = int(NR * 0.99); if (j < 1) j = 1
      printf "%s %.2f %.2f\n", tps, v[i] / 1000, v[j] / 1000 }'
}
rows=()
for c in 1 16 64 128; do
  read -r f_tps f_p50 f_p99 < <(run /tmp/fg-steady-flowgate.sql "$c")
  read -r r_tps r_p50 r_p99 < <(run /tmp/fg-steady-reference.sql "$c")
  rows+=("$(printf '| %7s | %12s | %9s | %9s | %14s | %9s | %9s | %6s |' "$c" "$f_tps" "$f_p50" "$f_p99" "$r_tps" "$r_p50" "$r_p99" \
            "$(awk -v a="$f_tps" -v b="$r_tps" 'BEGIN { printf "%.2f", a / b }')")")
done
claimed=$(q "SELECT count(*) FROM intake.allocations WHERE pool_id = 'steady' AND status = 'locked'")
dups=$(q "SELECT count(*) - count(DISTINCT message ->> 'resource_id') FROM pgmq.q_intake_steady")
[ "$dups" -eq 0 ] || die "flowgate sold $dups resources twice"

# End to end: DRAIN_N intents, webhook and ledger on flowgate-testd. Each drain session is one
# connection that drains and runs the outbox in turn until the queue is empty, as the worker does
# on its ticks (a new connection per round would time psql and backend start-up instead).
URL="http://127.0.0.1:$TESTD_PORT"
pool_config() {   # pool_config INVENTORY
  printf '{"validation_webhook_url": "%s/ok", "commit_target": "%s/ok", "batch_size": 200, "max_claims_per_user": %s, "drain_mode": "external"}' "$URL" "$URL" "$1"
}
drain_script() {   # drain_script POOL: drain + run_outbox until the queue is empty, in one connection
  for _ in $(seq 1 "$DRAIN_N"); do   # a bound; psql quits as soon as the queue is empty
    printf '%s\n' "SELECT EXISTS (SELECT FROM pgmq.q_intake_$1) AS more \\gset" '\if :more' \
      "SELECT intake.drain('$1');" 'CALL flowgate.run_outbox();' '\else' '\q' '\endif'
  done > "$LOGS/drain-$1.sql"
}
drain_session() { psql_at "$BENCH_PORT" "$BENCH_DB" -qtA -v ON_ERROR_STOP=1 -f "$LOGS/drain-$1.sql" >/dev/null; }
drain_rate() {   # drain_rate SESSIONS -> intents committed per second
  local sessions=$1 pool="e2e_$1" t0 t1 pids=()
  q "SELECT intake.create_pool('$pool', $DRAIN_N, '$(pool_config "$DRAIN_N")')" >/dev/null
  q "SELECT count(intake.claim_resource('$pool', 'fan-' || g % 5000)) FROM generate_series(1, $DRAIN_N) g" >/dev/null
  drain_script "$pool"
  t0=$(date +%s.%N)
  for _ in $(seq 1 "$sessions"); do
    drain_session "$pool" &
    pids+=($!)
  done
  wait "${pids[@]}"
  t1=$(date +%s.%N)
  local done_n; done_n=$(q "SELECT count(*) FROM pgmq.a_intake_$pool WHERE message ->> 'state' = 'committed'")
  [ "$done_n" -eq "$DRAIN_N" ] || die "drain committed $done_n of $DRAIN_N"
  awk -v n="$DRAIN_N" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f %.1f\n", n / (b - a), b - a }'
}
q "SELECT flowgate.set_setting('flowgate.http_concurrency', '16')" >/dev/null
# One outbox round per drain batch: the 200 requests a drain hands over are claimed, sent and
# recorded together.
q "SELECT flowgate.set_setting('flowgate.dispatch_batch_size', '200')" >/dev/null
# Warm-up: a small pool drained first, then ANALYZE, so the outbox and queue tables have the
# statistics of a running system (plans made against an empty flowgate.deliveries would scan it).
q "SELECT intake.create_pool('warmup', 2000, '$(pool_config 2000)')" >/dev/null
q "SELECT count(intake.claim_resource('warmup', 'fan-' || g)) FROM generate_series(1, 2000) g" >/dev/null
drain_script warmup; drain_session warmup
q "ANALYZE" >/dev/null
read -r d1 d1s < <(drain_rate 1)
read -r d4 d4s < <(drain_rate 4)
read -r _ bs braw < <("$TESTD_BIN" blast "$URL/ok" $(( DRAIN_N * 2 )) 16)
http_floor=$(awk -v r="$braw" 'BEGIN { printf "%.0f", r / 2 }')

printf '\nSteady claims on a %s-item pool (%s s per run, %s claimed in all; %s cores)\n\n' "$POOL" "$SECS" "$claimed" "$(nproc)"
printf '| %7s | %12s | %9s | %9s | %14s | %9s | %9s | %6s |\n' "clients" "flowgate/s" "p50 ms" "p99 ms" "reference/s" "p50 ms" "p99 ms" "ratio"
printf '|---------|--------------|-----------|-----------|----------------|-----------|-----------|--------|\n'
printf '%s\n' "${rows[@]}"
printf '\nEnd-to-end drain: %s intents, validation webhook + HTTP ledger on 127.0.0.1, batch 200, 16 requests in flight\n\n' "$DRAIN_N"
printf '| %-40s | %12s | %10s | %12s |\n' "" "intents/s" "seconds" "vs floor"
printf '|%s|%s|%s|%s|\n' "------------------------------------------" "--------------" "------------" "--------------"
printf '| %-40s | %12s | %10s | %12s |\n' "intake.drain, 1 session" "$d1" "$d1s" "$(awk -v a="$d1" -v b="$http_floor" 'BEGIN { printf "%.2f", a / b }')"
printf '| %-40s | %12s | %10s | %12s |\n' "intake.drain, 4 sessions" "$d4" "$d4s" "$(awk -v a="$d4" -v b="$http_floor" 'BEGIN { printf "%.2f", a / b }')"
printf '| %-40s | %12s | %10s | %12s |\n' "floor: 2 plain POSTs per intent (blast)" "$http_floor" "$bs" "1.00"
