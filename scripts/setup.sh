#!/usr/bin/env bash
# scripts/setup.sh - set up osirix-py on a fresh Debian/Ubuntu machine (idempotent).
#
#   bash scripts/setup.sh [--no-system] [--gui] [--help]
#
# 1. System packages (apt, as root or through sudo), only what is missing:
#      - python3 python3-venv python3-dev, only when no Python >= 3.11 with a working
#        venv module is found (Debian 12 ships 3.11; a pyenv/other Python works too);
#      - dcmtk, orthanc, orthanc-dicomweb: the reference DICOM peers of the test suite
#        and the benchmarks (see /work/shared/PEERS.md);
#      - gcc libc6-dev: the LD_PRELOAD bind-to-loopback shim the peers run under;
#      - curl;
#      - postgresql: the server the PostgreSQL test starts its own throw-away cluster with;
#      - the Qt/VTK headless libraries (Mesa GL/EGL/OSMesa, xcb, Xvfb) that the GUI and its
#        tests need on a machine with no display;
#      - chromium (+ fonts-dejavu-core): the headless browser of the HTML5 viewer's test.
#    `apt-get update` runs at most once, and nothing at all runs when every package is
#    already installed, so a second run is fast.  Orthanc is installed with a temporary
#    /usr/sbin/policy-rc.d that exits 101 so that the package does NOT start its system
#    service on ports 4242/8042 (the machine's own policy-rc.d, if any, is put back).
# 2. A virtual environment in <repo>/.venv with `pip install -e '.[test]'`.  The GUI extra
#    ('.[gui]': PySide6-Essentials + vtk, ~1 GB) is installed with --gui or
#    OSIRIX_PY_GUI=1; scripts/run.sh and scripts/test.sh ask for it.  pip runs again only when
#    pyproject.toml or the requested extras changed (stamp in .venv/.osirix-py-setup).
#
# Options / environment
#   --no-system        skip the apt step (also OSIRIX_PY_NO_SYSTEM=1)
#   --gui              install the GUI extra too (also OSIRIX_PY_GUI=1)
#   PYTHON=/path       use this interpreter for the venv (must be >= 3.11)
# Works from any current directory.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$ROOT/.venv
NO_SYSTEM=${OSIRIX_PY_NO_SYSTEM:-0}
GUI=${OSIRIX_PY_GUI:-0}

log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --no-system) NO_SYSTEM=1 ;;
    --gui) GUI=1 ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root (or sudo) for: $*  -- or run with --no-system after installing the packages yourself"
  fi
}

# ----------------------------------------------------------------------------- python
# A Python >= 3.11 whose venv module can bootstrap pip (Debian's python3 without
# python3-venv has no ensurepip).
python_ok() {
  "$1" - <<'PY' >/dev/null 2>&1
import sys
assert sys.version_info >= (3, 11)
import venv, ensurepip  # noqa: F401
PY
}

find_python() {
  local c
  for c in ${PYTHON:-} python3.13 python3.12 python3.11 python3; do
    [ -n "$c" ] || continue
    if command -v "$c" >/dev/null 2>&1 && python_ok "$(command -v "$c")"; then
      command -v "$c"; return 0
    fi
  done
  return 1
}

# ----------------------------------------------------------------------------- apt
SYSTEM_PKGS=(
  dcmtk orthanc orthanc-dicomweb
  gcc libc6-dev curl
  # a real PostgreSQL server for the tests of the `postgres` database option
  postgresql
  # Qt offscreen + Mesa GL/EGL (also what VTK needs offscreen)
  libgl1 libegl1 libgl1-mesa-dri libxkbcommon0 libfontconfig1 libglib2.0-0 libdbus-1-3
  # VTK widget inside Qt under the offscreen platform
  libosmesa6 libxcursor1
  # Qt on X (xcb) + a virtual X server, screenshots
  libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1
  libxcb-render-util0 libxcb-shape0 libxcb-xkb1 xvfb xauth x11-apps
  # the HTML5 viewer's test: Debian's Chromium (/usr/bin/chromium, driven headless by
  # Playwright from the test extra) and a font for its text
  chromium fonts-dejavu-core
)

missing_pkgs() {  # pkg... -> prints those not installed (one dpkg-query for all)
  local installed p
  # Ubuntu 24.04 renamed some libraries with a t64 suffix (libglib2.0-0t64 ...).
  installed=" $(dpkg-query -W -f='${db:Status-Abbrev}|${Package}\n' "$@" $(printf '%st64 ' "$@") 2>/dev/null \
               | sed -n 's/^ii *|\([^:]*\).*/\1/p' | tr '\n' ' ') " || true
  for p in "$@"; do
    case "$installed" in *" $p "*|*" ${p}t64 "*) ;; *) printf '%s\n' "$p" ;; esac
  done
}

