#!/usr/bin/env bash
# The outbox under faults, counted by the server (flowgate-testd counts requests per
# Idempotency-Key). Three parts:
#   1. No transaction is open while requests are in flight: 200 deliveries to a 2-second
#      endpoint, sent by CALL flowgate.run_outbox() and the background worker, with
#      pg_stat_activity sampled throughout: no sender holds a snapshot (backend_xmin) or shows
#      an open transaction for longer than one claim or one record.
#   2. A cancel (statement_timeout) while requests are on the wire: the CALL fails with 57014,
#      the claims it committed stay leased, and after the lease each delivery is sent once more
#      with the same key and delivered.
#   3. kill -9 of the sending backend mid-send (Postgres restarts): every delivery is
#      delivered, no key is sent more than twice, attempts recorded equal requests seen,
#      nothing stays in_flight.
#   4. kill -9 after the send, before the record: the answers are in, but the record step waits
#      on a row lock this script holds when the backend dies. The same holds, and each of those
#      first attempts counts as lost (every delivery took a second attempt).
#   5. A server restart (fast shutdown) mid-send. The same holds without waiting for the lease:
#      a native request in flight when the server started is lost (its sender is gone), and
#      collect() says so at once.
#   6. kill -9 after the claim committed, before any request reached the destination (a
#      listener that never accepts, `flowgate-testd hold`): after the lease each delivery is
#      sent once, with its key, to the destination now answering there.
# The lease (flowgate.in_flight_lease_seconds, at least timeout + 30 s) is passed by moving
# claimed_at back: time is an input, the tests do not wait for it.
# Env: PGHOST PGPORT PGUSER PGDATABASE, FLOWGATE_TESTD_URL, FLOWGATE_TESTD_BIN (the server's
# binary, for part 6), FLOWGATE_PGDATA (for the log), FLOWGATE_PGBIN (pg_ctl, for the restart).
set -euo pipefail
q() { psql -X -q -v ON_ERROR_STOP=1 -tAc "$1"; }
fail() { echo "not ok: $*" >&2; exit 1; }
T=${FLOWGATE_TESTD_URL:?set FLOWGATE_TESTD_URL to a running flowgate-testd}
TESTD=${FLOWGATE_TESTD_BIN:?set FLOWGATE_TESTD_BIN to the flowgate-testd binary}
LOG="$FLOWGATE_PGDATA/../log"
K=faults-$$   # key prefix, unique per run: the server's counts are per key across runs

