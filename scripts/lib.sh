# Shared by scripts/*.sh (sourced, not run): logging, root for apt-get, the
# Python check, and the pinned uv in a tools venv (.tools/).
# shellcheck shell=bash

# The one place the uv version is pinned; uv.lock was made with it.
UV_VERSION=0.13.9

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS="$ROOT/.tools"
UV="$TOOLS/bin/uv"
SCRIPT="scripts/$(basename "$0")"
export DEBIAN_FRONTEND=noninteractive

log() { printf '\n== %s\n' "$*"; }

# One line on stderr naming the script, then exit 1.
die() {
  printf '%s: %s\n' "$SCRIPT" "$*" >&2
  exit 1
}

# Root, or sudo without a password (never a prompt: CI and scripts have no
# terminal to answer one).
can_root() {
  [ "${EUID:-$(id -u)}" -eq 0 ] || { command -v sudo >/dev/null && sudo -n true 2>/dev/null; }
}

# run_root WHAT CMD...: CMD as root, directly when we are root, else through
# sudo -n; without either, one line saying what it was for and the command.
run_root() {
  local what=$1
  shift
  if [ "${EUID:-$(id -u)}" -eq 0 ]; then
    "$@"
  elif can_root; then
    sudo -n "$@"
  else
    die "needs root to $what (no root, no password-less sudo); run as root: $*; then run $SCRIPT again"
  fi
}

# apt_install WHAT PACKAGE...: Debian packages, quietly, through run_root;
# apt-get update runs at most once per script run.
APT_UPDATED=
apt_install() {
  local what=$1
  shift
  command -v apt-get >/dev/null ||
    die "needs $what (Debian packages: $*) and has no apt-get here; install it by hand, then run $SCRIPT again"
  can_root ||
    die "needs root to install $what (no root, no password-less sudo); install it by hand: sudo apt-get install $*; then run $SCRIPT again"
  apt_update
  # Install only: a package's own service (PostgreSQL, Redis, nginx on port
  # 80, Caddy) is not started, as its port may be taken; the scripts start
  # what they need themselves, and the tests run their own proxies.
  local made_policy=''
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | run_root "install $*" tee /usr/sbin/policy-rc.d >/dev/null
    run_root "install $*" chmod +x /usr/sbin/policy-rc.d
    made_policy=1
    # Removed even when the install fails.
    trap 'run_root "remove /usr/sbin/policy-rc.d" rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  run_root "install $*" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  if [ -n "$made_policy" ]; then
    run_root "remove /usr/sbin/policy-rc.d" rm -f /usr/sbin/policy-rc.d
    trap - EXIT
  fi
}
apt_update() {
  [ -z "$APT_UPDATED" ] || return 0
  run_root "update the Debian package lists" apt-get update -qq
  APT_UPDATED=1
}

# python3 >= 3.11; PYTHON is its real path (not a pyenv shim), for uv.
require_python() {
  command -v python3 >/dev/null ||
    die "python3 (3.11 or newer) is needed and none is on PATH; install it (Debian: sudo apt-get install python3) and run $SCRIPT again"
  if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    die "python3 3.11 or newer is needed; $(command -v python3) is $(python3 -c 'import platform; print(platform.python_version())')"
  fi
  PYTHON=$(python3 -c 'import sys; print(sys.executable)')
  # uv uses this interpreter and never downloads one of its own.
  export UV_PYTHON="$PYTHON" UV_PYTHON_DOWNLOADS=never
}

# `python3 -m venv` needs ensurepip, which Debian ships apart from Python in
# python3.X-venv (python3-venv for the default python3).
require_venv() {
  python3 -c 'import ensurepip, venv' 2>/dev/null && return 0
  local minor pkg
  minor=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  case "$PYTHON" in
    /usr/bin/* | /bin/*) ;;
    *) die "$PYTHON has no ensurepip, so 'python3 -m venv' cannot work; use a Python with venv and ensurepip" ;;
  esac
  # The versioned package matches this python3 exactly; python3-venv is the
  # default python3's, for a release that lacks the versioned one.
  pkg="python$minor-venv"
  can_root && apt_update
  apt-cache show "$pkg" >/dev/null 2>&1 || pkg=python3-venv
  log "$pkg (python3 -m venv needs ensurepip, which Debian ships in it)"
  apt_install "$pkg, for python3 -m venv" "$pkg"
  python3 -c 'import ensurepip, venv' 2>/dev/null ||
    die "python3 still has no ensurepip after installing $pkg"
}

# The pinned uv in .tools/ (a venv of its own), reused while at UV_VERSION.
bootstrap_uv() {
  require_python
  # `uv --version` says "uv 0.13.9" or "uv 0.13.9 (x86_64-unknown-linux-gnu)".
  local have=''
  if [ -x "$UV" ]; then
    have=$("$UV" --version 2>/dev/null | cut -d' ' -f2) || have=''
  fi
  if [ "$have" = "$UV_VERSION" ]; then
    log "uv $UV_VERSION (reused from .tools/)"
  else
    require_venv
    log "uv $UV_VERSION into .tools/"
    python3 -m venv --clear "$TOOLS"
    "$TOOLS/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
      --only-binary=:all: "uv==$UV_VERSION"
  fi
  export UV
}

# uv sync ARGS...: the project venv .venv exactly as uv.lock says (--locked).
# A lock that no longer matches pyproject.toml is one line, not uv's hints.
uv_sync() {
  local out
  if ! out=$("$UV" sync --locked --quiet "$@" 2>&1); then
    if grep -q 'needs to be updated' <<<"$out"; then
      die "uv.lock does not match pyproject.toml; run 'bash scripts/lock.sh' and commit uv.lock"
    fi
    printf '%s\n' "$out" >&2
    die "uv sync failed (above)"
  fi
  [ -z "$out" ] || printf '%s\n' "$out"
}
