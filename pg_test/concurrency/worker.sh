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
# Run statement $1 in a transaction left open for $2 seconds, in the background (its pid in
# $held), and wait until it is sleeping in that transaction.
hold_open() {
  psql -X -q -c "BEGIN" -c "$1" -c "SELECT pg_sleep($2)" -c "COMMIT" >/dev/null &
  held=$!
  for _ in $(seq 1 50); do
    [ "$(q "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep($2)' AND state = 'active'")" -eq 1 ] && return
    sleep 0.1
  done
  fail "the transaction holding '$1' did not start"
}
# Wait up to 15 s for the postmaster to start the worker again after $old_pid ended (its pid in
# $new_pid).
worker_back() {
  new_pid=""
  for _ in $(seq 1 150); do
    new_pid=$(q "SELECT pid FROM pg_stat_activity WHERE backend_type = 'flowgate worker' AND pid <> $old_pid")
    [ -n "$new_pid" ] && return
    sleep 0.1
  done
  fail "the worker did not come back within 15 s of pg_terminate_backend"
}
# Enqueue a delivery to testd's /ok under key $1 and wait up to $2 polls of 50 ms for the
# worker to send it; prints its status then.
deliver() {
  q "SELECT flowgate.enqueue_delivery('worker', 'w1', '$FLOWGATE_TESTD_URL/ok', '$1')" >/dev/null
  for _ in $(seq 1 "$2"); do
    [ "$(q "SELECT status FROM flowgate.deliveries WHERE idempotency_key = '$1'")" = delivered ] && break
    sleep 0.05
  done
  q "SELECT status FROM flowgate.deliveries WHERE idempotency_key = '$1'"
}
q "SELECT flowgate.set_setting('flowgate.http_transport', '\"native\"')" >/dev/null
key="worker-$$"
start=$(date +%s%N)
first_status=$(deliver "$key" 100)
ms=$(( ($(date +%s%N) - start) / 1000000 ))
[ "$first_status" = delivered ] || fail "not delivered after ${ms} ms"
[ "$ms" -lt 2000 ] || fail "delivered only after ${ms} ms"
q "DELETE FROM flowgate.deliveries WHERE idempotency_key = '$key'"
[ "$(q "SELECT last_runner || ' ' || last_status FROM flowgate.job_status WHERE job = 'flowgate.dispatch'")" = "worker ok" ] \
  || fail "the worker's dispatch runs are not recorded in flowgate.job_status"

# A run of a job inside a transaction left open (flowgate.run_job('intake.metrics') then
# pg_sleep) holds that job's status row: the worker does not wait for it, and goes on running
# every job (a delivery enqueued meanwhile is sent within the usual time).
# (A pool with a claim, so that the open run holds that pool's totals too.)
q "SELECT intake.create_pool('worker_held_$$', 5, '{\"drain_mode\": \"external\"}')" >/dev/null
q "SELECT intake.claim_resource('worker_held_$$', 'held-user')" >/dev/null
hold_open "SELECT flowgate.run_job('intake.metrics')" 5
holder=$held
sleep 0.5  # the worker's next ticks reach intake.metrics
key="worker-held-$$"
held_status=$(deliver "$key" 40)
wait "$holder"
q "DELETE FROM flowgate.deliveries WHERE idempotency_key = '$key'"
q "SELECT intake.drop_pool('worker_held_$$')" >/dev/null
[ "$held_status" = delivered ] || fail "with a job's status row and a pool's totals held by an open transaction, the worker stalled (delivery $held_status after 2 s)"

# A job that fails on every tick (intake.metrics, broken by a trigger) must not undo or repeat
# another job's work: each job runs in its own transaction, so 20 deliveries are each sent once.
q "CREATE OR REPLACE FUNCTION public.fg_worker_boom() RETURNS trigger LANGUAGE plpgsql AS \$\$ BEGIN RAISE EXCEPTION 'metrics are broken'; END \$\$"
q "CREATE TRIGGER fg_worker_boom BEFORE INSERT ON intake.engine_metrics FOR EACH ROW EXECUTE FUNCTION public.fg_worker_boom()"
q "SELECT intake.create_pool('worker_$$', 10, '{\"drain_mode\": \"external\"}')" >/dev/null
failures_before=$(q "SELECT coalesce((SELECT failures FROM flowgate.job_status WHERE job = 'intake.metrics'), 0)")
q "SELECT flowgate.enqueue_delivery('worker', 'w2', '$FLOWGATE_TESTD_URL/ok', 'wiso-$$-' || g) FROM generate_series(1, 20) g" >/dev/null
for _ in $(seq 1 100); do
  [ "$(q "SELECT count(*) FROM flowgate.deliveries WHERE idempotency_key LIKE 'wiso-$$-%' AND status = 'delivered'")" -eq 20 ] && break
  sleep 0.05
done
sleep 1   # a few more ticks, each with the failing job
delivered=$(q "SELECT count(*) FROM flowgate.deliveries WHERE idempotency_key LIKE 'wiso-$$-%' AND status = 'delivered' AND attempts = 1")
stats=$(curl -fs "$FLOWGATE_TESTD_URL/_stats/wiso-$$-")
failures=$(q "SELECT failures FROM flowgate.job_status WHERE job = 'intake.metrics'")
last_error=$(q "SELECT last_error FROM flowgate.job_status WHERE job = 'intake.metrics'")
q "DROP TRIGGER fg_worker_boom ON intake.engine_metrics; DROP FUNCTION public.fg_worker_boom()"
q "SELECT intake.drop_pool('worker_$$')" >/dev/null
q "DELETE FROM flowgate.deliveries WHERE idempotency_key LIKE 'wiso-$$-%'"
[ "$delivered" -eq 20 ] || fail "$delivered of 20 deliveries delivered with one attempt while another job failed"
[ "$stats" = '{"requests":20,"distinct_keys":20,"max_per_key":1}' ] || fail "requests seen while another job failed: $stats"
[ "$failures" -gt "$failures_before" ] || fail "the failing job's failures were not recorded"
case "$last_error" in P0001:*"metrics are broken"*) ;; *) fail "last_error of the failing job: $last_error";; esac
# An operator's pg_terminate_backend (a script ending a database's sessions) stops the worker;
# the postmaster starts it again after its restart time (5 s), and it delivers on its own.
# Terminated while it is sending (a slow endpoint keeps a request on the wire): the send loop
# stops early on the signal, and the worker must still stop (pgrx clears its SIGTERM flag when
# read, so a signal the send loop noticed was once forgotten and the worker ran on). Six
# requests two at a time: the four never started go back to pending with their attempt not
# counted, so each of the six is delivered at its first attempt, sent once.
q "SELECT flowgate.set_setting('flowgate.http_concurrency', '2')" >/dev/null
q "SELECT flowgate.enqueue_delivery('worker', 'w3', '$FLOWGATE_TESTD_URL/slow/2000', 'wslow-$$-' || g) FROM generate_series(1, 6) g" >/dev/null
for _ in $(seq 1 100); do
  [ "$(q "SELECT count(*) FROM flowgate.deliveries WHERE idempotency_key LIKE 'wslow-$$-%' AND status = 'in_flight'")" -gt 0 ] && break
  sleep 0.05
