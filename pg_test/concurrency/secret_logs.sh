#!/usr/bin/env bash
# No secret reaches the server log, even with every statement's parameters logged: pgaudit with
# pgaudit.log = 'all' and pgaudit.log_parameter = on (Supabase ships pgaudit) writes each nested
# statement flowgate runs, with the values bound to it.
#
# In a database of its own (audited from its first session): a named secret is stored with
# pgcrypto and sent as a delivery's bearer token by the native transport; a tenant is provisioned
# against flowgate-testd's Management API (its API keys and database password stored with
# pgcrypto) and its keys are read back. Each secret is sent to the server built from pieces, so
# the top-level statement's own text (which pgaudit logs as the caller wrote it) never holds it.
# The log written meanwhile must hold pgaudit's parameter lines (a canary bound only inside
# flowgate) and none of: the passphrase, the named secret, the access token, a tenant key, the
# database password.
# Env: PGHOST PGPORT PGUSER (the test cluster, pgaudit preloaded), FLOWGATE_PGDATA (its log is
# beside it), FLOWGATE_TESTD_URL.
set -euo pipefail
DB=fg_secretlog_$$
LOG="$FLOWGATE_PGDATA/../log"
TESTD=${FLOWGATE_TESTD_URL:?FLOWGATE_TESTD_URL names flowgate-testd}
q() { psql -X -q -v ON_ERROR_STOP=1 -tA -d "$DB" "$@"; }
fail() { echo "not ok: no secret in the server log: $*" >&2; exit 1; }
cleanup() { psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true; }
trap cleanup EXIT

[ "$(psql -X -tA -d postgres -c "SELECT count(*) FROM pg_settings WHERE name = 'pgaudit.log_parameter'")" = 1 ] \
  || fail "pgaudit is not loaded (lib.sh installs postgresql-15-pgaudit and preloads it in the test cluster)"
[ -r "$LOG" ] || fail "cannot read the server log $LOG"
psql -X -q -d postgres -c "CREATE DATABASE $DB" -c "ALTER DATABASE $DB SET pgaudit.log = 'all'" \
  -c "ALTER DATABASE $DB SET pgaudit.log_parameter = on" -c "ALTER DATABASE $DB SET pgaudit.log_level = 'log'" >/dev/null
q -c "CREATE EXTENSION pgmq" -c "CREATE EXTENSION pgcrypto" -c "CREATE EXTENSION flowgate" >/dev/null
passphrase=$(q -c "SHOW flowgate.tenant_key_passphrase")
[ "${#passphrase}" -ge 16 ] || fail "the test cluster has no flowgate.tenant_key_passphrase"
offset=$(stat -c %s "$LOG")

# Sent built from pieces: the statement's text holds neither value nor name whole.
secret="bearer-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
token="sbp_$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
half=$(( ${#secret} / 2 ))
q -c "SELECT flowgate.set_secret('audit' || '_token_canary', '${secret:0:$half}' || '${secret:$half}')" >/dev/null
q -c "SELECT flowgate.set_secret('supabase_access_token', '${token:0:6}' || '${token:6}')" >/dev/null
q -c "SELECT flowgate.set_setting('flowgate.http_transport', '\"native\"')" >/dev/null
q -c "INSERT INTO flowgate.deliveries (owner_module, owner_id, url, idempotency_key, auth_secret)
      VALUES ('secret_logs', 'r1', '$TESTD/ok', 'secret-logs-$$', 'audit' || '_token_canary')" >/dev/null

# A tenant, provisioned through the outbox: create, api-keys (its answer holds the keys), schema sync.
q -c "SELECT flowgate.set_setting('provisioning.organization_id', '\"org-test\"')" \
  -c "SELECT flowgate.set_setting('provisioning.management_api_url', to_jsonb('$TESTD/mgmt/ok'::text))" \
  -c "SELECT flowgate.set_setting('provisioning.request_timeout_ms', '5000')" \
  -c "SELECT provisioning.enqueue_client('audit-$$-' || substr(md5(random()::text), 1, 6), 'Audit Tenant', 'eu-west-1', 'pro')" >/dev/null
for _ in $(seq 1 60); do
  q -c "SELECT provisioning.run_jobs()" >/dev/null
  q -c "CALL flowgate.run_outbox()" >/dev/null
  [ "$(q -c "SELECT count(*) FROM provisioning.clients WHERE provisioning_status = 'ready'")" = 1 ] \
    && [ "$(q -c "SELECT count(*) FROM flowgate.deliveries WHERE owner_module = 'secret_logs' AND status = 'delivered'")" = 1 ] && break
  sleep 0.2
done
state=$(q -c "SELECT (SELECT string_agg(provisioning_status::text || ' ' || coalesce(key_storage, '-'), ',') FROM provisioning.clients)
              || ' / ' || (SELECT string_agg(status::text, ',') FROM flowgate.deliveries WHERE owner_module = 'secret_logs')")
[ "$state" = "ready pgcrypto / delivered" ] \
  || fail "the flow did not finish (clients / delivery: $state; $(q -c "SELECT string_agg(last_error, '; ') FROM flowgate.deliveries WHERE last_error IS NOT NULL" | head -c 400))"
keys=$(q -c "SELECT k.anon_key || ' ' || k.service_key || ' ' || k.db_pass FROM provisioning.clients c, provisioning.tenant_keys(c.client_id) k")
read -r anon service db_pass <<<"$keys"
case "$anon $service" in *fgtestsig*fgtestsig*) ;; *) fail "the tenant keys did not read back (got ${#keys} characters)" ;; esac
[ "${#db_pass}" -ge 16 ] || fail "the database password did not read back"

written=$(tail -c +"$((offset + 1))" "$LOG")
# (grep reads a here-string: with pipefail, `echo | grep -q` fails when grep stops reading early.)
# (Only as a bound parameter, in the field after the statement: "<name>,\x<ciphertext>".)
grep -q 'AUDIT: .*"audit_token_canary,\\x' <<<"$written" \
  || fail "pgaudit logged no statement parameters (the canary name, bound only inside flowgate, is not in the log)"
audited=$(grep -c 'AUDIT: ' <<<"$written" || true)
for what in passphrase secret token anon service db_pass; do
  value=${!what}
  if grep -qF -- "$value" <<<"$written"; then
    fail "the $what is in the server log: $(grep -F -- "$value" <<<"$written" | head -n 2 | sed "s/$value/<$what>/g" | cut -c1-400)"
  fi
done
if grep -q 'fgtestsig' <<<"$written"; then
  fail "a tenant key is in the server log: $(grep 'fgtestsig' <<<"$written" | head -n 1 | sed -E 's/eyJ[^ ,"\\]*fgtestsig/<key>/g' | cut -c1-400)"
fi
echo "ok 1 - no secret in the server log: $audited pgaudit lines with every parameter (a secret stored and sent as a bearer token, a tenant provisioned and its keys read back) hold neither the passphrase, the secret, the access token, the tenant keys nor the database password"
