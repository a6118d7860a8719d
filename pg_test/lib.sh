# shellcheck shell=bash
# Shared steps for pg_test/setup.sh, pg_test/test.sh and the Dockerfile. Every step is
# idempotent: it checks what is already there and does only what is missing.
set -euo pipefail

FLOWGATE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PGRX_VERSION=0.18.1                 # newest cargo-pgrx that builds with rustc 1.95 (TOOLCHAIN.md)
PG_MAJOR=15
PGMQ_CRATE=0.34.0-alpha.7           # ships pgmq extension SQL 1.13.0
PGBIN=/usr/lib/postgresql/$PG_MAJOR/bin
PG_CONFIG=$PGBIN/pg_config
APT_PACKAGES=(build-essential pkg-config libssl-dev libclang-dev clang sudo curl ca-certificates
  postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR postgresql-contrib postgresql-$PG_MAJOR-cron
  postgresql-$PG_MAJOR-pgtap libtap-parser-sourcehandler-pgtap-perl)
# Only the test suite needs these: libfaketime moves a test server's clock, Chromium renders
# the dashboard, pgaudit logs every statement's parameters (concurrency/secret_logs.sh).
# pg_test/test.sh adds them (install_dependencies test).
TEST_APT_PACKAGES=(libfaketime chromium postgresql-$PG_MAJOR-pgaudit)

# The demo cluster (setup.sh) and the throwaway test cluster (test.sh); both outside $HOME,
# which the postgres user cannot enter.
DEMO_DIR=${FLOWGATE_DEMO_DIR:-/var/tmp/flowgate/demo}
DEMO_PORT=${FLOWGATE_DEMO_PORT:-5599}
DEMO_DB=flowgate
TEST_DIR=${FLOWGATE_TEST_DIR:-/var/tmp/flowgate/test}
TEST_PORT=${FLOWGATE_TEST_PORT:-5598}
TEST_DB=flowgate_test
PGRX_TEST_DIR=${FLOWGATE_PGRX_TEST_DIR:-/var/tmp/flowgate/pgrx-test}
TESTD_PORT=${FLOWGATE_TESTD_PORT:-5597}    # pgTAP suites address flowgate-testd here
TESTD_BIN=${CARGO_TARGET_DIR:-$FLOWGATE_ROOT/pg_test/testd/target}/release/flowgate-testd
SOCKET_DIR=/tmp
# Extra environment of the postgres servers this script starts (test.sh adds a hostile one).
CLUSTER_ENV=()

SUDO=()
[ "$(id -u)" -eq 0 ] || SUDO=(sudo)

step_started=0
step() { step_started=$(date +%s); printf '\n\033[1m==> %s\033[0m\n' "$*"; }
done_step() { printf '    (%ss)\n' "$(( $(date +%s) - step_started ))"; }
die() { printf '\033[31mERROR: %s\033[0m\n' "$*" >&2; exit 1; }

# Postgres refuses to run as root, and must not start from a cwd it cannot read.
as_postgres() { (cd / && "${SUDO[@]}" runuser -u postgres -- "$@"); }

install_apt_packages() {
  step "apt packages"
  local missing=() wanted=("${APT_PACKAGES[@]}")
  [ "${1:-}" = test ] && wanted+=("${TEST_APT_PACKAGES[@]}")
  for p in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    echo "    all ${#wanted[@]} packages present"
  else
    echo "    installing: ${missing[*]}"
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  done_step
}

ensure_postgres_user() {
  # postgresql-common creates it; make sure anyway (a minimal image may lack it).
  id postgres >/dev/null 2>&1 || "${SUDO[@]}" useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
}

install_cargo_pgrx() {
  step "cargo-pgrx $PGRX_VERSION"
  command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain (rustup) first"
  if cargo pgrx --version 2>/dev/null | grep -qx "cargo-pgrx $PGRX_VERSION"; then
    echo "    already installed"
  else
    cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
  fi
  grep -qs '^pg15 = ' "${PGRX_HOME:-$HOME/.pgrx}/config.toml" || cargo pgrx init --pg15 "$PG_CONFIG" >/dev/null
  done_step
}