stat() { curl -fs "${3:-$T}/_stats/$1" | sed -n "s/.*\"$2\":\([0-9]*\).*/\1/p"; }   # stat PREFIX FIELD [SERVER]
pgctl() { (cd / && runuser -u postgres -- "$FLOWGATE_PGBIN/pg_ctl" -D "$FLOWGATE_PGDATA" "$@"); }
wait_up() { for _ in $(seq 1 100); do q "SELECT 1" >/dev/null 2>&1 && return 0; sleep 0.1; done; fail "the server did not come back"; }
# After a fault: every delivery of PREFIX (N of them) delivered after the lease, none sent more
# than twice, attempts recorded equal to requests seen, none left in flight.
# Send PREFIX's deliveries until none is left, without passing any lease by hand: after a
# restart or a crash, what was in flight belongs to an earlier server run and is lost at once.
after_restart() {
  for _ in $(seq 1 50); do
    q "SELECT flowgate.collect()" >/dev/null
    q "UPDATE flowgate.deliveries SET next_attempt_at = now() WHERE idempotency_key LIKE '$1-%' AND status = 'pending'"
    q "CALL flowgate.run_outbox()" >/dev/null
    [ "$(q "SELECT count(*) FROM flowgate.deliveries WHERE idempotency_key LIKE '$1-%' AND status IN ('pending', 'in_flight')")" -eq 0 ] && return 0
    sleep 0.2
  done
  fail "$1: $(q "SELECT count(*) FROM flowgate.deliveries WHERE idempotency_key LIKE '$1-%' AND status IN ('pending', 'in_flight')") deliveries still waiting after the restart, without their lease passed"
}
check_after() {   # check_after PREFIX N WHAT
  local ok attempts reqs
  after_lease "$1"
  ok=$(q "SELECT count(*) FROM flowgate.deliveries WHERE idempotency_key LIKE '$1-%' AND status = 'delivered'")
  [ "$ok" -eq "$2" ] || fail "$3: $ok of $2 delivered"
  [ "$(stat "$1-" max_per_key)" -le 2 ] || fail "$3: a delivery was sent more than twice"
  attempts=$(q "SELECT sum(attempts) FROM flowgate.deliveries WHERE idempotency_key LIKE '$1-%'")
  reqs=$(stat "$1-" requests)
  [ "$attempts" -eq "$reqs" ] || fail "$3: $attempts attempts recorded, $reqs requests seen"
  echo "$reqs $attempts"
}
enqueue() {   # enqueue PREFIX N PATH
  q "SELECT count(flowgate.enqueue_delivery('faults', '$1-' || g, '$T$3', '$1-' || g, jsonb_build_object('g', g),
              timeout_ms => 10000)) FROM generate_series(1, $2) g" >/dev/null
}
# enqueue_parked PREFIX N URL: N deliveries, enqueued parked in one transaction, so the
# background worker (which also runs the outbox here) never sees them due before the sender
# that send_due starts.
enqueue_parked() {
  psql -X -q -v ON_ERROR_STOP=1 -1 \
    -c "SELECT count(flowgate.enqueue_delivery('faults', '$1-' || g, '$3', '$1-' || g, jsonb_build_object('g', g), timeout_ms => 10000))
          FROM generate_series(1, $2) g" \
    -c "UPDATE flowgate.deliveries SET next_attempt_at = 'infinity' WHERE idempotency_key LIKE '$1-%'" >/dev/null
}
# send_due PREFIX APPNAME: in one session named APPNAME, make PREFIX's deliveries due and send
# them (CALL flowgate.run_outbox()); its failure (a kill, a restart) is the point, not an error.
send_due() {
  psql -X -q -c "SET application_name = '$2'" \
       -c "UPDATE flowgate.deliveries SET next_attempt_at = now() WHERE idempotency_key LIKE '$1-%'" \
       -c "CALL flowgate.run_outbox()" >/dev/null 2>&1 || true
}
# Pass the lease of every delivery of PREFIX still in flight, let collect() expire it, make
# the retry due, and send until none is left.
after_lease() {
  q "UPDATE flowgate.deliveries SET claimed_at = claimed_at - interval '2 hours'
      WHERE idempotency_key LIKE '$1-%' AND status = 'in_flight'"
  q "SELECT flowgate.collect()" >/dev/null
  for _ in $(seq 1 50); do
    q "UPDATE flowgate.deliveries SET next_attempt_at = now() WHERE idempotency_key LIKE '$1-%' AND status = 'pending'"
    q "CALL flowgate.run_outbox()" >/dev/null
    [ "$(q "SELECT count(*) FROM flowgate.deliveries WHERE idempotency_key LIKE '$1-%' AND status IN ('pending', 'in_flight')")" -eq 0 ] && return 0
    sleep 0.2
  done
  fail "$1: deliveries still pending or in flight after the lease"
}

q "SELECT flowgate.set_setting('flowgate.http_transport', '\"native\"')" >/dev/null
q "SELECT flowgate.set_setting('flowgate.http_concurrency', '64')" >/dev/null

# 1. Sampled: nothing held while sending.
enqueue "$K-slow" 200 /slow/2000
samples=$(mktemp)
( psql -X -q -c "SET application_name = 'fg_faults_call'" -c "CALL flowgate.run_outbox()" >/dev/null 2>&1 ) &
caller=$!
while kill -0 "$caller" 2>/dev/null \
      || [ "$(q "SELECT count(*) FROM flowgate.deliveries WHERE idempotency_key LIKE '$K-slow-%' AND status <> 'delivered'")" -gt 0 ]; do
  q "SELECT backend_type || '|' || coalesce(extract(epoch FROM clock_timestamp() - xact_start)::numeric(8,3)::text, '-')
            || '|' || coalesce(age(backend_xmin)::text, '-') || '|' || coalesce(backend_xid::text, '-')
       FROM pg_stat_activity
      WHERE pid <> pg_backend_pid() AND datname = current_database()
        AND (application_name = 'fg_faults_call' OR backend_type = 'flowgate worker')" >> "$samples"
  sleep 0.05
