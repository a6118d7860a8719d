#!/usr/bin/env bash
# Many dispatchers at once never send a delivery twice: 2,000 committed deliveries, 8
# concurrent pgbench clients calling CALL flowgate.run_outbox(25) until the outbox is empty; then
# every delivery is delivered once and the server saw exactly one request per key. Then two
# transactions enqueue one key at once: the second waits for the first and gets its row (same
# owner) or 23505 (another owner), never an internal error.
# Env: PGHOST PGPORT PGUSER PGDATABASE, FLOWGATE_TESTD_URL (flowgate-testd base URL).
set -euo pipefail
N=2000
q() { psql -X -q -v ON_ERROR_STOP=1 -tAc "$1"; }
fail() { echo "not ok: $*" >&2; exit 1; }

q "SELECT flowgate.set_setting('flowgate.http_transport', '\"native\"')" >/dev/null
q "DELETE FROM flowgate.deliveries WHERE owner_module = 'concurrency'"
q "SELECT count(flowgate.enqueue_delivery('concurrency', 'c' || g, '$FLOWGATE_TESTD_URL/ok', 'conc-$$-' || g, jsonb_build_object('g', g)))
     FROM generate_series(1, $N) g" >/dev/null

script=$(mktemp); echo "CALL flowgate.run_outbox(25);" > "$script"
pgbench -n -c 8 -j 2 -t 20 -f "$script" >/dev/null 2>&1 || fail "pgbench failed"
rm -f "$script"
# Whatever the 8 x 20 calls left (none, if every call claimed a full batch) is sent now.
# (The background worker may still be sending some: wait until none is pending or in flight.)
for _ in $(seq 1 300); do
  [ "$(q "SELECT count(*) FROM flowgate.deliveries WHERE owner_module = 'concurrency' AND status IN ('pending', 'in_flight')")" -eq 0 ] && break
  q "CALL flowgate.run_outbox(500)" >/dev/null
  sleep 0.1
done

delivered=$(q "SELECT count(*) FROM flowgate.deliveries WHERE owner_module = 'concurrency' AND status = 'delivered' AND attempts = 1")
[ "$delivered" -eq "$N" ] || fail "$delivered of $N delivered on the first attempt"
stats=$(curl -s "$FLOWGATE_TESTD_URL/_stats/conc-$$-")
reqs=$(echo "$stats" | sed 's/.*"requests":\([0-9]*\).*/\1/')
keys=$(echo "$stats" | sed 's/.*"distinct_keys":\([0-9]*\).*/\1/')
max=$(echo "$stats" | sed 's/.*"max_per_key":\([0-9]*\).*/\1/')
[ "$reqs" -eq "$N" ] || fail "server saw $reqs requests for $N deliveries"
[ "$keys" -eq "$N" ] || fail "server saw $keys distinct keys for $N deliveries"
[ "$max" -eq 1 ] || fail "some key was sent $max times"
q "DELETE FROM flowgate.deliveries WHERE owner_module = 'concurrency'"
q "SELECT flowgate.reset_setting('flowgate.http_transport')" >/dev/null
echo "ok 4 - outbox: $N deliveries, 8 concurrent dispatchers: $N delivered once, $reqs requests, $keys keys, max $max per key"

source "$(dirname "${BASH_SOURCE[0]}")/lib/race.sh"
# race OWNER_ID: one key enqueued by a held transaction and, meanwhile, for OWNER_ID; prints
# "<the second's answer>|<ms it took>|<the first's row>"
race() {
  local k="conc-race-$$-$1" r
  r=$(hold_and_race "SELECT flowgate.enqueue_delivery('concurrency', 'race', '$FLOWGATE_TESTD_URL/ok', '$k', '{}')" \
                    "SELECT flowgate.enqueue_delivery('concurrency', '$1', '$FLOWGATE_TESTD_URL/ok', '$k', '{}')")
  echo "$r|$(q "SELECT id FROM flowgate.deliveries WHERE idempotency_key = '$k'")"
}
IFS='|' read -r got waited id <<<"$(race race)"
[ "$waited" -ge 700 ] || fail "the second enqueue did not wait for the first ($waited ms)"
[ "$got" = "$id" ] || fail "the same owner's second enqueue of a key answered '$got', not the first's row $id"
IFS='|' read -r got2 waited2 _ <<<"$(race other)"
[ "$waited2" -ge 700 ] || fail "the other owner's enqueue did not wait for the first ($waited2 ms)"
[ "$got2" = 23505 ] || fail "another owner's enqueue of a key being enqueued answered '$got2', not 23505"
q "DELETE FROM flowgate.deliveries WHERE owner_module = 'concurrency'"
echo "ok 1 - outbox: one key enqueued by two transactions at once: the second waited ${waited} ms and got the first's row (same owner), or 23505 after ${waited2} ms (another owner)"
