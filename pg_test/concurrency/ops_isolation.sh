#!/usr/bin/env bash
# Interleavings of ops.ingest_event that timing alone would rarely produce, driven in order
# through FIFOs (sessions that wait are seen waiting in pg_stat_activity first).
#
# 1. Stored gate statuses stay exact for a REPEATABLE READ sender. Two check results whose facts
# together change G1 while each alone leaves its stored status as it was: G1 requires a and b,
# a has failed (G1 failed). Session S takes its snapshot; then another session reports b pass
# and commits (G1 still failed: a failed); then S reports a pass. S's snapshot misses b, so an
# evaluation from it would store "in_progress, waiting for b" where the facts say passed. S must
# fail with 40001 (its transaction is retried) and the stored status must equal a fresh
# evaluation.
# 2. Two senders of one key at once, for events that cannot be applied twice (release_created,
# exception_decided): the second waits for the first (on its release row, or on the release
# lock), fails on the first's effects, and must answer as its duplicate, not 409.
# 3. A REPEATABLE READ direct writer (a persona, under row security) of a check's result. G1
# requires u, whose latest result is fail. Session S takes its snapshot; CI reports u fail again
# (a repeat: no row, no evaluation, no turn on the release) and commits; then S inserts u pass.
# S's row takes the release's turn first and is dated when it got it, after CI's report, so it
# is the latest result and S's evaluation from its snapshot is exact: S commits, and the stored
# G1 (passed) equals a fresh evaluation. Had CI's event changed a result instead (v pass, a row
# and an evaluation), S's snapshot would miss a fact: S must fail with 40001 when it takes the
# turn, and the stored G1 must equal a fresh evaluation.
set -euo pipefail
q() { psql -X -q -v ON_ERROR_STOP=1 -tAc "$1"; }
fail() { echo "not ok: $*" >&2; exit 1; }

R=c5c5c5c5-0000-4000-8000-000000000001
ev() {  # key event_type fields
  echo "jsonb_build_object('schema_version', '1.0', 'idempotency_key', 'iso/$1', 'event_type', '$2',
        'source_system', 'github_actions', 'release_id', '$R') || '$3'::jsonb"
}
q "DELETE FROM ops.event_ingest_log WHERE idempotency_key LIKE 'iso/%'; DELETE FROM ops.releases WHERE release_id::text LIKE 'c5c5c5c5-%'"
q "SELECT ops.ingest_event($(ev 1 release_created '{"version": "iso"}'))" >/dev/null
q "SELECT ops.ingest_event($(ev 2 gate_configured '{"gate_code": "G1", "required_checks": ["a", "b"]}'))" >/dev/null
g1=$(q "SELECT ops.ingest_event($(ev 3 check_result '{"gate_code": "G1", "check_name": "a", "status": "fail"}')) #>> '{detail,gates,G1}'")
[ "$g1" = failed ] || fail "setup: G1 is $g1 after a failed"

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
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
out=$(cat "$dir/out")
[ "$rc" -ne 0 ] && grep -q 'could not serialize access' <<<"$out" \
  || fail "the REPEATABLE READ sender was not refused with 40001 (exit $rc): $out"
read -r stored fresh <<<"$(q "SELECT status, ops.evaluate_gate(gate_id) FROM ops.release_gates WHERE release_id = '$R' AND gate_code = 'G1'" | tr '|' ' ')"
[ "$stored" = "$fresh" ] || fail "stored G1 $stored, a fresh evaluation says $fresh"
accepted=$(q "SELECT count(*) FROM ops.event_ingest_log WHERE idempotency_key = 'iso/5'")
[ "$accepted" -eq 0 ] || fail "the refused sender left $accepted log rows"
# Retried (as its client would), the event is accepted and G1 passes.
g1=$(q "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT ops.ingest_event($(ev 5 check_result '{"gate_code": "G1", "check_name": "a", "status": "pass"}')) #>> '{detail,gates,G1}'; COMMIT;")
[ "$g1" = passed ] || fail "retried, G1 is $g1"