done
wait "$caller" || fail "CALL flowgate.run_outbox() failed"
n_samples=$(wc -l < "$samples")
longest=$(awk -F'|' '$2 != "-" && $2 + 0 > m { m = $2 + 0 } END { printf "%.3f", m + 0 }' "$samples")
xmin_held=$(awk -F'|' '$3 != "-"' "$samples" | wc -l)
rm -f "$samples"
[ "$n_samples" -ge 20 ] || fail "only $n_samples samples of the senders"
awk -v l="$longest" 'BEGIN { exit !(l < 1.0) }' || fail "a sender showed a transaction open for $longest s (the endpoint takes 2 s)"
[ "$xmin_held" -le $(( n_samples / 10 )) ] || fail "$xmin_held of $n_samples samples hold a snapshot"
[ "$(q "SELECT count(*) FROM flowgate.deliveries WHERE idempotency_key LIKE '$K-slow-%' AND status = 'delivered' AND attempts = 1")" -eq 200 ] \
  || fail "not every slow delivery was delivered on its first attempt"
[ "$(stat "$K-slow-" max_per_key)" -eq 1 ] && [ "$(stat "$K-slow-" distinct_keys)" -eq 200 ] || fail "a slow delivery was sent twice or not at all"
echo "ok 1 - outbox faults: 200 deliveries to a 2 s endpoint ($n_samples samples of the senders): longest open transaction ${longest} s, $xmin_held samples holding a snapshot, each key sent once"

# 2. statement_timeout while requests are on the wire. The deliveries are enqueued parked and
# made due by the cancelled session itself just before its CALL, so the background worker
# (which also runs the outbox here) rarely gets them first; if it did, the round is tried again
# with new keys.
for try in 1 2 3; do
  C="$K-cancel$try"   # a fresh key prefix per try: the server counts per key
  enqueue_parked "$C" 20 "$T/slow/3000"
  set +e
  err=$(psql -X -q -v ON_ERROR_STOP=1 -c "SET statement_timeout = '1s'" \
          -c "UPDATE flowgate.deliveries SET next_attempt_at = now() WHERE idempotency_key LIKE '$C-%'" \
          -c "CALL flowgate.run_outbox()" 2>&1 >/dev/null)
  set -e
  case "$err" in *"canceling statement due to statement timeout"*) break;; esac
  [ "$try" -lt 3 ] || fail "the CALL was not cancelled in 3 tries (the worker took the deliveries first?): $err"
  sleep 3.2
  q "DELETE FROM flowgate.deliveries WHERE idempotency_key LIKE '$C-%'"
done
in_flight=$(q "SELECT count(*) FROM flowgate.deliveries WHERE idempotency_key LIKE '$C-%' AND status = 'in_flight'")
delivered_early=$(q "SELECT count(*) FROM flowgate.deliveries WHERE idempotency_key LIKE '$C-%' AND status = 'delivered'")
[ $(( in_flight + delivered_early )) -eq 20 ] || fail "after the cancel: $in_flight in flight, $delivered_early delivered, of 20"
sleep 2.5   # the requests the cancelled CALL sent finish on the server
after_lease "$C"
cancel_ok=$(q "SELECT count(*) FROM flowgate.deliveries WHERE idempotency_key LIKE '$C-%' AND status = 'delivered'")
[ "$cancel_ok" -eq 20 ] || fail "$cancel_ok of 20 delivered after the cancel"
[ "$(stat "$C-" max_per_key)" -le 2 ] || fail "a cancelled delivery was sent more than twice"
attempts=$(q "SELECT sum(attempts) FROM flowgate.deliveries WHERE idempotency_key LIKE '$C-%'")
reqs=$(stat "$C-" requests)
[ "$attempts" -eq "$reqs" ] || fail "cancel: $attempts attempts recorded, $reqs requests seen"
echo "ok 1 - outbox faults: statement_timeout mid-send ($in_flight left in flight under their lease): all 20 delivered after it, $reqs requests for $attempts recorded attempts, none sent more than twice"

# 3. kill -9 of the sending backend mid-send (enqueued parked, made due by the sender itself,
# as above).
enqueue_parked "$K-kill" 40 "$T/slow/3000"
log_lines_before=$(wc -l < "$LOG")
send_due "$K-kill" fg_faults_kill &
victim=""
for _ in $(seq 1 50); do
  sleep 0.1
  victim=$(q "SELECT pid FROM pg_stat_activity WHERE application_name = 'fg_faults_kill' AND state = 'active'" 2>/dev/null || true)
  sent=$(stat "$K-kill-" requests)
  [ -n "$victim" ] && [ "${sent:-0}" -gt 0 ] && break
