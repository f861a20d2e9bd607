#!/usr/bin/env bash
# OpenBatch execution-engine benchmark (prints figures; not a test). See bench/README.md.
#
# Runs 50,000-line batches through 3 `openbatch serve` replicas against the fake upstream
# (fixed latency) and prints wall time, phase times, efficiency against the ideal
# lines x latency / (replicas x in-flight), upstream executions, each replica's peak RSS, and
# CPU per line of PostgreSQL and of the replicas.
#   run 1 "small":   the 50,000 short lines (~7 MiB)
#   run 2 "big":     50,000 lines of ~4 KiB each, just under the 200 MiB batch input limit;
#                    then its files are deleted and the database size compared (after VACUUM);
#                    run twice, to tell space that is reused from space that accumulates
#   run 3 "latency": one-line batches against a 5 ms upstream, create -> completed
#   run 4 "ceiling": a CPU-bound upstream (fake-upstream --cpu-us) measured alone with wrk at
#                    64 connections, then a 20,000-line batch through the replicas against it
#                    (after an unmeasured 1,000-line batch, so that the replicas have their
#                    connections open as long-running ones would)
# Each run gets freshly started replicas, so their VmHWM (peak RSS) belongs to that run alone.
#
# Environment (defaults):
#   IN_FLIGHT=64            OPENBATCH__WORKER__MAX_IN_FLIGHT per replica; the upstream's
#                           max_in_flight, a cap for the whole cluster since issue 21, is set
#                           to IN_FLIGHT x BENCH_REPLICAS so that each replica's share is IN_FLIGHT
#   BENCH_LINES=50000       lines per batch (the batch limit is 50,000)
#   BENCH_LATENCY_MS=50     fake-upstream --latency-ms
#   BENCH_REPLICAS=3        openbatch serve processes
#   BENCH_BIG=1             0 skips the ~200 MiB run
#   BENCH_BIG_BYTES         input size of the big run (default 200 MiB - 64 KiB)
#   BENCH_POLL=0.5          seconds between GET /v1/batches/{id} polls
#   BENCH_CEIL_RPS=5000     what the ceiling run's CPU-bound upstream answers alone (wrk, 64
#                           connections): its --cpu-us is calibrated to it on this machine, since
#                           the same CPU cost answers 4,950-5,550 req/s on different 2-core VMs
#   BENCH_CEIL_CPU_US       a fixed fake-upstream --cpu-us instead of calibrating (0 skips the
#                           ceiling run)
#   BENCH_CEIL_LINES=20000  lines of the ceiling run
#   BENCH_FLUSH_MS          worker.flush_interval_ms of every run's replicas (default: the server's)
#   BENCH_REPLICA_ENV       extra NAME=VALUE settings for the replicas only, space-separated
#                           (e.g. "OPENBATCH__WORKER__THREADS=2 OPENBATCH__SERVER__WORKERS=1")
#   BENCH_BIN               the openbatch binary to measure (default: this checkout's release
#                           build), e.g. a copy of another commit's for a paired comparison
#   BENCH_CEIL_POLL=0.05    seconds between polls of the ceiling run
#   BENCH_RUST_LOG=warn     RUST_LOG of the replicas, e.g. "warn,openbatch::engine=info" to log
#                           how long each batch's validation and finalizing took (took_ms)
#   BENCH_STORAGE=postgres  storage.backend of the replicas; "s3" starts moto's S3 server
#                           (.venv/bin/moto_server, as the test command installs it) and keeps
#                           file content in its bucket
#   BENCH_DELETE=0          1: delete the "small" run's files afterwards and compare the
#                           database's size (after VACUUM) with its size before the run, which
#                           is measured after a 1,000-line warm-up batch and its files' deletion
#   BENCH_KEEP=1            keep the work dir (inputs, logs, JSON results)
#   DATABASE_URL            admin URL of the PostgreSQL to use; else 127.0.0.1:5432; else a
#                           throwaway cluster (scripts/lib/pg.sh). A fresh database
#                           ob_bench_engine_<random> is used and dropped at exit.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
# shellcheck source=scripts/lib/pg.sh
. "$ROOT/scripts/lib/pg.sh"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

