#!/usr/bin/env bash
# The whole test suite, from a fresh machine or a warm one:
#   1. cargo unit tests (pure Rust, #[test] and proptest) and 2. #[pg_test]s, both through
#      `cargo pgrx test` against a throwaway Postgres run as the postgres user;
#   3. the order of the generated install script (pg_test/surface_check.sh);
#      every pgTAP file in pg_test/tap/ through pg_prove, against a fresh cluster with pg_cron,
#      pgmq and the release build of flowgate;
#   4. every SQL example of README.md, run and its output compared (pg_test/readme.sh, on a
#      fresh cluster and sandbox of its own); then the concurrency suites and the calendar.
# Fails if any layer fails or runs nothing. Prints a summary with counts and times.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
t0=$(date +%s)
LOG_DIR=${FLOWGATE_LOG_DIR:-/var/tmp/flowgate/logs}
mkdir -p "$LOG_DIR"

install_dependencies test

# cargo pgrx test copies its debug build into the shared extension directory: stop our
# clusters first so no running backend has the library mapped while it is overwritten.
demo_was_running=0
cluster_running "$DEMO_DIR" && demo_was_running=1
# Whatever happens below: stop the test HTTP server, bring the demo cluster back.
on_exit() {
  stop_testd
  if [ "$demo_was_running" -eq 1 ] && ! cluster_running "$DEMO_DIR"; then cluster_start "$DEMO_DIR" "$DEMO_PORT" "$DEMO_DB"; fi
}
trap on_exit EXIT
cluster_stop "$DEMO_DIR"; cluster_stop "$TEST_DIR"

step "cargo pgrx test (unit tests + #[pg_test]s)"
t=$(date +%s)
"${SUDO[@]}" install -d -o postgres -g postgres "$PGRX_TEST_DIR"
set +e
(cd "$FLOWGATE_ROOT" && cargo pgrx test pg15 --runas postgres --pgdata "$PGRX_TEST_DIR") 2>&1 | tee "$LOG_DIR/cargo-test.log" \
  | grep -E '^test |^test result|panicked|^error|FAILED|failures:' 
rc=${PIPESTATUS[0]}
set -e
cargo_secs=$(( $(date +%s) - t ))
unit=$(grep -cE '^test .*unit_tests::.* \.\.\. ok$' "$LOG_DIR/cargo-test.log" || true)
pgt=$(grep -cE '^test .*::tests::pg_.* \.\.\. ok$' "$LOG_DIR/cargo-test.log" || true)
failed=$(grep -cE '^test .* \.\.\. FAILED$' "$LOG_DIR/cargo-test.log" || true)
[ "$rc" -eq 0 ] || die "cargo pgrx test failed ($failed failing tests; full log: $LOG_DIR/cargo-test.log)"
[ "$unit" -gt 0 ] || die "no cargo unit tests ran"
[ "$pgt" -gt 0 ] || die "no #[pg_test]s ran"

install_flowgate

step "surface order: each function a sql/<module>/surface.sql names is created before it"
version=$(current_version)
"$FLOWGATE_ROOT/pg_test/surface_check.sh" "$("$PG_CONFIG" --sharedir)/extension/flowgate--$version.sql" \
  || die "a surface file names a function its requires do not put before it (above)"

step "releases: released scripts unchanged, an upgrade path from each to this version"
"$FLOWGATE_ROOT/pg_test/release_check.sh" || die "the release rules do not hold (above)"

