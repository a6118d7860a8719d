#!/usr/bin/env bash
# The thundering herd: 64 clients drain a 100,000-item pool completely (102,400 attempts,
# in ten chunks of 10,240), for flowgate's intake.claim_resource and for the plain SKIP LOCKED
# reference (pg_test/bench/intake_reference.sql), beside the machine's floor (one logged UPDATE
# by primary key + one logged INSERT per transaction), all in one run. The floor runs in the same
# shape (the same ten chunks of new connections), so every rate pays the same connection cost,
# and takes turns with flowgate chunk by chunk, so both are timed in the same minutes.
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

RES=$(mktemp -d)
# chunk KEY SCRIPT TX COUNT_SQL: one pgbench run, TX transactions per client on 64 new
# connections; appends "seconds done" (done: what COUNT_SQL counts, before to after) to $RES/KEY.
chunk() {
  local before after t0 t1
  before=$(q "$4"); t0=$(now)
  pgb -t "$3" -f "$2" >/dev/null
  t1=$(now); after=$(q "$4")
  echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }') $(( after - before ))" >> "$RES/$1"
}
# summarize KEY: "seconds first_rate last_rate done" over its chunks (the 11th is the tail)
summarize() {
  awk 'NR == 1 { f = $2 / $1 } NR == 10 { l = $2 / $1 } { s += $1; n += $2 }
       END { printf "%.1f %.0f %.0f %d\n", s, f, l, n }' "$RES/$1"
}
FG_COUNT="SELECT count(*) FROM intake.allocations WHERE pool_id = 'bench' AND status = 'locked'"
REF_COUNT="SELECT count(*) FROM bench_ref.allocations WHERE status = 'locked'"
FLOOR_COUNT="SELECT count(*) FROM bench_ref.floor_log"
# flowgate and the floor take turns, chunk by chunk, so both see the same minutes of this
# machine; then the reference. The last chunk (the tail) sells the rest, then sold out.
for i in $(seq 1 10); do
  chunk flowgate /tmp/fg-intake-flowgate.sql "$CHUNK_TX" "$FG_COUNT"
  chunk floor /tmp/fg-intake-floor.sql "$CHUNK_TX" "$FLOOR_COUNT"
done
chunk flowgate /tmp/fg-intake-flowgate.sql "$TAIL_TX" "$FG_COUNT"
chunk floor /tmp/fg-intake-floor.sql "$TAIL_TX" "$FLOOR_COUNT"
for i in $(seq 1 10); do chunk reference /tmp/fg-intake-reference.sql "$CHUNK_TX" "$REF_COUNT"; done
chunk reference /tmp/fg-intake-reference.sql "$TAIL_TX" "$REF_COUNT"
read -r fg_secs fg_first fg_last fg_claimed < <(summarize flowgate)
read -r ref_secs ref_first ref_last ref_claimed < <(summarize reference)
read -r floor_secs floor_first floor_last floor_done < <(summarize floor)
rm -rf "$RES"
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
printf '| %-36s | %10s | %12s | %14s | %13s | %10s |\n' "floor (logged UPDATE by PK + INSERT)" "$floor_secs" "$floor_tps" "$floor_first" "$floor_last" "$(awk -v a="$floor_last" -v b="$floor_first" 'BEGIN { printf "%.2f", a / b }')"
# The machine drifts (other tenants, its disk): the floor's own last/first says how much. Each
# of flowgate's chunks ran beside the floor's in the same minutes, so its last tenth against its
# first, each divided by the floor's chunk, is the drift-free comparison.
printf '\nlast 10%% vs first 10%%, each against the floor chunk run beside it: %s (the floor itself: %s)\n' \
  "$(awk -v fl="$fg_last" -v ff="$fg_first" -v ol="$floor_last" -v of="$floor_first" 'BEGIN { printf "%.2f", (fl / ol) / (ff / of) }')" \
  "$(awk -v a="$floor_last" -v b="$floor_first" 'BEGIN { printf "%.2f", a / b }')"
printf 'drain time vs reference: %sx shorter; throughput vs floor: %s\n' \
  "$(awk -v a="$ref_secs" -v b="$fg_secs" 'BEGIN { printf "%.1f", a / b }')" "$(awk -v a="$fg_rate" -v b="$floor_tps" 'BEGIN { printf "%.2f", a / b }')"