done
[ -n "$victim" ] || fail "no sending backend to kill"
sleep 0.5
kill -9 "$victim"
wait || true
for _ in $(seq 1 100); do q "SELECT 1" >/dev/null 2>&1 && break; sleep 0.1; done
tail -n +"$log_lines_before" "$LOG" | grep -q "terminated by signal 9" || fail "the kill did not make Postgres reinitialize"
sleep 3   # requests sent before the crash finish on the server
# The crash emptied the server run: what was in flight is lost at once, no lease passed by hand
# (the background worker may have collected it already).
stranded=$(q "SELECT count(*) FROM flowgate.deliveries WHERE idempotency_key LIKE '$K-kill-%' AND status = 'in_flight'")
after_restart "$K-kill"
kill_ok=$(q "SELECT count(*) FROM flowgate.deliveries WHERE idempotency_key LIKE '$K-kill-%' AND status = 'delivered'")
[ "$kill_ok" -eq 40 ] || fail "$kill_ok of 40 delivered after the crash"
[ "$(stat "$K-kill-" max_per_key)" -le 2 ] || fail "a delivery was sent more than twice across the crash"
attempts=$(q "SELECT sum(attempts) FROM flowgate.deliveries WHERE idempotency_key LIKE '$K-kill-%'")
reqs=$(stat "$K-kill-" requests)
[ "$attempts" -eq "$reqs" ] || fail "kill: $attempts attempts recorded, $reqs requests seen"
[ "$(q "SELECT count(*) FROM flowgate.deliveries WHERE owner_module = 'faults' AND status = 'in_flight'")" -eq 0 ] || fail "deliveries left in flight"
echo "ok 1 - outbox faults: kill -9 of the sender mid-send ($sent requests on the wire, $stranded still in flight 3 s after the restart): all 40 delivered without waiting for the lease with the same keys, $reqs requests for $attempts recorded attempts, none sent more than twice, none left in flight"

# 4. kill -9 after the send, before the record. The deliveries are enqueued parked and made
# due by the sending session; once the server has their requests, this script locks their rows
# so the record step waits, and the sender is killed while it waits.
C="$K-unrecorded"
enqueue_parked "$C" 10 "$T/slow/500"
log_lines_before=$(wc -l < "$LOG")
send_due "$C" fg_faults_unrecorded &
caller=$!
holder=$(mktemp -u)
for _ in $(seq 1 50); do [ "$(stat "$C-" requests)" -ge 1 ] && break; sleep 0.05; done
# Hold the rows (in flight, sent) until the sender is dead.
( psql -X -q -c "BEGIN" -c "SELECT id FROM flowgate.deliveries WHERE idempotency_key LIKE '$C-%' AND status = 'in_flight' FOR UPDATE" \
       -c "SELECT pg_sleep(30)" >/dev/null 2>&1 || true ) &
locker=$!
waiting=""
for _ in $(seq 1 100); do
  waiting=$(q "SELECT pid FROM pg_stat_activity WHERE application_name = 'fg_faults_unrecorded' AND wait_event_type = 'Lock'" 2>/dev/null || true)
  [ -n "$waiting" ] && break
  sleep 0.05
done
[ -n "$waiting" ] || fail "the sender never waited to record (did it send at all? $(stat "$C-" requests) requests)"
sent_before=$(stat "$C-" requests)
kill -9 "$waiting"
wait "$caller" "$locker" 2>/dev/null || true
wait_up
tail -n +"$log_lines_before" "$LOG" | grep -q "terminated by signal 9" || fail "the kill did not make Postgres reinitialize"
res=$(check_after "$C" 10 "kill before record"); read -r reqs attempts <<< "$res"
# Each first attempt was answered but never recorded: lost, so each took a second.
[ "$(q "SELECT min(attempts) FROM flowgate.deliveries WHERE idempotency_key LIKE '$C-%'")" -ge 2 ] \
  || fail "kill before record: a delivery was recorded delivered on the attempt whose record died"
echo "ok 1 - outbox faults: kill -9 after the send ($sent_before requests answered), before the record: all 10 delivered after the lease, $reqs requests for $attempts attempts, none sent more than twice"

