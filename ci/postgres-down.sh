#!/usr/bin/env bash
# postgres-down.sh - stop the PostgreSQL server started by ci/postgres-up.sh.
#
# pg_ctl stop (fast mode) on its data directory; safe to run when nothing is running.
#   --purge   also delete $PG_CI_DIR (the data directory with every database in it)
set -uo pipefail

export LC_ALL=C
T0=$(date +%s.%N)
DIR=${PG_CI_DIR:-$(dirname "$(mktemp -u)")/pg-ci}
DATA=$DIR/data
PURGE=0
[ "${1:-}" = --purge ] && PURGE=1

log() { echo "postgres-down: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        exec sudo -n --preserve-env=PG_CI_DIR bash "$0" "$@"
    fi
    log "ERROR: must run as root (or with passwordless sudo)"; exit 1
fi

BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ -s "$DATA/postmaster.pid" ] && [ -n "$BIN" ]; then
    log "stopping the server of $DATA"
    runuser -u postgres -- "$BIN/pg_ctl" -D "$DATA" -m fast -w -t 30 stop >/dev/null 2>&1 \
        || runuser -u postgres -- "$BIN/pg_ctl" -D "$DATA" -m immediate -w -t 30 stop >/dev/null 2>&1 \
        || log "pg_ctl stop failed"
fi
rm -f "$DIR/settings" "$DIR/pg-ci.env"
if [ "$PURGE" = 1 ]; then
    rm -rf "$DATA" "$DIR/run" "$DIR/log"
    rmdir "$DIR" 2>/dev/null || true
fi
echo "postgres down in $(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')s"
