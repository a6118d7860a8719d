#!/usr/bin/env bash
# A backup restored elsewhere sells on: pg_dump of a database with a pool mid-sale, pg_restore
# into a fresh database. The dump holds the logged intents but neither the UNLOGGED inventory
# nor the pool's slot sequence; the first claim after the restore rebuilds both, and every
# claim made before the dump is kept, no user goes over the limit, nothing is sold twice.
# Env: PGHOST PGPORT PGUSER (the test cluster).
set -euo pipefail
SRC=fg_restore_src_$$
DST=fg_restore_dst_$$
q() { psql -X -q -v ON_ERROR_STOP=1 -tA "$@"; }
fail() { echo "not ok: $*" >&2; exit 1; }
cleanup() { q -d postgres -c "DROP DATABASE IF EXISTS $SRC" -c "DROP DATABASE IF EXISTS $DST" >/dev/null 2>&1 || true; rm -f "/tmp/$SRC.dump"; }
trap cleanup EXIT

q -d postgres -c "CREATE DATABASE $SRC" -c "CREATE DATABASE $DST" >/dev/null
q -d "$SRC" -c "CREATE EXTENSION pgmq" -c "CREATE EXTENSION flowgate" >/dev/null
q -d "$SRC" -c "SELECT intake.create_pool('r1', 500, '{\"max_claims_per_user\": 2, \"drain_mode\": \"external\"}')" >/dev/null
q -d "$SRC" -c "SELECT intake.claim_resource('r1', 'user-' || (g % 150)) FROM generate_series(1, 200) g" >/dev/null
before=$(q -d "$SRC" -c "SELECT count(*) FROM pgmq.q_intake_r1")
pg_dump -Fc -d "$SRC" -f "/tmp/$SRC.dump" 2>/dev/null
pg_restore -d "$DST" "/tmp/$SRC.dump" || fail "pg_restore failed"
[ "$(q -d "$DST" -c "SELECT to_regclass('intake.slots_r1') IS NULL")" = t ] || fail "the slot sequence came back from the dump?"
[ "$(q -d "$DST" -c "SELECT count(*) FROM intake.allocations WHERE pool_id = 'r1'")" -eq 0 ] || fail "the UNLOGGED inventory came back from the dump?"

# Claim on in the restored copy until sold out.
q -d "$DST" -c "SELECT intake.claim_resource('r1', 'user-' || g) FROM generate_series(1000, 1400) g" >/dev/null
locked=$(q -d "$DST" -c "SELECT count(*) FROM intake.allocations WHERE pool_id = 'r1' AND status = 'locked'")
intents=$(q -d "$DST" -c "SELECT count(*) FROM pgmq.q_intake_r1")
distinct=$(q -d "$DST" -c "SELECT count(DISTINCT message ->> 'resource_id') FROM pgmq.q_intake_r1")
kept=$(q -d "$DST" -c "SELECT count(*) FROM pgmq.q_intake_r1 m JOIN intake.allocations a ON a.pool_id = 'r1'
          AND a.slot = (m.message ->> 'slot')::int AND a.resource_id = (m.message ->> 'resource_id')::uuid
         WHERE m.msg_id <= $before")
over=$(q -d "$DST" -c "SELECT count(*) FROM (SELECT message ->> 'user_id' FROM pgmq.q_intake_r1 GROUP BY 1 HAVING count(*) > 2) x")
limit=$(q -d "$DST" -c "SELECT intake.claim_resource('r1', 'user-7') ->> 'status'")
[ "$locked" -eq 500 ] && [ "$intents" -eq 500 ] && [ "$distinct" -eq 500 ] || fail "$locked locked, $intents intents, $distinct resources for 500 items"
[ "$kept" -eq "$before" ] || fail "only $kept of the $before claims in the dump kept their slot and resource"
[ "$over" -eq 0 ] || fail "$over users over the limit after the restore"
[ "$limit" = sold_out ] || [ "$limit" = limit_reached ] || fail "a claim after selling out answered $limit"
echo "ok 5 - intake restore: a dump taken after $before claims restored into a new database; its first claim rebuilt inventory and slot sequence, then 500 of 500 sold, none twice, all $before kept, no user over 2"
