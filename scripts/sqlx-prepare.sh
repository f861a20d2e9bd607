#!/usr/bin/env bash
# Regenerates .sqlx/, the offline data that lets the sqlx query macros check every statement
# in src/store/ at compile time without a database (SQLX_OFFLINE=true: the Dockerfile, the test
# script). Run it after changing a statement or a migration, and commit .sqlx/ with the change.
#
#   ./scripts/sqlx-prepare.sh          rewrite .sqlx/
#   ./scripts/sqlx-prepare.sh --check  only say whether .sqlx/ is up to date (as scripts/test.sh)
#
# Needs PostgreSQL and psql: $DATABASE_URL if set, else the server on 127.0.0.1:5432. A scratch
# database migrated from migrations/ is created for the run and dropped after it.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/lib/pg.sh
. scripts/lib/pg.sh
# shellcheck source=scripts/lib/sqlx.sh
. scripts/lib/sqlx.sh

check=false
case "${1:-}" in
"") ;;
--check) check=true ;;
*)
    echo "usage: $0 [--check]" >&2
    exit 2
    ;;
esac

out=$(mktemp -d "${TMPDIR:-/tmp}/openbatch-sqlx.XXXXXX")
cleanup() {
    local rc=$?
    sqlx_cleanup
    rm -rf -- "$out"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The same compile as scripts/test.sh's clippy step, so either run leaves the other's cache warm.
sqlx_online "$out" cargo clippy --all-targets -- -D warnings || {
    echo "the crate did not compile against a freshly migrated database (see above)" >&2
    exit 1
}
if $check; then
    sqlx_diff "$out" || {
        echo ".sqlx/ is out of date: run scripts/sqlx-prepare.sh and commit .sqlx/" >&2
        exit 1
    }
    echo ".sqlx/ is up to date ($(find .sqlx -name 'query-*.json' | wc -l) statements)"
else
    rm -rf .sqlx
    mkdir .sqlx
    cp "$out"/query-*.json .sqlx/
    echo "wrote .sqlx/ ($(find .sqlx -name 'query-*.json' | wc -l) statements)"
fi
