#!/usr/bin/env bash
# Flow control holds across every runner at once: four sessions calling
# CALL flowgate.run_outbox() in a loop, plus the background worker, send
#   - 24 deliveries of a key capped at 3 in flight to a 1-second endpoint: sampled throughout,
#     never more than 3 of them in flight;
#   - 20 deliveries of a key limited to 5 per second (burst 2): no second-long window holds
#     more than 2 + 5 of their requests, and the whole takes at least (20 - 2) / 5 seconds;
#   - a 429 with Retry-After: 3 on one delivery of a key pauses the whole key: its other
#     deliveries are not sent before the pause ends, while another key's are.
# Env: PGHOST PGPORT PGUSER PGDATABASE, FLOWGATE_TESTD_URL.
set -euo pipefail
q() { psql -X -q -v ON_ERROR_STOP=1 -tAc "$1"; }
fail() { echo "not ok: $*" >&2; exit 1; }
T=${FLOWGATE_TESTD_URL:?set FLOWGATE_TESTD_URL to a running flowgate-testd}
K=flow-$$

q "SELECT flowgate.set_setting('flowgate.http_transport', '\"native\"')" >/dev/null
q "SELECT flowgate.set_setting('flowgate.flow_limits', '{\"$K-capped\": {\"max_in_flight\": 3}, \"$K-rated\": {\"per_second\": 5, \"burst\": 2}}')" >/dev/null
enqueue() {   # enqueue NAME N PATH FLOW_KEY
  q "SELECT count(flowgate.enqueue_delivery('flowtest', '$1-' || g, '$T$3', '$K-$1-' || g, '{}', flow_key => '$4'))
       FROM generate_series(1, $2) g" >/dev/null
}
runners() {   # four sessions running the outbox until none of PATTERN is left to send
  local pids=() i
  for i in 1 2 3 4; do
    ( for _ in $(seq 1 400); do
        [ "$(q "SELECT count(*) FROM flowgate.deliveries WHERE idempotency_key LIKE '$1' AND status IN ('pending', 'in_flight')")" -eq 0 ] && exit 0
        q "CALL flowgate.run_outbox()" >/dev/null || exit 1
        sleep 0.05
      done; exit 1 ) &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || fail "a runner failed or did not finish ($1)"; done
}

# 1. The cap on requests in flight.
enqueue capped 24 /slow/1000 "$K-capped"
samples=$(mktemp)
( while [ ! -e "$samples.stop" ]; do
    q "SELECT count(*) FROM flowgate.deliveries WHERE flow_key = '$K-capped' AND status = 'in_flight'" >> "$samples"
    sleep 0.05
  done ) &
sampler=$!
runners "$K-capped-%"
touch "$samples.stop"; wait "$sampler" || true
peak=$(sort -n "$samples" | tail -1); n=$(wc -l < "$samples")
rm -f "$samples" "$samples.stop"
[ "$(q "SELECT count(*) FROM flowgate.deliveries WHERE flow_key = '$K-capped' AND status = 'delivered'")" -eq 24 ] || fail "capped: not all delivered"
[ "$peak" -le 3 ] || fail "capped key: $peak in flight at once (cap 3)"
[ "$peak" -ge 2 ] || fail "capped key: never more than $peak in flight (the runners did not work in parallel)"
echo "ok 1 - outbox flow: 24 deliveries of a key capped at 3, four runners and the worker: at most $peak in flight ($n samples), all delivered"

# 2. The token bucket.
enqueue rated 20 /ok "$K-rated"
runners "$K-rated-%"
[ "$(q "SELECT count(*) FROM flowgate.deliveries WHERE flow_key = '$K-rated' AND status = 'delivered'")" -eq 20 ] || fail "rated: not all delivered"
span=$(q "SELECT round(extract(epoch FROM max(delivered_at) - min(delivered_at))::numeric, 2) FROM flowgate.deliveries WHERE flow_key = '$K-rated'")
window=$(q "SELECT max(c) FROM (SELECT (SELECT count(*) FROM flowgate.deliveries e WHERE e.flow_key = d.flow_key
                                          AND e.claimed_at IS NULL AND e.delivered_at >= d.delivered_at
                                          AND e.delivered_at < d.delivered_at + interval '1 second') AS c
                                   FROM flowgate.deliveries d WHERE d.flow_key = '$K-rated') x")
awk -v s="$span" 'BEGIN { exit !(s >= 3.4) }' || fail "rated key: 20 sent in $span s (5 per second, burst 2, needs 3.6 s)"
[ "$window" -le 8 ] || fail "rated key: $window requests within one second (at most 2 + 5, and one of rounding)"
echo "ok 1 - outbox flow: 20 deliveries of a key limited to 5/s (burst 2), four runners and the worker: spread over $span s, at most $window in any second"

# 3. A 429 pauses its whole key.
enqueue paused-first 1 /ratelimit/3 "$K-paused"
q "CALL flowgate.run_outbox()" >/dev/null
for _ in $(seq 1 50); do
  [ "$(q "SELECT count(*) FROM flowgate.deliveries WHERE flow_key = '$K-paused' AND last_status_code = 429")" -eq 1 ] && break
  sleep 0.1
done
paused_at=$(q "SELECT extract(epoch FROM paused_until)::numeric(20,3) FROM flowgate.flow_state WHERE flow_key = '$K-paused'")
[ -n "$paused_at" ] || fail "the 429 did not pause its key"
enqueue paused-later 5 /ok "$K-paused"
enqueue free 5 /ok "$K-free"
runners "$K-free-%"
[ "$(q "SELECT count(*) FROM flowgate.deliveries WHERE flow_key = '$K-free' AND status = 'delivered'")" -eq 5 ] || fail "another key was held back"
runners "$K-paused-%"
early=$(q "SELECT count(*) FROM flowgate.deliveries WHERE flow_key = '$K-paused' AND extract(epoch FROM delivered_at) < $paused_at")
[ "$(q "SELECT count(*) FROM flowgate.deliveries WHERE flow_key = '$K-paused' AND status = 'delivered'")" -eq 6 ] || fail "paused key: not all delivered after the pause"
[ "$early" -eq 0 ] || fail "paused key: $early sent before the Retry-After pause ended"
echo "ok 1 - outbox flow: a 429 with Retry-After: 3 paused its whole key (none of its 6 deliveries sent before it ended) while another key went on"

q "DELETE FROM flowgate.deliveries WHERE owner_module = 'flowtest'"
q "DELETE FROM flowgate.flow_state WHERE flow_key LIKE '$K-%'"
q "SELECT flowgate.reset_setting('flowgate.flow_limits'), flowgate.reset_setting('flowgate.http_transport')" >/dev/null