# ---- 2. same-key senders of events that cannot apply twice --------------------------------------
# session NAME: a psql reading statements from $dir/NAME.in (fd in fd_NAME), writing to NAME.out.
session() {
  mkfifo "$dir/$1.in"
  psql -X -q -tA <"$dir/$1.in" >"$dir/$1.out" 2>&1 &
  eval "pid_$1=$!"
  exec {fd}>"$dir/$1.in"
  eval "fd_$1=$fd"
}
say() { local fd; eval "fd=\$fd_$1"; echo "$2" >&"$fd"; }
until_printed() {  # NAME TEXT
  for _ in $(seq 1 200); do grep -q "$2" "$dir/$1.out" 2>/dev/null && return 0; sleep 0.05; done
  fail "session $1 never printed $2: $(cat "$dir/$1.out")"
}
until_waiting() {  # NAME: its backend waits on a lock
  local pid; pid=$(sed -n 's/^backend \([0-9]*\)$/\1/p' "$dir/$1.out" | head -n 1)
  for _ in $(seq 1 200); do
    [ "$(q "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $pid")" = Lock ] && return 0; sleep 0.05
  done
  fail "session $1 never waited on a lock"
}
finish() {  # \q, not EOF: the other session's psql holds a copy of this FIFO's write end
  local fd pid; eval "fd=\$fd_$1; pid=\$pid_$1"
  echo '\q' >&"$fd"; exec {fd}>&-; wait "$pid" || true
}
hold_then_send() {  # A-SQL B-SQL: A runs A-SQL in a transaction it holds open, B runs B-SQL and
                    # is seen waiting for A, then A commits; their output in $dir/a.out, b.out
  session a; session b
  say a "BEGIN; $1 SELECT 'a applied';"
  until_printed a 'a applied'
  say b "SELECT 'backend ' || pg_backend_pid(); $2"
  until_printed b 'backend '
  until_waiting b
  say a "COMMIT;"
  finish a; finish b
}
race() {  # LABEL ENVELOPE-SQL [SETUP-SQL]: A applies and holds, B sends the same, A commits
  local setup=${3:-}
  hold_then_send "$setup SELECT ops.ingest_event($2) ->> 'status';" "$setup SELECT 'b: ' || (ops.ingest_event($2) ->> 'status');"
  grep -q '^accepted$' "$dir/a.out" || fail "$1: the first sender was not accepted: $(cat "$dir/a.out")"
  grep -q '^b: duplicate$' "$dir/b.out" || fail "$1: the second sender was not a duplicate: $(cat "$dir/b.out")"
  rm -f "$dir"/a.* "$dir"/b.*
}
R2=c5c5c5c5-0000-4000-8000-000000000002
q "DELETE FROM ops.releases WHERE release_id = '$R2'"
race release_created "jsonb_build_object('schema_version', '1.0', 'idempotency_key', 'iso/create', 'event_type', 'release_created',
      'source_system', 'github_actions', 'release_id', '$R2', 'version', 'iso-2')"
dana="SET LOCAL request.jwt.claims = '{\"sub\": \"dev-dana\", \"role\": \"developer\"}';"
rita="SET request.jwt.claims = '{\"sub\": \"rm-rita\", \"role\": \"release_manager\"}';"
exc=$(q "BEGIN; $dana SELECT ops.ingest_event(jsonb_build_object('schema_version', '1.0', 'idempotency_key', 'iso/exc', 'event_type',
            'exception_requested', 'source_system', 'github_actions', 'release_id', '$R', 'gate_code', 'G3', 'reason', 'hotfix',
            'expires_at', now() + interval '2 hours')) #>> '{detail,exception_id}'; COMMIT;")
[ -n "$exc" ] || fail "setup: no exception requested"
race exception_decided "jsonb_build_object('schema_version', '1.0', 'idempotency_key', 'iso/decide', 'event_type', 'exception_decided',
      'source_system', 'github_actions', 'release_id', '$R', 'exception_id', '$exc', 'decision', 'approved')" "$rita"
