#!/usr/bin/env bash
# The thundering herd: 64 clients drain a 100,000-item pool completely (102,400 attempts,
# in ten chunks of 10,240), for flowgate's intake.claim_resource and for the plain SKIP LOCKED
# reference (pg_test/bench/intake_reference.sql), beside the machine's floor (one logged UPDATE
# by primary key + one logged INSERT per transaction), all in one run. The floor runs in the same
# shape (the same ten chunks of new connections), so every rate pays the same connection cost.
#   pg_test/bench/intake.sh [pool size]   (default 100000)
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
POOL=${1:-100000}
CLIENTS=64
CHUNK_TX=$(( POOL / 10 / CLIENTS ))             # per client: one chunk is (just under) a tenth of the pool
TAIL_TX=$(( (POOL * 1024 / 1000 - CHUNK_TX * CLIENTS * 10) / CLIENTS ))   # the rest of the 102.4% attempts
BENCH_DIR=/var/tmp/flowgate/bench
BENCH_PORT=5596
BENCH_DB=flowgate_bench

install_dependencies >/dev/null
install_flowgate >/dev/null
cluster_stop "$BENCH_DIR"; "${SUDO[@]}" rm -rf "$BENCH_DIR"
# flowgate preloaded, as a production server running its worker has it: each chunk's 64 new
# connections then do not each load the 12 MB library on their first claim.
cluster_start "$BENCH_DIR" "$BENCH_PORT" "$BENCH_DB" preload
trap 'cluster_stop "$BENCH_DIR"' EXIT
q() { psql_at "$BENCH_PORT" "$BENCH_DB" -tAc "$1"; }
q "CREATE EXTENSION pgmq; CREATE EXTENSION flowgate;" >/dev/null
psql_at "$BENCH_PORT" "$BENCH_DB" -q -f "$FLOWGATE_ROOT/pg_test/bench/intake_reference.sql" >/dev/null
q "SELECT intake.create_pool('bench', $POOL, '{\"max_claims_per_user\": 1000, \"drain_mode\": \"external\"}')" >/dev/null
q "INSERT INTO bench_ref.allocations (pool_id) SELECT 'bench' FROM generate_series(1, $POOL)" >/dev/null
q "VACUUM ANALYZE" >/dev/null

# (pgbench puts :u into the literal: 'user-' || :u would make the server inline anytextcat's SQL
# body on every call, a cost of the client script, not of either claim.)
printf '%s\n' '\set u random(1, 1000000)' "SELECT intake.claim_resource('bench', 'user-:u');" > /tmp/fg-intake-flowgate.sql
printf '%s\n' '\set u random(1, 1000000)' "SELECT bench_ref.claim_resource('bench', 'user-:u');" > /tmp/fg-intake-reference.sql
printf '%s\n' '\set id random(1, 100000)' 'BEGIN;' 'UPDATE bench_ref.floor SET v = v + 1 WHERE id = :id;' \
  'INSERT INTO bench_ref.floor_log (ref) VALUES (:id);' 'END;' > /tmp/fg-intake-floor.sql
now() { date +%s.%N; }
pgb() { (cd / && pgbench -n -h "$SOCKET_DIR" -p "$BENCH_PORT" -U postgres -c "$CLIENTS" -j 2 "$@" "$BENCH_DB" 2>&1); }

# drain NAME SCRIPT CLAIMED_SQL: ten chunks; prints "total_seconds first_rate last_rate"
drain() {
  local script=$2 claimed_sql=$3 t0 t1 c0 c1 first last start
  start=$(now); c0=0
  for i in $(seq 1 10); do
    t0=$(now); pgb -t "$CHUNK_TX" -f "$script" >/dev/null; t1=$(now)
    c1=$(q "$claimed_sql")
    rate=$(awk -v c="$(( c1 - c0 ))" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", c / (b - a) }')
    [ "$i" -eq 1 ] && first=$rate
    [ "$i" -eq 10 ] && last=$rate
    c0=$c1
  done
  pgb -t "$TAIL_TX" -f "$script" >/dev/null     # the remaining claims, then sold out
  c1=$(q "$claimed_sql")
  echo "$(awk -v a="$start" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }') $first $last $c1"
}
read -r fg_secs fg_first fg_last fg_claimed < <(drain flowgate /tmp/fg-intake-flowgate.sql \
  "SELECT count(*) FROM intake.allocations WHERE pool_id = 'bench' AND status = 'locked'")
read -r ref_secs ref_first ref_last ref_claimed < <(drain reference /tmp/fg-intake-reference.sql \
  "SELECT count(*) FROM bench_ref.allocations WHERE status = 'locked'")
read -r floor_secs floor_first floor_last floor_done < <(drain floor /tmp/fg-intake-floor.sql \
  "SELECT count(*) FROM bench_ref.floor_log")
[ "$fg_claimed" -eq "$POOL" ] || die "flowgate claimed $fg_claimed of $POOL"
dups=$(q "SELECT count(*) - count(DISTINCT message ->> 'resource_id') FROM pgmq.q_intake_bench")
[ "$dups" -eq 0 ] || die "flowgate sold $dups resources twice"

fg_rate=$(awk -v n="$POOL" -v s="$fg_secs" 'BEGIN { printf "%.0f", n / s }')
ref_rate=$(awk -v n="$ref_claimed" -v s="$ref_secs" 'BEGIN { printf "%.0f", n / s }')
floor_tps=$(awk -v n="$floor_done" -v s="$floor_secs" 'BEGIN { printf "%.0f", n / s }')
printf '\nThundering herd: %s clients drain a %s-item pool (%s attempts, 10 chunks; %s cores)\n\n' "$CLIENTS" "$POOL" "$(( (CHUNK_TX * 10 + TAIL_TX) * CLIENTS ))" "$(nproc)"
printf '| %-36s | %10s | %12s | %14s | %13s | %10s |\n' "implementation" "drain (s)" "claims/s" "first 10%/s" "last 10%/s" "last/first"
printf '|%s|%s|%s|%s|%s|%s|\n' "--------------------------------------" "------------" "--------------" "----------------" "---------------" "------------"
printf '| %-36s | %10s | %12s | %14s | %13s | %10s |\n' "flowgate intake.claim_resource" "$fg_secs" "$fg_rate" "$fg_first" "$fg_last" "$(awk -v a="$fg_last" -v b="$fg_first" 'BEGIN { printf "%.2f", a / b }')"
printf '| %-36s | %10s | %12s | %14s | %13s | %10s |\n' "SKIP LOCKED reference" "$ref_secs" "$ref_rate" "$ref_first" "$ref_last" "$(awk -v a="$ref_last" -v b="$ref_first" 'BEGIN { printf "%.2f", a / b }')"
printf '| %-36s | %10s | %12s | %14s | %13s | %10s |\n' "floor (logged UPDATE by PK + INSERT)" "$floor_secs" "$floor_tps" "$floor_first" "$floor_last" "-"
printf '\ndrain time vs reference: %sx shorter; throughput vs floor: %s\n' \
  "$(awk -v a="$ref_secs" -v b="$fg_secs" 'BEGIN { printf "%.1f", a / b }')" "$(awk -v a="$fg_rate" -v b="$floor_tps" 'BEGIN { printf "%.2f", a / b }')"
