#!/usr/bin/env bash
# GPU-sharing benchmark (issue 21): OpenBatch replicas and an interactive client sharing
# fake-upstream "GPUs" (`--gpu-slots`: N requests at once, a fixed service time, a FIFO queue
# beyond, vLLM's gauges at /metrics). Prints figures; not a test. See bench/README.md.
#
#   ./bench/fleet.sh                      # every scenario, about 2 minutes on the 2-core box
#   ./bench/fleet.sh ceiling idle queue   # some of them
#   FLEET_LINES=2000 ./bench/fleet.sh     # a quick run
#
# Scenarios: ceiling idle queue gateway cap pool failover cpu (queue needs idle for its p99
# ratio; it runs the interactive client alone anyway when queue is asked for; failover is the
# pool with its second GPU SIGKILLed mid-batch; cpu is the adaptive limiter's CPU cost alone).
#
# Options (environment):
#   FLEET_SLOTS=32 FLEET_SERVICE_MS=100   the GPU: requests at once, service time of each
#   FLEET_REPLICAS=3                      openbatch replicas (worker on) of queue, gateway, pool
#   FLEET_LINES=6000                      lines of the queue, gateway and cap batches
#   FLEET_QUEUE_MAX=16                    gateway: 429 past this many waiting
#   FLEET_CAP=40 FLEET_CAP_REPLICAS=6     cap: OPENBATCH__UPSTREAM__MAX_IN_FLIGHT and replicas
#   FLEET_POOL_SLOTS=32,16,8              pool, failover: one GPU per entry, all in one pool
#   FLEET_POOL_LINES=6000 FLEET_KILL_AT=0.4  pool, failover: batch size; failover: share of lines
#                                         done when the second GPU is SIGKILLed
#   FLEET_CEILING_SECONDS=5 FLEET_IDLE_SECONDS=10  the ceiling's load, the idle client's run
#   FLEET_CPU_CAP=64 FLEET_CPU_ROUNDS=2   cpu: max_in_flight, on a GPU of 4 × that many slots;
#                                         runs with adaptive on and off, each this many times
#   FLEET_TIMEOUT=300                     seconds a batch may take before it is cancelled
#   FLEET_POLL=0.1                        seconds between polls of the batch
#   BENCH_BIN                             openbatch binary (default: this checkout's release build)
#   BENCH_RUST_LOG=warn                   RUST_LOG of the replicas
#   BENCH_KEEP=1                          keep the work dir (logs, JSON results)
#   FLEET_TRACE=1                         also sample each replica's endpoint limit every 0.1 s into
#                                         WORK/<scenario>.trace.json (with BENCH_KEEP=1)
#   DATABASE_URL                          admin URL of the PostgreSQL (else 127.0.0.1:5432, else a
#                                         throwaway cluster); a fresh database ob_bench_fleet_<random>
#                                         is used and dropped at exit
# Any OPENBATCH__* variable in the environment is passed on to the replicas.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
# shellcheck source=scripts/lib/pg.sh
. "$ROOT/scripts/lib/pg.sh"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

log() { printf '[fleet %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    printf '\nFLEET BENCH FAILED: %s\n' "$*" >&2
    exit 1
}

FLEET_SLOTS=${FLEET_SLOTS:-32}
FLEET_SERVICE_MS=${FLEET_SERVICE_MS:-100}
FLEET_REPLICAS=${FLEET_REPLICAS:-3}
FLEET_LINES=${FLEET_LINES:-6000}
FLEET_QUEUE_MAX=${FLEET_QUEUE_MAX:-16}
FLEET_CAP=${FLEET_CAP:-40}
FLEET_CAP_REPLICAS=${FLEET_CAP_REPLICAS:-6}
FLEET_POOL_SLOTS=${FLEET_POOL_SLOTS:-32,16,8}
FLEET_POOL_LINES=${FLEET_POOL_LINES:-6000}
FLEET_KILL_AT=${FLEET_KILL_AT:-0.4}
FLEET_CEILING_SECONDS=${FLEET_CEILING_SECONDS:-5}
FLEET_IDLE_SECONDS=${FLEET_IDLE_SECONDS:-10}
FLEET_TIMEOUT=${FLEET_TIMEOUT:-300}
FLEET_POLL=${FLEET_POLL:-0.1}
FLEET_CPU_CAP=${FLEET_CPU_CAP:-64}
FLEET_CPU_ROUNDS=${FLEET_CPU_ROUNDS:-2}
for v in FLEET_SLOTS FLEET_SERVICE_MS FLEET_REPLICAS FLEET_LINES FLEET_QUEUE_MAX FLEET_CAP \
    FLEET_CAP_REPLICAS FLEET_POOL_LINES FLEET_TIMEOUT FLEET_CPU_CAP FLEET_CPU_ROUNDS; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a whole number >= 1 (got '${!v}')"
