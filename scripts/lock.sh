#!/usr/bin/env bash
# Refreshes uv.lock with the pinned uv: every dependency to its newest release
# within pyproject.toml's ranges, or just what the arguments ask.
# Usage: bash scripts/lock.sh                       # uv lock --upgrade
#        bash scripts/lock.sh --upgrade-package X   # uv lock --upgrade-package X
# Then run bash scripts/test.sh and commit uv.lock with pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

bootstrap_uv
[ $# -gt 0 ] || set -- --upgrade
log "uv lock $*"
"$UV" lock "$@"
git diff --stat -- uv.lock 2>/dev/null || true
