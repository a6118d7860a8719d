#!/usr/bin/env bash
# A validation answer whose handler failed is applied later, not lost. The webhook accepts an
# intent (2xx) but the handler that records it fails once (here a trigger on the pool's queue
# raises while the test blocks it; in production: a lock or statement
# timeout while a drain held the intent). The delivery is kept `delivered` with its handler's
# error; the next drain applies the stored answer to the intent it reads, which then commits.
# Before, every later read found the delivery delivered and waited, until the intent went to
# the DLQ with its payment taken, and a replay from the DLQ did the same again.
# Run by the background worker and this session at once: either may record the answer.
set -euo pipefail
q() { psql -X -q -v ON_ERROR_STOP=1 -tAc "$1"; }
fail() { echo "not ok: $*" >&2; exit 1; }
T=${FLOWGATE_TESTD_URL:?set FLOWGATE_TESTD_URL to a running flowgate-testd}
P=hretry_$$  # unique per run: the test server counts requests per key across runs

q "SELECT intake.drop_pool('$P')" >/dev/null 2>&1 || true
# blocked_pool MAX_RETRIES: pool $P, whose handler cannot mark an intent validated (a trigger on
# its queue raises, as a lock timeout would) until `unblock`; `unblocked_done` removes it.
blocked_pool() {
  q "SELECT intake.create_pool('$P', 3, '{\"validation_webhook_url\": \"$T/ok\",
     \"visibility_timeout_seconds\": 1, \"max_retries\": $1, \"batch_size\": 10}')" >/dev/null
  q "CREATE TABLE public.${P}_blocked (blocked boolean);
     INSERT INTO public.${P}_blocked VALUES (true);
     CREATE FUNCTION public.${P}_block() RETURNS trigger LANGUAGE plpgsql AS \$\$
     BEGIN
         IF NEW.message ->> 'state' = 'validated' AND EXISTS (SELECT FROM public.${P}_blocked) THEN
             RAISE EXCEPTION 'the handler cannot mark the intent now' USING ERRCODE = '55P03';
         END IF;
         RETURN NEW;
     END \$\$;
     CREATE TRIGGER block BEFORE UPDATE ON pgmq.q_intake_$P FOR EACH ROW EXECUTE FUNCTION public.${P}_block();"
}
unblock() { q "DELETE FROM public.${P}_blocked"; }
unblocked_done() { q "DROP TRIGGER block ON pgmq.q_intake_$P; DROP FUNCTION public.${P}_block(); DROP TABLE public.${P}_blocked"; }

blocked_pool 4
q "SELECT intake.claim_resource('$P', 'buyer-1')" >/dev/null
drive() { psql -X -q -v ON_ERROR_STOP=1 -tA -c "SELECT intake.drain('$P')" -c "CALL flowgate.run_outbox()" >/dev/null; }
unhandled="SELECT count(*) FROM flowgate.deliveries WHERE owner_module = 'intake' AND owner_id LIKE '$P:%' AND status = 'delivered' AND handler_error IS NOT NULL"
for _ in $(seq 1 80); do
  [ "$(q "$unhandled")" -eq 1 ] && break
  drive; sleep 0.1
done
[ "$(q "$unhandled")" -eq 1 ] || fail "the validation was not delivered with a failed handler"
unblock
for _ in $(seq 1 120); do
  [ "$(q "SELECT count(*) FROM pgmq.q_intake_$P")" -eq 0 ] && break
  drive; sleep 0.25
done
committed=$(q "SELECT count(*) FROM pgmq.a_intake_$P WHERE message ->> 'state' = 'committed'")
dlq=$(q "SELECT count(*) FROM pgmq.q_intake_${P}_dlq")
consumed=$(q "SELECT count(*) FROM intake.allocations WHERE pool_id = '$P' AND status = 'consumed'")
left=$(q "$unhandled")
stat() { curl -fs "$T/_stats/$1" | sed -n "s/.*\"$2\":\([0-9]*\).*/\1/p"; }
v_max=$(stat intake:$P:validate: max_per_key)
unblocked_done
q "SELECT intake.drop_pool('$P')" >/dev/null
[ "$dlq" -eq 0 ] || fail "$dlq intents in the DLQ"
[ "$committed" -eq 1 ] && [ "$consumed" -eq 1 ] || fail "committed $committed, consumed $consumed (want 1, 1)"
[ "$v_max" -eq 1 ] || fail "the webhook saw the intent $v_max times (want once)"
[ "$left" -eq 0 ] || fail "the validation delivery still has its handler error"
echo "ok 1 - intake: a validation answer whose handler failed is applied on the next read; the intent commits once, the webhook called once, nothing in the DLQ"