logged=$(q "SELECT string_agg(processing_status, ',' ORDER BY processing_status) FROM ops.event_ingest_log
             WHERE idempotency_key IN ('iso/create', 'iso/decide')")
[ "$logged" = "accepted,accepted,duplicate,duplicate" ] || fail "log rows of the two races: $logged"
# A REPEATABLE READ second sender can never see the first's row in its snapshot: it fails with
# 40001 (the whole transaction is retried), logs nothing, and its retry is the duplicate.
R2b=c5c5c5c5-0000-4000-8000-00000000002b
q "DELETE FROM ops.releases WHERE release_id = '$R2b'"
created="jsonb_build_object('schema_version', '1.0', 'idempotency_key', 'iso/create-rr', 'event_type', 'release_created',
      'source_system', 'github_actions', 'release_id', '$R2b', 'version', 'iso-2b')"
hold_then_send "SELECT ops.ingest_event($created) ->> 'status';" \
  "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 'b: ' || (ops.ingest_event($created) ->> 'status'); COMMIT;"
grep -q 'retry the transaction' "$dir/b.out" || fail "the REPEATABLE READ second sender was not told to retry: $(cat "$dir/b.out")"
rm -f "$dir"/a.* "$dir"/b.*
retried=$(q "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT ops.ingest_event($created) ->> 'status'; COMMIT;")
rows=$(q "SELECT string_agg(processing_status, ',' ORDER BY processing_status) FROM ops.event_ingest_log WHERE idempotency_key = 'iso/create-rr'")
[ "$retried" = duplicate ] && [ "$rows" = "accepted,duplicate" ] || fail "the retry answered $retried; log rows: $rows"
# The same for a key a READ COMMITTED repeat holds (it takes no lock, so the second sender
# waits on the key itself): the REPEATABLE READ sender is told to retry, and its retry is the
# repeat's duplicate.
R2c=c5c5c5c5-0000-4000-8000-00000000002c
q "DELETE FROM ops.releases WHERE release_id = '$R2c'"
q "SELECT ops.ingest_event(jsonb_build_object('schema_version', '1.0', 'idempotency_key', 'iso/r2c/create', 'event_type', 'release_created',
      'source_system', 'github_actions', 'release_id', '$R2c', 'version', 'iso-2c'))" >/dev/null
r2c() { echo "jsonb_build_object('schema_version', '1.0', 'idempotency_key', 'iso/r2c/$1', 'event_type', 'check_result',
        'source_system', 'github_actions', 'release_id', '$R2c', 'gate_code', 'G1', 'check_name', 'u', 'status', 'pass')"; }
q "SELECT ops.ingest_event($(r2c first))" >/dev/null
hold_then_send "SELECT ops.ingest_event($(r2c again)) #>> '{detail,repeated}';" \
  "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 'b: ' || (ops.ingest_event($(r2c again)) ->> 'status'); COMMIT;"
grep -q '^true$' "$dir/a.out" || fail "the READ COMMITTED sender was not a repeat: $(cat "$dir/a.out")"
grep -q 'retry the transaction' "$dir/b.out" || fail "the REPEATABLE READ sender of a repeat's key was not told to retry: $(cat "$dir/b.out")"
rm -f "$dir"/a.* "$dir"/b.*
rows=$(q "SELECT string_agg(processing_status, ',' ORDER BY processing_status) FROM ops.event_ingest_log WHERE idempotency_key = 'iso/r2c/again'")
[ "$rows" = accepted ] || fail "log rows of the repeat's key after the refused sender: $rows"
# ---- 3. a repeated result against a REPEATABLE READ direct writer --------------------------------
R3=c5c5c5c5-0000-4000-8000-000000000003
q "DELETE FROM ops.releases WHERE release_id = '$R3'"
ev3() {  # key fields
  echo "jsonb_build_object('schema_version', '1.0', 'idempotency_key', 'iso/r3/$1', 'event_type', 'check_result',
        'source_system', 'github_actions', 'release_id', '$R3') || '$2'::jsonb"
}
q "SELECT ops.ingest_event(jsonb_build_object('schema_version', '1.0', 'idempotency_key', 'iso/r3/create', 'event_type', 'release_created',
      'source_system', 'github_actions', 'release_id', '$R3', 'version', 'iso-3'))" >/dev/null