IN_FLIGHT=${IN_FLIGHT:-64}
BENCH_LINES=${BENCH_LINES:-50000}
BENCH_LATENCY_MS=${BENCH_LATENCY_MS:-50}
BENCH_REPLICAS=${BENCH_REPLICAS:-3}
BENCH_BIG=${BENCH_BIG:-1}
BENCH_BIG_BYTES=${BENCH_BIG_BYTES:-$((200 * 1024 * 1024 - 64 * 1024))}
BENCH_POLL=${BENCH_POLL:-0.5}
BENCH_CEIL_RPS=${BENCH_CEIL_RPS:-5000}
BENCH_CEIL_CPU_US=${BENCH_CEIL_CPU_US:-}
BENCH_CEIL_LINES=${BENCH_CEIL_LINES:-20000}
BENCH_FLUSH_MS=${BENCH_FLUSH_MS:-}
BENCH_STORAGE=${BENCH_STORAGE:-postgres}
BENCH_DELETE=${BENCH_DELETE:-0}
FLUSH_ENV=()
if [ -n "$BENCH_FLUSH_MS" ]; then FLUSH_ENV=(OPENBATCH__WORKER__FLUSH_INTERVAL_MS="$BENCH_FLUSH_MS"); fi

log() { printf '[engine %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    printf '\nENGINE BENCH FAILED: %s\n' "$*" >&2
    exit 1
}

for v in IN_FLIGHT BENCH_LINES BENCH_LATENCY_MS BENCH_REPLICAS BENCH_BIG BENCH_BIG_BYTES; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done
if [ "$IN_FLIGHT" -lt 1 ] || [ "$BENCH_REPLICAS" -lt 1 ] || [ "$BENCH_LINES" -lt 1 ]; then
    die "IN_FLIGHT, BENCH_REPLICAS and BENCH_LINES must be >= 1"
fi
[ "$BENCH_BIG_BYTES" -le $((200 * 1024 * 1024)) ] ||
    die "BENCH_BIG_BYTES must not exceed the 200 MiB batch input limit"
case $BENCH_STORAGE in postgres | s3) ;; *) die "BENCH_STORAGE must be postgres or s3" ;; esac
# Past OpenAI's 50,000 lines, the replicas' limits are raised to the batch's size.
LIMIT_ENV=()
if [ "$BENCH_LINES" -gt 50000 ]; then
    LIMIT_ENV=(OPENBATCH__LIMITS__MAX_BATCH_LINES="$BENCH_LINES"
        OPENBATCH__LIMITS__MAX_BATCH_INPUT_BYTES=$((BENCH_LINES * 1024)))
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/openbatch-engine.XXXXXX")
PG_TMP=$WORK/pg
mkdir -p "$PG_TMP"
REPLICA_PIDS=()
PORTS=()
FAKE_PID=""
CEIL_PID=""
S3_PID=""
STORAGE_ENV=()
BENCH_DB=""
ADMIN_URL=""
PSQL=""

stop_replicas() {
    stop_processes 15 "${REPLICA_PIDS[@]}"
    REPLICA_PIDS=()
}

cleanup() {
    local rc=$?
    set +e
    stop_replicas
    for pid in "$FAKE_PID" "$CEIL_PID" "$S3_PID"; do
        [ -n "$pid" ] || continue
        kill -TERM "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    bench_teardown
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

command -v curl >/dev/null || apt_install curl
[ "$BENCH_CEIL_CPU_US" = 0 ] || command -v wrk >/dev/null || apt_install wrk
command -v python3 >/dev/null || die "python3 is required"
command -v cargo >/dev/null || die "cargo not found"
PSQL=$(pg_tool psql) || die "psql not found"

# --- build ----------------------------------------------------------------------------------------
log "cargo build --release --bins"
SQLX_OFFLINE=${SQLX_OFFLINE:-true} cargo build --release --bins || die "release build failed"
BIN=${BENCH_BIN:-$ROOT/target/release/openbatch}
FAKE=$ROOT/target/release/fake-upstream
if [ ! -x "$BIN" ] || [ ! -x "$FAKE" ]; then die "release binaries missing after build"; fi

# --- database -------------------------------------------------------------------------------------
bench_database ob_bench_engine
log "bench database: $BENCH_DB (the server creates it and migrates)"

LOAD_BEFORE=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo '?')
if python3 -c "import os,sys; sys.exit(0 if os.getloadavg()[0] > 0.5 * os.cpu_count() else 1)" 2>/dev/null; then
    log "WARNING: load average is $LOAD_BEFORE on $(nproc) cores: other processes compete for the CPU"
fi

