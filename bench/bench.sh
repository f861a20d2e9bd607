#!/usr/bin/env bash
# OpenBatch benchmark (prints figures; not a test). See bench/README.md.
#
#   a. POST /v1/batches with distinct idempotency keys   (wrk, N replicas)
#   b. POST /v1/batches replaying one idempotency key    (wrk, N replicas)
#   c. pgbench: the equivalent single INSERT ... ON CONFLICT, distinct keys
#   c'. pgbench: the same with one fixed key (the database side of a replay)
# all at the same concurrency, on the same PostgreSQL, in the same run.
#
# Environment (defaults):
#   BENCH_SECONDS=15        measured duration of each scenario
#   BENCH_WARMUP=3          warm-up seconds before each scenario (0 = none)
#   BENCH_CONNECTIONS=64    concurrent HTTP connections / pgbench clients
#   BENCH_REPLICAS=3        openbatch serve processes
#   BENCH_WRK_THREADS=1     threads per wrk process (one wrk process per replica)
#   BENCH_PGBENCH_JOBS=2    pgbench -j
#   BENCH_PGBENCH_MODE=prepared  pgbench -M (sqlx also uses prepared statements)
#   BENCH_LOG_LEVEL=warn    server log level (per-request info logs cost throughput)
#   BENCH_WORKER=0          1: replicas also run their batch workers (which then
#                           fail every bench batch: its input file does not exist);
#                           0: API-only replicas (OPENBATCH__WORKER__ENABLED=false)
#   BENCH_GROW_ROWS=100000  rows added to `batches` before create is measured again (a2),
#                           through the replicas that cached their plans on the small table
#   BENCH_MAX_ACTIVE=0      OPENBATCH__LIMITS__MAX_ACTIVE_BATCHES_PER_PROJECT for the
#                           replicas; 0 = no admission limit (a run creates far more
#                           than the default 1000 unfinished batches)
#   BENCH_PG_PLAN_CACHE_MODE  diagnostic: if set (e.g. force_generic_plan), the bench
#                           database is created up front with this plan_cache_mode
#   BENCH_GOAL=60           goal for a / c, in percent
#   BENCH_KEEP=1            keep the work dir (logs, wrk and pgbench output)
#   DATABASE_URL            admin URL of the PostgreSQL to use; else 127.0.0.1:5432;
#                           else a throwaway cluster. A fresh database
#                           ob_bench_<random> is created there and dropped at exit.
#   PG_FORCE_THROWAWAY=1    use a private throwaway cluster even when a server is
#                           running (its connection slots are not shared)
#   OPENBATCH__*            passed on to the replicas (e.g. OPENBATCH__SERVER__WORKERS=1)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
# shellcheck source=scripts/lib/pg.sh
. "$ROOT/scripts/lib/pg.sh"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

BENCH_SECONDS=${BENCH_SECONDS:-15}
BENCH_WARMUP=${BENCH_WARMUP:-3}
BENCH_CONNECTIONS=${BENCH_CONNECTIONS:-64}
BENCH_REPLICAS=${BENCH_REPLICAS:-3}
BENCH_WRK_THREADS=${BENCH_WRK_THREADS:-1}
BENCH_PGBENCH_JOBS=${BENCH_PGBENCH_JOBS:-2}
BENCH_PGBENCH_MODE=${BENCH_PGBENCH_MODE:-prepared}
BENCH_LOG_LEVEL=${BENCH_LOG_LEVEL:-warn}
BENCH_WORKER=${BENCH_WORKER:-0}
BENCH_GROW_ROWS=${BENCH_GROW_ROWS:-100000}
BENCH_MAX_ACTIVE=${BENCH_MAX_ACTIVE:-0}
if [ "$BENCH_WORKER" = 1 ]; then WORKER_ENABLED=true WORKER_LABEL=on; else WORKER_ENABLED=false WORKER_LABEL=off; fi
BENCH_GOAL=${BENCH_GOAL:-60}
export BENCH_LUA_DIR=$ROOT/bench

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    printf '\nBENCH FAILED: %s\n' "$*" >&2
    exit 1
}