g1=$(q "SELECT ops.ingest_event($(ev3 1 '{"gate_code": "G1", "check_name": "u", "status": "fail"}')) #>> '{detail,gates,G1}'")
[ "$g1" = failed ] || fail "setup: G1 is $g1 after u failed"
ci_claims="SET ROLE ci_service_role; SET request.jwt.claims = '{\"sub\": \"ci-bot\", \"role\": \"ci_service_role\"}';"
# Dated at its transaction's start (allowed), before the repeat: the turn dates it anew.
direct_u_pass="INSERT INTO ops.gate_checks (gate_id, release_id, check_name, status, reported_by, source_system, recorded_at)
                 SELECT gate_id, release_id, 'u', 'pass', 'ci-bot', 'direct', now() FROM ops.release_gates
                  WHERE release_id = '$R3' AND gate_code = 'G1';"
session s
say s "$ci_claims BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 'snapshot taken';"
until_printed s 'snapshot taken'
repeat=$(q "SELECT ops.ingest_event($(ev3 2 '{"gate_code": "G1", "check_name": "u", "status": "fail"}')) #>> '{detail,repeated}'")
[ "$repeat" = true ] || fail "the second u fail was not answered as a repeat: $repeat"
say s "$direct_u_pass SELECT 'inserted'; COMMIT;"
finish s
out=$(cat "$dir/s.out")
grep -q '^inserted$' <<<"$out" || fail "the REPEATABLE READ direct writer of u pass failed after a repeat: $out"
read -r stored fresh later <<<"$(q "SELECT g.status, ops.evaluate_gate(g.gate_id),
                                          (SELECT c.recorded_at > l.received_at FROM ops.gate_checks c, ops.event_ingest_log l
                                            WHERE c.release_id = g.release_id AND c.check_name = 'u' AND c.status = 'pass'
                                              AND l.idempotency_key = 'iso/r3/2')
                                     FROM ops.release_gates g WHERE g.release_id = '$R3' AND g.gate_code = 'G1'" | tr '|' ' ')"
[ "$stored" = "$fresh" ] && [ "$stored" = passed ] || fail "after the direct u pass: stored G1 $stored, a fresh evaluation says $fresh"
[ "$later" = t ] || fail "the direct u pass is not dated after the repeat it followed"
g1=$(q "SELECT ops.ingest_event($(ev3 3 '{"gate_code": "G1", "check_name": "u", "status": "fail"}')) #>> '{detail,gates,G1}'")
[ "$g1" = failed ] || fail "setup: G1 is $g1 after u failed again"
session s2
say s2 "$ci_claims BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 'snapshot taken';"
until_printed s2 'snapshot taken'
g1=$(q "SELECT ops.ingest_event($(ev3 4 '{"gate_code": "G1", "check_name": "v", "status": "pass", "required": false}')) #>> '{detail,gates,G1}'")
[ "$g1" = failed ] || fail "v pass answered G1 $g1"
say s2 "$direct_u_pass SELECT 'inserted'; COMMIT;"
finish s2
out=$(cat "$dir/s2.out")
grep -q 'could not serialize access' <<<"$out" \
  || fail "the REPEATABLE READ direct writer that missed a new result was not refused with 40001: $out"
