#!/usr/bin/env bash
# CREATE EXTENSION flowgate refuses a database whose encoding is not UTF8 (0A000, with the
# encoding in its detail) and leaves nothing behind. (Every other suite installs it in UTF8.)
set -euo pipefail
fail() { echo "not ok: $*" >&2; exit 1; }
db=flowgate_latin1_check
psql -X -q -c "DROP DATABASE IF EXISTS $db" >/dev/null
psql -X -q -c "CREATE DATABASE $db ENCODING 'LATIN1' LOCALE_PROVIDER libc LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0" >/dev/null
trap 'psql -X -q -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true' EXIT
out=$(psql -X -q -d "$db" -v ON_ERROR_STOP=1 -v VERBOSITY=verbose -c "CREATE EXTENSION flowgate CASCADE" 2>&1) \
  && { psql -X -q -c "DROP DATABASE $db" >/dev/null; fail "CREATE EXTENSION flowgate succeeded in a LATIN1 database"; }
left=$(psql -X -qtA -d "$db" -c "SELECT count(*) FROM pg_extension WHERE extname = 'flowgate'")
psql -X -q -c "DROP DATABASE $db" >/dev/null
grep -q '0A000' <<<"$out" || fail "not 0A000: $out"
grep -q 'flowgate needs a UTF8 database' <<<"$out" || fail "no message: $out"
grep -q 'encoding is LATIN1' <<<"$out" || fail "no detail: $out"
[ "$left" -eq 0 ] || fail "the refused install left the extension behind"
echo "ok 2 - install: CREATE EXTENSION flowgate in a LATIN1 database is refused with 0A000 (its encoding in the detail) and leaves nothing"