for v in BENCH_SECONDS BENCH_WARMUP BENCH_CONNECTIONS BENCH_REPLICAS BENCH_WRK_THREADS BENCH_PGBENCH_JOBS BENCH_GOAL; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done
[ "$BENCH_SECONDS" -ge 1 ] || die "BENCH_SECONDS must be >= 1"
[ "$BENCH_REPLICAS" -ge 1 ] || die "BENCH_REPLICAS must be >= 1"
[ "$BENCH_CONNECTIONS" -ge $((BENCH_REPLICAS * BENCH_WRK_THREADS)) ] ||
    die "BENCH_CONNECTIONS must be at least BENCH_REPLICAS * BENCH_WRK_THREADS"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/openbatch-bench.XXXXXX")
# Not inside $WORK: the postgres user must be able to reach it.
PG_TMP=$(mktemp -d "${TMPDIR:-/tmp}/openbatch-bench-pg.XXXXXX")
REPLICA_PIDS=()
BENCH_DB=""
ADMIN_URL=""
PSQL=""

stop_replicas() {
    stop_processes 30 "${REPLICA_PIDS[@]}"
    REPLICA_PIDS=()
}

cleanup() {
    local rc=$?
    set +e
    stop_replicas
    bench_teardown
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- tools --------------------------------------------------------------------
command -v wrk >/dev/null || apt_install wrk
command -v curl >/dev/null || apt_install curl
command -v python3 >/dev/null || die "python3 is required (report arithmetic)"
PSQL=$(pg_tool psql) || die "psql not found"
PGBENCH=$(pg_tool pgbench) || die "pgbench not found (Debian: apt-get install postgresql-contrib or postgresql-client)"
command -v cargo >/dev/null || die "cargo not found"

# --- build --------------------------------------------------------------------
log "cargo build --release --bin openbatch"
SQLX_OFFLINE=${SQLX_OFFLINE:-true} cargo build --release --bin openbatch || die "release build failed"
BIN=$ROOT/target/release/openbatch
[ -x "$BIN" ] || die "$BIN missing after build"

# --- database -----------------------------------------------------------------
bench_database ob_bench
log "bench database: $BENCH_DB (the server creates it and migrates)"
TOO_MANY_HINT="hint: other clients use this server's connection slots (max_connections); PG_FORCE_THROWAWAY=1 runs the bench on a private cluster"
psql_db() {
    if ! "$PSQL" "$DB_URL" -XAtq -v ON_ERROR_STOP=1 "$@" 2>"$WORK/psql.err"; then
        cat "$WORK/psql.err" >&2
        if grep -q 'too many clients' "$WORK/psql.err"; then log "$TOO_MANY_HINT"; fi
        die "psql failed: $*"
    fi
}

if [ -n "${BENCH_PG_PLAN_CACHE_MODE:-}" ]; then
    log "creating $BENCH_DB with plan_cache_mode = $BENCH_PG_PLAN_CACHE_MODE (diagnostic run)"
    "$PSQL" "$ADMIN_URL" -XAtq -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$BENCH_DB\"" \
        -c "ALTER DATABASE \"$BENCH_DB\" SET plan_cache_mode = '$BENCH_PG_PLAN_CACHE_MODE'" ||
        die "could not create $BENCH_DB"
fi

# --- a quiet machine? -----------------------------------------------------------
# Other work on the box (a cargo build...) skews every figure: measure how idle
# the CPUs are for 2 s before starting, and say so when they are busy.
cpu_idle_pct() {
    python3 - <<'EOF'
import time
def snap():
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return f[3] + f[4], sum(f)  # idle + iowait, total
i0, t0 = snap(); time.sleep(2); i1, t1 = snap()
print(f"{100 * (i1 - i0) / max(1, t1 - t0):.0f}")
EOF
}
LOAD_BEFORE=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo '?')
IDLE_BEFORE=$(cpu_idle_pct 2>/dev/null || echo '?')
if [ "$IDLE_BEFORE" != '?' ] && [ "$IDLE_BEFORE" -lt 85 ]; then
    log "WARNING: the CPUs are only ${IDLE_BEFORE}% idle before the run (load average $LOAD_BEFORE): other processes compete for the CPU and the figures will be low and noisy"
fi

