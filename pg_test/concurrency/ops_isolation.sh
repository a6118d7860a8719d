#!/usr/bin/env bash
# Stored gate statuses stay exact for a REPEATABLE READ sender. Two check results whose facts
# together change G1 while each alone leaves its stored status as it was: G1 requires a and b,
# a has failed (G1 failed). Session S takes its snapshot; then another session reports b pass
# and commits (G1 still failed: a failed); then S reports a pass. S's snapshot misses b, so an
# evaluation from it would store "in_progress, waiting for b" where the facts say passed. S must
# fail with 40001 (its transaction is retried) and the stored status must equal a fresh
# evaluation. Run in this order with a FIFO, so no timing decides it.
set -euo pipefail
q() { psql -X -q -v ON_ERROR_STOP=1 -tAc "$1"; }
fail() { echo "not ok: $*" >&2; exit 1; }

R=c5c5c5c5-0000-4000-8000-000000000001
ev() {  # key event_type fields
  echo "jsonb_build_object('schema_version', '1.0', 'idempotency_key', 'iso/$1', 'event_type', '$2',
        'source_system', 'github_actions', 'release_id', '$R') || '$3'::jsonb"
}
q "DELETE FROM ops.event_ingest_log WHERE idempotency_key LIKE 'iso/%'; DELETE FROM ops.releases WHERE release_id = '$R'"
q "SELECT ops.ingest_event($(ev 1 release_created '{"version": "iso"}'))" >/dev/null
q "SELECT ops.ingest_event($(ev 2 gate_configured '{"gate_code": "G1", "required_checks": ["a", "b"]}'))" >/dev/null
g1=$(q "SELECT ops.ingest_event($(ev 3 check_result '{"gate_code": "G1", "check_name": "a", "status": "fail"}')) #>> '{detail,gates,G1}'")
[ "$g1" = failed ] || fail "setup: G1 is $g1 after a failed"

dir=$(mktemp -d)
mkfifo "$dir/in"
psql -X -q -tA -v ON_ERROR_STOP=1 <"$dir/in" >"$dir/out" 2>&1 &
session=$!
exec 7>"$dir/in"
echo "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 'snapshot taken';" >&7
for _ in $(seq 1 100); do grep -q 'snapshot taken' "$dir/out" 2>/dev/null && break; sleep 0.05; done
grep -q 'snapshot taken' "$dir/out" || fail "the REPEATABLE READ session did not start"
g1=$(q "SELECT ops.ingest_event($(ev 4 check_result '{"gate_code": "G1", "check_name": "b", "status": "pass"}')) #>> '{detail,gates,G1}'")
[ "$g1" = failed ] || fail "b pass alone left G1 $g1 (expected failed: a failed)"
echo "SELECT ops.ingest_event($(ev 5 check_result '{"gate_code": "G1", "check_name": "a", "status": "pass"}')); COMMIT;" >&7
exec 7>&-
rc=0; wait "$session" || rc=$?
out=$(cat "$dir/out"); rm -rf "$dir"
[ "$rc" -ne 0 ] && grep -q 'could not serialize access' <<<"$out" \
  || fail "the REPEATABLE READ sender was not refused with 40001 (exit $rc): $out"
read -r stored fresh <<<"$(q "SELECT status, ops.evaluate_gate(gate_id) FROM ops.release_gates WHERE release_id = '$R' AND gate_code = 'G1'" | tr '|' ' ')"
[ "$stored" = "$fresh" ] || fail "stored G1 $stored, a fresh evaluation says $fresh"
accepted=$(q "SELECT count(*) FROM ops.event_ingest_log WHERE idempotency_key = 'iso/5'")
[ "$accepted" -eq 0 ] || fail "the refused sender left $accepted log rows"
# Retried (as its client would), the event is accepted and G1 passes.
g1=$(q "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT ops.ingest_event($(ev 5 check_result '{"gate_code": "G1", "check_name": "a", "status": "pass"}')) #>> '{detail,gates,G1}'; COMMIT;")
[ "$g1" = passed ] || fail "retried, G1 is $g1"
echo "ok 4 - ops ingest under REPEATABLE READ: a sender whose snapshot misses a committed check of the release fails with 40001 and logs nothing, the stored G1 ($stored) equals a fresh evaluation, and the retry passes G1"
