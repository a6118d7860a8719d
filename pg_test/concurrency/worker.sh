#!/usr/bin/env bash
# The background worker (flowgate preloaded, flowgate.worker_database = this database) runs
# the periodic jobs on its own: a committed delivery is sent without anyone calling dispatch,
# within the worker's sub-second interval.
set -euo pipefail
q() { psql -X -q -v ON_ERROR_STOP=1 -tAc "$1"; }
fail() { echo "not ok: $*" >&2; exit 1; }

[ "$(q "SHOW flowgate.worker_database")" = "$PGDATABASE" ] || fail "the test cluster does not run the worker in $PGDATABASE"
# The worker may have started before this database existed; the postmaster restarts it 5 s later.
for _ in $(seq 1 100); do
  [ "$(q "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'flowgate worker'")" -eq 1 ] && break
  sleep 0.1
done
[ "$(q "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'flowgate worker'")" -eq 1 ] || fail "no flowgate worker process"
q "SELECT flowgate.set_setting('flowgate.http_transport', '\"native\"')" >/dev/null
key="worker-$$"
q "SELECT flowgate.enqueue_delivery('worker', 'w1', '$FLOWGATE_TESTD_URL/ok', '$key')" >/dev/null
start=$(date +%s%N)
for _ in $(seq 1 100); do
  [ "$(q "SELECT status FROM flowgate.deliveries WHERE idempotency_key = '$key'")" = delivered ] && break
  sleep 0.05
done
ms=$(( ($(date +%s%N) - start) / 1000000 ))
[ "$(q "SELECT status FROM flowgate.deliveries WHERE idempotency_key = '$key'")" = delivered ] || fail "not delivered after ${ms} ms"
[ "$ms" -lt 2000 ] || fail "delivered only after ${ms} ms"
q "DELETE FROM flowgate.deliveries WHERE idempotency_key = '$key'"
q "SELECT flowgate.reset_setting('flowgate.http_transport')" >/dev/null
echo "ok 3 - worker: running, delivered a committed delivery by itself in ${ms} ms (interval 200 ms)"