# --- CPU used by other processes during a measurement ---------------------------
# cpu_snap NAME: record /proc/stat and every process's CPU time. "Ours" are the
# replicas ($BIN), wrk, pgbench, PostgreSQL's auxiliary processes and backends
# of the bench database, and the children this script and the postmaster have
# reaped; cpu_others NAME prints the % of all CPU time used by anything else
# between NAME-start and NAME-end (a cargo build, another test...). On a shared
# PostgreSQL, other clients' short-lived backends count as ours: an underestimate.
cpu_snap() {
    python3 - "$WORK/$1.cpu" "$BIN" "$BENCH_DB" "$$" <<'EOF' || true
import json, os, sys
out, binpath, db, shell = sys.argv[1:5]
f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
snap = {"total": sum(f), "busy": sum(f) - f[3] - f[4], "procs": {}}
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    try:
        st = open(f"/proc/{pid}/stat").read()
        comm = st[st.index("(") + 1:st.rindex(")")]
        rest = st[st.rindex(")") + 2:].split()
        ticks, start = int(rest[11]) + int(rest[12]), rest[19]
        children = int(rest[13]) + int(rest[14])  # CPU of exited, reaped children
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            exe = ""
    except (OSError, ValueError):
        continue
    if pid == shell:
        # wrk, pgbench (and this script's helpers) are gone by the end snapshot:
        # their CPU shows up in the shell's reaped-children time.
        ours, ticks = "loadgen", ticks + children
    elif comm in ("wrk", "pgbench"):
        ours = "loadgen"
    elif exe == binpath:
        ours = "openbatch"
    elif comm == "postgres" and not cmd.startswith("postgres:"):
        # the postmaster: backends that exit (pgbench's) are reaped by it
        ours, ticks = "postgres", ticks + children
    elif cmd.startswith("postgres:"):
        backend = "127.0.0.1(" in cmd or "[local]" in cmd or "::1(" in cmd
        ours = "postgres" if (not backend) or (f" {db} " in cmd) else ""
    else:
        ours = ""
    snap["procs"][pid] = [start, ticks, ours, comm]
json.dump(snap, open(out, "w"))
EOF
}
cpu_others() {
    python3 - "$WORK/$1-start.cpu" "$WORK/$1-end.cpu" "$WORK/$1.others" <<'EOF' 2>/dev/null || echo "?"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
ours = 0
seen = {}
split = {"openbatch": 0, "postgres": 0, "loadgen": 0}
for pid, entry in b["procs"].items():
    start, ticks, is_ours = entry[:3]
    old = a["procs"].get(pid)
    d = ticks - (old[1] if old and old[0] == start else 0)
    if is_ours:
        ours += d
        split[is_ours] = split.get(is_ours, 0) + d
    elif d > 0:
        name = entry[3] if len(entry) > 3 else "?"
        seen[name] = seen.get(name, 0) + d
total = max(1, b["total"] - a["total"])
others = max(0, (b["busy"] - a["busy"]) - ours)
top = [kv for kv in sorted(seen.items(), key=lambda kv: -kv[1])[:4] if kv[1] / total >= 0.005]
gone = others - sum(seen.values())
parts = [f"{n} {100 * d / total:.0f}%" for n, d in top]
if gone / total >= 0.005:
    parts.append(f"exited processes {100 * gone / total:.0f}%")
ourparts = [f"{n} {100 * d / total:.0f}%" for n, d in split.items() if d > 0]
line = "bench: " + ", ".join(ourparts)
if parts:
    line += "; others: " + ", ".join(parts)
open(sys.argv[3], "w").write(line)
print(f"{100 * others / total:.0f}")
EOF
}

# --- replicas -----------------------------------------------------------------
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
}
read -ra PORTS <<<"$(free_ports "$BENCH_REPLICAS")"
[ "${#PORTS[@]}" -eq "$BENCH_REPLICAS" ] || die "could not pick $BENCH_REPLICAS free ports"

log "starting $BENCH_REPLICAS replicas at once on ports ${PORTS[*]}"
for i in "${!PORTS[@]}"; do
    env OPENBATCH__SERVER__HOST=127.0.0.1 \
        OPENBATCH__SERVER__PORT="${PORTS[$i]}" \
        OPENBATCH__DATABASE__URL="$DB_URL" \
        OPENBATCH__LOG__LEVEL="$BENCH_LOG_LEVEL" \
        OPENBATCH__WORKER__ENABLED="$WORKER_ENABLED" \
        OPENBATCH__LIMITS__MAX_ACTIVE_BATCHES_PER_PROJECT="$BENCH_MAX_ACTIVE" \
        "$BIN" serve >"$WORK/replica-$i.log" 2>&1 &
    REPLICA_PIDS+=($!)
