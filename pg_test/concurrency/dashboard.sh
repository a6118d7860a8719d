#!/usr/bin/env bash
# The dashboard in a real browser: flowgate.dashboard() over known data (a pool with 7 metric
# samples, a waiting capacity request, a release whose version is an HTML injection attempt),
# rendered by headless Chromium from Debian's packages. Checked: the page is complete HTML with
# no script, each of the pool's four charts carries exactly 7 points, the injected markup is
# text, and a screenshot is kept as an artifact.
# Env: PGHOST PGPORT PGUSER PGDATABASE; FLOWGATE_LOG_DIR (default /var/tmp/flowgate/logs).
set -euo pipefail
q() { psql -X -q -v ON_ERROR_STOP=1 -tAc "$1"; }
fail() { echo "not ok: $*" >&2; exit 1; }
command -v chromium >/dev/null || fail "chromium is not installed (pg_test/lib.sh installs Debian's chromium)"
LOG_DIR=${FLOWGATE_LOG_DIR:-/var/tmp/flowgate/logs}
mkdir -p "$LOG_DIR"
POOL=dash_$$
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"; q "SELECT intake.drop_pool('"'$POOL'"')" >/dev/null 2>&1 || true' EXIT

q "SELECT intake.create_pool('$POOL', 10, '{\"drain_mode\": \"external\"}')" >/dev/null
q "INSERT INTO intake.engine_metrics (pool_id, collected_at, available_slots, claimed, queue_depth, dlq_depth, committed, rejected, processing_velocity)
   SELECT '$POOL', now() - (8 - g) * interval '5 seconds', 10 - g, g, g % 3, 0, g, 0, g * 0.5 FROM generate_series(1, 7) g"
q "SELECT ops.ingest_event(jsonb_build_object('schema_version', '1.0', 'idempotency_key', 'dash/$$', 'event_type', 'release_created',
     'source_system', 'dashboard-test', 'release_id', gen_random_uuid(), 'version', '<script>alert(1)</script>'))" >/dev/null
# The page and the number of samples it was drawn from, in one snapshot (the test server's
# worker may add a sample of its own to the 7 written here).
q "SELECT count(*) || E'\\n' || flowgate.dashboard() FROM intake.engine_metrics WHERE pool_id = '$POOL'" > "$WORK/both"
samples=$(head -1 "$WORK/both")
tail -n +2 "$WORK/both" > "$WORK/dashboard.html"
[ "$samples" -ge 7 ] || fail "only $samples samples"
# (This pool's own chart block: up to its first </svg>, not another pool's after it.)
points=$(grep -oP "id=\"pool-$POOL\".*?</svg>" "$WORK/dashboard.html" | grep -o 'data-points="[0-9]*"' | sort | uniq -c | tr -s ' ')
[ "$points" = " 4 data-points=\"$samples\"" ] || fail "the pool's charts: $points (want 4 charts of $samples points)"
grep -q '&lt;script&gt;alert(1)&lt;/script&gt;' "$WORK/dashboard.html" || fail "the release version was not escaped"
grep -qi '<script' "$WORK/dashboard.html" && fail "the page carries a script"

chrome() {
  timeout 60 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$WORK/profile" --window-size=1000,900 "$@" 2>>"$WORK/chromium.log"
}
chrome --dump-dom "file://$WORK/dashboard.html" > "$WORK/dom.html" || fail "chromium could not render the page"
grep -q '</html>' "$WORK/dom.html" || fail "the rendered page is incomplete"
rendered=$(grep -o '<polyline' "$WORK/dom.html" | wc -l)
[ "$rendered" -ge 4 ] || fail "only $rendered charts rendered"
grep -qi '<script' "$WORK/dom.html" && fail "the rendered page has a script element"
grep -q 'CONSOLE' "$WORK/chromium.log" && fail "the page logged to the console: $(grep CONSOLE "$WORK/chromium.log" | head -3)"
chrome --screenshot="$LOG_DIR/dashboard.png" "file://$WORK/dashboard.html" >/dev/null || fail "no screenshot"
[ -s "$LOG_DIR/dashboard.png" ] || fail "empty screenshot"
echo "ok 7 - dashboard: rendered by headless Chromium, 4 charts of $samples points for the pool's $samples samples, injected markup shown as text, no script; screenshot $LOG_DIR/dashboard.png"
