# shellcheck shell=bash
# Shared PostgreSQL helpers for scripts/test.sh, bench/bench.sh and any test
# that needs to provision (or restart) a PostgreSQL server.
#
# Source it:   . scripts/lib/pg.sh
#
# Functions (all print diagnostics to stderr, results to stdout):
#   pg_tool NAME                 path of a PostgreSQL program (PATH, then the
#                                newest /usr/lib/postgresql/*/bin)
#   pg_free_port                 a TCP port free on 127.0.0.1
#   pg_is_ready HOST PORT        0 if a server accepts connections there
#   pg_url_with_db URL DB        URL with its database name replaced by DB
#   pg_default_url               the admin URL to use: $DATABASE_URL, else the
#                                server on 127.0.0.1:5432, else nothing (rc 1)
#   pg_start_throwaway DIR [PORT]
#                                initdb a trust-auth cluster in DIR (which must
#                                exist and be empty, e.g. from mktemp -d), start
#                                it on 127.0.0.1:PORT (default: a free port) and
#                                print postgres://postgres@127.0.0.1:PORT/postgres
#   pg_server_stop DIR [MODE]    stop the throwaway server, keep its data
#                                (MODE: fast (default), smart or immediate)
#   pg_server_start DIR          start it again on the same port (after
#                                pg_server_stop; e.g. to restart mid-test)
#   pg_server_restart DIR [MODE] stop + start
#   pg_stop_throwaway DIR        stop the server (if running) and remove DIR
#   pg_provision DIR             set and export DATABASE_URL following the
#                                rules above; starts a throwaway cluster in DIR
#                                only when needed (then sets PG_THROWAWAY_DIR=DIR;
#                                the caller owns cleanup: pg_stop_throwaway DIR)
#                                PG_FORCE_THROWAWAY=1 skips the first two choices.
#
# Extra postgresql.conf lines for throwaway clusters may be given in
# PG_THROWAWAY_CONF (newline separated), e.g. "fsync = off".
#
# PostgreSQL refuses to run as root: when we are root, the cluster is owned by
# the `postgres` user (created if missing) and its programs run via runuser.

_pg_log() { printf 'pg.sh: %s\n' "$*" >&2; }

