# Sourced by the benchmarks that set a side beside its reference or floor: alternating turns.
# A 2-core machine's speed drifts by 10-30% within a minute, so two sides timed one after the
# other compare minutes, not code. Each client count runs in BENCH_ROUNDS alternating turns
# (A, then B, each BENCH_TURN seconds); the rates are the transactions of all turns over their
# time, and each turn's ratio is kept to show the spread.
# Needs SOCKET_DIR, BENCH_PORT, BENCH_DB; set BENCH_TURN from the seconds per side.
BENCH_ROUNDS=5

# bench_turn_seconds SECS: each turn's length, SECS per side split into the rounds
bench_turn_seconds() { echo $(( ($1 + BENCH_ROUNDS - 1) / BENCH_ROUNDS )); }

# bench_turn CLIENTS SCRIPT: the transactions one turn of BENCH_TURN seconds completed
bench_turn() {
  (cd / && pgbench -n -h "$SOCKET_DIR" -p "$BENCH_PORT" -U postgres -c "$1" -j "$(( $1 < 2 ? 1 : 2 ))" -T "$BENCH_TURN" -f "$2" "$BENCH_DB" 2>&1) \
    | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' | head -1
}

# bench_alternate CLIENTS SCRIPT_A SCRIPT_B: "A per second|B per second|A / B|ratio per turn"
bench_alternate() {
  local a=0 b=0 x y turns=() secs
  for _ in $(seq 1 "$BENCH_ROUNDS"); do
    x=$(bench_turn "$1" "$2")
    y=$(bench_turn "$1" "$3")
    a=$(( a + x )); b=$(( b + y ))
    turns+=("$(awk -v a="$x" -v b="$y" 'BEGIN { printf "%.2f", a / b }')")
  done
  secs=$(( BENCH_TURN * BENCH_ROUNDS ))
  echo "$(( a / secs ))|$(( b / secs ))|$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f", a / b }')|${turns[*]}"
}
