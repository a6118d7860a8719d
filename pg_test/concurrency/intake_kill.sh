#!/usr/bin/env bash
# A crash does not stop a sale. 64 clients claim from a 20,000-item pool; one claiming backend
# is killed with SIGKILL, so Postgres restarts and empties every UNLOGGED table. No operator
# acts: a second herd of 64 clients goes on claiming, the first claim after the restart rebuilds
# the pool from its logged intents (once, under a lock; the others wait), and the pool sells
# out. Checked: the second herd has no client error at all (the only errors were the
# connections lost at the crash), nothing is sold twice, every claim made before the crash is
# kept with its slot and resource, no user is over the limit, and the pool was rebuilt once.
# Env: PGHOST PGPORT PGUSER PGDATABASE, FLOWGATE_PGDATA (the test cluster, for its log).
set -euo pipefail
q() { psql -X -q -v ON_ERROR_STOP=1 -tAc "$1"; }
fail() { echo "not ok: $*" >&2; exit 1; }
N=20000
LOG="$FLOWGATE_PGDATA/../log"

q "SELECT intake.drop_pool('kill')" >/dev/null 2>&1 || true
q "SELECT intake.create_pool('kill', $N, '{\"max_claims_per_user\": 3, \"drain_mode\": \"external\"}')" >/dev/null
script=$(mktemp)
printf '%s\n' '\set u random(1, 100000)' "SELECT intake.claim_resource('kill', 'user-' || :u);" > "$script"
log_lines_before=$(wc -l < "$LOG")

# Herd 1, killed in the middle by SIGKILL to one claiming backend.
(pgbench -n -c 64 -j 2 -T 30 -f "$script" >/dev/null 2>&1 || true) &
herd=$!
victim=""
for _ in $(seq 1 100); do
  sleep 0.1
  victim=$(q "SELECT pid FROM pg_stat_activity WHERE query LIKE '%intake.claim_resource(''kill''%' AND state = 'active'
                AND pid <> pg_backend_pid() ORDER BY random() LIMIT 1" 2>/dev/null || true)
  claimed=$(q "SELECT count(*) FROM pgmq.q_intake_kill" 2>/dev/null || echo 0)
  [ -n "$victim" ] && [ "$claimed" -gt 2000 ] && break
done
[ -n "$victim" ] || fail "no claiming backend to kill"
kill -9 "$victim"
wait "$herd" || true
for _ in $(seq 1 100); do q "SELECT 1" >/dev/null 2>&1 && break; sleep 0.1; done
tail -n +"$log_lines_before" "$LOG" | grep -q "terminated by signal 9" || fail "the kill did not make Postgres reinitialize"

before=$(q "SELECT count(*) FROM pgmq.q_intake_kill")
[ "$before" -gt 0 ] && [ "$before" -lt "$N" ] || fail "$before claims before the crash: the crash did not land mid-sale"
[ "$(q "SELECT count(*) FROM intake.allocations WHERE pool_id = 'kill'")" -eq 0 ] || fail "the UNLOGGED inventory survived the crash?"
q "DROP TABLE IF EXISTS public.fg_kill_before; CREATE TABLE public.fg_kill_before AS SELECT message FROM pgmq.q_intake_kill"

# Herd 2: no operator in between. Enough attempts to sell out; pgbench fails on any client error.
pgbench -n -c 64 -j 2 -t $(( (N - before) / 64 + 200 )) -f "$script" > /tmp/fg-kill-herd2.log 2>&1 \
  || { tail -5 /tmp/fg-kill-herd2.log; fail "the second herd saw client errors"; }
rm -f "$script"

locked=$(q "SELECT count(*) FROM intake.allocations WHERE pool_id = 'kill' AND status = 'locked'")
intents=$(q "SELECT count(*) FROM pgmq.q_intake_kill")
distinct=$(q "SELECT count(DISTINCT message ->> 'resource_id') FROM pgmq.q_intake_kill")
slots=$(q "SELECT count(DISTINCT (message ->> 'slot')::int) FROM pgmq.q_intake_kill")
kept=$(q "SELECT count(*) FROM public.fg_kill_before b JOIN intake.allocations a ON a.pool_id = 'kill'
            AND a.slot = (b.message ->> 'slot')::int AND a.resource_id = (b.message ->> 'resource_id')::uuid
            AND a.locked_by = b.message ->> 'user_id'")
over=$(q "SELECT count(*) FROM (SELECT message ->> 'user_id' FROM pgmq.q_intake_kill GROUP BY 1 HAVING count(*) > 3) x")
counters=$(q "SELECT coalesce(sum(claims), 0) FROM intake.user_claims WHERE pool_id = 'kill'")
rebuilt=$(tail -n +"$log_lines_before" "$LOG" | grep -c "pool kill had lost its UNLOGGED state" || true)
internal=$(tail -n +"$log_lines_before" "$LOG" | grep -c "could not take a slot\|XX000\|deadlock detected" || true)
[ "$locked" -eq "$N" ] || fail "$locked of $N sold after the crash"
[ "$intents" -eq "$N" ] && [ "$distinct" -eq "$N" ] && [ "$slots" -eq "$N" ] \
  || fail "$intents intents, $distinct distinct resources, $slots slots for $N items (something sold twice?)"
[ "$kept" -eq "$before" ] || fail "only $kept of the $before claims made before the crash kept their slot, resource and user"
[ "$over" -eq 0 ] || fail "$over users over the limit across the crash"
[ "$counters" -eq "$N" ] || fail "user counters add up to $counters, not $N"
[ "$rebuilt" -eq 1 ] || fail "the pool was rebuilt $rebuilt times (want exactly once)"
[ "$internal" -eq 0 ] || fail "internal errors or deadlocks in the server log"
q "DROP TABLE public.fg_kill_before; SELECT intake.drop_pool('kill')" >/dev/null
echo "ok 7 - intake kill -9: a claiming backend killed mid-sale after $before of $N claims; with no operator the next herd (64 clients, no client error) rebuilt the pool once and sold out: none twice, all $before earlier claims kept, no user over 3"
