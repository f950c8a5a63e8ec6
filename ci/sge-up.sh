#!/usr/bin/env bash
# sge-up.sh - bring up a real single-node Son of Grid Engine on this machine (for CI).
#
# Debian/Ubuntu, root (or passwordless sudo), no systemd needed. Installs Debian's
# gridengine-master, gridengine-exec and gridengine-client if missing (debconf preseeded,
# no service started by the packages), configures a cell for this host (submit + exec host,
# one queue with SGE_CI_SLOTS slots, a 1 s scheduler interval, jobs allowed for root),
# starts sge_qmaster and sge_execd by hand, waits for the queue instance and runs a qsub.
# Idempotent: if the cluster is already up with the same settings it exits 0 at once.
# Stop it with ci/sge-down.sh.
#
# Settings (environment variables, all optional):
#   SGE_CI_DIR        logs, pid copies, settings and sge-ci.env (default: sge-ci in the system temp dir)
#   SGE_CI_QUEUE      cluster queue name                          (default all.q)
#   SGE_CI_SLOTS      slots of the queue on this host             (default: nproc; may exceed it)
#   SGE_CI_TIMEOUT    seconds to wait for the daemons and the test job (default 60)
#   SGE_CI_KEEP_ON_FAIL=1  leave the daemons running if start-up fails (debugging)
set -euo pipefail

export LC_ALL=C
T0=$(date +%s.%N)
DIR=${SGE_CI_DIR:-$(dirname "$(mktemp -u)")/sge-ci}
QUEUE=${SGE_CI_QUEUE:-all.q}
WAIT=${SGE_CI_TIMEOUT:-60}
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
COMMON=$SGE_ROOT/$SGE_CELL/common
SPOOL=/var/spool/gridengine
PKGS="gridengine-master gridengine-exec gridengine-client"