done

replica_logs() {
    local i
    for i in "${!PORTS[@]}"; do
        echo "--- replica $i (port ${PORTS[$i]}) log, last lines:" >&2
        tail -n 25 "$WORK/replica-$i.log" >&2 || true
    done
}

wait_ready() {
    local i=$1 port=${PORTS[$1]} pid=${REPLICA_PIDS[$1]}
    for _ in $(seq 1 600); do
        if ! kill -0 "$pid" 2>/dev/null; then
            replica_logs
            die "replica $i (port $port) exited during start-up"
        fi
        if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/healthz")" = 200 ] &&
            [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz")" = 200 ]; then
            return 0
        fi
        sleep 0.1
    done
    replica_logs
    die "replica $i (port $port) not healthy after 60s"
}
start_t=$(date +%s.%N)
for i in "${!PORTS[@]}"; do wait_ready "$i"; done
log "all replicas healthy after $(python3 -c "print(f'{$(date +%s.%N) - $start_t:.1f}')")s"

# --- smoke check: the requests wrk will send do what we think -----------------
body_for_key() {
    printf '{"input_file_id":"file-bench","endpoint":"/v1/chat/completions","completion_window":"24h","metadata":{"k":"v"},"idempotency_key":"%s"}' "$1"
}
# post_batch PORT KEY -> prints "<status> <replayed-header> <batch id>"
post_batch() {
    local out hdr code id replayed
    out=$WORK/post.body
    hdr=$WORK/post.headers
    code=$(curl -s -o "$out" -D "$hdr" -w '%{http_code}' -X POST \
        -H 'Content-Type: application/json' --data "$(body_for_key "$2")" \
        "http://127.0.0.1:$1/v1/batches") || code=000
    replayed=$(grep -i '^idempotent-replayed:' "$hdr" | tr -d '\r' | awk '{print $2}' || true)
    id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("id"))' "$out" 2>/dev/null || echo '?')
    echo "$code ${replayed:-absent} $id"
}
RUN_ID=$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
REPLAY_KEY=bench-replay-$RUN_ID
read -r c1 r1 id1 <<<"$(post_batch "${PORTS[0]}" "$REPLAY_KEY")"
last=$((BENCH_REPLICAS - 1))
read -r c2 r2 id2 <<<"$(post_batch "${PORTS[$last]}" "$REPLAY_KEY")"
log "smoke: first create -> $c1 $id1 (replayed: $r1); replay on another replica -> $c2 $id2 (replayed: $r2)"
case "$c1" in 2??) ;; *)
    cat "$WORK/post.body" >&2
    die "create returned HTTP $c1"
    ;;
esac
[ "$c2" = 200 ] || die "idempotent replay returned HTTP $c2 (expected 200)"
[ "$id1" = "$id2" ] || die "idempotent replay returned another batch ($id2 != $id1)"
[ "$r2" = true ] || log "WARNING: replay response lacks 'Idempotent-Replayed: true' (got: $r2)"

# --- wrk ------------------------------------------------------------------------
# run_wrk NAME SCRIPT SECONDS: one wrk process per replica, BENCH_CONNECTIONS in
# total, all at once; writes $WORK/NAME-<i>.{txt,hist}.
run_wrk() {
    local name=$1 script=$2 secs=$3 i conns pids=() rc=0
    local per=$((BENCH_CONNECTIONS / BENCH_REPLICAS)) extra=$((BENCH_CONNECTIONS % BENCH_REPLICAS))
    for i in "${!PORTS[@]}"; do
        conns=$per
        [ "$i" -lt "$extra" ] && conns=$((per + 1))
        BENCH_HIST_OUT=$WORK/$name-$i.hist \
            BENCH_KEY_PREFIX=$name-$RUN_ID-r$i \
            BENCH_REPLAY_KEY=$REPLAY_KEY \
            wrk -t "$BENCH_WRK_THREADS" -c "$conns" -d "${secs}s" --timeout 10s --latency \
            -s "$ROOT/bench/$script" "http://127.0.0.1:${PORTS[$i]}/v1/batches" \
            >"$WORK/$name-$i.txt" 2>&1 &
        pids+=($!)
    done
    for i in "${!pids[@]}"; do
        if ! wait "${pids[$i]}"; then
            cat "$WORK/$name-$i.txt" >&2
            rc=1
        fi
    done
    [ "$rc" -eq 0 ] || die "wrk failed ($name)"
    for i in "${!PORTS[@]}"; do
        [ -s "$WORK/$name-$i.hist" ] || {
            cat "$WORK/$name-$i.txt" >&2
            die "wrk wrote no summary ($name, replica $i)"
        }
    done
}

