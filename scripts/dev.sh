#!/usr/bin/env bash
# One entry point that does ALL its own set-up (virtualenv .venv in the repo root,
# pinned dev dependencies, native build), then acts:
#   scripts/dev.sh setup          set up and build only
#   scripts/dev.sh train [args]   the main job: decentralized training on 4 ranks
#   scripts/dev.sh test [args]    the whole test suite (args go to pytest)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

setup() {
  if [ ! -x "$PY" ]; then
    echo "[dev] creating $VENV" >&2
    python3 -m venv "$VENV"
  fi
  # Reinstall the pinned dependencies only when requirements-dev.txt changes.
  local stamp="$VENV/.requirements-dev.sha"
  local want
  want="$(sha256sum requirements-dev.txt | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[dev] installing pinned dev dependencies" >&2
    "$PY" -m pip install -q --upgrade pip
    "$PY" -m pip install -q -r requirements-dev.txt
    echo "$want" > "$stamp"
  fi
  echo "[dev] building bluefog (incremental)" >&2
  BLUEFOG_WITH_PYTORCH="${BLUEFOG_WITH_PYTORCH:-1}" BLUEFOG_WITH_TENSORFLOW="${BLUEFOG_WITH_TENSORFLOW:-1}" \
    "$PY" -m pip install -q --no-build-isolation --no-deps -e . >&2
}

cmd="${1:-test}"
shift || true
case "$cmd" in
  setup)
    setup
    ;;
  train)
    setup
    exec "$VENV/bin/bfrun" -np 4 "$PY" examples/pytorch_digits.py "$@"
    ;;
  test)
    setup
    exec "$PY" -m pytest -q -rs tests "$@"
    ;;
  *)
    echo "usage: scripts/dev.sh {setup|train|test} [args]" >&2
    exit 2
    ;;
esac