log() { echo "sge-up: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        exec sudo -n --preserve-env=SGE_CI_DIR,SGE_CI_QUEUE,SGE_CI_SLOTS,SGE_CI_TIMEOUT,SGE_CI_KEEP_ON_FAIL \
            bash "$0" "$@"
    fi
    die "must run as root (or with passwordless sudo)"
fi
case "$DIR" in /*) ;; *) die "SGE_CI_DIR must be an absolute path";; esac
case "$QUEUE" in *[!A-Za-z0-9._-]*|"") die "bad queue name '$QUEUE'";; esac

HOST=$(hostname -s 2>/dev/null || uname -n)
HOST=${HOST%%.*}
[ -n "$HOST" ] || die "empty host name"
SLOTS=${SGE_CI_SLOTS:-$(nproc)}
[ "$SLOTS" -ge 1 ] 2>/dev/null || die "bad slot count '$SLOTS'"
SETTINGS="host=$HOST queue=$QUEUE slots=$SLOTS"

alive() {  # running and not a zombie
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
stop_pidfile() {  # $1 = pid file, $2 = comm: SIGTERM, SIGKILL after 10 s
    local pid
    if pid=$(live_pid "$1" "$2"); then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.1; done
        if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; sleep 0.2; fi
    fi
    rm -f "$1"
}
QM_PID=$SPOOL/qmaster/qmaster.pid
# execd's spool directory is named as execd resolves its host: $HOST, or localhost where
# the host's address is 127.0.0.1 (seen on Debian 12 even with host_aliases)
ex_pidfile() {
    local d
    for d in "$HOST" localhost; do
        [ -s "$SPOOL/execd/$d/execd.pid" ] && { echo "$SPOOL/execd/$d/execd.pid"; return; }
    done
    echo "$SPOOL/execd/$HOST/execd.pid"
}
# the queue instance's states ('' = ok; a = alarm, u = unknown, d = disabled, E = error ...)
queue_state() {
    timeout 15 qstat -f -q "$QUEUE@$HOST" 2>/dev/null \
        | awk -v q="$QUEUE@$HOST" '$1 == q { print (NF >= 6 ? $6 : "ok"); f = 1 } END { if (!f) print "missing" }'
}
final_line() { echo "sge up: host=$HOST queue=$QUEUE slots=$SLOTS in $(elapsed)s"; }

# ---- fast path: already up with these settings ---------------------------------------------
if [ -f "$DIR/settings" ] && [ "$(cat "$DIR/settings")" = "$SETTINGS" ] && command -v qstat >/dev/null 2>&1 \
   && live_pid "$QM_PID" sge_qmaster >/dev/null && live_pid "$(ex_pidfile)" sge_execd >/dev/null; then
    st=$(queue_state)
    if [ "$st" = ok ]; then
        log "already up"
        final_line
        exit 0
    fi
    log "daemons running but queue $QUEUE@$HOST is '$st': restarting"
fi

# ---- packages (debconf preseeded; the packages' init scripts must not start anything) ----
mkdir -p "$DIR/log"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    log "installing:$missing"
    for p in gridengine-common gridengine-client gridengine-master gridengine-exec; do
        printf '%s shared/gridenginemaster string %s\n%s shared/gridenginecell string default\n%s shared/gridengineconfig boolean true\n' \
            "$p" "$HOST" "$p" "$p"
    done | debconf-set-selections
    export DEBIAN_FRONTEND=noninteractive
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then   # no "service start" from the postinst scripts
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && made_policy=1
    fi
    # shellcheck disable=SC2086
    apt_install() { apt-get install -y -q --no-install-recommends $missing >"$DIR/log/apt-install.log" 2>&1; }
    cand=$(apt-cache policy gridengine-master 2>/dev/null | sed -n 's/ *Candidate: *//p')
    ok=1
    if [ -z "$cand" ] || [ "$cand" = "(none)" ] || ! apt_install; then
        log "apt-get update"
        if ! apt-get update -q >"$DIR/log/apt-update.log" 2>&1; then
            cat "$DIR/log/apt-update.log" >&2; ok=0
        elif ! apt_install; then
            tail -n 30 "$DIR/log/apt-install.log" >&2; ok=0
        fi
    fi
    [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    [ "$ok" = 1 ] || die "apt-get install$missing failed"
fi
for c in sge_qmaster sge_execd qsub qstat qdel qconf qhost; do
    command -v "$c" >/dev/null 2>&1 || die "$c not found after install"
done

# ---- stop what an earlier start left running (deleting its jobs first) -------------------
if live_pid "$QM_PID" sge_qmaster >/dev/null; then
    if [ -n "$(timeout 15 qstat -u '*' 2>/dev/null)" ]; then
        log "restarting: deleting all jobs"
        timeout 15 qdel -f -u '*' >/dev/null 2>&1 || true
    fi
fi
stop_pidfile "$(ex_pidfile)" sge_execd
stop_pidfile "$QM_PID" sge_qmaster
rm -f "$DIR/settings" "$DIR/sge-ci.env"

# ---- host name: must resolve, and to itself -------------------------------------------------
if ! getent hosts "$HOST" >/dev/null 2>&1; then
    log "adding '127.0.0.1 $HOST' to /etc/hosts"
    echo "127.0.0.1 $HOST" >> /etc/hosts || die "cannot make $HOST resolvable (/etc/hosts not writable)"
fi
# SGE checks that a client's address resolves back to the name it gives. Where the host's
# address is 127.0.0.1 that name is "localhost" (the first /etc/hosts line): "access denied
# (client IP resolved to host name "localhost". This is not identical to clients host name ...)".
# host_aliases makes the reverse names aliases of this host.
addr=$(getent ahostsv4 "$HOST" | awk 'NR == 1 { print $1 }')
aliases=""
for name in localhost $(getent hosts "$addr" | awk '{ $1 = ""; print }'); do
    name=${name%%.*}
    [ "$name" != "$HOST" ] && case " $aliases " in *" $name "*) ;; *) aliases="$aliases $name";; esac
done

# ---- the cell: spool initialised, this host as master ---------------------------------------
if [ ! -s "$COMMON/bootstrap" ] || [ ! -d "$SPOOL/spooldb" ] || [ -z "$(ls -A "$SPOOL/spooldb" 2>/dev/null)" ]; then
    log "initialising the cell ($SGE_ROOT/$SGE_CELL)"
    install -d -o sgeadmin -g sgeadmin -m 755 "$SPOOL/qmaster" "$SPOOL/qmaster/job_scripts" "$SPOOL/spooldb" "$SPOOL/execd"
    runuser -u sgeadmin -- /usr/share/gridengine/scripts/init_cluster "$SGE_ROOT" "$SGE_CELL" \
        "$SPOOL/spooldb" sgeadmin >"$DIR/log/init_cluster.log" 2>&1 \
        || { cat "$DIR/log/init_cluster.log" >&2; die "init_cluster failed"; }