count_rows() { psql_db -c "select count(*) from batches"; }

# Merge the wrk processes of one scenario; prints
# "rps p50_ms p99_ms requests non2xx sockerr per-replica-rps(a/b/c)".
wrk_stats() {
    python3 - "$WORK" "$1" "$BENCH_REPLICAS" <<'EOF'
import sys
work, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
rps = 0.0; reqs = 0; status = 0; sock = 0; hist = {}; per = []
for i in range(n):
    for line in open(f"{work}/{name}-{i}.hist"):
        f = line.split()
        if f[0] == "summary":
            r, dur, conn, rd, wr, st, to = map(int, f[1:8])
            reqs += r; rps += r / (dur / 1e6); status += st; sock += conn + rd + wr + to
            per.append(f"{r / (dur / 1e6):.0f}")
        elif f[0] == "lat":
            hist[int(f[1])] = hist.get(int(f[1]), 0) + int(f[2])
total = sum(hist.values())
def pct(p):
    acc = 0
    for v in sorted(hist):
        acc += hist[v]
        if acc >= p / 100 * total:
            return v / 1000
    return float("nan")
print(f"{rps:.1f} {pct(50):.2f} {pct(99):.2f} {reqs} {status} {sock} {'/'.join(per)}")
EOF
}

warmup_wrk() {
    if [ "$BENCH_WARMUP" -gt 0 ]; then
        log "$1: warm-up ${BENCH_WARMUP}s"
        run_wrk "$1-warmup" "$2" "$BENCH_WARMUP"
        sleep 1 # let requests still in flight when wrk stopped finish
    fi
    # No manual ANALYZE here: replicas that started on an empty table must cope
    # with its growth by themselves (the maintainer refreshes statistics).
}
measure_wrk() {
    log "$1: measuring ${BENCH_SECONDS}s, $BENCH_CONNECTIONS connections over $BENCH_REPLICAS replicas"
    cpu_snap "$1-start"
    run_wrk "$1" "$2" "$BENCH_SECONDS"
    cpu_snap "$1-end"
    sleep 1
}

warmup_wrk create create_distinct.lua
rows0=$(count_rows)
measure_wrk create create_distinct.lua
rows1=$(count_rows)
res=$(wrk_stats create) || die "could not read wrk results (create)"
read -r A_RPS A_P50 A_P99 A_REQ A_NON2XX A_SOCK A_PER <<<"$res"
if [ "$BENCH_WARMUP" -gt 0 ]; then
    res=$(wrk_stats create-warmup) || die "could not read wrk results (create warm-up)"
    read -r _ _ _ _ AW_NON2XX AW_SOCK _ <<<"$res"
else
    AW_NON2XX=0 AW_SOCK=0
fi
A_ROWS=$((rows1 - rows0))

warmup_wrk replay replay_fixed.lua
measure_wrk replay replay_fixed.lua
res=$(wrk_stats replay) || die "could not read wrk results (replay)"
read -r B_RPS B_P50 B_P99 B_REQ B_NON2XX B_SOCK B_PER <<<"$res"
if [ "$BENCH_WARMUP" -gt 0 ]; then
    res=$(wrk_stats replay-warmup) || die "could not read wrk results (replay warm-up)"
    read -r _ _ _ _ BW_NON2XX BW_SOCK _ <<<"$res"
else
    BW_NON2XX=0 BW_SOCK=0
fi
B_ROWS=$(psql_db -c "select count(*) from batches where idempotency_key = '$REPLAY_KEY'")
rows2=$(count_rows)

