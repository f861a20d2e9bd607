#!/usr/bin/env bash
# Uploads API benchmark (issue 25; prints figures, not a test). See bench/README.md.
#
# Sends an UPLOAD_MIB (2048) MiB JSONL file through one `openbatch serve` replica's Uploads API
# in 64 MiB parts over loopback, then completes it (md5 checked, a batch file's UTF-8 read
# back, the parts assembled into the file), and prints: the throughput of the parts and of
# the whole, the replica's peak RSS, the CPU the replica and PostgreSQL spent per GiB, and how
# much the database grew. Beside them, the ceilings of the same run: the local disk's write
# speed (the spool) and PostgreSQL's own for the same bytes in 1 MiB rows.
#
# Environment (defaults):
#   UPLOAD_MIB=2048   size of the file
#   BENCH_BIN         the openbatch binary (default: this checkout's release build)
#   BENCH_KEEP=1      keep the work dir
#   DATABASE_URL      admin URL of the PostgreSQL to use; else 127.0.0.1:5432; else a throwaway
#                     cluster. A fresh database ob_bench_uploads_<random> is used and dropped.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
# shellcheck source=scripts/lib/pg.sh
. "$ROOT/scripts/lib/pg.sh"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

UPLOAD_MIB=${UPLOAD_MIB:-2048}
log() { printf '[uploads %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    printf '\nUPLOADS BENCH FAILED: %s\n' "$*" >&2
    exit 1
}
[[ "$UPLOAD_MIB" =~ ^[1-9][0-9]*$ ]] || die "UPLOAD_MIB must be a positive whole number"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/openbatch-uploads.XXXXXX")
PG_TMP=$WORK/pg
SERVER_PID=""
trap one_server_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

command -v curl >/dev/null || apt_install curl
PSQL=$(pg_tool psql) || die "psql not found"
bench_binary

log "writing a ${UPLOAD_MIB} MiB JSONL file"
python3 - "$WORK/big.jsonl" "$UPLOAD_MIB" <<'PY'
import sys
path, mib = sys.argv[1], int(sys.argv[2])
line = ('{"custom_id":"r%09d","method":"POST","url":"/v1/chat/completions","body":{"model":"m",'
        '"messages":[{"role":"user","content":"' + "x" * 300 + '"}]}}\n')
target, i = mib << 20, 0
with open(path, "w") as f:
    written = 0
    while written < target:
        s = line % i
        f.write(s)
        written += len(s)
        i += 1
PY
MD5=$(md5sum "$WORK/big.jsonl" | cut -d' ' -f1)
BYTES=$(stat -c %s "$WORK/big.jsonl")

bench_database ob_bench_uploads
mkdir -p "$WORK/spool"
start_one_server OPENBATCH__LIMITS__UPLOAD_SPOOL_DIR="$WORK/spool"

# CPU seconds (user + system) of PIDs, from /proc.
cpu_of() {
    local t=0 pid f
    for pid in "$@"; do
        f=$(cut -d')' -f2- "/proc/$pid/stat" 2>/dev/null) || continue
        t=$((t + $(awk '{print $12 + $13}' <<<"$f")))
    done
    echo "$t"
}
pg_pids() { pgrep -x postgres || true; }
db_size() { "$PSQL" "$DB_URL" -XAtqc "SELECT pg_database_size(current_database())"; }

SIZE0=$(db_size)
CPU_R0=$(cpu_of "$SERVER_PID")
# shellcheck disable=SC2046
CPU_P0=$(cpu_of $(pg_pids))
log "uploading $BYTES bytes in 64 MiB parts"
RESULT=$(python3 "$ROOT/bench/uploads.py" --base "http://127.0.0.1:$PORT/v1" --file "$WORK/big.jsonl" --md5 "$MD5") ||
    die "the upload failed (server log: $(tail -n 5 "$WORK/server.log"))"
CPU_R1=$(cpu_of "$SERVER_PID")
# shellcheck disable=SC2046
CPU_P1=$(cpu_of $(pg_pids))
HWM=$(awk '/VmHWM/ {print $2}' "/proc/$SERVER_PID/status")
SIZE1=$(db_size)

log "ceilings: the disk, and PostgreSQL's own writes of the same bytes"
T0=$(date +%s.%N)
dd if=/dev/zero of="$WORK/dd" bs=1M count="$UPLOAD_MIB" conv=fdatasync 2>/dev/null
DISK_S=$(python3 -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$T0" "$(date +%s.%N)")
rm -f "$WORK/dd"
PG_S=$("$PSQL" "$DB_URL" -XAtq -c '\timing on' -c "
    CREATE TABLE ceiling (idx int PRIMARY KEY, data bytea);
    ALTER TABLE ceiling ALTER COLUMN data SET STORAGE EXTERNAL;" -c "
    INSERT INTO ceiling SELECT g, convert_to(repeat(md5(g::text), 32768), 'UTF8')
    FROM generate_series(1, $UPLOAD_MIB) g" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | tail -1)

python3 - "$RESULT" "$BYTES" "$HWM" "$CPU_R0" "$CPU_R1" "$CPU_P0" "$CPU_P1" "$SIZE0" "$SIZE1" "$DISK_S" "$PG_S" "$(getconf CLK_TCK)" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
b, hwm = int(sys.argv[2]), int(sys.argv[3])
r0, r1, p0, p1, s0, s1 = map(int, sys.argv[4:10])
disk_s, pg_ms, tick = float(sys.argv[10]), float(sys.argv[11] or 0), int(sys.argv[12])
mib, gib = b / 2**20, b / 2**30
total = r["parts_secs"] + r["complete_secs"]
print(f"\nUploads API: {mib:.0f} MiB in {r['parts']} parts of 64 MiB, one replica, loopback")
print(f"  parts sent and stored   {r['parts_secs']:7.1f} s   {mib / r['parts_secs']:6.1f} MiB/s")
print(f"  complete (md5, UTF-8, assembly) {r['complete_secs']:5.1f} s")
print(f"  whole upload            {total:7.1f} s   {mib / total:6.1f} MiB/s")
print(f"  replica peak RSS        {hwm / 1024:7.1f} MiB")
print(f"  CPU per GiB             replica {(r1 - r0) / tick / gib:5.2f} s, PostgreSQL {(p1 - p0) / tick / gib:5.2f} s")
print(f"  database growth         {(s1 - s0) / 2**20:7.0f} MiB (the file, and the removed parts until VACUUM reuses their space)")
print(f"ceilings, same run: the disk writes {mib / disk_s:.0f} MiB/s (dd, fdatasync); "
      f"PostgreSQL stores {mib / (pg_ms / 1000):.0f} MiB/s in 1 MiB rows (INSERT ... SELECT, no client)")
PY