fi
install -d -o sgeadmin -g sgeadmin -m 755 "$SPOOL/execd" /var/run/gridengine
echo "$HOST" > "$COMMON/act_qmaster"
printf '%s\n' "$HOST$aliases" > "$COMMON/host_aliases"
chown sgeadmin:sgeadmin "$COMMON/act_qmaster" "$COMMON/host_aliases"
for f in "$SPOOL/qmaster/messages" "$SPOOL"/execd/*/messages; do  # keep the previous start's logs
    if [ -f "$f" ]; then mv -f "$f" "$f.prev"; fi
done

dump_logs() {
    local f
    for f in "$DIR/log/sge_qmaster.out" "$SPOOL/qmaster/messages" "$DIR/log/sge_execd.out" \
             "$SPOOL"/execd/*/messages /tmp/qmaster_messages /tmp/execd_messages.*; do
        [ -s "$f" ] && { echo "----- $f (last 30 lines) -----"; tail -n 30 "$f"; } >&2
    done
    return 0
}
fail() {
    log "ERROR: $*"
    dump_logs
    if [ "${SGE_CI_KEEP_ON_FAIL:-0}" != 1 ]; then
        stop_pidfile "$(ex_pidfile)" sge_execd
        stop_pidfile "$QM_PID" sge_qmaster
    fi
    exit 1
}
deadline=$(( $(date +%s) + WAIT ))
late() { [ "$(date +%s)" -ge "$deadline" ]; }

# ---- qmaster ----------------------------------------------------------------------------------
# both daemons fork into the background and write their own pid files into the spool
SGE_MASTER_PIDFILE=/var/run/gridengine/qmaster.pid sge_qmaster </dev/null >"$DIR/log/sge_qmaster.out" 2>&1 \
    || fail "sge_qmaster did not start"
until timeout 10 qconf -sh >/dev/null 2>&1; do
    sleep 0.2
    if [ -s "$QM_PID" ] && ! live_pid "$QM_PID" sge_qmaster >/dev/null; then fail "sge_qmaster died"; fi
    late && fail "sge_qmaster does not answer after ${WAIT}s ($(timeout 10 qconf -sh 2>&1 | head -n1))"
done

# ---- configuration (every start: idempotent) --------------------------------------------------
CFG=$DIR/config
rm -rf "$CFG"; mkdir -p "$CFG"
qconf_do() {  # run a qconf command; fail with its output
    local out
    out=$(timeout 30 qconf "$@" 2>&1) || fail "qconf $* -> $out"
}
# jobs of root are refused with the default min_uid/min_gid of 1000 (CI runs as root)
timeout 30 qconf -sconf global | sed -e '/^#/d' \
    -e 's/^min_uid .*/min_uid                      0/' -e 's/^min_gid .*/min_gid                      0/' \
    > "$CFG/global"
qconf_do -Mconf "$CFG/global"   # the file's name is the configuration's name
# schedule every second instead of every 15 s; also right after a submit or a job's end
timeout 30 qconf -ssconf | sed -e 's/^schedule_interval .*/schedule_interval 0:0:1/' \
    -e 's/^flush_submit_sec .*/flush_submit_sec 1/' -e 's/^flush_finish_sec .*/flush_finish_sec 1/' \
    > "$CFG/sched"
