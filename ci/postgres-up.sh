#!/usr/bin/env bash
# postgres-up.sh - start a throw-away PostgreSQL server for the MLflow tests (for CI).
#
# Debian/Ubuntu, root (or passwordless sudo), no systemd needed. Installs Debian's
# `postgresql` package if missing, creates a cluster in its own data directory (not the
# package's), starts it by hand with pg_ctl as user postgres on 127.0.0.1:PORT, and creates
# a user and a database for MLflow. Idempotent: if it is already up with the same settings
# it exits 0 at once. Stop it with ci/postgres-down.sh.
#
# Prints the URI on its last line and writes it to $PG_CI_DIR/pg-ci.env (PG_CI_URI=...),
# where tests/test_postgres.py looks for it.
#
# Settings (environment variables, all optional):
#   PG_CI_DIR       data directory, socket, log, env file (default: pg-ci in the system temp dir)
#   PG_CI_PORT      TCP port on 127.0.0.1 (default: 15432, or the next free one up to 15499)
#   PG_CI_DB        database name          (default mlflow)
#   PG_CI_USER      user name              (default mlflow)
#   PG_CI_PASSWORD  that user's password   (default mlflow)
#   PG_CI_TIMEOUT   seconds to wait for the server (default 60)
set -euo pipefail

export LC_ALL=C
T0=$(date +%s.%N)
DIR=${PG_CI_DIR:-$(dirname "$(mktemp -u)")/pg-ci}
DB=${PG_CI_DB:-mlflow}
DBUSER=${PG_CI_USER:-mlflow}
PASSWORD=${PG_CI_PASSWORD:-mlflow}
WAIT=${PG_CI_TIMEOUT:-60}
DATA=$DIR/data
SOCK=$DIR/run

