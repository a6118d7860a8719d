#!/usr/bin/env bash
# 16 workers claim provisioning jobs at once from 400 queued tenants; each claimed job is
# reported (most succeed, some fail transiently and come back), until the queue is empty.
# Invariants: no two workers ever held the same attempt of a job, every attempt is recorded as
# exactly one claim event, and every client ends ready with both jobs succeeded once.
set -euo pipefail
q() { psql -X -q -v ON_ERROR_STOP=1 -tAc "$1"; }
fail() { echo "not ok: $*" >&2; exit 1; }

# Job history is append-only (clients with events are never deleted): each run has its own slugs.
run="conc$(date +%s)"
q "DROP TABLE IF EXISTS public.fg_prov_claims"
q "CREATE TABLE public.fg_prov_claims (job_id uuid, attempt int, worker text, PRIMARY KEY (job_id, attempt))"
q "SELECT flowgate.set_setting('provisioning.retry_base_seconds', '1'), flowgate.set_setting('provisioning.max_attempts', '20')" >/dev/null
q "SELECT count(provisioning.enqueue_client('$run-' || i, 'Tenant ' || i)) FROM generate_series(1, 400) i" >/dev/null

# Each transaction claims one job and reports it: 1 in 5 attempts fails with a 503 and is due again
# at once (the back-off is shortened by the test), the rest succeed. The claim is recorded with a
# primary key on (job, attempt): a second worker holding the same attempt would break it.
script=$(mktemp)
cat > "$script" <<'SQL'
\set fail random(1, 5)
WITH c AS (SELECT provisioning.claim_job('w' || :client_id) AS j),
     rec AS (INSERT INTO public.fg_prov_claims SELECT (j ->> 'job_id')::uuid, (j ->> 'attempts')::int, 'w' || :client_id FROM c WHERE j IS NOT NULL RETURNING job_id)
SELECT provisioning.report_job(job_id, 'w' || :client_id, :fail > 1, CASE WHEN :fail > 1 THEN NULL ELSE 503 END) FROM rec;
UPDATE provisioning.client_provisioning_jobs SET next_attempt_at = now() WHERE status = 'queued' AND next_attempt_at > now() AND attempts > 0;
SQL
for round in 1 2 3 4 5 6 7 8; do
  pgbench -n -c 16 -j 2 -t 80 -f "$script" >/dev/null 2>&1 || fail "pgbench reported errors"
  left=$(q "SELECT count(*) FROM provisioning.client_provisioning_jobs j JOIN provisioning.clients c USING (client_id) WHERE c.slug LIKE '$run-%' AND j.status <> 'succeeded'")
  [ "$left" -eq 0 ] && break
done
rm -f "$script"

[ "$left" -eq 0 ] || fail "$left jobs still open after 8 rounds"
ready=$(q "SELECT count(*) FROM provisioning.clients WHERE slug LIKE '$run-%' AND provisioning_status = 'ready'")
[ "$ready" -eq 400 ] || fail "$ready of 400 clients ready"
jobs=$(q "SELECT count(*) FROM provisioning.client_provisioning_jobs j JOIN provisioning.clients c USING (client_id) WHERE c.slug LIKE '$run-%'")
[ "$jobs" -eq 800 ] || fail "$jobs jobs for 400 clients (want one create_project and one schema_sync each)"
claims=$(q "SELECT count(*) FROM public.fg_prov_claims")
events=$(q "SELECT count(*) FROM provisioning.job_events e JOIN provisioning.client_provisioning_jobs j USING (job_id) JOIN provisioning.clients c USING (client_id)
             WHERE c.slug LIKE '$run-%' AND e.event_type = 'claimed'")
[ "$claims" -eq "$events" ] || fail "$claims claims handed out but $events claim events"
retried=$(q "SELECT count(*) FROM public.fg_prov_claims WHERE attempt > 1")
workers=$(q "SELECT count(DISTINCT worker) FROM public.fg_prov_claims")
q "DROP TABLE public.fg_prov_claims; SELECT flowgate.reset_setting('provisioning.retry_base_seconds'), flowgate.reset_setting('provisioning.max_attempts')" >/dev/null
echo "ok 4 - provisioning: 16 workers, 400 tenants, $claims claims ($retried retries after 503s) by $workers workers: no job attempt held twice, one claim event each, all 400 ready with 2 jobs"

# Two schema syncs of one client at once: one queues its job; the other, which looked before the
# first committed, skips the client (already queued), with no unique violation.
made_migration=$(q "SELECT NOT EXISTS (SELECT FROM provisioning.migrations)")
[ "$made_migration" = t ] && q "INSERT INTO provisioning.migrations (version, name, sql) VALUES (1, 'conc_sync', 'SELECT 1')"
cid=$(q "UPDATE provisioning.clients SET schema_version = 0 WHERE slug = '$run-1' RETURNING client_id")
psql -X -q -c "BEGIN" -c "SELECT provisioning.sync_schema('$cid')" -c "SELECT pg_sleep(2)" -c "COMMIT" >/dev/null &
first=$!
for _ in $(seq 1 50); do
  [ "$(q "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(2)' AND state = 'active'")" -eq 1 ] && break
  sleep 0.1
done
second=$(q "SELECT jsonb_array_length(provisioning.sync_schema('$cid') -> 'queued')") || fail "the second sync_schema failed"
wait "$first"
open=$(q "SELECT count(*) FROM provisioning.client_provisioning_jobs WHERE client_id = '$cid' AND job_type = 'schema_sync' AND status IN ('queued', 'running')")
q "UPDATE provisioning.client_provisioning_jobs SET status = 'failed' WHERE client_id = '$cid' AND job_type = 'schema_sync' AND status = 'queued'" >/dev/null 2>&1 || true
[ "$made_migration" = t ] && q "DELETE FROM provisioning.migrations WHERE version = 1 AND name = 'conc_sync'"
[ "$second" -eq 0 ] && [ "$open" -eq 1 ] || fail "the concurrent sync queued $second (want 0), $open open jobs (want 1)"
echo "ok 5 - provisioning: two sync_schema calls for one client at once: one job queued, the other call skips it"