# The same failure lasting past max_retries reads: the webhook took the payment, so the intent
# is not dead-lettered; each later read applies the stored answer again, and once the handler
# can run it commits. The webhook is not called again.
P=${P}_late
blocked_pool 2
q "SELECT intake.claim_resource('$P', 'buyer-2')" >/dev/null
for _ in $(seq 1 120); do
  [ "$(q "SELECT coalesce(max(read_ct), 0) FROM pgmq.q_intake_$P")" -gt 4 ] && break
  drive; sleep 0.25
done
reads=$(q "SELECT coalesce(max(read_ct), 0) FROM pgmq.q_intake_$P")
[ "$reads" -gt 4 ] || fail "the blocked intent was read only $reads times"
[ "$(q "SELECT count(*) FROM pgmq.q_intake_${P}_dlq")" -eq 0 ] || fail "the intent whose payment was taken was dead-lettered"
unblock
for _ in $(seq 1 120); do
  [ "$(q "SELECT count(*) FROM pgmq.q_intake_$P")" -eq 0 ] && break
  drive; sleep 0.25
done
committed=$(q "SELECT count(*) FROM pgmq.a_intake_$P WHERE message ->> 'state' = 'committed'")
dlq=$(q "SELECT count(*) FROM pgmq.q_intake_${P}_dlq")
consumed=$(q "SELECT count(*) FROM intake.allocations WHERE pool_id = '$P' AND status = 'consumed'")
v_max=$(stat intake:$P:validate: max_per_key)
unblocked_done
q "SELECT intake.drop_pool('$P')" >/dev/null
[ "$dlq" -eq 0 ] && [ "$committed" -eq 1 ] && [ "$consumed" -eq 1 ] || fail "after the block: committed $committed, consumed $consumed, DLQ $dlq (want 1, 1, 0)"
[ "$v_max" -eq 1 ] || fail "the webhook saw the intent $v_max times (want once)"
echo "ok 2 - intake: an intent whose paid answer's handler kept failing past max_retries ($reads reads) is never dead-lettered, and commits once the handler can run (webhook called once)"

# A webhook that accepts with JSON holding a NUL escape (`\u0000`, which no text or jsonb
# value can store): the answer is kept with U+FFFD in its place and the intent commits, where
# the handler used to fail on it and the validated intent went to the DLQ.
P=${P%_late}_nul
q "SELECT intake.create_pool('$P', 3, '{\"validation_webhook_url\": \"$T/nuljson\",
   \"visibility_timeout_seconds\": 1, \"max_retries\": 3, \"batch_size\": 10}')" >/dev/null
q "SELECT intake.claim_resource('$P', 'buyer-3')" >/dev/null
for _ in $(seq 1 80); do
  [ "$(q "SELECT count(*) FROM pgmq.q_intake_$P")" -eq 0 ] && break
  drive; sleep 0.25
done
ts=$(q "SELECT message -> 'validation' ->> 'ts' FROM pgmq.a_intake_$P WHERE message ->> 'state' = 'committed'")
dlq=$(q "SELECT count(*) FROM pgmq.q_intake_${P}_dlq")
q "SELECT intake.drop_pool('$P')" >/dev/null
[ "$dlq" -eq 0 ] && [ "$ts" = "1"$'\xef\xbf\xbd'"2" ] || fail "a NUL in the webhook's answer: committed ts ${ts:-none}, DLQ $dlq"
echo "ok 3 - intake: a webhook answer holding a NUL escape is stored with U+FFFD and the intent commits"