step "pgTAP suites (pg_prove) on a fresh cluster ($TEST_DIR, port $TEST_PORT)"
t=$(date +%s)
cluster_stop "$TEST_DIR"
"${SUDO[@]}" rm -rf "$TEST_DIR"
# The test servers run with Rust backtraces switched on, as a careless environment would have
# them: no error a client sees may carry one.
CLUSTER_ENV=(RUST_BACKTRACE=full)
cluster_start "$TEST_DIR" "$TEST_PORT" "$TEST_DB" worker
psql_at "$TEST_PORT" "$TEST_DB" -q -c "CREATE EXTENSION pgtap; CREATE EXTENSION pg_cron; CREATE EXTENSION pgmq; CREATE EXTENSION pgcrypto;"
# The suites run on a database upgraded from the previous release (created from its install
# script as released, then ALTER EXTENSION flowgate UPDATE), as a live one would be; the
# upgrade step below proves its catalog equals a fresh install's.
prev=$(install_previous_release)
if [ -n "$prev" ]; then
  psql_at "$TEST_PORT" "$TEST_DB" -q -c "CREATE EXTENSION flowgate VERSION '$prev'" -c "ALTER EXTENSION flowgate UPDATE"
  echo "    flowgate created at $prev and updated to $(psql_at "$TEST_PORT" "$TEST_DB" -tAc "SELECT extversion FROM pg_extension WHERE extname = 'flowgate'")"
else
  psql_at "$TEST_PORT" "$TEST_DB" -q -c "CREATE EXTENSION flowgate"
