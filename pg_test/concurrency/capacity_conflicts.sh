#!/usr/bin/env bash
# 32 sessions fire conflicting events (confirm, decline, cancel, timeout) at one Capacity
# Request at the same time. The end is a single consistent history: every accepted call is
# exactly one event, each event starts from the state the previous one left, and the request's
# state is the last event's target.
set -euo pipefail
q() { psql -X -q -v ON_ERROR_STOP=1 -tAc "$1"; }
fail() { echo "not ok: $*" >&2; exit 1; }

q "DROP TABLE IF EXISTS public.fg_conc_target, public.fg_conc_results; DROP FUNCTION IF EXISTS public.fg_conc_try(int)"
q "CREATE TABLE public.fg_conc_target (id text); CREATE TABLE public.fg_conc_results (outcome text)"
q "CREATE FUNCTION public.fg_conc_try(e int) RETURNS void LANGUAGE plpgsql AS \$\$
   DECLARE ev text := (ARRAY['CUSTOMER_CONFIRMED','CUSTOMER_DECLINED','CANCEL_APPROVED','CUSTOMER_CONFIRMATION_TIMEOUT'])[e];
   BEGIN
     PERFORM capacity.record_capacity_event((SELECT id FROM public.fg_conc_target), ev, '{\"reason\": \"race\"}');
     INSERT INTO public.fg_conc_results VALUES ('accepted');
   EXCEPTION WHEN SQLSTATE '55000' THEN
     INSERT INTO public.fg_conc_results VALUES ('rejected');
   END \$\$"
q "INSERT INTO capacity.group_members VALUES ('commercial_approvers', 'ae-1') ON CONFLICT DO NOTHING"
id=$(q "SELECT capacity.create_capacity_request('ae-1', 'infra', '24XL', 1, 'us-east-1') -> 'request' ->> 'id'")
q "SELECT capacity.apply_event('$id', 'COMMERCIAL_APPROVED'), capacity.apply_event('$id', 'TECH_REVIEW_APPROVED')" >/dev/null
q "INSERT INTO public.fg_conc_target VALUES ('$id')"

# Every transition sends NOTIFY flowgate_capacity once it commits (psql prints the
# notifications its own session receives after each statement).
heard=$(psql -X -q -v ON_ERROR_STOP=1 -c "LISTEN flowgate_capacity" \
          -c "SELECT capacity.record_capacity_event('$id', 'CUSTOMER_CONFIRMED') IS NOT NULL" 2>&1 \
        | grep -F 'Asynchronous notification "flowgate_capacity"' | grep -F "\"request_id\":\"$id\"" \
        | grep -cF '"to":"PROVISIONING_IN_PROGRESS"' || true)
[ "$heard" -eq 1 ] || fail "no NOTIFY flowgate_capacity for the transition of $id"
# Back to the state the race starts from: a second request, taken to the same point.
id=$(q "SELECT capacity.create_capacity_request('ae-1', 'infra', '24XL', 1, 'us-east-1') -> 'request' ->> 'id'")
q "SELECT capacity.apply_event('$id', 'COMMERCIAL_APPROVED'), capacity.apply_event('$id', 'TECH_REVIEW_APPROVED')" >/dev/null
q "UPDATE public.fg_conc_target SET id = '$id'"

script=$(mktemp); printf '%s\n' '\set e random(1, 4)' 'SELECT public.fg_conc_try(:e);' > "$script"
pgbench -n -c 32 -j 2 -t 4 -f "$script" >/dev/null 2>&1 || fail "pgbench reported errors"
rm -f "$script"

attempts=$(q "SELECT count(*) FROM public.fg_conc_results")
accepted=$(q "SELECT count(*) FROM public.fg_conc_results WHERE outcome = 'accepted'")
events=$(q "SELECT count(*) FROM capacity.capacity_request_events WHERE capacity_request_id = '$id'")
[ "$attempts" -eq 128 ] || fail "$attempts of 128 attempts recorded"
[ "$events" -eq $(( 3 + accepted )) ] || fail "$accepted accepted calls but $(( events - 3 )) events"
broken=$(q "SELECT count(*) FROM (SELECT from_state, lag(to_state) OVER (ORDER BY seq) AS prev, seq
                                     FROM capacity.capacity_request_events WHERE capacity_request_id = '$id') h
             WHERE seq > (SELECT min(seq) FROM capacity.capacity_request_events WHERE capacity_request_id = '$id')
               AND from_state IS DISTINCT FROM prev")