qconf_do -Msconf "$CFG/sched"
timeout 15 qconf -ss 2>/dev/null | grep -qx "$HOST" || qconf_do -as "$HOST"
timeout 15 qconf -sh 2>/dev/null | grep -qx "$HOST" || qconf_do -ah "$HOST"
cat > "$CFG/exechost" <<EOF
hostname              $HOST
load_scaling          NONE
complex_values        NONE
user_lists            NONE
xuser_lists           NONE
projects              NONE
xprojects             NONE
usage_scaling         NONE
report_variables      NONE
EOF
if timeout 15 qconf -sel 2>/dev/null | grep -qx "$HOST"; then qconf_do -Me "$CFG/exechost"
else qconf_do -Ae "$CFG/exechost"; fi
# no load threshold (a busy 2-core machine would put the queue in alarm state and hold every
# job); shell_start_mode unix_behavior: the job script's #! line picks its shell
cat > "$CFG/queue" <<EOF
qname                 $QUEUE
hostlist              $HOST
seq_no                0
load_thresholds       NONE
suspend_thresholds    NONE
nsuspend              1
suspend_interval      00:05:00
priority              0
min_cpu_interval      00:05:00
processors            UNDEFINED
qtype                 BATCH INTERACTIVE
ckpt_list             NONE
pe_list               NONE
rerun                 FALSE
slots                 $SLOTS
tmpdir                /tmp
shell                 /bin/bash
prolog                NONE
epilog                NONE
shell_start_mode      unix_behavior
starter_method        NONE
suspend_method        NONE
resume_method         NONE
terminate_method      NONE
notify                00:00:60
owner_list            NONE
user_lists            NONE
xuser_lists           NONE
subordinate_list      NONE
complex_values        NONE
projects              NONE
xprojects             NONE
calendar              NONE
initial_state         default
s_rt                  INFINITY
h_rt                  INFINITY
s_cpu                 INFINITY
h_cpu                 INFINITY
s_fsize               INFINITY
h_fsize               INFINITY
s_data                INFINITY
h_data                INFINITY
s_stack               INFINITY
h_stack               INFINITY
s_core                INFINITY
h_core                INFINITY
s_rss                 INFINITY
h_rss                 INFINITY
s_vmem                INFINITY
h_vmem                INFINITY
EOF
if timeout 15 qconf -sql 2>/dev/null | grep -qx "$QUEUE"; then qconf_do -Mq "$CFG/queue"
else qconf_do -Aq "$CFG/queue"; fi
# other queues of this cell (e.g. from an earlier QUEUE setting) must not take this host's jobs
for q in $(timeout 15 qconf -sql 2>/dev/null); do
    [ "$q" = "$QUEUE" ] || qconf_do -dq "$q"
done
# a queue instance left in error state by an earlier failed job would hold every job
timeout 15 qmod -c "$QUEUE@$HOST" >/dev/null 2>&1 || true

# ---- execd, then wait for the queue instance --------------------------------------------------
sge_execd </dev/null >"$DIR/log/sge_execd.out" 2>&1 || fail "sge_execd did not start"
until [ "$(queue_state)" = ok ]; do
    sleep 0.3
    if [ -s "$(ex_pidfile)" ] && ! live_pid "$(ex_pidfile)" sge_execd >/dev/null; then fail "sge_execd died"; fi
    late && fail "queue $QUEUE@$HOST not ready after ${WAIT}s (state: '$(queue_state)')"
done

# ---- a test job ---------------------------------------------------------------------------------
# a job script like dask-jobqueue's (a #! line, -cwd, -j y, -o a directory), as the caller
out=$DIR/log/smoke.out
rm -f "$out" "$DIR"/log/sge-up-check.o*
printf '#!/usr/bin/env bash\n#$ -N sge-up-check\n#$ -q %s\n#$ -o %s/\n#$ -cwd\n#$ -j y\necho "$JOB_ID" > %s\n' \
    "$QUEUE" "$DIR/log" "$out" > "$DIR/smoke.sh"
jid=$(cd "$DIR" && timeout 30 qsub -terse "$DIR/smoke.sh" 2>&1) || fail "qsub failed: $jid"
while [ "$(cat "$out" 2>/dev/null)" != "$jid" ]; do
    late && fail "test job $jid did not run within ${WAIT}s: $(timeout 10 qstat -j "$jid" 2>&1 | grep -iE 'error|reason|scheduling' | head -n 5)"
    sleep 0.2
done
# ... and leaves the queue
while timeout 10 qstat -j "$jid" >/dev/null 2>&1; do
    late && fail "test job $jid still listed after ${WAIT}s"
    sleep 0.2
done

cp "$QM_PID" "$DIR/qmaster.pid" 2>/dev/null || true
cat > "$DIR/sge-ci.env" <<EOF
SGE_ROOT=$SGE_ROOT
SGE_CELL=$SGE_CELL
SGE_CI_DIR=$DIR
SGE_CI_HOST=$HOST
SGE_CI_QUEUE=$QUEUE
SGE_CI_SLOTS=$SLOTS
EOF
echo "$SETTINGS" > "$DIR/settings"
final_line
