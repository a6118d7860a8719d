# Sourced by the benchmarks that set a side beside its reference or floor: alternating turns.
# A 2-core machine's speed drifts by 10-30% within a minute, so two sides timed one after the
# other compare minutes, not code. Each client count runs in BENCH_ROUNDS alternating turns
# (A, then B, each BENCH_TURN seconds); the rates are the transactions of all turns over their
# time, and each turn's ratio is kept to show the spread.
# Needs SOCKET_DIR, BENCH_PORT, BENCH_DB; set BENCH_TURN from the seconds per side.
BENCH_ROUNDS=5

# bench_machine_check: how busy the machine is before anything is timed (2 s of /proc/stat),
# with a warning naming the busiest processes when it is over 10%. Alternating turns cancel a
# drift, not a neighbour: another cluster's flowgate worker waking every 200 ms spread
# identical turns by ±20% (±4% with it stopped).
bench_machine_check() {
  local b a busy
  read -r _ u n s i w q sq _ < /proc/stat; b=("$u" "$n" "$s" "$i" "$w" "$q" "$sq")
  sleep 2
  read -r _ u n s i w q sq _ < /proc/stat; a=("$u" "$n" "$s" "$i" "$w" "$q" "$sq")
  busy=$(awk -v u=$(( a[0]-b[0] + a[1]-b[1] + a[2]-b[2] + a[5]-b[5] + a[6]-b[6] )) -v t=$(( a[0]-b[0] + a[1]-b[1] + a[2]-b[2] + a[3]-b[3] + a[4]-b[4] + a[5]-b[5] + a[6]-b[6] )) \
    'BEGIN { printf "%d", (t > 0 ? 100 * u / t : 0) }')
  if [ "$busy" -gt 10 ]; then
    echo "warning: the machine was ${busy}% busy before the bench began; its figures will be noisy. Busiest:" >&2
    ps -eo pcpu=,args= --sort=-pcpu | head -3 | sed 's/^/  /' >&2
  fi
  echo "$busy"
}

# bench_turn_seconds SECS: each turn's length, SECS per side split into the rounds
bench_turn_seconds() { echo $(( ($1 + BENCH_ROUNDS - 1) / BENCH_ROUNDS )); }

# bench_turn CLIENTS SCRIPT: the transactions one turn of BENCH_TURN seconds completed
bench_turn() {
  (cd / && pgbench -n -h "$SOCKET_DIR" -p "$BENCH_PORT" -U postgres -c "$1" -j "$(( $1 < 2 ? 1 : 2 ))" -T "$BENCH_TURN" -f "$2" "$BENCH_DB" 2>&1) \
    | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' | head -1
}

# bench_alternate CLIENTS SCRIPT_A SCRIPT_B [SCRIPT_C ...]: each round runs every script once, in
# order; prints "A per second|B per second[|C per second ...]|A / B|A / B per turn"
bench_alternate() {
  local clients=$1; shift
  local n=$# totals=() turns=() x first secs i
  for (( i = 0; i < n; i++ )); do totals+=(0); done
  for _ in $(seq 1 "$BENCH_ROUNDS"); do
    i=0
    for script in "$@"; do
      x=$(bench_turn "$clients" "$script")
      totals[i]=$(( totals[i] + x ))
      if [ "$i" = 0 ]; then first=$x; fi
      if [ "$i" = 1 ]; then turns+=("$(awk -v a="$first" -v b="$x" 'BEGIN { printf "%.2f", a / b }')"); fi
      i=$(( i + 1 ))
    done
  done
  secs=$(( BENCH_TURN * BENCH_ROUNDS ))
  local rates=()
  for (( i = 0; i < n; i++ )); do rates+=("$(( totals[i] / secs ))"); done
  local IFS='|'
  echo "${rates[*]}|$(awk -v a="${totals[0]}" -v b="${totals[1]}" 'BEGIN { printf "%.2f", a / b }')|$(IFS=' '; echo "${turns[*]}")"
}