fi
start_testd
mapfile -t tap_files < <(find "$FLOWGATE_ROOT/pg_test/tap" -name '*.sql' | sort)
[ ${#tap_files[@]} -gt 0 ] || die "no pgTAP files in pg_test/tap"
set +e
(cd / && PGOPTIONS="--client-min-messages=warning" pg_prove -h "$SOCKET_DIR" -p "$TEST_PORT" -U postgres -d "$TEST_DB" "${tap_files[@]}") 2>&1 | tee "$LOG_DIR/pg_prove.log"
rc=${PIPESTATUS[0]}
set -e
tap_secs=$(( $(date +%s) - t ))
tap_tests=$(sed -n 's/^Files=\([0-9]*\), Tests=\([0-9]*\).*/\2/p' "$LOG_DIR/pg_prove.log")
tap_files_n=$(sed -n 's/^Files=\([0-9]*\), Tests=.*/\1/p' "$LOG_DIR/pg_prove.log")
tap_skipped=$(grep -c ' skipped: ' "$LOG_DIR/pg_prove.log" || true)
if [ "$rc" -ne 0 ]; then
  echo "---- postgres log ($TEST_DIR/log) ----"; tail -n 40 "$TEST_DIR/log" || true
  die "pgTAP suites failed"
fi
[ "${tap_tests:-0}" -gt 0 ] || die "pg_prove ran no tests"

step "README examples (pg_test/readme.sh: every SQL block of README.md, output compared)"
t=$(date +%s)
set +e
(cd / && "$FLOWGATE_ROOT/pg_test/readme.sh") > "$LOG_DIR/readme.log" 2>&1
rc=$?
set -e
{ grep -vE '^ok [0-9]+ ' "$LOG_DIR/readme.log" || true; } | sed 's/^/    /'
readme_secs=$(( $(date +%s) - t ))
readme=$(grep -cE '^ok [0-9]+ ' "$LOG_DIR/readme.log" || true)
[ "$rc" -eq 0 ] || die "README.md's examples do not print what it shows (above; full log: $LOG_DIR/readme.log)"
[ "$readme" -gt 0 ] || die "pg_test/readme.sh checked no README statement"

step "concurrency suites (pg_test/concurrency)"
t=$(date +%s)
conc=0
for s in "$FLOWGATE_ROOT"/pg_test/concurrency/*.sh; do
  out=$(cd / && PGOPTIONS="--client-min-messages=warning" PGHOST=$SOCKET_DIR PGPORT=$TEST_PORT PGUSER=postgres PGDATABASE=$TEST_DB \
        FLOWGATE_TESTD_URL="http://127.0.0.1:$TESTD_PORT" FLOWGATE_TESTD_BIN="$TESTD_BIN" FLOWGATE_PGBIN="$PGBIN" FLOWGATE_PGDATA="$TEST_DIR/data" \
        "$s" 2>&1) || { echo "$out"; tail -n 30 "$TEST_DIR/log"; die "$(basename "$s") failed"; }
  echo "    $out"
  conc=$(( conc + $(echo "$out" | awk '/^ok [0-9]+ /{s+=$2} END{print s+0}') ))
done
conc_secs=$(( $(date +%s) - t ))
[ "$conc" -gt 0 ] || die "no concurrency checks ran"

step "upgrade from the previous release, with work in flight in every module (pg_test/upgrade.sh)"
t=$(date +%s)
out=$("$FLOWGATE_ROOT/pg_test/upgrade.sh" 2>&1) || { echo "$out"; die "the upgrade test failed"; }
echo "$out" | sed 's/^/    /'
upgrade=$(echo "$out" | awk '/^ok [0-9]+ /{s+=$2} END{print s+0}')
upgrade_secs=$(( $(date +%s) - t ))

step "calendar: the date-sensitive suites with the server clock moved (libfaketime)"
t=$(date +%s)
# Relative to today, so the moved clock is always near the real one: the coming Saturday
# morning, Sunday night and Friday a few seconds before midnight (UTC).
fake_times=("$(date -u -d 'next saturday' +%F) 10:00:00" "$(date -u -d 'next sunday' +%F) 23:30:00"
            "$(date -u -d 'next friday' +%F) 23:59:30")
fake_days=(Sat Sun Fri)
calendar_files=("$FLOWGATE_ROOT"/pg_test/tap/capacity*.sql)
psql_at "$TEST_PORT" postgres -q -c "DROP DATABASE IF EXISTS flowgate_calendar" -c "CREATE DATABASE flowgate_calendar"
psql_at "$TEST_PORT" flowgate_calendar -q -c "CREATE EXTENSION pgtap; CREATE EXTENSION pgmq; CREATE EXTENSION pgcrypto; CREATE EXTENSION flowgate;"
cal=0
for i in "${!fake_times[@]}"; do
  cluster_restart "$TEST_DIR" "${fake_times[$i]}"
  seen=$(psql_at "$TEST_PORT" flowgate_calendar -tAc "SELECT to_char(now() AT TIME ZONE 'UTC', 'Dy YYYY-MM-DD HH24:MI:SS')
                                                       || CASE WHEN now() - '${fake_times[$i]}+00' BETWEEN '0' AND '5 min' THEN '' ELSE ' (not moved)' END")
  case "$seen" in "${fake_days[$i]} "*[0-9]) ;; *) die "the server clock did not move: wanted ${fake_days[$i]} ${fake_times[$i]}, server says $seen";; esac
  set +e
  (cd / && PGOPTIONS="--client-min-messages=warning" pg_prove -h "$SOCKET_DIR" -p "$TEST_PORT" -U postgres -d flowgate_calendar "${calendar_files[@]}") \
    > "$LOG_DIR/pg_prove-calendar-$i.log" 2>&1
  rc=$?
  set -e
  [ "$rc" -eq 0 ] || { cat "$LOG_DIR/pg_prove-calendar-$i.log"; die "the capacity suites failed with the server clock at $seen"; }
  n=$(sed -n 's/^Files=[0-9]*, Tests=\([0-9]*\).*/\1/p' "$LOG_DIR/pg_prove-calendar-$i.log")
  echo "    server clock $seen UTC: $n tests passed"
  cal=$(( cal + n ))
done
cluster_restart "$TEST_DIR"
cal_secs=$(( $(date +%s) - t ))
cluster_stop "$TEST_DIR"


printf '\n%-28s %8s %8s\n' "layer" "tests" "seconds"
printf '%-28s %8s %8s\n' "cargo unit tests" "$unit" "$cargo_secs"
printf '%-28s %8s %8s\n' "#[pg_test]" "$pgt" "(same)"
printf '%-28s %8s %8s\n' "pgTAP ($tap_files_n files)" "$tap_tests" "$tap_secs"
[ "$tap_skipped" -gt 0 ] && printf '%-28s %8s\n' "pgTAP files skipped" "$tap_skipped"
printf '%-28s %8s %8s\n' "README examples" "$readme" "$readme_secs"
printf '%-28s %8s %8s\n' "concurrency checks" "$conc" "$conc_secs"
printf '%-28s %8s %8s\n' "upgrade checks" "$upgrade" "$upgrade_secs"
printf '%-28s %8s %8s\n' "calendar (${#fake_times[@]} clocks)" "$cal" "$cal_secs"
printf '\nALL TESTS PASSED in %ss\n' "$(( $(date +%s) - t0 ))"
