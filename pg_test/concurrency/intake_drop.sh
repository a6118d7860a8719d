#!/usr/bin/env bash
# Pools dropped while they are drained, answered and sampled: intake.drop_pool in one session
# against intake.drain, CALL flowgate.run_outbox() (which records the validation and commit
# answers), intake.collect_metrics, an external worker (intake.read_intents and
# intake.report_validation on its own pools, then intake.reclaim_slots) and claims looping in
# five others, on 30 pools with intents in flight and items left to claim. A drop and a writer of the same pool wait for each other in one order only: no
# session may get a deadlock (40P01), and a writer may only find the pool gone (P0002).
set -euo pipefail
q() { psql -X -q -v ON_ERROR_STOP=1 -tAc "$1"; }
fail() { echo "not ok: $*" >&2; exit 1; }
T=${FLOWGATE_TESTD_URL:?set FLOWGATE_TESTD_URL to a running flowgate-testd}
P=cdrop_$$
POOLS=30

for i in $(seq 1 $POOLS); do
  q "SELECT intake.create_pool('${P}_$i', 60, '{\"validation_webhook_url\": \"$T/ok\", \"commit_target\": \"$T/ok\",
     \"batch_size\": 20, \"drain_mode\": \"external\"}')" >/dev/null
  q "SELECT count(intake.claim_resource('${P}_$i', 'u' || g)) FROM generate_series(1, 40) g" >/dev/null
done
# Every third pool is the external worker's (the other sessions' drains would race it for the
# same intents, which is not what this checks).
external="SELECT pool_id FROM intake.engine_config WHERE pool_id LIKE '${P}_%' AND right(pool_id, 1) IN ('0', '3', '6', '9') ORDER BY pool_id"

errors=$(mktemp)
stop=$(mktemp -u)
pids=()
# A session's errors, with their SQLSTATE (VERBOSITY verbose: "ERROR:  P0002: ...").
run() { psql -X -q -v VERBOSITY=verbose -tA "$@" >/dev/null 2>>"$errors" || true; }
( while [ ! -e "$stop" ]; do
    run -c "DO \$\$ DECLARE p text; BEGIN
              FOR p IN SELECT pool_id FROM intake.engine_config WHERE pool_id LIKE '${P}_%' ORDER BY pool_id LOOP
                CONTINUE WHEN right(p, 1) IN ('0', '3', '6', '9');
                BEGIN PERFORM intake.drain(p); EXCEPTION WHEN SQLSTATE 'P0002' THEN NULL; END;
              END LOOP; END \$\$"
  done ) &
pids+=($!)
( while [ ! -e "$stop" ]; do run -c "CALL flowgate.run_outbox()"; done ) &
pids+=($!)
( while [ ! -e "$stop" ]; do run -c "SELECT intake.collect_metrics(NULL, 0)"; done ) &
pids+=($!)
( while [ ! -e "$stop" ]; do
    run -c "DO \$\$ DECLARE p text; BEGIN
              FOR k IN 1..20 LOOP
                p := '${P}_' || (1 + floor(random() * $POOLS))::int;
                BEGIN PERFORM intake.claim_resource(p, 'c' || k || '-' || floor(random() * 1000)::int);
                EXCEPTION WHEN SQLSTATE 'P0002' THEN NULL; END;
              END LOOP; END \$\$"
  done ) &
pids+=($!)
( while [ ! -e "$stop" ]; do
    run -c "DO \$\$ DECLARE p text; i record; BEGIN
              FOR p IN $external LOOP
                BEGIN
                  FOR i IN SELECT * FROM intake.read_intents(p, 5) LOOP
                    PERFORM intake.report_validation(p, i.msg_id, 200, '{\"ok\": true}');
                  END LOOP;
                  PERFORM intake.reclaim_slots(p);
                EXCEPTION WHEN SQLSTATE 'P0002' THEN NULL; END;
              END LOOP; END \$\$"
  done ) &
pids+=($!)
sleep 1
for i in $(seq 1 $POOLS); do
  psql -X -q -v ON_ERROR_STOP=1 -v VERBOSITY=verbose -tAc "SELECT intake.drop_pool('${P}_$i')" >/dev/null 2>>"$errors" \
    || echo "drop_pool(${P}_$i) failed" >>"$errors"
  sleep 0.1
done
touch "$stop"
for p in "${pids[@]}"; do wait "$p"; done
rm -f "$stop"

left=$(q "SELECT count(*) FROM intake.engine_config WHERE pool_id LIKE '${P}_%'")
unexpected=$(grep -E 'ERROR|failed' "$errors" | grep -vE 'ERROR: +P0002:' || true)
deadlocks=$(grep -c '40P01' "$errors" || true)
rm -f "$errors"
[ "$left" -eq 0 ] || fail "$left of $POOLS pools left after dropping them all"
[ "$deadlocks" -eq 0 ] || fail "$deadlocks deadlocks between drop_pool and the pools' writers"
[ -z "$unexpected" ] || fail "errors other than a pool gone: $(echo "$unexpected" | head -3)"
echo "ok 1 - intake: $POOLS pools dropped while drained, answered (run_outbox), sampled, worked by an external worker (read_intents, report_validation, reclaim_slots) and claimed from in other sessions: no deadlock, no error but a pool gone (P0002)"