read -r stored fresh <<<"$(q "SELECT status, ops.evaluate_gate(gate_id) FROM ops.release_gates WHERE release_id = '$R3' AND gate_code = 'G1'" | tr '|' ' ')"
[ "$stored" = "$fresh" ] && [ "$stored" = failed ] || fail "after the refused writer: stored G1 $stored, a fresh evaluation says $fresh"
# A repeat takes no turn: with the release's lock held by a sender of a new result (not yet
# committed), a repeat sent under a 2 s lock_timeout is answered at once from what is committed.
session h
say h "BEGIN; SELECT 'held ' || (ops.ingest_event($(ev3 4h '{"gate_code": "G1", "check_name": "w", "status": "pass", "required": false}')) ->> 'status');"
until_printed h 'held accepted'
unheld=$(q "SET lock_timeout = '2s'; SELECT ops.ingest_event($(ev3 4r '{"gate_code": "G1", "check_name": "u", "status": "fail"}')) #>> '{detail,repeated}'")
say h "COMMIT;"
finish h
[ "$unheld" = true ] || fail "a repeat did not pass a held release lock: $unheld"
# The same repeat answers the same, recorded without the turn (READ COMMITTED) or under it
# (REPEATABLE READ, where it is applied as any event is).
unlocked=$(q "SELECT ops.ingest_event($(ev3 5 '{"gate_code": "G1", "check_name": "u", "status": "fail"}')) -> 'detail'")
locked=$(q "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT ops.ingest_event($(ev3 6 '{"gate_code": "G1", "check_name": "u", "status": "fail"}')) -> 'detail'; COMMIT;")
[ -n "$unlocked" ] && [ "$unlocked" = "$locked" ] || fail "a repeat answered $unlocked without the turn and $locked with it"
grep -q '"repeated": true' <<<"$locked" || fail "the repeat under the turn is not answered as one: $locked"
# ---- 4. one login, two personas; a persona's COPY ------------------------------------------------
# A login that is a member of developer and release_manager (and sre), without JWT claims, is
# one actor whatever role it sets: it cannot request an exception as a developer and approve it
# as a release manager. And a persona's COPY (INSERT ... RETURNING) TO STDOUT, which writes under
# its row security, is not a restore: the promotion block still refuses an ineligible deployment.
R4=c5c5c5c5-0000-4000-8000-000000000004
q "DELETE FROM ops.releases WHERE release_id = '$R4'"
q "SELECT ops.ingest_event(jsonb_build_object('schema_version', '1.0', 'idempotency_key', 'iso/r4/create', 'event_type', 'release_created',
      'source_system', 'github_actions', 'release_id', '$R4', 'version', 'iso-4'))" >/dev/null
q "DO \$\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'fg_iso_two') THEN CREATE ROLE fg_iso_two LOGIN; END IF; END \$\$" 
q "GRANT developer, release_manager, sre TO fg_iso_two"
ev4() {  # key type fields
  echo "ops.ingest_event(jsonb_build_object('schema_version', '1.0', 'idempotency_key', 'iso/r4/$1', 'event_type', '$2',
        'source_system', 'github_actions', 'release_id', '$R4') || $3)"
}
decided=$(psql -X -q -tA -v ON_ERROR_STOP=1 2>&1 <<SQL
SET SESSION AUTHORIZATION fg_iso_two;
SET ROLE developer;
SELECT $(ev4 req exception_requested "jsonb_build_object('gate_code', 'G3', 'reason', 'mine', 'expires_at', now() + interval '1 day')") #>> '{detail,exception_id}' AS exc \\gset
SET ROLE release_manager;
SELECT $(ev4 dec exception_decided "jsonb_build_object('exception_id', :'exc', 'decision', 'approved')") #>> '{detail,http_status}';
SQL
)
approved=$(q "SELECT count(*) FROM ops.exceptions WHERE release_id = '$R4' AND status = 'approved'")
[ "$approved" -eq 0 ] && [ "$decided" != 200 ] \
  || fail "one login requested an exception as developer and approved it as release_manager (answer $decided)"
copied=$(psql -X -q -tA -c "SET SESSION AUTHORIZATION fg_iso_two" -c "SET ROLE sre" \
  -c "COPY (INSERT INTO ops.deployments (release_id, environment, deployed_by) VALUES ('$R4', 'production', 'fg_iso_two') RETURNING deployment_id) TO STDOUT" 2>&1 || true)
deployed=$(q "SELECT count(*) FROM ops.deployments WHERE release_id = '$R4'")
[ "$deployed" -eq 0 ] && grep -q 'not eligible' <<<"$copied" \
  || fail "a persona's COPY (INSERT ... RETURNING) got past the promotion block: $copied"