install_pgmq() {
  step "pgmq extension SQL from crate pgmq $PGMQ_CRATE"
  local ext src v
  ext=$("$PG_CONFIG" --sharedir)/extension
  src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/pgmq-"$PGMQ_CRATE"/src/install/embedded 2>/dev/null | head -1 || true)
  if [ -z "$src" ]; then
    # `cargo info` downloads and unpacks the crate into the registry as a side effect.
    (cd / && cargo info "pgmq@$PGMQ_CRATE" >/dev/null 2>&1) || die "could not download crate pgmq $PGMQ_CRATE from crates.io"
    src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/pgmq-"$PGMQ_CRATE"/src/install/embedded 2>/dev/null | head -1 || true)
    [ -n "$src" ] || die "crate pgmq $PGMQ_CRATE has no src/install/embedded directory"
  fi
  v=$(sed -n "s/^default_version = '\(.*\)'/\1/p" "$src/pgmq.control")
  if [ -f "$ext/pgmq--$v.sql" ]; then
    echo "    pgmq $v already installed"
  else
    "${SUDO[@]}" install -m644 "$src/pgmq.control" "$ext/"
    "${SUDO[@]}" install -m644 "$src/sql/pgmq.sql" "$ext/pgmq--$v.sql"
    "${SUDO[@]}" install -m644 "$src"/sql/pgmq--*--*.sql "$ext/"
    echo "    installed pgmq $v"
  fi
  done_step
}

install_dependencies() {
  install_apt_packages "${1:-}"
  ensure_postgres_user
  install_cargo_pgrx
  install_pgmq
}

# Clusters ----------------------------------------------------------------------------------

cluster_running() { [ -f "$1/data/PG_VERSION" ] && as_postgres "$PGBIN/pg_ctl" -D "$1/data" status >/dev/null 2>&1; }

# A fast shutdown that does not finish in 30 s (seen once: flowgate's worker, started a
# moment before the shutdown request, kept waiting on its latch) is logged and made immediate,
# so one stuck process cannot fail the run; the warning stays in the output.
cluster_stop() {
  cluster_running "$1" || return 0
  as_postgres "$PGBIN/pg_ctl" -D "$1/data" -m fast -t 30 -w stop >/dev/null 2>&1 && return 0
  echo "WARNING: $1 did not stop within 30 s (fast shutdown); stopping it immediately" >&2
  as_postgres "$PGBIN/pg_ctl" -D "$1/data" -m immediate -w stop >/dev/null
  return 0
}

# cluster_start DIR PORT DB [worker|preload]: create (once) and start a cluster with pg_cron
# preloaded for DB; with "preload", flowgate is preloaded too; with "worker", also its background
# worker runs in DB.
cluster_start() {
  local dir=$1 port=$2 db=$3 preload=pg_cron worker_conf=""
  if [ "${4:-}" = worker ]; then
    preload=pg_cron,flowgate
    # The test cluster: pgaudit, inert until a database or session sets pgaudit.log.
    [ -f "$("$PG_CONFIG" --pkglibdir)/pgaudit.so" ] && preload="$preload,pgaudit"
    worker_conf=$(printf "flowgate.worker_database = '%s'\nflowgate.worker_interval_ms = 200" "$db")
  elif [ "${4:-}" = preload ]; then
    preload=pg_cron,flowgate   # loaded once by the postmaster, not by every new backend
  fi
  "${SUDO[@]}" install -d -o postgres -g postgres "$dir"
  # pg_net and Supabase Vault have no Debian package; where they were installed by hand, the
  # clusters preload them as a Supabase server does (Vault reads its root key from a script).
  local pkglib extra_conf=""
  pkglib=$("$PG_CONFIG" --pkglibdir)
  if [ -f "$pkglib/pg_net.so" ]; then
    preload="$preload,pg_net"
    extra_conf+="pg_net.database_name = '$db'"$'\n'
  fi
  if [ -f "$pkglib/supabase_vault.so" ]; then
    preload="$preload,supabase_vault"
    extra_conf+="vault.getkey_script = '$dir/vault-getkey'"$'\n'
    printf '#!/bin/sh\necho %s\n' "$(printf '%s' "flowgate-test-vault-$dir" | sha256sum | cut -c1-64)" \
      | as_postgres tee "$dir/vault-getkey" >/dev/null
    "${SUDO[@]}" chmod 0700 "$dir/vault-getkey"
  fi
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    # UTF8 whatever the environment says (flowgate refuses other encodings); C.UTF-8 collation.
    as_postgres "$PGBIN/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --locale=C.UTF-8 >/dev/null
    as_postgres tee -a "$dir/data/postgresql.conf" >/dev/null <<CONF
port = $port
listen_addresses = ''
unix_socket_directories = '$SOCKET_DIR'
shared_preload_libraries = '$preload'
cron.database_name = '$db'
cron.use_background_workers = on
max_worker_processes = 16
max_connections = 150
# Encrypts flowgate's secrets when Supabase Vault is not installed. A throwaway value for these
# local clusters only; a real server sets its own (see the README).
flowgate.tenant_key_passphrase = 'local-clusters-only-passphrase-$(basename "$dir")'
$extra_conf$worker_conf
CONF
  fi
  if ! grep -q '^flowgate.tenant_key_passphrase' "$dir/data/postgresql.conf" 2>/dev/null; then
    # A cluster made before flowgate encrypted its secrets: add a passphrase, and reload it.
    echo "flowgate.tenant_key_passphrase = 'local-clusters-only-passphrase-$(basename "$dir")'" | as_postgres tee -a "$dir/data/postgresql.conf" >/dev/null
    cluster_running "$dir" && as_postgres "$PGBIN/pg_ctl" -D "$dir/data" reload >/dev/null
  fi
  cluster_running "$dir" || as_postgres env "${CLUSTER_ENV[@]}" "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w start >/dev/null \
    || { cat "$dir/log" >&2; die "postgres did not start (log above)"; }
  psql_at "$port" postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 \
    || psql_at "$port" postgres -c "CREATE DATABASE $db" >/dev/null
}

