#!/usr/bin/env bash
# Many dispatchers at once never send a delivery twice: 2,000 committed deliveries, 8
# concurrent pgbench clients calling CALL flowgate.run_outbox(25) until the outbox is empty; then
# every delivery is delivered once and the server saw exactly one request per key.
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
