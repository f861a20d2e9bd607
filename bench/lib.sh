# shellcheck shell=bash
# Helpers shared by the benchmarks. Source it after defining `log`.

# stop_processes SECONDS PID...: SIGTERM each, wait up to SECONDS for all to exit (the server
# drains on SIGTERM), then SIGKILL whatever is left, and reap them all.
stop_processes() {
    local grace=$1 pid alive
    shift
    [ "$#" -gt 0 ] || return 0
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 1 $((grace * 10))); do
        alive=0
        for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" -eq 1 ] || break
        sleep 0.1
    done
    for pid in "$@"; do
        if kill -0 "$pid" 2>/dev/null; then
            log "pid $pid did not stop within ${grace}s of SIGTERM; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
}

# apt_install PACKAGE: installs a Debian package the benchmark needs (root only). Needs $WORK
# for its log, and `die`.
apt_install() {
    [ "$(id -u)" -eq 0 ] || die "'$1' is missing; install it (apt-get install -y $1)"
    log "installing $1 with apt-get"
    if ! DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q "$1" >"$WORK/apt-$1.log" 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$WORK/apt-$1.log" 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q "$1" >>"$WORK/apt-$1.log" 2>&1 ||
            {
                tail -n 20 "$WORK/apt-$1.log" >&2
                die "could not install $1"
            }
    fi
}

# bench_database PREFIX: a database name PREFIX_<random> (not created: the first server makes
# it) on the PostgreSQL at DATABASE_URL or 127.0.0.1:5432, else — or with PG_FORCE_THROWAWAY=1 —
# on a throwaway cluster in $PG_TMP. Sets ADMIN_URL, BENCH_DB, DB_URL and, for a throwaway
# cluster, PG_THROWAWAY_DIR (for bench_teardown). Needs PSQL, `log` and `die`.
bench_database() {
    if [ "${PG_FORCE_THROWAWAY:-0}" != 1 ] && ADMIN_URL=$(pg_default_url); then
        :
    else
        if [ "${PG_FORCE_THROWAWAY:-0}" = 1 ]; then
            log "PG_FORCE_THROWAWAY=1: starting a private throwaway cluster"
        else
            log "no PostgreSQL on DATABASE_URL or 127.0.0.1:5432: starting a throwaway cluster"
        fi
        ADMIN_URL=$(pg_start_throwaway "$PG_TMP") || die "could not start a throwaway PostgreSQL"
        PG_THROWAWAY_DIR=$PG_TMP
    fi
    "$PSQL" "$ADMIN_URL" -XAtqc 'select 1' >/dev/null || die "cannot connect to $ADMIN_URL"
    BENCH_DB=$1_$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
    # shellcheck disable=SC2034 # for the caller
    DB_URL=$(pg_url_with_db "$ADMIN_URL" "$BENCH_DB")
}

# bench_teardown: how every benchmark's exit trap ends, also after a failure: drops the bench
# database, stops a throwaway cluster, and removes the work dir (kept with BENCH_KEEP=1).
bench_teardown() {
    if [ -n "${BENCH_DB:-}" ] && [ -n "${PSQL:-}" ]; then
        "$PSQL" "$ADMIN_URL" -XAtq -c "DROP DATABASE IF EXISTS \"$BENCH_DB\" WITH (FORCE)" >/dev/null 2>&1 ||
            "$PSQL" "$ADMIN_URL" -XAtq -c "DROP DATABASE IF EXISTS \"$BENCH_DB\"" >/dev/null 2>&1 ||
            log "could not drop database $BENCH_DB"
    fi
    if [ -n "${PG_THROWAWAY_DIR:-}" ]; then pg_stop_throwaway "$PG_THROWAWAY_DIR"; fi
    rmdir "$PG_TMP" 2>/dev/null || true
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        log "work dir kept: $WORK"
    else
        rm -rf -- "$WORK"
    fi
}

# One-server benchmarks (usage.sh, uploads.sh) -----------------------------------------------

# one_server_cleanup: their exit trap: stops the server (SERVER_PID) and tears down.
one_server_cleanup() {
    local rc=$?
    set +e
    if [ -n "${SERVER_PID:-}" ]; then stop_processes 10 "$SERVER_PID"; fi
    bench_teardown
    exit "$rc"
}

# bench_binary: sets BIN, the openbatch binary to measure: BENCH_BIN, else this checkout's
# release build (built now). Needs ROOT, `log` and `die`.
bench_binary() {
    if [ -z "${BENCH_BIN:-}" ]; then
        log "cargo build --release --bin openbatch"
        SQLX_OFFLINE=${SQLX_OFFLINE:-true} cargo build --release --bin openbatch || die "release build failed"
    fi
    BIN=${BENCH_BIN:-$ROOT/target/release/openbatch}
    [ -x "$BIN" ] || die "no binary at $BIN"
}

# start_one_server [NAME=VALUE...]: one `openbatch serve` on a free port of this machine, on
# DB_URL, with the given extra settings, logging to $WORK/server.log; returns once it is ready.
# Sets PORT and SERVER_PID. Needs BIN, WORK and `die`.
start_one_server() {
    PORT=$(pg_free_port)
    env OPENBATCH__SERVER__HOST=127.0.0.1 OPENBATCH__SERVER__PORT="$PORT" \
        OPENBATCH__DATABASE__URL="$DB_URL" RUST_LOG="${BENCH_RUST_LOG:-warn}" "$@" \
        "$BIN" serve >"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 600); do
        kill -0 "$SERVER_PID" 2>/dev/null || {
            tail -n 25 "$WORK/server.log" >&2
            die "the server exited during start-up"
        }
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/readyz")" = 200 ] && return 0
        sleep 0.1
    done
    die "the server was not ready after 60 s"
}