done
[[ "$FLEET_POOL_SLOTS" =~ ^[1-9][0-9]*(,[1-9][0-9]*){1,}$ ]] ||
    die "FLEET_POOL_SLOTS must list two or more slot counts, e.g. 32,16,8"
SCENARIOS=$(IFS=,; echo "$*")

WORK=$(mktemp -d "${TMPDIR:-/tmp}/openbatch-fleet.XXXXXX")
PG_TMP=$WORK/pg
mkdir -p "$PG_TMP"
: >"$WORK/pids"
BENCH_DB=""
ADMIN_URL=""
PSQL=""

cleanup() {
    local rc=$?
    set +e
    # Whatever the driver started and did not stop (it died, or was interrupted).
    local pids=()
    while read -r pid; do
        kill -0 "$pid" 2>/dev/null && pids+=("$pid")
    done <"$WORK/pids"
    stop_processes 10 "${pids[@]}"
    bench_teardown
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

command -v curl >/dev/null || apt_install curl
command -v python3 >/dev/null || die "python3 is required"
command -v cargo >/dev/null || die "cargo not found"
PSQL=$(pg_tool psql) || die "psql not found"

log "cargo build --release --bins"
SQLX_OFFLINE=${SQLX_OFFLINE:-true} cargo build --release --bins || die "release build failed"
BIN=${BENCH_BIN:-$ROOT/target/release/openbatch}
FAKE=$ROOT/target/release/fake-upstream
if [ ! -x "$BIN" ] || [ ! -x "$FAKE" ]; then die "release binaries missing after build"; fi
"$FAKE" --help | grep -q -- --gpu-slots || die "$FAKE has no GPU mode (--gpu-slots)"

bench_database ob_bench_fleet
log "bench database: $BENCH_DB (the first replicas create and migrate it)"

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')
if python3 -c "import os,sys; sys.exit(0 if os.getloadavg()[0] > 0.5 * os.cpu_count() else 1)" 2>/dev/null; then
    log "WARNING: load average is $LOAD_BEFORE on $(nproc) cores: other processes compete for the CPU"
fi

START=$(date +%s)
python3 "$ROOT/bench/fleet.py" scenarios --bin "$BIN" --fake "$FAKE" --db-url "$DB_URL" \
    --work "$WORK" --out "$WORK/results.json" --only "$SCENARIOS" --rust-log "${BENCH_RUST_LOG:-warn}" \
    --slots "$FLEET_SLOTS" --service-ms "$FLEET_SERVICE_MS" --replicas "$FLEET_REPLICAS" \
    --lines "$FLEET_LINES" --queue-max "$FLEET_QUEUE_MAX" --cap "$FLEET_CAP" \
    --cap-replicas "$FLEET_CAP_REPLICAS" --pool-slots "$FLEET_POOL_SLOTS" \
    --pool-lines "$FLEET_POOL_LINES" --kill-at "$FLEET_KILL_AT" \
    --ceiling-s "$FLEET_CEILING_SECONDS" --idle-s "$FLEET_IDLE_SECONDS" \
    --timeout "$FLEET_TIMEOUT" --poll "$FLEET_POLL" \
    --cpu-cap "$FLEET_CPU_CAP" --cpu-rounds "$FLEET_CPU_ROUNDS" || die "a scenario failed (BENCH_KEEP=1 keeps the logs)"
ELAPSED=$(($(date +%s) - START))

if grep -qiE 'warn|error|panic' "$WORK"/replica-*.log 2>/dev/null; then
    log "the replicas logged warnings/errors (most frequent):"
    grep -hiE 'warn|error|panic' "$WORK"/replica-*.log |
        sed -E 's/\x1b\[[0-9;]*m//g; s/^[0-9TZ:.-]+ +//; s/[0-9a-f]{8}-[0-9a-f-]{27}//g; s/batch_[0-9a-z]+/batch_…/g' |
        cut -c1-160 | sort | uniq -c | sort -rn | head -n 8 >&2
fi

commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')
dirty=""
if git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | grep -q .; then dirty=+dirty; fi
echo
echo "OpenBatch fleet benchmark — $(date -u +%Y-%m-%dT%H:%MZ), commit $commit$dirty, ${ELAPSED}s"
echo "machine: $(nproc) cores; load average before the run: $LOAD_BEFORE, after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "GPUs, replicas, PostgreSQL and the load generators share the cores"
python3 "$ROOT/bench/fleet.py" report --results "$WORK/results.json"
