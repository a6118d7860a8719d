# Sourced by the restore suites (pg_test/concurrency/intake_restore.sh, restore_across.sh): an
# ops release deployed to staging once eligible, then made ineligible by a failing G2 check. A
# restore must bring the deployment back (it was allowed when made) and the stored statuses.
# Needs q() (psql) and fail() from the suite.

# The state a restore must keep: deployments, environment events, each gate's status.
OPS_STATE="SELECT (SELECT count(*) FROM ops.deployments) || ' ' || (SELECT count(*) FROM ops.environment_events) || ' '
             || (SELECT string_agg(gate_code || '=' || status, ',' ORDER BY gate_code) FROM ops.release_gates)"

# ops_deployed DB TAG HEX: the scenario in DB (keys TAG-*, release and deployment ids from the
# hex digit HEX); prints OPS_STATE after it.
ops_deployed() {
  local db=$1 tag=$2 release="a${3}a${3}a${3}a${3}-0000-4000-8000-000000000001" deployment="d${3}d${3}d${3}d${3}-0000-4000-8000-000000000001"
  ev() { echo "ops.ingest_event(jsonb_build_object('schema_version', '1.0', 'idempotency_key', '$tag-$1', 'event_type', '$2',
          'source_system', 'restore', 'release_id', '$release') || '$3'::jsonb)"; }
  q -d "$db" -c "SELECT $(ev c release_created '{"version": "1"}')" -c "SELECT $(ev b build_complete '{"status": "pass"}')" \
    -c "SELECT $(ev q gate_signoff '{}')" \
    -c "SELECT $(ev d deployment_started "{\"environment\": \"staging\", \"deployment_id\": \"$deployment\"}")" \
    -c "SELECT $(ev f deployment_finished "{\"deployment_id\": \"$deployment\", \"status\": \"succeeded\"}")" \
    -c "SELECT $(ev e2e check_result '{"gate_code": "G2", "check_name": "e2e", "status": "fail"}')" >/dev/null
  local state
  state=$(q -d "$db" -c "$OPS_STATE")
  case "$state" in 1\ *G2=failed*) ;; *) fail "the ops scenario was not set up: $state" ;; esac
  echo "$state"
}