# --- S3 server (BENCH_STORAGE=s3) ----------------------------------------------------------------
if [ "$BENCH_STORAGE" = s3 ]; then
    MOTO=$ROOT/.venv/bin/moto_server
    [ -x "$MOTO" ] || die "$MOTO missing: run ./scripts/test.sh once (it installs moto[server] in .venv)"
    S3_PORT=$(pg_free_port)
    "$MOTO" -H 127.0.0.1 -p "$S3_PORT" >"$WORK/moto.log" 2>&1 &
    S3_PID=$!
    S3_URL=http://127.0.0.1:$S3_PORT
    for _ in $(seq 1 150); do
        curl -s -o /dev/null "$S3_URL/" && break
        sleep 0.2
    done
    curl -fsS -o /dev/null -X PUT "$S3_URL/openbatch-bench" || die "could not make the bench bucket"
    STORAGE_ENV=(OPENBATCH__STORAGE__BACKEND=s3 OPENBATCH__STORAGE__S3__BUCKET=openbatch-bench
        AWS_ENDPOINT_URL="$S3_URL" AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1)
    log "S3: moto_server at $S3_URL (pid $S3_PID), bucket openbatch-bench"
fi

# --- inputs ---------------------------------------------------------------------------------------
log "generating inputs"
SMALL_BYTES=$(python3 "$ROOT/bench/engine.py" gen --lines "$BENCH_LINES" --out "$WORK/small.jsonl")
if [ "$BENCH_BIG" = 1 ]; then
    BIG_LINE=$((BENCH_BIG_BYTES / BENCH_LINES))
    BIG_BYTES=$(python3 "$ROOT/bench/engine.py" gen --lines "$BENCH_LINES" --line-bytes "$BIG_LINE" \
        --out "$WORK/big.jsonl")
    log "inputs: small $SMALL_BYTES bytes, big $BIG_BYTES bytes ($BIG_LINE bytes/line)"
fi