# (a) again once the table has grown, through the same replicas, whose connections cached
# their plans while it was nearly empty: a create must not get slower as the table grows.
log "growing batches by $BENCH_GROW_ROWS rows (as earlier traffic would have)"
psql_db -c "INSERT INTO batches (id, project_id, endpoint, input_file_id, completion_window, status,
                                 expires_at, idempotency_key, params_hash)
            SELECT 'batch_grow' || i, 'proj_default', '/v1/chat/completions', 'file-x', '24h',
                   'completed', 0, 'grow-$RUN_ID-' || i, 'h'
            FROM generate_series(1, $BENCH_GROW_ROWS) i" >/dev/null
sleep 3 # a maintainer tick
warmup_wrk create-grown create_distinct.lua
measure_wrk create-grown create_distinct.lua
res=$(wrk_stats create-grown) || die "could not read wrk results (create, grown)"
read -r G_RPS G_P50 G_P99 G_REQ G_NON2XX G_SOCK G_PER <<<"$res"
G_TABLE=$(count_rows)

# Replicas idle now: stop them so that pgbench has the machine (and the
# connection slots) to itself, as the HTTP runs had.
log "stopping replicas"
stop_replicas

# --- pgbench ----------------------------------------------------------------
maxconn=$(psql_db -c "show max_connections")
used=$(psql_db -c "select count(*) from pg_stat_activity where backend_type = 'client backend'")
if [ $((maxconn - used - 3)) -lt "$BENCH_CONNECTIONS" ]; then
    die "PostgreSQL allows $maxconn connections and $used are in use: not enough for $BENCH_CONNECTIONS pgbench clients (PG_FORCE_THROWAWAY=1 runs the bench on a private cluster)"
fi

