# shellcheck shell=bash
# The offline data of the sqlx query macros (.sqlx/, one query-<hash>.json per statement):
# regenerating it (scripts/sqlx-prepare.sh) and checking that it is fresh (scripts/test.sh).
# Source scripts/lib/pg.sh first, and run from the repository root.
#
# With SQLX_OFFLINE=false and DATABASE_URL set, the macros describe every statement against that
# database while the crate compiles, and write what they learn into SQLX_OFFLINE_DIR (sqlx 0.8;
# no sqlx-cli needed). A scratch database migrated from migrations/ gives them the schema.
#
#   sqlx_online DIR CMD...   runs CMD (a cargo check or clippy of the crate) online against a
#                            fresh scratch database, the macros writing to DIR (absolute, must
#                            exist); the database is dropped when CMD ends
#   sqlx_diff DIR            0 when DIR holds exactly what .sqlx/ holds, else prints the difference
#   sqlx_cleanup             drops the scratch database if one is left: call it from an EXIT
#                            trap, so an interrupted run leaves nothing behind

SQLX_SCRATCH_DB=""
SQLX_ADMIN_URL=""

sqlx_cleanup() {
    [ -n "$SQLX_SCRATCH_DB" ] || return 0
    local psql
    psql=$(pg_tool psql) || return 1
    "$psql" "$SQLX_ADMIN_URL" -XAtq -v ON_ERROR_STOP=1 \
        -c "DROP DATABASE IF EXISTS \"$SQLX_SCRATCH_DB\" WITH (FORCE)" >/dev/null ||
        _pg_log "could not drop the scratch database $SQLX_SCRATCH_DB"
    SQLX_SCRATCH_DB=""
}

sqlx_online() {
    local dir=$1 psql url f rc=0 stamp
    shift
    psql=$(pg_tool psql) || return 1
    SQLX_ADMIN_URL=$(pg_default_url) || {
        _pg_log "no PostgreSQL to describe the statements with: set DATABASE_URL"
        return 1
    }
    SQLX_SCRATCH_DB="openbatch_sqlx_$$_$RANDOM"
    if ! "$psql" "$SQLX_ADMIN_URL" -XAtq -v ON_ERROR_STOP=1 \
        -c "CREATE DATABASE \"$SQLX_SCRATCH_DB\"" >/dev/null; then
        _pg_log "could not create the scratch database $SQLX_SCRATCH_DB"
        SQLX_SCRATCH_DB=""
        return 1
    fi
    url=$(pg_url_with_db "$SQLX_ADMIN_URL" "$SQLX_SCRATCH_DB")
    # Each file in one transaction, as sqlx's migrator applies it.
    for f in migrations/*.sql; do
        if ! "$psql" "$url" -Xq -1 -v ON_ERROR_STOP=1 -f "$f" >/dev/null; then
            _pg_log "applying $f to the scratch database failed"
            sqlx_cleanup
            return 1
        fi
    done
    # sqlx reads its variables without telling cargo, so they alone recompile nothing: touch the
    # lib (which holds every statement) for the macros to run, then give it its mtime back, so
    # that the other builds of the crate do not recompile for this.
    stamp=$(mktemp)
    touch -r src/lib.rs "$stamp"
    touch src/lib.rs
    SQLX_OFFLINE=false DATABASE_URL=$url SQLX_OFFLINE_DIR=$dir "$@" || rc=$?
    touch -r "$stamp" src/lib.rs
    rm -f -- "$stamp"
    sqlx_cleanup
    return "$rc"
}

sqlx_diff() {
    local dir=$1
    if [ ! -d .sqlx ]; then
        echo ".sqlx/ does not exist"
        return 1
    fi
    diff -r .sqlx "$dir"
}