log() { echo "postgres-up: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        exec sudo -n --preserve-env=PG_CI_DIR,PG_CI_PORT,PG_CI_DB,PG_CI_USER,PG_CI_PASSWORD,PG_CI_TIMEOUT \
            bash "$0" "$@"
    fi
    die "must run as root (or with passwordless sudo)"
fi
case "$DIR" in /*) ;; *) die "PG_CI_DIR must be an absolute path";; esac
for v in "$DB" "$DBUSER"; do
    case "$v" in *[!a-z0-9_]*|"") die "database and user names must be [a-z0-9_]+, got '$v'";; esac
done
case "$PASSWORD" in *"'"*|*[@:/%]*|"") die "PG_CI_PASSWORD must not be empty or contain ' @ : / %";; esac

# ---- packages --------------------------------------------------------------------------------
pgbin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
mkdir -p "$DIR/log"
if [ -z "$(pgbin)" ] || [ ! -x "$(pgbin)/pg_ctl" ]; then
    log "installing postgresql"
    export DEBIAN_FRONTEND=noninteractive
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then   # the package must not start its own cluster
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && made_policy=1
    fi
    apt_install() { apt-get install -y -q --no-install-recommends postgresql >"$DIR/log/apt-install.log" 2>&1; }
    ok=1
    if ! apt_install; then
        log "apt-get update"
        if ! apt-get update -q >"$DIR/log/apt-update.log" 2>&1; then
            cat "$DIR/log/apt-update.log" >&2; ok=0
        elif ! apt_install; then
            tail -n 30 "$DIR/log/apt-install.log" >&2; ok=0
        fi
    fi
    [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    [ "$ok" = 1 ] || die "apt-get install postgresql failed"
fi
BIN=$(pgbin)
[ -x "$BIN/pg_ctl" ] && [ -x "$BIN/initdb" ] && [ -x "$BIN/psql" ] || die "no pg_ctl/initdb/psql under /usr/lib/postgresql"
id postgres >/dev/null 2>&1 || die "no user 'postgres' (it comes with the postgresql package)"
as_pg() { runuser -u postgres -- "$@"; }

alive() {
    local st
    st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}
server_pid() {  # the postmaster of our data directory, if it runs
    local pid
    [ -s "$DATA/postmaster.pid" ] || return 1
    pid=$(head -n 1 "$DATA/postmaster.pid" | tr -dc 0-9)
    [ -n "$pid" ] && alive "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = postgres ] || return 1
    echo "$pid"
}
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
uri() { echo "postgresql://$DBUSER:$PASSWORD@127.0.0.1:$1/$DB"; }
final_line() { echo "postgres up: $(uri "$1") in $(elapsed)s"; }
sql() { as_pg "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PORT" -U postgres -d postgres -tA "$@"; }

# ---- fast path: already up with these settings -----------------------------------------------
if [ -f "$DIR/settings" ] && pid=$(server_pid); then
    read -r OLD_PORT OLD_REST < "$DIR/settings" || true
    if [ "${PG_CI_PORT:-$OLD_PORT}" = "$OLD_PORT" ] && [ "$OLD_REST" = "$DB $DBUSER $PASSWORD" ] \
       && "$BIN/pg_isready" -q -h 127.0.0.1 -p "$OLD_PORT" -t 5; then
        log "already up (pid $pid)"
        final_line "$OLD_PORT"
        exit 0
    fi
fi

# ---- stop a server of ours with other settings ---------------------------------------------------
if server_pid >/dev/null; then
    log "restarting with new settings"
    as_pg "$BIN/pg_ctl" -D "$DATA" -m fast -w -t 30 stop >/dev/null 2>&1 || true
fi
rm -f "$DIR/settings" "$DIR/pg-ci.env"

# ---- port ----------------------------------------------------------------------------------------
if [ -n "${PG_CI_PORT:-}" ]; then
    PORT=$PG_CI_PORT
    port_busy "$PORT" && die "port $PORT on 127.0.0.1 is in use (PG_CI_PORT)"
else
    PORT=""
    for p in $(seq 15432 15499); do port_busy "$p" || { PORT=$p; break; }; done
    [ -n "$PORT" ] || die "no free port in 15432-15499 (set PG_CI_PORT)"
fi

# ---- data directory (created once, kept between starts) ----------------------------------------
install -d -o postgres -g postgres -m 0700 "$DIR" "$SOCK"
chown postgres:postgres "$DIR/log"
if [ ! -s "$DATA/PG_VERSION" ]; then
    rm -rf "$DATA"
    install -d -o postgres -g postgres -m 0700 "$DATA"
    # the superuser 'postgres' over the socket in $SOCK only; passwords over TCP
    as_pg "$BIN/initdb" -D "$DATA" -U postgres -E UTF8 --locale=C --auth-local=trust \
        --auth-host=scram-sha-256 >"$DIR/log/initdb.log" 2>&1 \
        || { cat "$DIR/log/initdb.log" >&2; die "initdb failed"; }
elif [ "$(cat "$DATA/PG_VERSION")" != "$(basename "$(dirname "$BIN")")" ]; then
    die "$DATA is a PostgreSQL $(cat "$DATA/PG_VERSION") cluster, not $(basename "$(dirname "$BIN")"); remove it (ci/postgres-down.sh --purge)"
fi
chmod 755 "$DIR"   # let other users reach the log; data stays 0700

# ---- start ----------------------------------------------------------------------------------------
[ -f "$DIR/log/postgres.log" ] && mv -f "$DIR/log/postgres.log" "$DIR/log/postgres.log.prev"
if ! as_pg "$BIN/pg_ctl" -D "$DATA" -l "$DIR/log/postgres.log" -w -t "$WAIT" \
        -o "-p $PORT -k $SOCK -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off -c synchronous_commit=off" \
        start >"$DIR/log/pg_ctl.out" 2>&1; then
    cat "$DIR/log/pg_ctl.out" >&2
    [ -s "$DIR/log/postgres.log" ] && { echo "----- $DIR/log/postgres.log (last 30 lines) -----"; tail -n 30 "$DIR/log/postgres.log"; } >&2
    as_pg "$BIN/pg_ctl" -D "$DATA" -m immediate stop >/dev/null 2>&1 || true
    die "the server did not start on 127.0.0.1:$PORT"
fi

# ---- user and database (idempotent) ---------------------------------------------------------------
fail() {
    log "ERROR: $*"
    as_pg "$BIN/pg_ctl" -D "$DATA" -m fast -w -t 30 stop >/dev/null 2>&1 || true
    exit 1
}
if [ -z "$(sql -c "SELECT 1 FROM pg_roles WHERE rolname = '$DBUSER'")" ]; then
    sql -c "CREATE ROLE $DBUSER LOGIN PASSWORD '$PASSWORD'" || fail "cannot create user $DBUSER"
else
    sql -c "ALTER ROLE $DBUSER LOGIN PASSWORD '$PASSWORD'" || fail "cannot set the password of $DBUSER"
fi
if [ -z "$(sql -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" ]; then
    sql -c "CREATE DATABASE $DB OWNER $DBUSER" || fail "cannot create database $DB"
fi

# ---- the way MLflow connects: TCP, password ---------------------------------------------------------
out=$(PGPASSWORD=$PASSWORD PGCONNECT_TIMEOUT=10 "$BIN/psql" -X -h 127.0.0.1 -p "$PORT" -U "$DBUSER" -d "$DB" -tAc 'SELECT 1' 2>&1) \
    && [ "$out" = 1 ] || fail "cannot connect as $DBUSER over TCP: $out"

echo "$PORT $DB $DBUSER $PASSWORD" > "$DIR/settings"
cat > "$DIR/pg-ci.env" <<EOF
PG_CI_URI=$(uri "$PORT")
PG_CI_PORT=$PORT
PG_CI_DIR=$DIR
EOF
chmod 644 "$DIR/pg-ci.env"
final_line "$PORT"