# run_pgbench NAME SQLFILE SECONDS [log]: prints "tps p50_ms p99_ms transactions failed"
run_pgbench() {
    local name=$1 sql=$2 secs=$3 dir=$WORK/$1 logopt=()
    mkdir -p "$dir"
    [ "${4:-}" = log ] && logopt=(-l --log-prefix="$dir/pgb")
    if ! "$PGBENCH" -n -M "$BENCH_PGBENCH_MODE" -c "$BENCH_CONNECTIONS" -j "$BENCH_PGBENCH_JOBS" \
        -T "$secs" "${logopt[@]}" -f "$ROOT/bench/$sql" "$DB_URL" >"$dir/out.txt" 2>&1; then
        cat "$dir/out.txt" >&2
        if grep -q 'too many clients' "$dir/out.txt"; then
            log "$TOO_MANY_HINT"
        fi
        die "pgbench failed ($name)"
    fi
    python3 - "$dir" <<'EOF' || die "could not read pgbench results ($name)"
import glob, re, sys
d = sys.argv[1]
out = open(f"{d}/out.txt").read()
tps = float(re.search(r"^tps = ([0-9.]+)", out, re.M)[1])
tx = int(re.search(r"number of transactions actually processed: (\d+)", out)[1])
m = re.search(r"number of failed transactions: (\d+)", out)
failed = int(m[1]) if m else 0
lat = []
for path in glob.glob(f"{d}/pgb.*"):
    for line in open(path):
        f = line.split()
        if len(f) >= 3 and f[2].isdigit():
            lat.append(int(f[2]))
lat.sort()
def pct(p):
    if not lat:
        return float("nan")
    k = max(0, min(len(lat) - 1, -(-len(lat) * p // 100) - 1))
    return lat[int(k)] / 1000
print(f"{tps:.1f} {pct(50):.2f} {pct(99):.2f} {tx} {failed}")
EOF
}

if [ "$BENCH_WARMUP" -gt 0 ]; then
    log "pgbench distinct: warm-up ${BENCH_WARMUP}s"
    run_pgbench pgb-distinct-warmup insert_batch.sql "$BENCH_WARMUP" >/dev/null
fi
psql_db -c "ANALYZE batches"
log "pgbench distinct: measuring ${BENCH_SECONDS}s, $BENCH_CONNECTIONS clients, -j $BENCH_PGBENCH_JOBS, -M $BENCH_PGBENCH_MODE"
cpu_snap pgb-distinct-start
res=$(run_pgbench pgb-distinct insert_batch.sql "$BENCH_SECONDS" log) || exit 1
cpu_snap pgb-distinct-end
read -r C_TPS C_P50 C_P99 C_TX C_FAIL <<<"$res"

psql_db -f "$ROOT/bench/replay_batch.sql" >/dev/null # the one row all replays hit
if [ "$BENCH_WARMUP" -gt 0 ]; then
    log "pgbench replay: warm-up ${BENCH_WARMUP}s"
    run_pgbench pgb-replay-warmup replay_batch.sql "$BENCH_WARMUP" >/dev/null
fi
log "pgbench replay: measuring ${BENCH_SECONDS}s"
cpu_snap pgb-replay-start
res=$(run_pgbench pgb-replay replay_batch.sql "$BENCH_SECONDS" log) || exit 1
cpu_snap pgb-replay-end
read -r D_TPS D_P50 D_P99 D_TX D_FAIL <<<"$res"

# --- report -------------------------------------------------------------------
pgver=$(psql_db -c "show server_version")
pgsets=$(psql_db -F' ' -c "select string_agg(name || '=' || current_setting(name), ' ' order by name) from pg_settings where name in ('fsync','synchronous_commit','shared_buffers','max_connections')")
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || echo '?')
mem=$(free -g 2>/dev/null | awk '/^Mem:/{print $2 " GiB"}' || echo '?')
commit=$(git rev-parse --short HEAD 2>/dev/null || echo 'no commit')
dirty=""
if git status --porcelain 2>/dev/null | grep -qv '^??'; then dirty=" (+ uncommitted changes)"; fi

python3 - <<EOF
a, b, c, d = float("$A_RPS"), float("$B_RPS"), float("$C_TPS"), float("$D_TPS")
g = float("$G_RPS")
goal = $BENCH_GOAL
print()
print("OpenBatch benchmark — $(date -u +%Y-%m-%dT%H:%MZ), commit $commit$dirty")
print("machine: $(nproc) cores ($cpu), $mem RAM; load generators share these cores with the servers and PostgreSQL")
print("before the run: CPUs ${IDLE_BEFORE}% idle over 2 s, load average $LOAD_BEFORE (other work on the machine skews all figures)")
print("PostgreSQL $pgver ($pgsets); database $BENCH_DB")
if "${BENCH_PG_PLAN_CACHE_MODE:-}":
    print("DIAGNOSTIC RUN: plan_cache_mode = ${BENCH_PG_PLAN_CACHE_MODE:-} on the bench database")
print("load: $BENCH_CONNECTIONS connections, ${BENCH_SECONDS}s measured after ${BENCH_WARMUP}s warm-up; "
      "HTTP: $BENCH_REPLICAS replicas of 'openbatch serve' (release, log level $BENCH_LOG_LEVEL, batch workers $WORKER_LABEL, active-batch limit $BENCH_MAX_ACTIVE), one wrk -t$BENCH_WRK_THREADS per replica; "
      "pgbench -c $BENCH_CONNECTIONS -j $BENCH_PGBENCH_JOBS -M $BENCH_PGBENCH_MODE")
print()
rows = [
    ("a  create, distinct keys (HTTP)", a, float("$A_P50"), float("$A_P99"), "$A_REQ", "$A_NON2XX", "$A_SOCK", "$(cpu_others create)"),
    ("b  create, idempotent replay (HTTP)", b, float("$B_P50"), float("$B_P99"), "$B_REQ", "$B_NON2XX", "$B_SOCK", "$(cpu_others replay)"),
    ("a2 create, table grown to $G_TABLE rows", g, float("$G_P50"), float("$G_P99"), "$G_REQ", "$G_NON2XX", "$G_SOCK", "$(cpu_others create-grown)"),
    ("c  pgbench INSERT..ON CONFLICT, distinct", c, float("$C_P50"), float("$C_P99"), "$C_TX", "$C_FAIL", "-", "$(cpu_others pgb-distinct)"),
    ("c' pgbench INSERT..ON CONFLICT, fixed key", d, float("$D_P50"), float("$D_P99"), "$D_TX", "$D_FAIL", "-", "$(cpu_others pgb-replay)"),
]
print(f"{'scenario':<43}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'requests':>10}{'non-2xx':>9}{'sock err':>9}{'other CPU':>10}")
for name, rps, p50, p99, n, bad, sock, other in rows:
    print(f"{name:<43}{rps:>10.0f}{p50:>9.2f}{p99:>9.2f}{n:>10}{bad:>9}{sock:>9}{other + '%':>10}")
print()
ra = 100 * a / c if c else float("nan")
rb = 100 * b / d if d else float("nan")
verdict = "meets" if ra >= goal else "BELOW"
print(f"ratio a/c  (create vs raw INSERT ceiling): {ra:5.1f}%  -> {verdict} the goal of >= {goal}%")
print(f"ratio b/c' (replay vs raw fixed-key INSERT): {rb:5.1f}%")
rg = 100 * g / c if c else float("nan")
print(f"ratio a2/c (create on the grown table vs raw INSERT ceiling, measured after it): {rg:5.1f}%  -> "
      f"{'meets' if rg >= goal else 'BELOW'} the goal of >= {goal}%")
print("per-replica req/s: (a) $A_PER   (b) $B_PER   (a2) $G_PER")
print(f"rows inserted during (a): $A_ROWS for $A_REQ responses counted by wrk; batches with the replay key: $B_ROWS")
print("(pgbench 'non-2xx' column = failed transactions; c/c' p50/p99 from pgbench's per-transaction log;")
print(" 'other CPU' = share of the machine's CPU time used by processes outside the bench during the")
print(" measurement: above a few % the figures are skewed, and the ratios compare unequal conditions)")
print("share of all CPU time (100% = both cores busy) during each measurement, by process:")
for label, name in (("a", "create"), ("b", "replay"), ("a2", "create-grown"), ("c", "pgb-distinct"), ("c'", "pgb-replay")):
    try:
        who = open(f"$WORK/{name}.others").read().strip()
    except OSError:
        who = ""
    if who:
        print(f"   ({label}) {who}")
EOF

# --- verdict on errors ------------------------------------------------------------
problems=()
[ "$A_NON2XX" -eq 0 ] || problems+=("(a) $A_NON2XX non-2xx responses")
[ "$AW_NON2XX" -eq 0 ] || problems+=("(a warm-up) $AW_NON2XX non-2xx responses")
[ "$B_NON2XX" -eq 0 ] || problems+=("(b) $B_NON2XX non-2xx responses")
[ "$BW_NON2XX" -eq 0 ] || problems+=("(b warm-up) $BW_NON2XX non-2xx responses")
[ "$A_SOCK" -eq 0 ] || problems+=("(a) $A_SOCK wrk socket errors")
[ "$AW_SOCK" -eq 0 ] || problems+=("(a warm-up) $AW_SOCK wrk socket errors")
[ "$B_SOCK" -eq 0 ] || problems+=("(b) $B_SOCK wrk socket errors")
[ "$BW_SOCK" -eq 0 ] || problems+=("(b warm-up) $BW_SOCK wrk socket errors")
[ "$C_FAIL" -eq 0 ] || problems+=("(c) $C_FAIL failed pgbench transactions")
[ "$D_FAIL" -eq 0 ] || problems+=("(c') $D_FAIL failed pgbench transactions")
[ "$G_NON2XX" -eq 0 ] || problems+=("(a2) $G_NON2XX non-2xx responses")
[ "$G_SOCK" -eq 0 ] || problems+=("(a2) $G_SOCK wrk socket errors")
[ "$B_ROWS" -eq 1 ] || problems+=("(b) $B_ROWS rows carry the replay key (expected exactly 1)")
[ "$rows2" -eq "$rows1" ] || problems+=("(b) replays inserted $((rows2 - rows1)) rows (expected 0)")
# Every counted create response must have inserted a row; up to one more per
# connection is normal (requests in flight when wrk stopped).
[ "$A_ROWS" -ge "$A_REQ" ] || problems+=("(a) only $A_ROWS rows inserted for $A_REQ successful-looking responses")
[ "$A_ROWS" -le $((A_REQ + BENCH_CONNECTIONS)) ] || problems+=("(a) $A_ROWS rows inserted for only $A_REQ responses")

if [ "${#problems[@]}" -gt 0 ]; then
    printf '\nBENCH FAILED:\n' >&2
    printf '  - %s\n' "${problems[@]}" >&2
    for f in "$WORK"/create-0.txt "$WORK"/replay-0.txt; do
        [ -f "$f" ] && { echo "--- $f" >&2; cat "$f" >&2; }
    done
    replica_logs
    exit 1
fi
