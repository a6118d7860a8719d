#!/usr/bin/env bash
# One command from a fresh Debian bookworm machine (Rust toolchain, root) to a running
# Postgres 15 with pg_cron, pgmq and flowgate installed, plus a demo. Safe to run again.
#   pg_test/setup.sh              everything, then the demo
#   pg_test/setup.sh --deps-only  only the toolchain and packages (used by the Dockerfile)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
t0=$(date +%s)

install_dependencies
[ "${1:-}" = "--deps-only" ] && exit 0
install_flowgate

step "demo cluster ($DEMO_DIR, port $DEMO_PORT, database $DEMO_DB)"
cluster_start "$DEMO_DIR" "$DEMO_PORT" "$DEMO_DB"
ensure_extensions "$DEMO_PORT" "$DEMO_DB" "$DEMO_DIR"
done_step

step "demo"
psql_at "$DEMO_PORT" "$DEMO_DB" -f "$FLOWGATE_ROOT/pg_test/demo.sql" 2>&1 | sed -e "s/^psql:[^ ]* //"

cat <<MSG

flowgate is installed and running ($(( $(date +%s) - t0 ))s).
Connect with:   psql -h $SOCKET_DIR -p $DEMO_PORT -U postgres $DEMO_DB
Stop with:      runuser -u postgres -- $PGBIN/pg_ctl -D $DEMO_DIR/data stop
Run the tests:  pg_test/test.sh
MSG