done
old_pid=$(q "SELECT pid FROM pg_stat_activity WHERE backend_type = 'flowgate worker'")
q "SELECT pg_terminate_backend($old_pid)" >/dev/null
worker_back
key2="worker-back-$$"
[ "$(deliver "$key2" 100)" = delivered ] || fail "the restarted worker did not deliver"
for _ in $(seq 1 200); do
  [ "$(q "SELECT count(*) FROM flowgate.deliveries WHERE idempotency_key LIKE 'wslow-$$-%' AND status = 'delivered'")" -eq 6 ] && break
  sleep 0.1
done
slow=$(q "SELECT string_agg(status || ' ' || attempts, ', ' ORDER BY id) FROM flowgate.deliveries WHERE idempotency_key LIKE 'wslow-$$-%'")
slow_stats=$(curl -fs "$FLOWGATE_TESTD_URL/_stats/wslow-$$-")
q "DELETE FROM flowgate.deliveries WHERE idempotency_key LIKE 'wslow-$$-%'"
q "SELECT flowgate.reset_setting('flowgate.http_concurrency')" >/dev/null
[ "$slow" = "$(printf 'delivered 1, %.0s' 1 2 3 4 5)delivered 1" ] \
  || fail "requests a terminated worker never sent used up an attempt or were lost: $slow"
[ "$slow_stats" = '{"requests":6,"distinct_keys":6,"max_per_key":1}' ] || fail "requests seen across the termination: $slow_stats"
# DROP EXTENSION while jobs run: every job takes the extension's lock before any table of
# flowgate's, as DROP EXTENSION does first, so a DROP waits for a job under way (on the
# extension's lock, holding no table) and a job started meanwhile waits for the DROP, instead of
# the two deadlocking (a job holding a table DROP needs and waiting for one DROP holds: 40P01).
# The worker does not wait: it skips its ticks while a DROP holds the lock or waits for it.
hold_open "SELECT flowgate.run_job('flowgate.prune')" 3
job=$held
dropper_log=$(mktemp)
psql -X -q -v ON_ERROR_STOP=1 -c "SET lock_timeout = '30s'" -c "BEGIN" -c "DROP EXTENSION flowgate CASCADE" \
  -c "SELECT pg_sleep(2.5)" -c "ROLLBACK" >"$dropper_log" 2>&1 &