APT_UPDATED=0
apt_update_once() {
  [ $APT_UPDATED = 1 ] && return 0
  log "apt-get update"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  APT_UPDATED=1
}

POLICY=/usr/sbin/policy-rc.d
POLICY_BACKUP=
POLICY_SET=0
restore_policy() {
  [ $POLICY_SET = 1 ] || return 0
  if [ -n "$POLICY_BACKUP" ]; then
    as_root mv -f "$POLICY_BACKUP" "$POLICY"; log "restored the machine's $POLICY"
  else
    as_root rm -f "$POLICY"; log "removed the temporary $POLICY"
  fi
  POLICY_SET=0
}
forbid_services() {  # until restore_policy: maintainer scripts may not start services
  if [ -e "$POLICY" ]; then
    POLICY_BACKUP=$(as_root mktemp /usr/sbin/policy-rc.d.osirix-py.XXXXXX)
    as_root cp -p "$POLICY" "$POLICY_BACKUP"
  fi
  POLICY_SET=1
  trap restore_policy EXIT
  as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $POLICY && chmod 755 $POLICY"
  log "temporary $POLICY (exit 101): the orthanc and postgresql packages will not start system services"
}

apt_install() {  # pkg...
  local pkgs=() p
  for p in "$@"; do
    if apt-cache show "$p" >/dev/null 2>&1; then pkgs+=("$p")
    else log "WARNING: package $p is not available from this machine's apt sources, skipped"; fi
  done
  [ ${#pkgs[@]} -gt 0 ] || return 0
  log "apt-get install --no-install-recommends ${pkgs[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}"
}

system_setup() {
  command -v dpkg-query >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 || {
    log "not a Debian/Ubuntu system (no apt-get/dpkg): skipping system packages;"
    log "install Python >= 3.11 yourself, and dcmtk + Orthanc for the peer tests"
    return 0
  }
  local want=() p
  mapfile -t want < <(missing_pkgs "${SYSTEM_PKGS[@]}")
  local need_python=0
  find_python >/dev/null || need_python=1
  if [ $need_python = 1 ]; then want+=(python3 python3-venv python3-dev); fi
  if [ ${#want[@]} -eq 0 ]; then
    log "system packages: all present, nothing to do"
    return 0
  fi
  log "system packages missing: ${want[*]}"
  apt_update_once
  local with_orthanc=0
  for p in "${want[@]}"; do case "$p" in orthanc|orthanc-dicomweb|postgresql) with_orthanc=1 ;; esac; done
  [ $with_orthanc = 1 ] && forbid_services
  apt_install "${want[@]}"
  restore_policy
  if [ $need_python = 1 ] && ! find_python >/dev/null; then
    # e.g. Ubuntu 22.04: python3 is 3.10, python3.11 comes as its own package.
    apt_install python3.11 python3.11-venv python3.11-dev
  fi
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet orthanc 2>/dev/null; then
    log "WARNING: a system orthanc.service is running (ports 4242/8042); the tests and benchmarks"
    log "         use their own free ports, but you may want: systemctl disable --now orthanc"
  fi
}

# ----------------------------------------------------------------------------- venv
venv_setup() {
  local py
  py=$(find_python) || die "no Python >= 3.11 with the venv module found (install python3 >= 3.11 and python3-venv, or set PYTHON=/path/to/python3.11)"
  if [ -x "$VENV/bin/python" ] && ! python_ok "$VENV/bin/python"; then
    log "existing $VENV is broken or too old: recreating it"
    rm -rf "$VENV"
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV with $py ($("$py" -c 'import sys; print(sys.version.split()[0])'))"
    "$py" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
  fi
  local extras=test
  [ "$GUI" = 1 ] && extras=test,gui
  local stamp_file=$VENV/.osirix-py-setup stamp
  stamp="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1) extras=$extras"
  if [ -s "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ] \
     && "$VENV/bin/python" -c 'import osirix_py, pytest' >/dev/null 2>&1 \
     && { [ "$GUI" != 1 ] || "$VENV/bin/python" -c 'import PySide6, vtkmodules' >/dev/null 2>&1; }; then
    log "venv: $VENV is up to date (extras: $extras)"
    return 0
  fi
  log "pip install -e '.[$extras]' into $VENV"
  (cd "$ROOT" && "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[$extras]")
  printf '%s\n' "$stamp" > "$stamp_file"
  log "venv ready: $VENV ($("$VENV/bin/python" -c 'import sys; print(sys.version.split()[0])'))"
}

if [ "$NO_SYSTEM" = 1 ]; then
  log "--no-system: skipping apt"
else
  system_setup
fi
venv_setup
log "done: $VENV/bin/osirix-py --help"
