#!/usr/bin/env bash
# The thundering herd, checked: 64 sessions make 20,032 claim attempts on a 1,000-item pool
# (5,000 users, at most 2 claims each). Exactly 1,000 claims, no resource twice, no user over
# the limit, one pgmq intent per claim.
set -euo pipefail
q() { psql -X -q -v ON_ERROR_STOP=1 -tAc "$1"; }
fail() { echo "not ok: $*" >&2; exit 1; }

q "SELECT intake.drop_pool('herd')" >/dev/null 2>&1 || true
q "SELECT intake.create_pool('herd', 1000, '{\"max_claims_per_user\": 2, \"drain_mode\": \"external\"}')" >/dev/null
script=$(mktemp); printf '%s\n' '\set u random(1, 5000)' "SELECT intake.claim_resource('herd', 'user-' || :u);" > "$script"
pgbench -n -c 64 -j 2 -t 313 -f "$script" >/dev/null 2>&1 || fail "pgbench reported errors"
rm -f "$script"

locked=$(q "SELECT count(*) FROM intake.allocations WHERE pool_id = 'herd' AND status = 'locked'")
msgs=$(q "SELECT count(*) FROM pgmq.q_intake_herd")
distinct=$(q "SELECT count(DISTINCT message ->> 'resource_id') FROM pgmq.q_intake_herd")
slots=$(q "SELECT count(DISTINCT (message ->> 'slot')::int) FROM pgmq.q_intake_herd")
over=$(q "SELECT count(*) FROM (SELECT message ->> 'user_id' FROM pgmq.q_intake_herd GROUP BY 1 HAVING count(*) > 2) x")
counters=$(q "SELECT coalesce(sum(claims), 0) FROM intake.user_claims WHERE pool_id = 'herd'")
[ "$locked" -eq 1000 ] || fail "$locked of 1000 resources claimed"
[ "$msgs" -eq 1000 ] || fail "$msgs intents for 1000 claims"
[ "$distinct" -eq 1000 ] && [ "$slots" -eq 1000 ] || fail "a resource was claimed twice ($distinct distinct resources, $slots slots)"
[ "$over" -eq 0 ] || fail "$over users over the limit"
[ "$counters" -eq 1000 ] || fail "user counters add up to $counters, not 1000"
q "SELECT intake.drop_pool('herd')" >/dev/null
echo "ok 5 - intake: 64 sessions, 20032 attempts on 1000 items: 1000 claimed, 1000 distinct resources, 1000 intents, no user over 2"