# 5. A server restart (fast shutdown) while requests are on the wire.
C="$K-restart"
enqueue_parked "$C" 20 "$T/slow/2000"
send_due "$C" fg_faults_restart &
caller=$!
for _ in $(seq 1 50); do [ "$(stat "$C-" requests)" -ge 1 ] && break; sleep 0.05; done
pgctl -m fast -w restart -l "$LOG" >/dev/null
wait "$caller" 2>/dev/null || true
wait_up
stranded=$(q "SELECT count(*) FROM flowgate.deliveries WHERE idempotency_key LIKE '$C-%' AND status = 'in_flight'")
# No lease passed by hand: what the server's restart stranded is collected as lost at once.
after_restart "$C"
res=$(check_after "$C" 20 "restart"); read -r reqs attempts <<< "$res"
echo "ok 1 - outbox faults: server restarted mid-send ($stranded in flight after it): all 20 delivered without waiting for the lease, $reqs requests for $attempts attempts, none sent more than twice"

# 6. kill -9 after the claim committed, before any request reached the destination: it is a
# listener that never accepts (the requests wait in its backlog, unread). The sender is killed
# once all ten are leased; then a real server takes the port and, after the lease, gets each
# delivery once with its key.
C="$K-unsent"
hold_out=$(mktemp)
"$TESTD" hold 0 > "$hold_out" &
holder=$!
for _ in $(seq 1 50); do [ -s "$hold_out" ] && break; sleep 0.05; done
HP=$(head -1 "$hold_out"); rm -f "$hold_out"
[ -n "$HP" ] || fail "flowgate-testd hold printed no port"
enqueue_parked "$C" 10 "http://127.0.0.1:$HP/ok"
log_lines_before=$(wc -l < "$LOG")
send_due "$C" fg_faults_unsent &
caller=$!
for _ in $(seq 1 100); do
  [ "$(q "SELECT count(*) FROM flowgate.deliveries WHERE idempotency_key LIKE '$C-%' AND status = 'in_flight'")" -eq 10 ] && break
  sleep 0.05
done
[ "$(q "SELECT count(*) FROM flowgate.deliveries WHERE idempotency_key LIKE '$C-%' AND status = 'in_flight'")" -eq 10 ] \
  || fail "the ten deliveries were never all leased"
sleep 0.3   # the sender is now waiting on the destination that never reads
# The session that made them due sends them, unless the background worker claimed them first.
sender=$(q "SELECT pid FROM pg_stat_activity WHERE application_name = 'fg_faults_unsent' AND state = 'active'")
[ -n "$sender" ] || sender=$(q "SELECT pid FROM pg_stat_activity WHERE backend_type = 'flowgate worker' AND datname = current_database()")
[ -n "$sender" ] || fail "no sending backend to kill"
kill -9 "$sender"
wait "$caller" 2>/dev/null || true
wait_up
tail -n +"$log_lines_before" "$LOG" | grep -q "terminated by signal 9" || fail "the kill did not make Postgres reinitialize"
kill "$holder"; wait "$holder" 2>/dev/null || true
"$TESTD" serve "$HP" >/dev/null 2>&1 &
server=$!
for _ in $(seq 1 50); do curl -fs "http://127.0.0.1:$HP/_stats" >/dev/null 2>&1 && break; sleep 0.05; done
after_lease "$C"
unsent_ok=$(q "SELECT count(*) FROM flowgate.deliveries WHERE idempotency_key LIKE '$C-%' AND status = 'delivered'")
reqs=$(stat "$C-" requests "http://127.0.0.1:$HP")
keys=$(stat "$C-" distinct_keys "http://127.0.0.1:$HP")
most=$(stat "$C-" max_per_key "http://127.0.0.1:$HP")
attempts=$(q "SELECT sum(attempts) FROM flowgate.deliveries WHERE idempotency_key LIKE '$C-%'")
kill "$server"; wait "$server" 2>/dev/null || true
[ "$unsent_ok" -eq 10 ] || fail "$unsent_ok of 10 delivered after the crash before the send"
[ "$reqs" -eq 10 ] && [ "$keys" -eq 10 ] && [ "$most" -eq 1 ] || fail "kill before send: $reqs requests for $keys keys (most $most per key) reached the destination"
[ "$attempts" -eq 20 ] || fail "kill before send: $attempts attempts recorded (the expired lease and the delivery: 20)"
echo "ok 1 - outbox faults: kill -9 after the claim, before any request reached the destination: after the lease each of the 10 was delivered once with its key ($reqs requests), each with 2 attempts recorded (the expired lease and the send)"

q "DELETE FROM flowgate.deliveries WHERE owner_module = 'faults'"
q "SELECT flowgate.reset_setting('flowgate.http_transport'), flowgate.reset_setting('flowgate.http_concurrency')" >/dev/null
