#!/usr/bin/env bash
# A backup taken at the release before this version, restored the way the README says: create
# flowgate at the dump's version, pg_restore into it, then ALTER EXTENSION flowgate UPDATE. The
# older release's triggers run on this build's library while the rows load: a deployment that
# was allowed when made (its release failed a check since) must come back, with the events that
# point at it and the stored gate statuses, and ids the dump's release did not carry (metrics)
# must go on after the restored rows once updated.
# Env: PGHOST PGPORT PGUSER (the test cluster, with the release's install script installed).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
current=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/Cargo.toml" | head -n 1)
prev=$( (cd "$ROOT/sql/released" && ls flowgate--*.sql 2>/dev/null) | sed 's/^flowgate--\(.*\)\.sql$/\1/' \
        | { grep -vx "$current" || true; } | sort -V | tail -n 1)
if [ -z "$prev" ]; then
  echo "ok 0 - restore across versions: no release before $current"
  exit 0
fi
SRC=fg_across_src_$$
DST=fg_across_dst_$$
q() { psql -X -q -v ON_ERROR_STOP=1 -tA "$@"; }
fail() { echo "not ok: restore across versions: $*" >&2; exit 1; }
cleanup() { q -d postgres -c "DROP DATABASE IF EXISTS $SRC" -c "DROP DATABASE IF EXISTS $DST" >/dev/null 2>&1 || true; rm -f "/tmp/$SRC.dump" "/tmp/$SRC.restore.log"; }
trap cleanup EXIT

q -d postgres -c "CREATE DATABASE $SRC" -c "CREATE DATABASE $DST" >/dev/null
for db in "$SRC" "$DST"; do q -d "$db" -c "CREATE EXTENSION pgmq" -c "CREATE EXTENSION flowgate VERSION '$prev'" >/dev/null; done
# ops: a release deployed to staging, then made ineligible (pg_test/ops_deployed.sh).
source "$(dirname "${BASH_SOURCE[0]}")/../ops_deployed.sh"
ops_before=$(ops_deployed "$SRC" a1 6)
# intake: a pool with metrics samples (their id sequence was not in $prev's dumps).
q -d "$SRC" -c "SELECT intake.create_pool('a1', 5, '{\"drain_mode\": \"external\"}')" \
  -c "SELECT intake.collect_metrics('a1')" -c "SELECT intake.collect_metrics('a1')" >/dev/null
samples=$(q -d "$SRC" -c "SELECT count(*) FROM intake.engine_metrics")
pg_dump -Fc -d "$SRC" -f "/tmp/$SRC.dump" 2>/dev/null
# pg_restore reports the objects CREATE EXTENSION made already: its exit status says nothing.
pg_restore -d "$DST" "/tmp/$SRC.dump" 2> "/tmp/$SRC.restore.log" || true
if grep -E 'COPY|violat|not eligible' "/tmp/$SRC.restore.log" >/dev/null; then
  fail "rows did not load: $(grep -E -m 3 'COPY|violat|not eligible' "/tmp/$SRC.restore.log" | head -c 600)"
fi
q -d "$DST" -c "ALTER EXTENSION flowgate UPDATE" >/dev/null
ops_after=$(q -d "$DST" -c "$OPS_STATE")
[ "$ops_after" = "$ops_before" ] || fail "ops after the restore and update: $ops_after (before: $ops_before)"
q -d "$DST" -c "SELECT intake.collect_metrics('a1')" >/dev/null || fail "a metrics sample after the update collided with a restored one"
after=$(q -d "$DST" -c "SELECT count(*) FROM intake.engine_metrics")
[ "$after" = "$((samples + 1))" ] || fail "metrics after the update: $after (restored $samples, then one sample)"
version=$(q -d "$DST" -c "SELECT extversion FROM pg_extension WHERE extname = 'flowgate'")
[ "$version" = "$current" ] || fail "the restored database is at $version"
echo "ok 3 - restore across versions: a $prev dump restored into $prev and updated to $current: the deployment allowed when made came back with its events and stored gate statuses ($ops_after), metrics ids go on after the $samples restored samples"
