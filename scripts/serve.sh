#!/usr/bin/env bash
# Quick start: the gateway with its locked runtime dependencies in .venv, then
# `gateway serve` (http://127.0.0.1:8080 by default, embedded defaults).
# Usage: bash scripts/serve.sh [gateway serve args...], e.g. --port 8081
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

log "uv and the virtualenv .venv: the gateway and its runtime dependencies, as uv.lock says"
bootstrap_uv
# --inexact: keeps the test extras that an earlier scripts/test.sh installed.
uv_sync --inexact

log "gateway serve $*"
exec .venv/bin/gateway serve "$@"
