#!/usr/bin/env bash
# Outbox benchmark: deliveries per second end to end (enqueue committed, CALL flowgate.run_outbox
# driven by pgbench, response recorded) against flowgate-testd on 127.0.0.1, for each
# available transport, beside a raw baseline: the same number of requests sent by a plain
# ureq client at the same concurrency, measured in the same run against the same server.
#   pg_test/bench/outbox.sh [N]        (default N = 20000)
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
N=${1:-20000}
CONC=32            # flowgate.http_concurrency (the default) and the baseline's concurrency
BATCH=1000         # deliveries claimed per round and per CALL
BENCH_DIR=/var/tmp/flowgate/bench
BENCH_PORT=5596
BENCH_DB=flowgate_bench
TESTD_PORT=${FLOWGATE_BENCH_TESTD_PORT:-5595}
URL=http://127.0.0.1:$TESTD_PORT

install_dependencies >/dev/null
install_flowgate >/dev/null
cluster_stop "$BENCH_DIR"; "${SUDO[@]}" rm -rf "$BENCH_DIR"
cluster_start "$BENCH_DIR" "$BENCH_PORT" "$BENCH_DB"
psql_at "$BENCH_PORT" "$BENCH_DB" -q -c "CREATE EXTENSION pgmq; CREATE EXTENSION flowgate;"
start_testd
trap 'stop_testd; cluster_stop "$BENCH_DIR"' EXIT
q() { psql_at "$BENCH_PORT" "$BENCH_DB" -tAc "$1"; }
now() { date +%s.%N; }
rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.0f", n / s }'; }
rows=()

REPEAT=3           # each end-to-end figure is the median of REPEAT runs, interleaved
median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

# 2. Enqueue cost: pgbench, 8 clients, one delivery per transaction.
cat > /tmp/flowgate-bench-enqueue.sql <<SQL
\set k random(1, 1000000000)
SELECT flowgate.enqueue_delivery('bench', 'e', '$URL/ok', 'enq-' || :client_id || '-' || :k || '-' || random(), '{"n": 1}');
SQL
enq_tps=$(cd / && pgbench -n -h "$SOCKET_DIR" -p "$BENCH_PORT" -U postgres -c 8 -j 2 -T 10 -f /tmp/flowgate-bench-enqueue.sql "$BENCH_DB" 2>/dev/null \
  | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1)
enqueue_row="enqueue only (pgbench, 8 clients, 10 s)|-|10|${enq_tps%.*}|-"
q "TRUNCATE flowgate.deliveries" >/dev/null

# 3. End to end per transport, interleaved with the baseline; prints seconds.
end_to_end() {
  local transport=$1
  q "SELECT flowgate.set_setting('flowgate.http_transport', '\"$transport\"')" >/dev/null
  q "TRUNCATE flowgate.deliveries" >/dev/null
  q "SELECT count(flowgate.enqueue_delivery('bench', 'b' || g, '$URL/ok', '$transport-' || g, jsonb_build_object('g', g)))
       FROM generate_series(1, $N) g" >/dev/null
  echo "CALL flowgate.run_outbox($BATCH);" > /tmp/flowgate-bench-dispatch.sql
  local t0 t1 left
  t0=$(now)
  (cd / && pgbench -n -h "$SOCKET_DIR" -p "$BENCH_PORT" -U postgres -c 2 -j 2 -t $(( N / BATCH / 2 + 1 )) \
     -f /tmp/flowgate-bench-dispatch.sql "$BENCH_DB" >/dev/null 2>&1)
  if [ "$transport" = pg_net ]; then
    while [ "$(q "SELECT count(*) FROM flowgate.deliveries WHERE status <> 'delivered'")" -gt 0 ]; do
      q "SELECT flowgate.collect()" >/dev/null; sleep 0.05
    done
  fi
  while [ "$(q "SELECT count(*) FROM flowgate.deliveries WHERE status = 'pending'")" -gt 0 ]; do q "CALL flowgate.run_outbox($BATCH)" >/dev/null; done
  t1=$(now)
  left=$(q "SELECT count(*) FROM flowgate.deliveries WHERE status <> 'delivered'")
  [ "$left" -eq 0 ] || die "$transport: $left deliveries not delivered"
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
}

# Run the baseline and each available transport REPEAT times, interleaved.
transports=(native)
if [ "$(q "SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_net'")" -eq 1 ]; then
  q "CREATE EXTENSION IF NOT EXISTS pg_net" >/dev/null
  transports+=(pg_net)
fi
# Two dispatchers at half the per-dispatcher concurrency: the same 32 requests in flight as
# the baseline.
q "SELECT flowgate.set_setting('flowgate.http_concurrency', '$(( CONC / 2 ))')" >/dev/null
# Each round of a runner claims a whole batch (one claim, one send of BATCH, one record).
q "SELECT flowgate.set_setting('flowgate.dispatch_batch_size', '$BATCH')" >/dev/null
declare -A secs
for i in $(seq 1 "$REPEAT"); do
  read -r _ s _ < <("$TESTD_BIN" blast "$URL/ok" "$N" "$CONC")
  secs[baseline]+="$s "
  for t in "${transports[@]}"; do secs[$t]+="$(end_to_end "$t") "; done
done
row() {
  local label=$1 key=$2 s r
  # shellcheck disable=SC2086
  s=$(median ${secs[$key]})
  r=$(rate "$N" "$s")
  [ "$key" = baseline ] && base_rate=$r
  rows+=("$label|$N|$s|$r|$(awk -v r="$r" -v b="$base_rate" 'BEGIN { printf "%.2f", r / b }')")
}
row "raw ureq client, 32 in flight (baseline)" baseline
row "outbox, native (2 dispatchers x $(( CONC / 2 )))" native
if [[ " ${transports[*]} " == *" pg_net "* ]]; then
  row "outbox, pg_net (2 dispatchers)" pg_net
else
  rows+=("outbox, pg_net: SKIPPED (pg_net not installed)|-|-|-|-")
fi

rows+=("$enqueue_row")
printf '\nOutbox benchmark (%s deliveries, 32 in flight, batch %s, median of %s; flowgate-testd on 127.0.0.1; %s cores)\n\n' "$N" "$BATCH" "$REPEAT" "$(nproc)"
printf '| %-48s | %8s | %8s | %10s | %13s |\n' "measurement" "requests" "seconds" "per second" "vs baseline"
printf '|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..50})" "----------" "----------" "------------" "---------------"
for row in "${rows[@]}"; do
  IFS='|' read -r a b c d e <<<"$row"
  printf '| %-48s | %8s | %8s | %10s | %13s |\n' "$a" "$b" "$c" "$d" "$e"
done