# cluster_restart DIR [FAKE_TIME]: restart a created cluster; with FAKE_TIME ("YYYY-MM-DD HH:MM:SS",
# UTC) its clock starts there and runs on (libfaketime), so suites can run on any day and hour.
cluster_restart() {
  local dir=$1 fake=${2:-} lib env=(env "${CLUSTER_ENV[@]}")
  cluster_stop "$dir"
  if [ -n "$fake" ]; then
    lib=$(ls /usr/lib/*/faketime/libfaketime.so.1 2>/dev/null | head -1)
    [ -n "$lib" ] || die "libfaketime.so.1 not found (apt package libfaketime)"
    env+=(TZ=UTC LD_PRELOAD="$lib" FAKETIME="@$fake" FAKETIME_DONT_FAKE_MONOTONIC=1)
  fi
  as_postgres "${env[@]}" "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w start >/dev/null \
    || { tail -n 20 "$dir/log" >&2; die "postgres did not restart (log above)"; }
}

psql_at() { local port=$1 db=$2; shift 2; PGOPTIONS="--client-min-messages=warning" psql -X -v ON_ERROR_STOP=1 -h "$SOCKET_DIR" -p "$port" -U postgres -d "$db" "$@"; }

# Build -------------------------------------------------------------------------------------

# Install the release build. Running clusters keep the old library mapped, so they are
# stopped around the copy and started again afterwards.
install_flowgate() {
  step "build and install flowgate (release)"
  local restart=()
  for d in "$DEMO_DIR" "$TEST_DIR"; do cluster_running "$d" && { restart+=("$d"); cluster_stop "$d"; }; done
  (cd "$FLOWGATE_ROOT" && cargo pgrx install --release --pg-config "$PG_CONFIG" ${SUDO[0]:+--sudo} 2>&1 | grep -vE '^\s+(Compiling|Checking)' | tail -n 3)
  for d in "${restart[@]}"; do as_postgres "$PGBIN/pg_ctl" -D "$d/data" -l "$d/log" -w start >/dev/null; done
  done_step
}

# The version being built (Cargo.toml); the releases before it (sql/released/), oldest first.
current_version() { sed -n 's/^version = "\(.*\)"$/\1/p' "$FLOWGATE_ROOT/Cargo.toml" | head -n 1; }
previous_releases() {
  (cd "$FLOWGATE_ROOT/sql/released" && ls flowgate--*.sql 2>/dev/null) | sed 's/^flowgate--\(.*\)\.sql$/\1/' \
    | { grep -vx "$(current_version)" || true; } | sort -V
}

# Put a release's install script (as released) beside this version's, so a test can create
# flowgate at that version and upgrade it.
install_release_script() {
  "${SUDO[@]}" install -m 644 "$FLOWGATE_ROOT/sql/released/flowgate--$1.sql" "$("$PG_CONFIG" --sharedir)/extension/"
}

# The newest release before this version, its install script put beside this version's;
# prints the version, or nothing when there is none.
install_previous_release() {
  local prev
  prev=$(previous_releases | tail -n 1)
  [ -n "$prev" ] || return 0
  install_release_script "$prev"
  echo "$prev"
}

# (Re)create flowgate in DB when the installed script differs from the one it was created from.
ensure_extensions() {
  local port=$1 db=$2 dir=$3 stamp sum
  stamp="$dir/flowgate.sql.sha256"
  # This version's install script and the upgrade scripts (not older install scripts a test
  # put beside them).
  sum=$( (cat "$("$PG_CONFIG" --sharedir)/extension/flowgate--$(current_version).sql" \
             "$("$PG_CONFIG" --sharedir)"/extension/flowgate--*--*.sql 2>/dev/null || true) | sha256sum | cut -d' ' -f1)
  psql_at "$port" "$db" -q -c "CREATE EXTENSION IF NOT EXISTS pg_cron; CREATE EXTENSION IF NOT EXISTS pgmq; CREATE EXTENSION IF NOT EXISTS pgcrypto;"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$sum" ]; then
    psql_at "$port" "$db" -q -c "DROP EXTENSION IF EXISTS flowgate CASCADE; CREATE EXTENSION flowgate;"
    echo "$sum" | "${SUDO[@]}" tee "$stamp" >/dev/null
  else
    psql_at "$port" "$db" -q -c "CREATE EXTENSION IF NOT EXISTS flowgate;"
  fi
}

# The test HTTP server (pg_test/testd): built once, started per test run.
build_testd() {
  (cd "$FLOWGATE_ROOT/pg_test/testd" && cargo build --release --quiet)
}

start_testd() {
  build_testd
  # A server already answering there (one left running) would be tested instead of ours, with
  # its request counts from earlier runs: refuse rather than race it.
  if curl -fs "http://127.0.0.1:$TESTD_PORT/_stats" >/dev/null 2>&1; then
    die "port $TESTD_PORT already answers (a flowgate-testd left running? pkill -f 'flowgate-testd serve'; or set FLOWGATE_TESTD_PORT)"
  fi
  "$TESTD_BIN" serve "$TESTD_PORT" &
  TESTD_PID=$!
  for _ in $(seq 1 50); do
    kill -0 "$TESTD_PID" 2>/dev/null || die "flowgate-testd exited (is port $TESTD_PORT taken? set FLOWGATE_TESTD_PORT)"
    curl -fs "http://127.0.0.1:$TESTD_PORT/_stats" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "flowgate-testd did not start on port $TESTD_PORT"
}

stop_testd() { [ -n "${TESTD_PID:-}" ] && kill "$TESTD_PID" 2>/dev/null; TESTD_PID=; return 0; }

# The demo's sandbox: flowgate-testd playing the payment webhook, the ledger, Slack, Linear and
# the Supabase Management API on 127.0.0.1:$SANDBOX_PORT, left running in the background
# (pid file in $DEMO_DIR); pg_test/setup.sh --stop stops it with the demo cluster.
SANDBOX_PORT=${FLOWGATE_SANDBOX_PORT:-5595}
SANDBOX_PID_FILE=$DEMO_DIR/sandbox.pid
sandbox_running() { [ -f "$SANDBOX_PID_FILE" ] && kill -0 "$(cat "$SANDBOX_PID_FILE")" 2>/dev/null; }
start_sandbox() {
  build_testd
  if sandbox_running; then return 0; fi
  if curl -fs "http://127.0.0.1:$SANDBOX_PORT/_stats" >/dev/null 2>&1; then
    die "port $SANDBOX_PORT already answers: set FLOWGATE_SANDBOX_PORT to a free port"
  fi
  "${SUDO[@]}" install -d "$DEMO_DIR"
  nohup "$TESTD_BIN" serve "$SANDBOX_PORT" >"$DEMO_DIR/sandbox.log" 2>&1 &
  echo $! | "${SUDO[@]}" tee "$SANDBOX_PID_FILE" >/dev/null
  for _ in $(seq 1 50); do
    curl -fs "http://127.0.0.1:$SANDBOX_PORT/_stats" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "the sandbox did not start on port $SANDBOX_PORT (log: $DEMO_DIR/sandbox.log)"
}
stop_sandbox() {
  sandbox_running && kill "$(cat "$SANDBOX_PID_FILE")" 2>/dev/null
  "${SUDO[@]}" rm -f "$SANDBOX_PID_FILE"
  return 0
}
