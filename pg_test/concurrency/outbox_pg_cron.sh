#!/usr/bin/env bash
# pg_cron runs the outbox as README says to schedule it: CALL flowgate.run_outbox(runner =>
# 'pg_cron') in its own session (here pg_cron's background-worker mode, as on Supabase), which
# lets the procedure commit between claiming, sending and recording. Waits for one scheduled
# run (pg_cron 1.4 schedules by the minute), then checks pg_cron's own record of it and
# flowgate's. Env: PGHOST PGPORT PGUSER PGDATABASE.
set -euo pipefail
q() { psql -X -q -v ON_ERROR_STOP=1 -tAc "$1"; }
fail() { echo "not ok: $*" >&2; exit 1; }
name="fg-outbox-cron-$$"
q "SELECT cron.unschedule(jobname) FROM cron.job WHERE jobname LIKE 'fg-outbox-cron-%'" >/dev/null
since=$(q "SELECT clock_timestamp()")
job=$(q "SELECT cron.schedule('$name', '* * * * *', \$\$CALL flowgate.run_outbox(runner => 'pg_cron')\$\$)")
trap 'q "SELECT cron.unschedule($job)" >/dev/null 2>&1 || true' EXIT
status=""
for _ in $(seq 1 80); do
  status=$(q "SELECT status || ' ' || coalesce(return_message, '') FROM cron.job_run_details
               WHERE jobid = $job AND status IN ('succeeded', 'failed') ORDER BY runid DESC LIMIT 1")
  [ -n "$status" ] && break
  sleep 1
done
[ -n "$status" ] || fail "pg_cron did not run the outbox job within 80 s"
case "$status" in "succeeded CALL"*) ;; *) fail "pg_cron's run of CALL flowgate.run_outbox(): $status";; esac
recorded=$(q "SELECT count(*) FROM flowgate.job_runs WHERE job = 'flowgate.dispatch' AND runner = 'pg_cron' AND status = 'ok' AND started_at >= '$since'")
[ "$recorded" -ge 1 ] || fail "flowgate recorded no pg_cron run of the outbox"
echo "ok 1 - outbox under pg_cron: the scheduled CALL flowgate.run_outbox(runner => 'pg_cron') succeeded in pg_cron's background worker and recorded itself ($recorded run in flowgate.job_runs)"
