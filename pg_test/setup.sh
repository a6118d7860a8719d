#!/usr/bin/env bash
# One command from a fresh Debian bookworm machine (Rust toolchain, root) to a running
# Postgres 15 with pg_cron, pgmq and flowgate installed, plus a demo. Safe to run again.
#   pg_test/setup.sh              everything, then the demo
#   pg_test/setup.sh --deps-only  only the toolchain and packages (used by the Dockerfile)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
t0=$(date +%s)

if [ "${1:-}" = "--stop" ]; then
  stop_sandbox
  cluster_stop "$DEMO_DIR"
  echo "stopped the demo cluster and its sandbox"
  exit 0
fi
install_dependencies
[ "${1:-}" = "--deps-only" ] && exit 0
install_flowgate

step "demo cluster ($DEMO_DIR, port $DEMO_PORT, database $DEMO_DB)"
cluster_start "$DEMO_DIR" "$DEMO_PORT" "$DEMO_DB"
ensure_extensions "$DEMO_PORT" "$DEMO_DB" "$DEMO_DIR"
done_step

step "sandbox (flowgate-testd on 127.0.0.1:$SANDBOX_PORT plays the webhook, the ledger, Slack, Linear and the Management API)"
start_sandbox
# Point every integration of the demo database at the sandbox; the README says how to point
# each at the real service instead.
psql_at "$DEMO_PORT" "$DEMO_DB" -q -v sandbox="http://127.0.0.1:$SANDBOX_PORT" <<'SQL'
SELECT flowgate.set_setting('capacity.slack_api_url', to_jsonb(:'sandbox' || '/slack'));
SELECT flowgate.set_setting('capacity.slack_channel', '"C0DEMO"');
SELECT flowgate.set_setting('capacity.linear_api_url', to_jsonb(:'sandbox' || '/linear/graphql'));
SELECT flowgate.set_setting('capacity.linear_team_id', '"team-demo"');
SELECT flowgate.set_setting('provisioning.management_api_url', to_jsonb(:'sandbox' || '/mgmt/ok'));
SELECT flowgate.set_setting('provisioning.organization_id', '"org-demo"');
-- The sandbox accepts exactly this token (TEST_TOKEN in pg_test/testserver) wherever one is checked.
SELECT flowgate.set_secret(name, 'xoxb-flowgate-test-token-7f3a')
  FROM unnest(ARRAY['slack_bot_token', 'linear_api_key', 'supabase_access_token', 'payments_api_key']) AS name;
SQL
done_step

step "demo"
psql_at "$DEMO_PORT" "$DEMO_DB" -v sandbox="http://127.0.0.1:$SANDBOX_PORT" -f "$FLOWGATE_ROOT/pg_test/demo.sql" 2>&1 | sed -e "s/^psql:[^ ]* //"

cat <<MSG

flowgate is installed and running ($(( $(date +%s) - t0 ))s).
Connect with:   psql -h $SOCKET_DIR -p $DEMO_PORT -U postgres $DEMO_DB
Sandbox:        http://127.0.0.1:$SANDBOX_PORT (flowgate-testd: webhook /ok, ledger, /slack, /linear, /mgmt)
Stop with:      pg_test/setup.sh --stop
Run the tests:  pg_test/test.sh
MSG
