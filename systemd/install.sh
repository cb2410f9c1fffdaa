#!/bin/sh
# Install meshd as a systemd service: user, directories, venv, unit, config.
# `make install` runs it; `make install DRY_RUN=1` (or DRY_RUN=1 sh systemd/install.sh) prints
# each command instead of running it. PREFIX (/opt/meshd) and ETC (/etc/meshd) can be moved.
set -eu
SRC=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=${PREFIX:-/opt/meshd}
ETC=${ETC:-/etc/meshd}
UNIT_DIR=${UNIT_DIR:-/etc/systemd/system}
STATE=/var/lib/meshd

run() {
    if [ "${DRY_RUN:-0}" = 1 ]; then echo "$*"; else "$@"; fi
}

id meshd >/dev/null 2>&1 || run useradd --system --home "$STATE" --shell /usr/sbin/nologin meshd
run install -d -m 0750 -o meshd -g meshd "$STATE" "$STATE/backups"
run install -d -m 0750 "$ETC"
run python3 -m venv "$PREFIX"
run "$PREFIX/bin/pip" install --quiet "$SRC"
run ln -sf "$PREFIX/bin/meshd" /usr/local/bin/meshd
[ -e "$ETC/meshd.toml" ] || run install -m 0644 "$SRC/systemd/meshd.toml" "$ETC/meshd.toml"
run install -m 0644 "$SRC/systemd/meshd.service" "$UNIT_DIR/meshd.service"
run systemctl daemon-reload
echo "next: put AGENT_MESH_API_KEY=<a long random key> in $ETC/meshd.env (mode 0640), then" \
     "systemctl enable --now meshd"
