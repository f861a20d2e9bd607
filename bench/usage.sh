#!/usr/bin/env bash
# Usage API benchmark (issue 24; prints figures, not a test). See bench/README.md.
#
# Fills the usage rollups with USAGE_DAYS days of minute buckets for USAGE_PROJECTS projects ×
# USAGE_MODELS models, every combination used every minute (the worst case: 43.2 M minute rows
# at the defaults), folded into hours and days as the maintainer folds them, then asks one
# `openbatch serve` replica the reports a dashboard asks, each USAGE_REPEAT times over HTTP,
# and prints each report's latency (median, p95, max), its size, and the CPU it cost the
# replica and PostgreSQL. Beside them, the same 30 days summed straight from the minute rows in
# psql: what a report would cost without the coarser rollups.
#
# Environment (defaults):
#   USAGE_DAYS=30 USAGE_PROJECTS=100 USAGE_MODELS=10 USAGE_REPEAT=20
#   BENCH_BIN        the openbatch binary (default: this checkout's release build)
#   BENCH_KEEP=1     keep the work dir (server log)
#   DATABASE_URL     admin URL of the PostgreSQL to use; else 127.0.0.1:5432; else a throwaway
#                    cluster. A fresh database ob_bench_usage_<random> is used and dropped at exit.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
# shellcheck source=scripts/lib/pg.sh
. "$ROOT/scripts/lib/pg.sh"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

USAGE_DAYS=${USAGE_DAYS:-30}
USAGE_PROJECTS=${USAGE_PROJECTS:-100}
USAGE_MODELS=${USAGE_MODELS:-10}
USAGE_REPEAT=${USAGE_REPEAT:-20}

log() { printf '[usage %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    printf '\nUSAGE BENCH FAILED: %s\n' "$*" >&2
    exit 1
}
for v in USAGE_DAYS USAGE_PROJECTS USAGE_MODELS USAGE_REPEAT; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive whole number (got '${!v}')"
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/openbatch-usage.XXXXXX")
PG_TMP=$WORK/pg
SERVER_PID=""
trap one_server_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

command -v curl >/dev/null || apt_install curl
command -v python3 >/dev/null || die "python3 is required"
PSQL=$(pg_tool psql) || die "psql not found"

bench_binary

bench_database ob_bench_usage
start_one_server OPENBATCH__AUTH__ENABLED=true
ADMIN_KEY=$(OPENBATCH__DATABASE__URL=$DB_URL "$BIN" keys create --admin --name bench) ||
    die "could not create an admin key"

# --- fill -----------------------------------------------------------------------------------------
ROWS=$((USAGE_DAYS * 1440 * USAGE_PROJECTS * USAGE_MODELS))
log "filling $ROWS minute rows ($USAGE_DAYS days × $USAGE_PROJECTS projects × $USAGE_MODELS models)"
# Whole days up to the end of today, so that "now" falls inside the filled range.
START=$(( ($(date +%s) / 86400 + 1 - USAGE_DAYS) * 86400 ))
FILL_T0=$(date +%s)
# The primary keys are rebuilt after the load (faster than keeping them up row by row); the
# tables end as the maintainer's fold leaves them.
"$PSQL" "$DB_URL" -XAtq -v ON_ERROR_STOP=1 >/dev/null <<SQL || die "filling the rollups failed"
INSERT INTO usage_combos (project_id, endpoint, model, api_key_id)
SELECT 'proj_bench' || lpad(p::text, 4, '0'), '/v1/chat/completions', 'model-' || d,
       'key_' || lpad(to_hex(p), 12, '0')
FROM generate_series(1, $USAGE_PROJECTS) p, generate_series(1, $USAGE_MODELS) d;
ALTER TABLE usage_minutes DROP CONSTRAINT usage_minutes_pkey;
INSERT INTO usage_minutes (start, combo, requests, input_tokens, cached_tokens, output_tokens)
SELECT $START + m * 60, c.id, 3, 3000 + c.id, 100, 600 + c.id % 7
FROM generate_series(0, $USAGE_DAYS * 1440 - 1) m, usage_combos c;
ALTER TABLE usage_minutes ADD PRIMARY KEY (start, combo);
INSERT INTO usage_hours SELECT start - start % 3600, combo, sum(requests), sum(input_tokens),
       sum(cached_tokens), sum(output_tokens)
FROM usage_minutes GROUP BY 1, 2;
INSERT INTO usage_days SELECT start - start % 86400, combo, sum(requests), sum(input_tokens),
       sum(cached_tokens), sum(output_tokens)
FROM usage_hours GROUP BY 1, 2;
VACUUM ANALYZE usage_combos, usage_minutes, usage_hours, usage_days;
SQL
log "filled in $(($(date +%s) - FILL_T0)) s; sizes: $("$PSQL" "$DB_URL" -XAtq -c "
    SELECT string_agg(format('%s %s rows %s', relname, n_live_tup,
                             pg_size_pretty(pg_total_relation_size(relid))), '; ')
    FROM pg_stat_user_tables WHERE relname LIKE 'usage_%'")"

# --- the naive sum, for comparison ----------------------------------------------------------------
NAIVE_MS=$("$PSQL" "$DB_URL" -XAtq -c '\timing on' -c "
    SELECT start - start % 86400, project_id, model, sum(input_tokens)
    FROM usage_minutes JOIN usage_combos c ON c.id = combo WHERE start >= $START
    GROUP BY 1, 2, 3" |
    sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p')

# --- the reports ----------------------------------------------------------------------------------
python3 "$ROOT/bench/usage.py" --base "http://127.0.0.1:$PORT/v1" --key "$ADMIN_KEY" \
    --start "$START" --now "$(date +%s)" --days "$USAGE_DAYS" --repeat "$USAGE_REPEAT" --server-pid "$SERVER_PID" \
    --naive-ms "${NAIVE_MS:-?}"