q "DELETE FROM ops.releases WHERE release_id = '$R4'; DROP OWNED BY fg_iso_two; DROP ROLE fg_iso_two"
# ---- 5. the release lock against direct edits and deletions --------------------------------------
# Every writer of a release takes its row first, then its lock row: an ingest finishing a
# deployment (which updates the release) waits for a direct edit of the release, whose own fact
# write takes the lock after it, instead of deadlocking with it; and a sender that waited while
# the release was deleted answers as for an unknown release and leaves no lock row.
# (New ids each run: a release with a deployment keeps its timeline entries and is never deleted.)
R5=$(q "SELECT gen_random_uuid()")
ev5() {  # key type fields
  echo "ops.ingest_event(jsonb_build_object('schema_version', '1.0', 'idempotency_key', 'iso/$R5/$1', 'event_type', '$2',
        'source_system', 'github_actions', 'release_id', '$R5') || '$3'::jsonb)"
}
D5=$(q "SELECT gen_random_uuid()")
q "SELECT $(ev5 create release_created '{"version": "iso-5"}')" >/dev/null
q "SELECT $(ev5 dep deployment_started "{\"environment\": \"dev\", \"deployment_id\": \"$D5\"}")" >/dev/null
session a; session b
say a "BEGIN; UPDATE ops.releases SET title = 'renamed' WHERE release_id = '$R5'; SELECT 'a edited';"
until_printed a 'a edited'
say b "SELECT 'backend ' || pg_backend_pid(); SELECT 'b: ' || ($(ev5 fin deployment_finished "{\"deployment_id\": \"$D5\", \"status\": \"succeeded\"}") ->> 'status');"
until_printed b 'backend '
until_waiting b
say a "INSERT INTO ops.evidence_artifacts (release_id, artifact_type, uri, submitted_by) VALUES ('$R5', 'runbook', 'https://x/rb', 'rm-1');
       COMMIT; SELECT 'a committed';"
until_printed a 'a committed'
finish a; finish b
grep -q '^b: accepted$' "$dir/b.out" || fail "the deployment's ingest behind a direct edit of its release: $(cat "$dir/b.out")"
status=$(q "SELECT status FROM ops.releases WHERE release_id = '$R5'")
[ "$status" = open ] || fail "a dev deployment moved the release to $status"
rm -f "$dir"/a.* "$dir"/b.*
R5=$(q "SELECT gen_random_uuid()")
q "SELECT $(ev5 create release_created '{"version": "iso-5b"}')" >/dev/null
session a; session b
say a "BEGIN; SELECT $(ev5 c1 check_result '{"gate_code": "G1", "check_name": "u", "status": "pass"}') ->> 'status'; SELECT 'a applied';"
until_printed a 'a applied'
say b "SELECT 'backend ' || pg_backend_pid(); SELECT 'b: ' || coalesce(a #>> '{detail,error}', a::text)
         FROM (SELECT $(ev5 c2 check_result '{"gate_code": "G1", "check_name": "v", "status": "pass"}') AS a) x;"
until_printed b 'backend '
until_waiting b
say a "DELETE FROM ops.releases WHERE release_id = '$R5'; COMMIT;"
finish a; finish b
grep -q '^b: unknown_release$' "$dir/b.out" || fail "a sender that waited while its release was deleted: $(cat "$dir/b.out")"
orphans=$(q "SELECT count(*) FROM ops.release_locks WHERE release_id = '$R5'")
[ "$orphans" -eq 0 ] || fail "the deleted release kept $orphans lock row"
rm -f "$dir"/a.* "$dir"/b.*
# ---- 6. an event applied after waiting for the release lock reads what the holder committed ------
# A deployment to staging is sent while another sender, holding the release's lock, reports the
# build that passes G1 (G2 passed before). After its wait, the deployment's eligibility must be
# read from what that sender committed, not from the statement's snapshot taken before the wait
# (which said G1 pending: a false 409 "not eligible", or with the facts the other way round, an
# "eligible" the promotion trigger then refused as an internal error).
R5=$(q "SELECT gen_random_uuid()")
D6=$(q "SELECT gen_random_uuid()")
q "SELECT $(ev5 create release_created '{"version": "iso-6"}')" >/dev/null
q "SET request.jwt.claims = '{\"sub\": \"qa-6\", \"role\": \"qa_tester\"}'; SELECT $(ev5 qa gate_signoff '{}')" >/dev/null
hold_then_send "SELECT $(ev5 build build_complete '{"status": "pass"}') #>> '{detail,gates,G1}';" \
  "SELECT 'b: ' || coalesce(a #>> '{detail,error}', a ->> 'status')
     FROM (SELECT $(ev5 dep deployment_started "{\"environment\": \"staging\", \"deployment_id\": \"$D6\"}") AS a) x;"
