#!/usr/bin/env bash
# scripts/test.sh - set up (scripts/setup.sh), check the import-layer contracts, run the test suite.
#
#   bash scripts/test.sh [--no-system] [PYTEST ARGS...]      e.g.  bash scripts/test.sh -x -k archive
#
# * `lint-imports` (the import-linter contracts in pyproject.toml: only gui imports Qt, only
#   render/gui import VTK, layers point down) runs first; pytest runs whatever its result, and
#   the script fails if either failed (pytest's own exit code wins when it is non-zero).
# * Then `.venv/bin/python -m pytest` over the whole suite (tests/), extra arguments passed on.
# * Environment: TCP_NODELAY=1 (dcmtk peers and clients disable Nagle only with it); with no
#   DISPLAY, QT_QPA_PLATFORM=offscreen and, when libOSMesa is present, VTK's OSMesa window
#   (see /work/shared/HEADLESS.md); values already set are kept.
# CI runs `bash .ci/run` (= this script) on a clean clone, as root.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SETUP_ARGS=()
PYTEST_ARGS=()
for a in "$@"; do
  case "$a" in
    --no-system) SETUP_ARGS+=(--no-system) ;;
    *) PYTEST_ARGS+=("$a") ;;
  esac
done

log() { printf '[test] %s\n' "$*" >&2; }

# The suite includes the desktop application's tests (pytest-qt), so the GUI
# extra (PySide6-Essentials + VTK) is always installed for it.
bash "$ROOT/scripts/setup.sh" --gui "${SETUP_ARGS[@]}"
cd "$ROOT"

export TCP_NODELAY=1
if [ -z "${DISPLAY:-}" ]; then
  export QT_QPA_PLATFORM=${QT_QPA_PLATFORM:-offscreen}
  if [ -z "${VTK_DEFAULT_OPENGL_WINDOW:-}" ] && [ "$QT_QPA_PLATFORM" = offscreen ] \
     && { ldconfig -p 2>/dev/null | grep -q 'libOSMesa\.so\.8'; }; then
    export VTK_DEFAULT_OPENGL_WINDOW=vtkOSOpenGLRenderWindow
  fi
fi
log "TCP_NODELAY=$TCP_NODELAY QT_QPA_PLATFORM=${QT_QPA_PLATFORM:-} VTK_DEFAULT_OPENGL_WINDOW=${VTK_DEFAULT_OPENGL_WINDOW:-}"

lint_rc=0
log "lint-imports (import-linter contracts from pyproject.toml)"
.venv/bin/lint-imports || lint_rc=$?
[ $lint_rc = 0 ] || log "lint-imports FAILED (rc $lint_rc); running the tests anyway"

log ".venv/bin/python -m pytest ${PYTEST_ARGS[*]:-}"
test_rc=0
.venv/bin/python -m pytest "${PYTEST_ARGS[@]}" || test_rc=$?
if [ $test_rc = 5 ]; then log "pytest collected no tests (exit 5)"; fi
if [ $test_rc != 0 ]; then log "pytest FAILED (rc $test_rc)"; exit $test_rc; fi
if [ $lint_rc != 0 ]; then log "import contracts broken (lint-imports rc $lint_rc)"; exit $lint_rc; fi
log "all green"