# Directory holding initdb/pg_ctl: the newest /usr/lib/postgresql/*/bin.
pg_bindir() {
    local d best="" bestv=-1 v
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/pg_ctl" ] || continue
        v=${d#/usr/lib/postgresql/}
        v=${v%%/*}
        v=${v%%.*}
        if [[ "$v" =~ ^[0-9]+$ ]] && [ "$v" -gt "$bestv" ]; then
            bestv=$v
            best=$d
        fi
    done
    [ -n "$best" ] || return 1
    printf '%s\n' "$best"
}

# pg_tool NAME: print the path of a PostgreSQL program.
# Server-side programs (initdb, pg_ctl, postgres) come from the versioned bin
# dir first so that they match each other; clients from PATH first.
pg_tool() {
    local name=$1 bindir=""
    bindir=$(pg_bindir 2>/dev/null) || bindir=""
    case "$name" in
    initdb | pg_ctl | postgres)
        if [ -n "$bindir" ] && [ -x "$bindir/$name" ]; then
            printf '%s\n' "$bindir/$name"
            return 0
        fi
        command -v "$name" 2>/dev/null && return 0
        ;;
    *)
        command -v "$name" 2>/dev/null && return 0
        if [ -n "$bindir" ] && [ -x "$bindir/$name" ]; then
            printf '%s\n' "$bindir/$name"
            return 0
        fi
        ;;
    esac
    _pg_log "cannot find PostgreSQL program '$name' (looked in PATH and /usr/lib/postgresql/*/bin); install PostgreSQL (apt-get install postgresql)"
    return 1
}

# pg_free_port: a port on 127.0.0.1 that nothing listens on right now.
pg_free_port() {
    if command -v python3 >/dev/null 2>&1; then
        python3 - <<'EOF' && return 0
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
EOF
    fi
    local p i
    for i in $(seq 1 200); do
        p=$((20000 + (RANDOM * 32768 + RANDOM + i) % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            printf '%s\n' "$p"
            return 0
        fi
    done
    _pg_log "could not find a free port"
    return 1
}

# pg_is_ready HOST PORT: 0 when a PostgreSQL server accepts connections.
# Uses pg_isready when available, else a bare TCP connect.
pg_is_ready() {
    local host=$1 port=$2 isready
    if isready=$(pg_tool pg_isready 2>/dev/null); then
        "$isready" -q -h "$host" -p "$port" -t 3 >/dev/null 2>&1
        return
    fi
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

# pg_url_with_db URL DB: same server and credentials, database DB; keeps ?params.
pg_url_with_db() {
    local url=$1 db=$2 base query="" scheme rest hostpart
    base=${url%%\?*}
    if [ "$base" != "$url" ]; then query="?${url#*\?}"; fi
    scheme=${base%%://*}
    rest=${base#*://}
    hostpart=${rest%%/*}
    printf '%s://%s/%s%s\n' "$scheme" "$hostpart" "$db" "$query"
}

# pg_default_url: admin URL for tests/benches, or rc 1 when there is none.
pg_default_url() {
    if [ -n "${DATABASE_URL:-}" ]; then
        printf '%s\n' "$DATABASE_URL"
        return 0
    fi
    if pg_is_ready 127.0.0.1 5432; then
        local url="postgres://postgres@127.0.0.1:5432/postgres" psql
        # A server that answers but does not let us in (password auth, no
        # such role) is no use: then we fall back to a throwaway cluster.
        if psql=$(pg_tool psql 2>/dev/null); then
            if ! "$psql" "$url" -XAtqc 'select 1' >/dev/null 2>&1; then
                _pg_log "a server answers on 127.0.0.1:5432 but '$url' cannot log in"
                return 1
            fi
        fi
        printf '%s\n' "$url"
        return 0
    fi
    return 1
}

# Run a command as the owner of throwaway clusters (postgres when root).
_pg_as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

_pg_ensure_postgres_user() {
    [ "$(id -u)" -eq 0 ] || return 0
    if ! id -u postgres >/dev/null 2>&1; then
        _pg_log "creating system user 'postgres' (PostgreSQL refuses to run as root)"
        useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin postgres
    fi
}

# pg_start_throwaway DIR [PORT]: initdb + start; prints the admin URL.
pg_start_throwaway() {
    local dir=$1 port initdb
    if [ -z "$dir" ] || [ ! -d "$dir" ]; then
        _pg_log "pg_start_throwaway: directory '$dir' does not exist"
        return 1
    fi
    dir=$(cd "$dir" && pwd)
    if [ -n "$(ls -A "$dir")" ]; then
        _pg_log "pg_start_throwaway: directory '$dir' is not empty"
        return 1
    fi
    initdb=$(pg_tool initdb) || return 1
    pg_tool pg_ctl >/dev/null || return 1
    _pg_ensure_postgres_user || return 1
    # Marker so that pg_stop_throwaway only ever deletes what we created.
    : >"$dir/.openbatch-throwaway-pg"
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres: "$dir"
        chmod 0700 "$dir"
        if ! runuser -u postgres -- test -w "$dir"; then
            _pg_log "pg_start_throwaway: the postgres user cannot reach '$dir' (a parent directory is not searchable by others, e.g. a mktemp -d dir); use a directory of its own, e.g. \$(mktemp -d)"
            return 1
        fi
    fi
    if ! _pg_as_owner "$initdb" -D "$dir/data" -U postgres --auth=trust \
        --encoding=UTF8 --locale=C --no-sync >"$dir/initdb.log" 2>&1; then
        _pg_log "initdb failed; its output:"
        cat "$dir/initdb.log" >&2
        return 1
    fi
    {
        echo "# added by scripts/lib/pg.sh"
        echo "listen_addresses = '127.0.0.1'"
        echo "unix_socket_directories = '$dir'"
        echo "max_connections = 300"
        echo "shared_buffers = 128MB"
        echo "logging_collector = off"
        if [ -n "${PG_THROWAWAY_CONF:-}" ]; then printf '%s\n' "$PG_THROWAWAY_CONF"; fi
    } | _pg_as_owner tee -a "$dir/data/postgresql.conf" >/dev/null

    local attempt fixed=${2:-}
    for attempt in 1 2 3 4 5; do
        port=${fixed:-$(pg_free_port)} || return 1
        echo "$port" >"$dir/port"
        if pg_server_start "$dir"; then
            printf 'postgres://postgres@127.0.0.1:%s/postgres\n' "$port"
            return 0
        fi
        # A fixed port that fails will not get better.
        [ -z "$fixed" ] || break
        _pg_log "start on port $port failed (attempt $attempt), retrying on another port"
    done
    _pg_log "could not start a throwaway PostgreSQL in $dir; server log:"
    tail -n 30 "$dir/postgres.log" >&2 2>/dev/null || true
    return 1
}

# pg_server_start DIR: start (again) the throwaway cluster in DIR on its port.
pg_server_start() {
    local dir=$1 pgctl port
    pgctl=$(pg_tool pg_ctl) || return 1
    port=$(cat "$dir/port") || return 1
    # postgres.log must be writable by the owner
    if [ "$(id -u)" -eq 0 ]; then
        touch "$dir/postgres.log" && chown postgres: "$dir/postgres.log"
    fi
    if ! _pg_as_owner "$pgctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
        -o "-p $port" start >"$dir/pg_ctl.log" 2>&1; then
        _pg_log "pg_ctl start failed (port $port):"
        cat "$dir/pg_ctl.log" >&2
        tail -n 20 "$dir/postgres.log" >&2 2>/dev/null || true
        return 1
    fi
    # -w waits for the socket; make sure TCP answers too.
    local i
    for i in $(seq 1 100); do
        pg_is_ready 127.0.0.1 "$port" && return 0
        sleep 0.1
    done
    _pg_log "server in $dir started but 127.0.0.1:$port does not answer"
    return 1
}

# pg_server_stop DIR [MODE]: stop the throwaway cluster, keep its data.
pg_server_stop() {
    local dir=$1 mode=${2:-fast} pgctl
    [ -f "$dir/data/postmaster.pid" ] || return 0
    pgctl=$(pg_tool pg_ctl) || return 1
    if ! _pg_as_owner "$pgctl" -D "$dir/data" -m "$mode" -w -t 60 stop >/dev/null 2>&1; then
        if [ "$mode" != immediate ]; then
            _pg_log "pg_ctl stop -m $mode failed; trying -m immediate"
            _pg_as_owner "$pgctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || return 1
        else
            return 1
        fi
    fi
}

# pg_server_restart DIR [MODE]: stop (MODE, default fast) then start again.
pg_server_restart() {
    pg_server_stop "$1" "${2:-fast}" && pg_server_start "$1"
}

# pg_stop_throwaway DIR: stop the server and delete DIR. Safe to call twice.
pg_stop_throwaway() {
    local dir=$1
    [ -n "$dir" ] && [ -d "$dir" ] || return 0
    if [ ! -f "$dir/.openbatch-throwaway-pg" ]; then
        _pg_log "refusing to remove '$dir': not a throwaway cluster made by pg.sh"
        return 1
    fi
    pg_server_stop "$dir" fast || _pg_log "could not stop the server in $dir"
    rm -rf -- "$dir"
}

# pg_provision DIR: export DATABASE_URL (see header). DIR is used only when a
# throwaway cluster is needed; PG_THROWAWAY_DIR is then set to it.
pg_provision() {
    local dir=$1 url
    PG_THROWAWAY_DIR=""
    if [ "${PG_FORCE_THROWAWAY:-0}" != 1 ] && [ -n "${DATABASE_URL:-}" ]; then
        _pg_log "using DATABASE_URL from the environment"
    elif [ "${PG_FORCE_THROWAWAY:-0}" != 1 ] && url=$(pg_default_url); then
        export DATABASE_URL=$url
        _pg_log "using the local PostgreSQL on 127.0.0.1:5432"
    else
        _pg_log "no PostgreSQL on 127.0.0.1:5432: starting a throwaway cluster in $dir"
        url=$(pg_start_throwaway "$dir") || return 1
        PG_THROWAWAY_DIR=$dir
        export DATABASE_URL=$url
        _pg_log "throwaway PostgreSQL at $url"
    fi
    export PG_THROWAWAY_DIR
}