[ "$broken" -eq 0 ] || fail "$broken events do not start where the previous one ended"
final=$(q "SELECT state = (SELECT to_state FROM capacity.capacity_request_events WHERE capacity_request_id = '$id' ORDER BY seq DESC LIMIT 1)
           FROM capacity.capacity_requests WHERE id = '$id'")
[ "$final" = t ] || fail "the request's state is not its last event's target"
[ "$accepted" -ge 1 ] && [ "$accepted" -le 2 ] || fail "$accepted conflicting events accepted (1, or 2 when a cancellation follows)"
# A stranger neither waits for a request's row lock nor learns that the request exists: while
# another session holds the lock, a stranger's event is answered P0002 at once, where one of
# the request's parties waits for the lock (55P03 under a 1 s lock_timeout).
state_of() {  # the SQLSTATE a statement raises ('00000' when it succeeds), with lock_timeout 1 s
  psql -X -q -c "SET lock_timeout = '1s'" -c "SET client_min_messages = notice" \
    -c "DO \$\$ BEGIN EXECUTE \$q\$$1\$q\$; RAISE NOTICE 'state=00000'; EXCEPTION WHEN OTHERS THEN RAISE NOTICE 'state=%', SQLSTATE; END \$\$" 2>&1 \
    | sed -n 's/.*state=\([0-9A-Z]*\).*/\1/p'
}
psql -X -q -c "BEGIN" -c "SELECT FROM capacity.capacity_requests WHERE id = '$id' FOR UPDATE" -c "SELECT pg_sleep(4)" -c "COMMIT" >/dev/null &
holder=$!
held=0
for _ in $(seq 1 50); do
  [ "$(q "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(4)' AND state = 'active'")" -eq 1 ] && { held=1; break; }
  sleep 0.1
done
[ "$held" -eq 1 ] || fail "the session holding the request's lock did not start within 5 s"
stranger=$(state_of "SELECT capacity.record_capacity_event('$id', 'CANCEL_APPROVED', '{\"reason\": \"x\"}', NULL, 'no-party-of-this-request')")
party=$(state_of "SELECT capacity.record_capacity_event('$id', 'CANCEL_APPROVED', '{\"reason\": \"x\"}', NULL, 'ae-1')")
wait "$holder"
[ "$stranger" = P0002 ] || fail "a stranger's event on a locked request raised ${stranger:-nothing}, expected P0002 at once"
[ "$party" = 55P03 ] || fail "a party's event on a locked request raised ${party:-nothing}, expected to wait for the lock (55P03)"
history=$(q "SELECT string_agg(event_type::text, ' > ' ORDER BY seq) FROM capacity.capacity_request_events WHERE capacity_request_id = '$id'")
q "DROP TABLE public.fg_conc_target, public.fg_conc_results; DROP FUNCTION public.fg_conc_try(int)"
echo "ok 6 - capacity: NOTIFY flowgate_capacity on a transition; a stranger waits for no lock (P0002), a party does (55P03); 32 sessions x 4 conflicting events on $id: $accepted accepted, $(( attempts - accepted )) rejected (55000); history $history"

# The same idempotency key from two sessions at once, the second in a REPEATABLE READ
# transaction whose snapshot is older than the first's commit: it cannot see the request the
# first made, so it is told to retry (40001), not a unique violation (23505, which the README
# keeps for a key reused for another request); retried, it gets the first's request.
key="rr-key-$$"
create="SELECT capacity.create_capacity_request('ae-1', 'infra', '24XL', 1, 'us-east-1', idempotency_key => '$key') -> 'request' ->> 'id'"
psql -X -q -c "BEGIN" -c "$create" -c "SELECT pg_sleep(3)" -c "COMMIT" >/dev/null &
first=$!
held=0
for _ in $(seq 1 50); do
  [ "$(q "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(3)' AND state = 'active'")" -eq 1 ] && { held=1; break; }
  sleep 0.1
done
[ "$held" -eq 1 ] || fail "the first creation did not start within 5 s"
rr=$(psql -X -q -c "SET client_min_messages = notice" -c "BEGIN ISOLATION LEVEL REPEATABLE READ" -c "SELECT 1" \
       -c "DO \$\$ BEGIN PERFORM ($create); RAISE NOTICE 'state=00000'; EXCEPTION WHEN OTHERS THEN RAISE NOTICE 'state=%', SQLSTATE; END \$\$" \
       -c "COMMIT" 2>&1 | sed -n 's/.*state=\([0-9A-Z]*\).*/\1/p')
wait "$first"
[ "$rr" = 40001 ] || fail "a REPEATABLE READ creation with a key a concurrent call held raised ${rr:-nothing}, expected 40001"
ids=$(q "SELECT count(DISTINCT capacity_request_id) FROM capacity.capacity_request_events WHERE idempotency_key = '$key' AND actor_id = current_user")
again=$(q "$create")
[ "$ids" -eq 1 ] && [ "$(q "SELECT count(*) FROM capacity.capacity_request_events WHERE capacity_request_id = '$again' AND event_type = 'REQUEST_SUBMITTED'")" -eq 1 ] \
  || fail "the key made $ids requests, or the retry did not return the first"
# And without waiting: the other call committed after this transaction's snapshot was taken.
key2="rr-key2-$$"
create2="SELECT capacity.create_capacity_request('ae-1', 'infra', '24XL', 1, 'us-east-1', idempotency_key => '$key2') -> 'request' ->> 'id'"
out=$(mktemp)
psql -X -q -c "SET client_min_messages = notice" -c "BEGIN ISOLATION LEVEL REPEATABLE READ" -c "SELECT 1" -c "SELECT pg_sleep(2)" \
     -c "DO \$\$ BEGIN PERFORM ($create2); RAISE NOTICE 'state=00000'; EXCEPTION WHEN OTHERS THEN RAISE NOTICE 'state=%', SQLSTATE; END \$\$" \
     -c "COMMIT" > "$out" 2>&1 &
late=$!
for _ in $(seq 1 50); do
  [ "$(q "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(2)' AND state = 'active'")" -eq 1 ] && break
  sleep 0.1
done
q "$create2" >/dev/null
wait "$late"
rr2=$(sed -n 's/.*state=\([0-9A-Z]*\).*/\1/p' "$out"); rm -f "$out"
[ "$rr2" = 40001 ] || fail "a REPEATABLE READ creation whose snapshot missed a committed creation with its key raised ${rr2:-nothing}, expected 40001"
echo "ok 7 - capacity: the same idempotency key from a REPEATABLE READ transaction, after waiting for it or with a snapshot from before it: 40001 (retry), then the first request"