dropper=$!
# The lock a session (picked by a condition on pg_stat_activity) waits for, polled for up to 5 s.
lock_awaited() {
  local what=""
  for _ in $(seq 1 50); do
    what=$(q "SELECT l.locktype || ' ' || coalesce(l.classid::regclass::text, l.relation::regclass::text, '')
                FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE $1 AND NOT l.granted")
    [ -n "$what" ] && break
    sleep 0.1
  done
  echo "$what"
}
# How many of $1 samples, 50 ms apart, found the worker waiting for a lock.
worker_waits() {
  local n=0
  for _ in $(seq 1 "$1"); do
    n=$(( n + $(q "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                    WHERE a.backend_type = 'flowgate worker' AND NOT l.granted") ))
    sleep 0.05
  done
  echo "$n"
}
drop_wait=$(lock_awaited "a.query = 'DROP EXTENSION flowgate CASCADE'")
waits_queued=$(worker_waits 10)
wait "$job" || fail "the job run beside DROP EXTENSION failed"
runner_log=$(mktemp)
psql -X -q -v ON_ERROR_STOP=1 -c "SELECT flowgate.run_job('flowgate.prune', 'manual')" >"$runner_log" 2>&1 &
runner=$!
runner_wait=$(lock_awaited "a.query = 'SELECT flowgate.run_job(''flowgate.prune'', ''manual'')'")
waits_held=$(worker_waits 6)
drop_rc=0; wait "$dropper" || drop_rc=$?
runner_rc=0; wait "$runner" || runner_rc=$?
drop_out=$(cat "$dropper_log" "$runner_log"); rm -f "$dropper_log" "$runner_log"
[ "$drop_rc" -eq 0 ] || fail "DROP EXTENSION beside a running job failed: $drop_out"
[ "$runner_rc" -eq 0 ] || fail "a job started while DROP EXTENSION held the lock failed after its ROLLBACK: $drop_out"
[ "$drop_wait" = "object pg_extension" ] || fail "DROP EXTENSION waited for a running job on '$drop_wait', not on the extension's lock"
[ "$runner_wait" = "object pg_extension" ] || fail "a job started during DROP EXTENSION waited on '$runner_wait', not on the extension's lock"
[ "$waits_queued" -eq 0 ] && [ "$waits_held" -eq 0 ] \
  || fail "the worker waited for a lock while DROP EXTENSION was queued ($waits_queued of 10 samples) or held it ($waits_held of 6)"
key3="worker-after-drop-$$"
[ "$(deliver "$key3" 100)" = delivered ] || fail "the worker did not deliver after a rolled-back DROP EXTENSION"
q "DELETE FROM flowgate.deliveries WHERE idempotency_key = '$key3'"
# A job waiting for a lock some session holds gives up after flowgate.worker_lock_timeout_ms
# (500 ms by default) instead of stalling the worker: here a LOCK TABLE of the table intake.metrics
# writes on every tick, held for 8 s. The job's failure is recorded (55P03), the outbox goes on
# delivering meanwhile, and a pg_terminate_backend reaches the worker within about that time
# (it stops between two steps), not when the lock is released.
q "SELECT intake.create_pool('worker_locked_$$', 5, '{\"drain_mode\": \"external\"}')" >/dev/null
failures_before=$(q "SELECT coalesce((SELECT failures FROM flowgate.job_status WHERE job = 'intake.metrics'), 0)")
hold_open "LOCK TABLE intake.engine_metrics IN SHARE MODE" 8
locker=$held
worker_lock=$(lock_awaited "a.backend_type = 'flowgate worker'")
[ "$worker_lock" = "relation intake.engine_metrics" ] || fail "the worker's metrics job did not reach the held lock (waiting on '$worker_lock')"
key4="worker-locked-$$"
start=$(date +%s%N)
locked_status=$(deliver "$key4" 60)
locked_ms=$(( ($(date +%s%N) - start) / 1000000 ))
[ "$locked_status" = delivered ] || fail "with a table held locked, the worker stalled (delivery $locked_status after ${locked_ms} ms)"
lock_wait=$(lock_awaited "a.backend_type = 'flowgate worker'")
[ "$lock_wait" = "relation intake.engine_metrics" ] || fail "the worker did not wait for the held lock again (waiting on '$lock_wait')"
old_pid=$(q "SELECT pid FROM pg_stat_activity WHERE backend_type = 'flowgate worker'")
start=$(date +%s%N)
q "SELECT pg_terminate_backend($old_pid)" >/dev/null
for _ in $(seq 1 50); do
  [ "$(q "SELECT count(*) FROM pg_stat_activity WHERE pid = $old_pid")" -eq 0 ] && break
  sleep 0.1
done
stop_ms=$(( ($(date +%s%N) - start) / 1000000 ))
[ "$(q "SELECT count(*) FROM pg_stat_activity WHERE pid = $old_pid")" -eq 0 ] || fail "terminated while waiting for a lock, the worker was still running after ${stop_ms} ms"
kill -0 "$locker" 2>/dev/null || fail "the lock was released before the worker stopped (${stop_ms} ms): nothing was tested"
wait "$locker"
failures=$(q "SELECT failures FROM flowgate.job_status WHERE job = 'intake.metrics'")
last_error=$(q "SELECT last_error FROM flowgate.job_status WHERE job = 'intake.metrics'")
[ "$failures" -gt "$failures_before" ] || fail "the job that gave up waiting for a lock was not recorded as failed"
case "$last_error" in 55P03:*) ;; *) fail "last_error of the job that waited for a lock: $last_error";; esac
worker_back
q "SELECT intake.drop_pool('worker_locked_$$')" >/dev/null
q "DELETE FROM flowgate.deliveries WHERE idempotency_key = '$key4'"
# In a deadlock with a session that began waiting a little earlier, the job gives way: its lock
# timeout (500 ms) is below deadlock_timeout (1 s), so it gives up before the session's deadlock
# check runs. The session holds intake.engine_metrics and then waits for the pool's totals row,
# which the metrics job holds (a trigger keeps it there for 300 ms) before it waits for the
# table. The session's UPDATE must succeed (with no limit, or one of 1 s, it failed with 40P01).
q "SELECT intake.create_pool('worker_dl_$$', 5, '{\"drain_mode\": \"external\"}')" >/dev/null
q "CREATE OR REPLACE FUNCTION public.fg_worker_nap() RETURNS trigger LANGUAGE plpgsql AS \$\$ BEGIN PERFORM pg_sleep(0.3); RETURN NULL; END \$\$"
q "CREATE TRIGGER fg_worker_nap AFTER UPDATE ON intake.pool_totals FOR EACH ROW WHEN (NEW.pool_id = 'worker_dl_$$') EXECUTE FUNCTION public.fg_worker_nap()"
failures_before=$(q "SELECT failures FROM flowgate.job_status WHERE job = 'intake.metrics'")
deadlock_rc=0
deadlock_out=$(psql -X -q -v ON_ERROR_STOP=1 -c "BEGIN" -c "LOCK TABLE intake.engine_metrics IN SHARE MODE" -c "
  DO \$\$ BEGIN
    FOR i IN 1 .. 500 LOOP
      PERFORM pg_stat_clear_snapshot();
      IF EXISTS (SELECT FROM pg_stat_activity WHERE backend_type = 'flowgate worker' AND wait_event = 'PgSleep') THEN
        RETURN;
      END IF;
      PERFORM pg_sleep(0.01);
    END LOOP;
    RAISE EXCEPTION 'the metrics job never reached the pool''s totals';
  END \$\$" -c "UPDATE intake.pool_totals SET updated_at = updated_at WHERE pool_id = 'worker_dl_$$'" -c "COMMIT" 2>&1) || deadlock_rc=$?
failures=$(q "SELECT failures FROM flowgate.job_status WHERE job = 'intake.metrics'")
last_error=$(q "SELECT last_error FROM flowgate.job_status WHERE job = 'intake.metrics'")
q "DROP TRIGGER fg_worker_nap ON intake.pool_totals; DROP FUNCTION public.fg_worker_nap()"
q "SELECT intake.drop_pool('worker_dl_$$')" >/dev/null
[ "$deadlock_rc" -eq 0 ] || fail "a session in a deadlock with the worker's metrics job lost: $deadlock_out"
[ "$failures" -gt "$failures_before" ] && case "$last_error" in 55P03:*) true;; *) false;; esac \
  || fail "the metrics job did not give way in the deadlock (failures $failures_before -> $failures, last error: $last_error): nothing was tested"
q "SELECT flowgate.reset_setting('flowgate.http_transport')" >/dev/null
echo "ok 9 - worker: running, delivered a committed delivery by itself in ${ms} ms (interval 200 ms), and with a job's status row held by an open transaction; with intake.metrics failing on every tick ($((failures - failures_before)) failures recorded), 20 deliveries were sent once each; terminated by pg_terminate_backend while sending, it stopped and came back (pid $old_pid -> $new_pid) and delivered, the requests it never started at their first attempt, each sent once; a DROP EXTENSION beside a running job waited on the extension's lock, as did a job started while it held it, with no deadlock, and the worker skipped its ticks meanwhile; with a table its metrics job writes held locked, the job gave up after its lock timeout ($last_error), a delivery was sent in ${locked_ms} ms, and pg_terminate_backend stopped the worker in ${stop_ms} ms; in a deadlock with a session, the job gave way"
