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

# MPICH, beside the Open MPI of the main environment, for the tests that build
# and run BlueFog against it (tests/test_mpich_build.py, MPICH launcher tests):
# the PyPI mpich wheel (pinned in requirements-mpich.txt) under .venv/mpich.
setup_mpich() {
  local prefix="$VENV/mpich" stamp="$VENV/mpich/.requirements-mpich.sha"
  local want
  want="$(sha256sum requirements-mpich.txt | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[dev] installing MPICH under $prefix" >&2
    rm -rf "$prefix"
    "$PY" -m pip install -q --no-deps --prefix "$prefix" -r requirements-mpich.txt
    echo "$want" > "$stamp"
  fi
  export BLUEFOG_TEST_MPICH_PREFIX="${BLUEFOG_TEST_MPICH_PREFIX:-$prefix}"
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
    setup_mpich
    exec "$PY" -m pytest -q -rs tests "$@"
    ;;
  *)
    echo "usage: scripts/dev.sh {setup|train|test} [args]" >&2
    exit 2
    ;;
esac
