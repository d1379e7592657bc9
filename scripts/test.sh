#!/usr/bin/env bash
# Installs everything the tests need and runs them: services, the virtualenv
# .venv exactly as uv.lock says (with the test extras), the JS clients, the
# proxies, Chromium, then ruff, mypy --strict, lint-imports, pytest.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

PG_HBA_MARK="# Added by the chat gateway's scripts/test.sh: its tests connect over loopback without a password."

# psql as the tests connect: user postgres over TCP, never a password prompt.
pg_check() {
  PGCONNECT_TIMEOUT=5 psql -w -X -q -h 127.0.0.1 -p 5432 -U postgres -d postgres -tAc 'select 1' 2>&1
}

# The local cluster on port 5432 (Debian's postgresql-common): sets PG_VER
# and PG_NAME.
pg_cluster() {
  PG_VER='' PG_NAME=''
  read -r PG_VER PG_NAME < <(pg_lsclusters -h 2>/dev/null | awk '$3 == 5432 { print $1, $2; exit }') || true
  [ -n "$PG_VER" ]
}

# Loopback connections trusted, at the top of pg_hba.conf so that they come
# before the cluster's own password lines; then a reload.
pg_trust_loopback() {
  pg_cluster ||
    die "PostgreSQL on 127.0.0.1:5432 wants a password from user postgres and is no Debian cluster here; trust loopback connections in its pg_hba.conf, then run $SCRIPT again"
  local hba="/etc/postgresql/$PG_VER/$PG_NAME/pg_hba.conf" tmp
  if ! run_root "read $hba" grep -qF "$PG_HBA_MARK" "$hba"; then
    tmp=$(mktemp)
    printf '%s\n%s\n%s\n\n' "$PG_HBA_MARK" \
      'host all all 127.0.0.1/32 trust' 'host all all ::1/128 trust' >"$tmp"
    run_root "read $hba" cat "$hba" >>"$tmp"
    # tee keeps the file's owner and mode.
    run_root "trust loopback connections in $hba" tee "$hba" <"$tmp" >/dev/null
    rm -f "$tmp"
  fi
  run_root "reload PostgreSQL $PG_VER/$PG_NAME" pg_ctlcluster "$PG_VER" "$PG_NAME" reload
  log "PostgreSQL: loopback connections now trusted for the tests (added at the top of $hba)"
}

# Whether something listens on 127.0.0.1:PORT (bash's /dev/tcp, no client needed).
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

log "services (PostgreSQL on 127.0.0.1:5432, Redis on 127.0.0.1:6379)"
pg_installed=
if ! port_open 5432; then
  if ! command -v pg_ctlcluster >/dev/null; then
    apt_install "PostgreSQL" postgresql
    pg_installed=1
  fi
  pg_cluster || die "PostgreSQL is installed but no cluster of it uses port 5432 (pg_lsclusters); make one (pg_createcluster --port 5432), then run $SCRIPT again"
  # Packages are installed without starting their services (lib.sh).
  if ! pg_ctlcluster "$PG_VER" "$PG_NAME" status >/dev/null 2>&1; then
    run_root "start PostgreSQL $PG_VER/$PG_NAME" \
      pg_ctlcluster --skip-systemctl-redirect "$PG_VER" "$PG_NAME" start
  fi
  for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
command -v psql >/dev/null || apt_install "the PostgreSQL client psql" postgresql-client
# A new cluster asks for passwords over TCP; the tests connect without one.
if [ -n "$pg_installed" ]; then
  pg_trust_loopback
elif ! pg_out=$(pg_check); then
  case "$pg_out" in
    *password* | *authentication* | *pg_hba.conf*) pg_trust_loopback ;;
    *) die "PostgreSQL on 127.0.0.1:5432 does not answer: $(head -n1 <<<"$pg_out")" ;;
  esac
fi
pg_out=$(pg_check) || die "PostgreSQL on 127.0.0.1:5432 refuses user postgres: $(head -n1 <<<"$pg_out")"
# The tests start redis-servers of their own too, so the binary is needed
# even when a Redis already answers.
command -v redis-server >/dev/null || apt_install "Redis" redis-server
if ! port_open 6379; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
fi

log "uv and the virtualenv .venv: the gateway and its test extras, as uv.lock says"
bootstrap_uv
uv_sync --extra test

log "JS clients (tests/js: socket.io-client, as the web app ships it)"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt_install "Node.js and npm" nodejs npm
fi
npm ci --prefix tests/js --no-audit --no-fund --loglevel=error

log "proxies (nginx and Caddy from Debian, run on loopback by tests/proxy)"
missing=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v caddy >/dev/null || missing+=(caddy)
command -v openssl >/dev/null || missing+=(openssl)
[ ${#missing[@]} -eq 0 ] || apt_install "the proxies the tests run" "${missing[@]}"

log "Chromium (Debian's, driven by tests/browser through playwright: never a browser of playwright's own)"
# The browser test installs Open WebUI's web app itself (gateway webui install: pip
# fetches the open-webui wheel once per run into pytest's temporary directory).
[ -x /usr/bin/chromium ] || apt_install "Chromium, for the browser test" chromium

log "ruff"
.venv/bin/ruff check gateway tests bench
log "mypy --strict gateway"
.venv/bin/mypy --strict gateway
log "lint-imports (the layers declared in pyproject.toml)"
.venv/bin/lint-imports --no-cache

log "pytest"
# tests/test_lock.py runs the pinned uv.
export UV
.venv/bin/python -m pytest "$@"