# --- fake upstream --------------------------------------------------------------------------------
# start_fake OUTFILE ARGS...: starts fake-upstream, sets STARTED_PID and STARTED_URL.
start_fake() {
    local out=$1 line
    shift
    "$FAKE" --port 0 "$@" >"$out" 2>"$out.err" &
    STARTED_PID=$!
    STARTED_URL=""
    for _ in $(seq 1 100); do
        if line=$(head -n1 "$out" 2>/dev/null) && [[ "$line" =~ ^listening\ on\ (http://[0-9.:]+)$ ]]; then
            STARTED_URL=${BASH_REMATCH[1]}
            return 0
        fi
        kill -0 "$STARTED_PID" 2>/dev/null || {
            cat "$out.err" >&2
            die "fake-upstream exited at start"
        }
        sleep 0.1
    done
    die "fake-upstream printed no 'listening on' line"
}
start_fake "$WORK/fake.out" --latency-ms "$BENCH_LATENCY_MS" --models bench-model
FAKE_PID=$STARTED_PID FAKE_URL=$STARTED_URL
log "fake upstream at $FAKE_URL (latency ${BENCH_LATENCY_MS} ms)"

# --- replicas -------------------------------------------------------------------------------------
replica_logs() {
    local i
    for i in "${!PORTS[@]}"; do
        echo "--- replica $((i + 1)) (port ${PORTS[$i]}) log, last lines:" >&2
        tail -n 25 "$WORK/replica-$1-$i.log" >&2 || true
    done
}

# start_replicas RUN [UPSTREAM_URL]: fresh processes, so that VmHWM covers this run only.
start_replicas() {
    local run=$1 upstream=${2:-$FAKE_URL} i pid port
    PORTS=()
    for i in $(seq 1 "$BENCH_REPLICAS"); do PORTS+=("$(pg_free_port)"); done
    for i in "${!PORTS[@]}"; do
        # shellcheck disable=SC2086 # BENCH_REPLICA_ENV is split into settings on purpose
        env OPENBATCH__SERVER__HOST=127.0.0.1 \
            OPENBATCH__SERVER__PORT="${PORTS[$i]}" \
            OPENBATCH__DATABASE__URL="$DB_URL" \
            OPENBATCH__UPSTREAM__BASE_URL="$upstream/v1" \
            OPENBATCH__WORKER__MAX_IN_FLIGHT="$IN_FLIGHT" \
            OPENBATCH__UPSTREAM__MAX_IN_FLIGHT="$((IN_FLIGHT * BENCH_REPLICAS))" \
            "${FLUSH_ENV[@]}" "${LIMIT_ENV[@]}" "${STORAGE_ENV[@]}" \
            RUST_LOG="${BENCH_RUST_LOG:-warn}" \
            ${BENCH_REPLICA_ENV:-} \
            "$BIN" serve >"$WORK/replica-$run-$i.log" 2>&1 &
        REPLICA_PIDS+=($!)
    done
    for i in "${!PORTS[@]}"; do
        pid=${REPLICA_PIDS[$i]} port=${PORTS[$i]}
        for _ in $(seq 1 600); do
            kill -0 "$pid" 2>/dev/null || {
                replica_logs "$run"
                die "replica $((i + 1)) exited during start-up"
            }
            [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz")" = 200 ] && continue 2
            sleep 0.1
        done
        replica_logs "$run"
        die "replica $((i + 1)) (port $port) not ready after 60s"
    done
    # The steady state is measured, not a cluster starting: a replica that joins a running
    # cluster sends nothing upstream until the others count it (two heartbeats).
    for i in "${!PORTS[@]}"; do
        port=${PORTS[$i]}
        for _ in $(seq 1 300); do
            metrics=$(curl -s "http://127.0.0.1:$port/metrics" || true)
            if grep -qx "openbatch_cluster_replicas $BENCH_REPLICAS" <<<"$metrics" &&
                grep -qx "openbatch_cluster_joining 0" <<<"$metrics"; then
                continue 2
            fi
            sleep 0.1
        done
        replica_logs "$run"
        die "replica $((i + 1)) (port $port) did not count $BENCH_REPLICAS replicas and finish joining in 30s"
    done
    log "$run: $BENCH_REPLICAS replicas ready on ports ${PORTS[*]} (pids ${REPLICA_PIDS[*]})"
}

# run_batch RUN INPUT [FAKE_URL FAKE_PID [ENGINE.PY ARGS...]]
run_batch() {
    local run=$1 input=$2 fake=${3:-$FAKE_URL} fake_pid=${4:-$FAKE_PID}
    shift $(($# < 4 ? $# : 4))
    start_replicas "$run" "$fake"
    local ports pids
    ports=$(IFS=,; echo "${PORTS[*]}")
    pids=$(IFS=,; echo "${REPLICA_PIDS[*]}")
    if ! python3 "$ROOT/bench/engine.py" run --label "$run" --input "$input" --ports "$ports" \
        --pids "$pids" --fake "$fake" --fake-pid "$fake_pid" --db "$BENCH_DB" --poll "$BENCH_POLL" \
        --psql "$PSQL" --db-url "$DB_URL" --out "$WORK/$run.json" "$@"; then
        replica_logs "$run"
        die "run '$run' failed"
    fi
    if grep -qiE 'warn|error|panic' "$WORK"/replica-"$run"-*.log; then
        log "$run: the replicas logged warnings/errors:"
        grep -hiE 'warn|error|panic' "$WORK"/replica-"$run"-*.log |
            sed -E 's/\x1b\[[0-9;]*m//g; s/^[0-9TZ:.-]+ +//' | sort | uniq -c | sort -rn | head -n 10 >&2
    fi
    stop_replicas
}

START=$(date +%s)
SMALL_ARGS=()
# After a warm-up batch whose files are deleted too: a database's first batch grows its
# catalogs' statistics and its tables' free-space and visibility maps once, whatever its size.
if [ "$BENCH_DELETE" = 1 ]; then SMALL_ARGS=(--delete-files --warmup 1000); fi
run_batch small "$WORK/small.jsonl" "$FAKE_URL" "$FAKE_PID" "${SMALL_ARGS[@]}"
RESULTS=("$WORK/small.json")
if [ "$BENCH_BIG" = 1 ]; then
    run_batch big "$WORK/big.jsonl" "$FAKE_URL" "$FAKE_PID" --delete-files
    RESULTS+=("$WORK/big.json")
    # Once more: space freed by the first is reused, so the database does not grow again.
    run_batch big-again "$WORK/big.jsonl" "$FAKE_URL" "$FAKE_PID" --delete-files
    RESULTS+=("$WORK/big-again.json")
fi

# One-line batches: create -> completed, polled every 5 ms.
start_replicas latency
python3 "$ROOT/bench/engine.py" latency --ports "$(IFS=,; echo "${PORTS[*]}")" --count 30 \
    --latency-ms 5 --out "$WORK/latency.json" || die "latency run failed"
stop_replicas

CEIL_ARGS=()
if [ "$BENCH_CEIL_CPU_US" != 0 ]; then
    ceil_wrk() { # ceil_wrk SECONDS OUT: drives the ceiling upstream alone, as the goal defines it
        wrk -t2 -c64 -d"$1"s -s "$ROOT/bench/upstream_chat.lua" "$CEIL_URL/v1/chat/completions" >"$2" ||
            die "wrk against the upstream failed"
    }
    start_ceil() {
        start_fake "$WORK/ceil.out" --cpu-us "$1" --models bench-model
        CEIL_PID=$STARTED_PID CEIL_URL=$STARTED_URL
    }
    if [ -n "$BENCH_CEIL_CPU_US" ]; then
        start_ceil "$BENCH_CEIL_CPU_US"
    else
        # The rate is ~ cores / (cpu_us + overhead): scaling cpu_us by rate / target converges
        # from above and below in two or three 3-second probes.
        cpu_us=330
        for _ in 1 2 3; do
            start_ceil "$cpu_us"
            ceil_wrk 3 "$WORK/wrk-probe.txt"
            rps=$(awk '/^Requests\/sec:/{print $2}' "$WORK/wrk-probe.txt")
            log "ceiling: calibrating: --cpu-us $cpu_us answers $rps req/s alone (target $BENCH_CEIL_RPS)"
            within=$(awk -v r="$rps" -v t="$BENCH_CEIL_RPS" 'BEGIN{print (r > 0.97 * t && r < 1.03 * t)}')
            [ "$within" = 1 ] && break
            cpu_us=$(awk -v c="$cpu_us" -v r="$rps" -v t="$BENCH_CEIL_RPS" 'BEGIN{printf "%d", c * r / t + 0.5}')
            kill -TERM "$CEIL_PID" 2>/dev/null || true
            wait "$CEIL_PID" 2>/dev/null || true
            CEIL_PID=""
        done
        [ -n "$CEIL_PID" ] || start_ceil "$cpu_us"
        BENCH_CEIL_CPU_US=$cpu_us
    fi
    log "ceiling: CPU-bound upstream at $CEIL_URL (${BENCH_CEIL_CPU_US} us of CPU per request); wrk alone, 64 connections"
    ceil_wrk 10 "$WORK/wrk-ceil.txt"
    python3 "$ROOT/bench/engine.py" gen --lines "$BENCH_CEIL_LINES" --out "$WORK/ceil.jsonl" >/dev/null
    run_batch ceiling "$WORK/ceil.jsonl" "$CEIL_URL" "$CEIL_PID" --poll ${BENCH_CEIL_POLL:-0.05} --warmup 1000
    CEIL_ARGS=(--ceiling "$WORK/ceiling.json" --wrk "$WORK/wrk-ceil.txt")
fi
ELAPSED=$(($(date +%s) - START))

# --- report ---------------------------------------------------------------------------------------
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')
dirty=""
if git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | grep -q .; then dirty=+dirty; fi
pgver=$("$PSQL" "$DB_URL" -XAtqc "show server_version" 2>/dev/null || echo '?')
pgsets=$("$PSQL" "$DB_URL" -XAtqc "select string_agg(name || '=' || setting, ', ' order by name) from pg_settings where name in ('fsync','synchronous_commit','shared_buffers')" 2>/dev/null || echo '?')
echo
echo "OpenBatch execution-engine benchmark — $(date -u +%Y-%m-%dT%H:%MZ), commit $commit$dirty"
echo "machine: $(nproc) cores, $(free -g | awk '/^Mem:/{print $2}') GiB RAM; fake upstream, replicas, PostgreSQL and this client share the cores"
echo "load average (1 min) before the run: $LOAD_BEFORE; PostgreSQL $pgver ($pgsets)"
if [ "$BENCH_CEIL_CPU_US" != 0 ]; then
    echo "ceiling upstream: fake-upstream --cpu-us $BENCH_CEIL_CPU_US${cpu_us:+ (calibrated to ~$BENCH_CEIL_RPS req/s alone)}"
fi
echo "$BENCH_REPLICAS replicas (release, RUST_LOG=warn), worker.max_in_flight=$IN_FLIGHT per replica, fake upstream latency ${BENCH_LATENCY_MS} ms; storage.backend=$BENCH_STORAGE; runs took ${ELAPSED}s in all"
if [ -n "$S3_PID" ]; then
    echo "S3 server (moto_server, one Python process): $(awk '{printf "%.1f", ($14 + $15) / 100}' "/proc/$S3_PID/stat") s of CPU over the whole benchmark"
fi
python3 "$ROOT/bench/engine.py" report --latency-ms "$BENCH_LATENCY_MS" --in-flight "$IN_FLIGHT" \
    --poll "$BENCH_POLL" --one-line "$WORK/latency.json" "${CEIL_ARGS[@]}" "${RESULTS[@]}"