grep -q '^passed$' "$dir/a.out" || fail "the build did not pass G1: $(cat "$dir/a.out")"
grep -q '^b: accepted$' "$dir/b.out" || fail "a staging deployment sent while the build that made it eligible held the lock: $(cat "$dir/b.out")"
rm -f "$dir"/a.* "$dir"/b.*
echo "ok 6 - ops ingest: a staging deployment that waited for the release lock while the build that passed G1 committed was judged on that build (accepted), not on the snapshot taken before its wait"

# ---- 7. a deployment written directly takes the release lock before the promotion check --------
# The same race with the deployment INSERTed directly (the owner; a persona under its policy
# alike): the promotion block waits for the release's lock, then judges the statuses the build
# committed. (It read them before the wait: refused as not eligible here, or, with the facts the
# other way round, a production deployment of a release a revoked exception had just made
# ineligible let in.)
R5=$(q "SELECT gen_random_uuid()")
q "SELECT $(ev5 create release_created '{"version": "iso-7"}')" >/dev/null
q "SET request.jwt.claims = '{\"sub\": \"qa-7\", \"role\": \"qa_tester\"}'; SELECT $(ev5 qa gate_signoff '{}')" >/dev/null
hold_then_send "SELECT $(ev5 build build_complete '{"status": "pass"}') #>> '{detail,gates,G1}';" \
  "INSERT INTO ops.deployments (release_id, environment, deployed_by) VALUES ('$R5', 'staging', 'iso-7') RETURNING 'b: inserted';"
grep -q '^passed$' "$dir/a.out" || fail "case 7: the build did not pass G1: $(cat "$dir/a.out")"
grep -q '^b: inserted$' "$dir/b.out" || fail "a staging deployment inserted while the build that made it eligible held the lock: $(cat "$dir/b.out")"
rm -f "$dir"/a.* "$dir"/b.*
echo "ok 7 - ops direct writes: a staging deployment INSERTed while the build that passed G1 held the release lock waited for it and was judged on that build (inserted), not on the snapshot from before"
echo "ok 5 - ops release lock: an ingest finishing a deployment waits behind a direct edit of its release (whose fact write then takes the lock) and is accepted, no deadlock; a sender that waited while the release was deleted is answered unknown_release and leaves no lock row"
echo "ok 3 - ops identity: one login with two personas and no JWT is one actor (its exception approved by itself: $decided, refused); a persona's COPY (INSERT ... RETURNING) TO STDOUT is refused by the promotion block like an INSERT"

echo "ok 1 - ops direct writes under REPEATABLE READ: a persona's check result dated at its transaction's start, written after a repeated result (no row, no turn), takes the turn, is dated anew after it and commits (stored G1 passed, as a fresh evaluation); written after a new result its snapshot missed, it fails with 40001 and the stored G1 ($stored) equals a fresh evaluation; a repeat passes a held release lock, and answers the same with and without the turn"

echo "ok 2 - ops ingest, one key sent twice at once for release_created and for exception_decided: the second sender waits, then answers as the first's duplicate (no 409), one log row each; a REPEATABLE READ second sender (of a release_created, or of a key a lock-free repeat holds) fails with 40001, logs nothing, and its retry is the duplicate"
echo "ok 4 - ops ingest under REPEATABLE READ: a sender whose snapshot misses a committed check of the release fails with 40001 and logs nothing, the stored G1 ($stored) equals a fresh evaluation, and the retry passes G1"
