# Sourced by concurrency suites (pg_test/concurrency/*.sh): two sessions writing one key at once.
#
# hold_and_race FIRST SECOND: runs the statement FIRST in a transaction held open for 1.5 s and,
# 0.5 s into it, the statement SECOND in a session of its own; prints
# "<SECOND's one-word answer, or its SQLSTATE>|<milliseconds SECOND took>".
# Env: PGHOST PGPORT PGUSER PGDATABASE.
hold_and_race() {
  local first out ms
  psql -X -q -v ON_ERROR_STOP=1 -tA >/dev/null <<SQL &
BEGIN;
$1;
SELECT pg_sleep(1.5);
COMMIT;
SQL
  first=$!
  sleep 0.5
  ms=$(date +%s%3N)
  out=$(psql -X -q -tA -v VERBOSITY=verbose -c "$2" 2>&1 \
        | sed -n 's/^ERROR:  \([0-9A-Z]\{5\}\):.*/\1/p; /^[^ ]\+$/p' | head -1)
  ms=$(( $(date +%s%3N) - ms ))
  wait "$first" || { echo "not ok: the held transaction failed: $1" >&2; exit 1; }
  echo "$out|$ms"
}
