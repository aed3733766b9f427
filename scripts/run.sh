#!/usr/bin/env bash
# scripts/run.sh - set up (scripts/setup.sh) and start osirix-py on its embedded SQLite database.
#
#   bash scripts/run.sh [--no-system] [--server|--gui] [-- ARGS...]
#
# What starts:
#   * the desktop application (`osirix-py`) when the GUI exists and can be imported
#     (`python -c 'import osirix_py.gui.app'` succeeds) and there is a display;
#   * otherwise the headless mini-PACS (`osirix-py server`) in the foreground, after
#     filling an empty database with the demo study (`osirix-py demo`).  Today the GUI
#     does not exist yet, so this is what runs.  Stop it with Ctrl-C.
# --server / --gui force one mode (also OSIRIX_PY_MODE=server|gui).  ARGS after `--` go to
# the command that starts (e.g. `-- --port 4242 --aet MYPACS` for the server).  The data
# (database, files, config.toml) live in $OSIRIX_PY_HOME when set, else in the user data
# dir; `osirix-py config show` prints the effective settings.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$ROOT/.venv
MODE=${OSIRIX_PY_MODE:-auto}
SETUP_ARGS=()
APP_ARGS=()

log() { printf '[run] %s\n' "$*" >&2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --no-system) SETUP_ARGS+=(--no-system) ;;
    --server) MODE=server ;;
    --gui) MODE=gui ;;
    --) shift; APP_ARGS=("$@"); break ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) APP_ARGS+=("$1") ;;
  esac
  shift
done

# Once the desktop application exists, the GUI extra (PySide6 + VTK) is wanted too.
if [ "$MODE" != server ] && [ -e "$ROOT/osirix_py/gui/app.py" ] && [ "${OSIRIX_PY_GUI:-}" != 0 ]; then
  export OSIRIX_PY_GUI=1
fi
bash "$ROOT/scripts/setup.sh" "${SETUP_ARGS[@]}"

OSIRIX="$VENV/bin/osirix-py"
have_display() { [ -n "${DISPLAY:-}" ] || [ -n "${WAYLAND_DISPLAY:-}" ] || [ "$(uname -s)" = Darwin ]; }

if [ "$MODE" = auto ]; then
  MODE=server
  if "$VENV/bin/python" -c 'import osirix_py.gui.app' >/dev/null 2>&1; then
    if have_display; then MODE=gui
    else log "the desktop application is installed but there is no display (DISPLAY unset): starting the headless server instead"
    fi
  fi
fi

if [ "$MODE" = gui ]; then
  log "starting the desktop application: osirix-py ${APP_ARGS[*]:-}"
  exec "$OSIRIX" "${APP_ARGS[@]}"
fi

# ---------------------------------------------------------------- headless mini-PACS
"$OSIRIX" demo   # adds the sample study only when the database is empty
"$VENV/bin/python" - "${APP_ARGS[@]}" <<'PY' >&2 || true
import sys
from osirix_py.cli import build_parser
from osirix_py.config import load_settings
args = build_parser().parse_args(["server", *sys.argv[1:]])
s = load_settings(data_dir=args.data_dir, config_file=args.config)
aet = args.aet or s.listener.ae_title
port = args.port if args.port is not None else s.listener.port
bind = args.bind or s.listener.bind_address
hport = args.http_port if args.http_port is not None else (s.http.port if s.http.enabled else 0)
hbind = args.bind or s.http.bind_address
print(f"[run] data dir:  {s.data_dir}")
print(f"[run] DICOM:     AE title {aet}, port {port} (bound to {bind})")
print(f"[run] HTTP:      " + (f"http://{'127.0.0.1' if hbind in ('0.0.0.0', '') else hbind}:{hport}/" if hport else "off"))
if hport and s.http.auth:
    pw = s.data_dir / "initial-admin-password.txt"
    print(f"[run] web login: " + (f"user admin, password in {pw} (made at the first start)"
                                  if not pw.exists() or pw.stat().st_size else "a user from 'osirix-py users'"))
print(f"[run] try:       echoscu -aec {aet} 127.0.0.1 {port}   |   storescu -aec {aet} 127.0.0.1 {port} FILE.dcm")
PY
log "starting the headless server: osirix-py server ${APP_ARGS[*]:-} (Ctrl-C stops it)"
exec "$OSIRIX" server "${APP_ARGS[@]}"
