#!/usr/bin/env bash
# sge-down.sh - stop the single-node Grid Engine started by ci/sge-up.sh.
#
# Deletes all jobs, waits (up to SGE_CI_DOWN_WAIT s, default 40) for them to leave the
# queue, then stops sge_execd and sge_qmaster using their pid files - never by process
# name. Always exits 0 unless not root; safe to run when nothing is running.
#   --purge   also delete $SGE_CI_DIR and the host_aliases file sge-up.sh wrote
#             (the packages and the cell's configuration stay)
set -uo pipefail

export LC_ALL=C
T0=$(date +%s.%N)
DIR=${SGE_CI_DIR:-$(dirname "$(mktemp -u)")/sge-ci}
WAIT=${SGE_CI_DOWN_WAIT:-40}
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
SPOOL=/var/spool/gridengine
PURGE=0
[ "${1:-}" = --purge ] && PURGE=1

log() { echo "sge-down: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        exec sudo -n --preserve-env=SGE_CI_DIR,SGE_CI_DOWN_WAIT bash "$0" "$@"
    fi
    log "ERROR: must run as root (or with passwordless sudo)"; exit 1
fi

HOST=$(hostname -s 2>/dev/null || uname -n)
HOST=${HOST%%.*}

alive() {
    local st
    st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}
live_pid() {  # $1 = pid file, $2 = expected comm
    local pid
    [ -s "$1" ] || return 1
    pid=$(tr -dc 0-9 < "$1")
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] && alive "$pid" || return 1
    echo "$pid"
}
stop_pidfile() {  # $1 = pid file, $2 = comm; SIGTERM, then SIGKILL after 20 s
    local pid
    if pid=$(live_pid "$1" "$2"); then
        log "stopping $2 (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 200); do alive "$pid" || break; sleep 0.1; done
        if alive "$pid"; then log "$2 still alive: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; sleep 0.2; fi
    fi
    rm -f "$1"
}
QM_PID=$SPOOL/qmaster/qmaster.pid

# ---- delete jobs (only if the qmaster is ours and answers) ------------------------------------
if live_pid "$QM_PID" sge_qmaster >/dev/null && command -v qstat >/dev/null 2>&1; then
    if [ -n "$(timeout 15 qstat -u '*' 2>/dev/null)" ]; then
        log "deleting all jobs"
        timeout 15 qdel -f -u '*' >/dev/null 2>&1 || true
        deadline=$(( $(date +%s) + WAIT ))
        while [ -n "$(timeout 15 qstat -u '*' 2>/dev/null)" ]; do
            if [ "$(date +%s)" -ge "$deadline" ]; then
                log "jobs still listed after ${WAIT}s:"; timeout 15 qstat -u '*' >&2 2>/dev/null; break
            fi
            sleep 0.5
        done
    fi
fi

# ---- stop the daemons -------------------------------------------------------------------------
for d in "$HOST" localhost; do
    stop_pidfile "$SPOOL/execd/$d/execd.pid" sge_execd
done
stop_pidfile "$QM_PID" sge_qmaster
rm -f "$DIR/settings" "$DIR/sge-ci.env" "$DIR/qmaster.pid"

if [ "$PURGE" = 1 ]; then
    rm -f "$SGE_ROOT/$SGE_CELL/common/host_aliases"
    rm -rf "$DIR/log" "$DIR/config" "$DIR/smoke.sh"
    rmdir "$DIR" 2>/dev/null || true
fi
echo "sge down in $(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')s"
