#!/usr/bin/env python3
"""Helper for bench/engine.sh (the execution-engine benchmark). Standard library only.

    engine.py gen    --lines N --out PATH [--line-bytes B]
    engine.py run    --label L --input PATH --ports P1,P2,.. --pids PID1,PID2,.. --fake URL --out JSON
    engine.py latency --ports P1,.. --count N --latency-ms MS --out JSON
    engine.py report --latency-ms MS --in-flight N [--one-line JSON] [--ceiling JSON --wrk TXT] RUN.json...

`run` drives one batch through the replicas (upload to the first one, create, poll until the
batch ends, download and check the output) while a thread samples every replica's memory from
/proc; it prints progress on stderr and writes its figures to JSON. `report` prints the summary.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

MIB = 1024 * 1024


# The poll interval once this share of the lines is done.
NEAR_END = 0.98
FINE_POLL = 0.01


def log(msg):
    print(f"[engine {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def die(msg):
    print(f"\nENGINE BENCH FAILED: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


# --- input --------------------------------------------------------------------------------------

LINE_HEAD = '{"custom_id":"r%d","method":"POST","url":"/v1/chat/completions",' \
            '"body":{"model":"bench-model","messages":[{"role":"user","content":"hello %d'
LINE_TAIL = '"}]}}\n'


def filler_text(n_bytes, seed=7):
    """About n_bytes of word-like ASCII text (no JSON escapes needed)."""
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 11)))
             for _ in range(4000)]
    out, size = [], 0
    while size < n_bytes:
        w = rng.choice(words)
        out.append(w)
        size += len(w) + 1
    return " ".join(out)


def cmd_gen(a):
    """Lines of the brief's format. With --line-bytes, every line is padded (inside the message
    content) to exactly that many bytes, newline included."""
    blob = filler_text(2 * MIB) if a.line_bytes else ""
    with open(a.out, "w", buffering=4 * MIB) as f:
        for i in range(a.lines):
            head = LINE_HEAD % (i, i)
            if a.line_bytes:
                pad = a.line_bytes - len(head) - len(LINE_TAIL) - 1  # the 1 is the space below
                if pad < 0:
                    die(f"--line-bytes {a.line_bytes} is too small")
                off = (i * 7919) % (len(blob) - pad)
                f.write(head + " " + blob[off:off + pad] + LINE_TAIL)
            else:
                f.write(head + LINE_TAIL)
    print(os.path.getsize(a.out))


# --- HTTP ---------------------------------------------------------------------------------------

def http_json(method, url, body=None, timeout=60):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


class KeepAlive:
    """GETs over one kept-alive connection: polling 20 times a second with a new connection
    each time cost this client (and the replica accepting it) CPU that the CPU-bound ceiling
    run takes from the upstream."""

    def __init__(self, base):
        import http.client
        import urllib.parse
        u = urllib.parse.urlsplit(base)
        self.prefix = u.path.rstrip("/")
        self.new = lambda: http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        self.conn = self.new()

    def get(self, path):
        for attempt in (1, 2):
            try:
                self.conn.request("GET", self.prefix + path)
                r = self.conn.getresponse()
                body = r.read()
                return r.status, (json.loads(body) if r.status == 200 else body.decode(errors="replace"))
            except (OSError, ConnectionError) as e:
                self.conn.close()
                self.conn = self.new()
                if attempt == 2:
                    return 599, str(e)


def curl(args):
    """Runs curl; returns (http_code, seconds) from its -w output."""
    out = subprocess.run(["curl", "-sS", "-w", "%{http_code} %{time_total}", *args],
                         capture_output=True, text=True)
    if out.returncode != 0:
        die(f"curl {' '.join(args)} failed: {out.stderr.strip()}")
    code, secs = out.stdout.strip().split()[-2:]
    return int(code), float(secs)


def psql(a, sql):
    out = subprocess.run([a.psql, a.db_url, "-XAtqc", sql], capture_output=True, text=True)
    if out.returncode != 0:
        die(f"psql failed: {out.stderr.strip()}")
    return out.stdout.strip()


def db_size(a, settle=0):
    """The database's size after a plain VACUUM (what an operator's autovacuum would leave),
    and the size of each relation. VACUUM gives the space at a table's end back to the file
    system only if it can lock the table for a moment (autovacuum may be busy with it right after
    a large delete): it is run until the size stops falling, at most five times. With `settle`,
    it goes on until the size has not fallen for that many seconds (at most 120 s): the
    replicas' maintainer rebuilds bloated TOAST indexes once the statistics show the purge."""
    size = None
    start, fell = time.monotonic(), time.monotonic()
    for _ in range(5 if not settle else 10**6):
        if settle and (time.monotonic() - fell > settle or time.monotonic() - start > 120):
            break
        for _ in range(300):  # let a running autovacuum finish first (at most 30 s)
            if psql(a, "SELECT count(*) FROM pg_stat_progress_vacuum "
                       "WHERE datname = current_database()") == "0":
                break
            time.sleep(0.1)
        psql(a, "VACUUM")
        now = int(psql(a, "SELECT pg_database_size(current_database())"))
        if size is not None and now >= size and not settle:
            break
        if size is None or now < size:
            fell = time.monotonic()
        size = now if size is None else min(size, now)
        time.sleep(1)
    rels = psql(a, "SELECT c.relname || ':' || pg_relation_size(c.oid) FROM pg_class c "
                   "JOIN pg_namespace n ON n.oid = c.relnamespace "
                   "WHERE n.nspname <> 'information_schema' AND c.relkind IN ('r', 'i', 't')")
    sizes = dict(line.rsplit(":", 1) for line in rels.splitlines())
    return int(psql(a, "SELECT pg_database_size(current_database())")), {k: int(v) for k, v in sizes.items()}


# --- memory sampling ----------------------------------------------------------------------------

def proc_status(pid):
    """VmRSS and VmHWM of pid, in KiB (None when the process is gone)."""
    vals = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    k, v = line.split(":", 1)
                    vals[k] = int(v.split()[0])
    except OSError:
        return None
    return vals


TICK = os.sysconf("SC_CLK_TCK")


def machine_cpu():
    """(busy, total) seconds of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]  # guest time is already in user
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    return (sum(v) - idle) / TICK, sum(v) / TICK


def proc_cpu(pid):
    """utime + stime of pid in seconds (0 when gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except OSError:
        return 0.0


def all_procs_cpu():
    """{pid: (cmdline, cpu seconds)} for every process we can read."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(d)] = (cmd, (int(fields[11]) + int(fields[12])) / TICK)
    return out


class CpuPhases:
    """CPU used per phase, in cores: the whole machine, each replica, the fake upstream, the
    PostgreSQL backends of the bench database, the rest of PostgreSQL, and everything else."""

    def __init__(self, pids, fake_pid, db):
        self.pids, self.fake_pid, self.db = pids, fake_pid, db
        self.phase, self.start = None, None
        self.used = {}  # phase -> dict

    def snap(self):
        busy, total = machine_cpu()
        return time.monotonic(), busy, total, all_procs_cpu()

    def classify(self, pid, cmd):
        if pid in self.pids:
            return ("replica", self.pids.index(pid))
        if pid == self.fake_pid:
            return ("fake", 0)
        if cmd.startswith("postgres:") or "/postgresql/" in cmd.split(" ")[0]:
            return ("pg_bench_db", 0) if self.db and f" {self.db} " in f" {cmd} " else ("pg_other", 0)
        if pid == os.getpid():
            return ("client", 0)
        return ("other", 0)

    def set_phase(self, phase):
        now = self.snap()
        if self.phase is not None:
            t0, b0, tot0, p0 = self.start
            t1, b1, tot1, p1 = now
            secs = max(t1 - t0, 1e-9)
            u = {"secs": secs, "machine_busy_cores": (b1 - b0) / secs,
                 "machine_cores": (tot1 - tot0) / secs, "replica_cores": [0.0] * len(self.pids),
                 "fake_cores": 0.0, "pg_bench_db_cores": 0.0, "pg_other_cores": 0.0,
                 "client_cores": 0.0, "other_cores": 0.0}
            for pid, (cmd, c1) in p1.items():
                c0 = p0[pid][1] if pid in p0 and p0[pid][0] == cmd else 0.0
                kind, i = self.classify(pid, cmd)
                d = (c1 - c0) / secs
                if kind == "replica":
                    u["replica_cores"][i] += d
                else:
                    u[kind + "_cores"] += d
            self.used[self.phase] = u
        self.phase, self.start = phase, now


class Sampler(threading.Thread):
    """Samples each replica's VmRSS every 0.1 s, keeping the peak per phase."""

    def __init__(self, pids):
        super().__init__(daemon=True)
        self.pids = pids
        self.phase = "idle"
        self.peaks = {}  # phase -> [kib per replica]
        self.order = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.gone = None
        self.sample()

    def set_phase(self, phase):
        self.sample()  # close the previous phase with a fresh sample
        self.phase = phase

    def sample(self):
        with self.lock:
            phase = self.phase
            if phase not in self.peaks:
                self.peaks[phase] = [0] * len(self.pids)
                self.order.append(phase)
            for i, pid in enumerate(self.pids):
                s = proc_status(pid)
                if s is None:
                    self.gone = f"replica {i + 1} (pid {pid}) exited during the run"
                    continue
                self.peaks[phase][i] = max(self.peaks[phase][i], s["VmRSS"])
        if self.gone and threading.current_thread() is not self:
            die(self.gone)

    def run(self):
        while not self.stop.wait(0.1):
            self.sample()


# --- one batch ----------------------------------------------------------------------------------

def warm_up(a, api, ports):
    """Runs the input's first `a.warmup` lines as a batch through every replica, unmeasured: a
    deployment's replicas are long-running, while freshly started ones would charge the
    measured batch with opening their database and upstream connections."""
    path = a.out + ".warmup.jsonl"
    with open(a.input, "rb") as src, open(path, "wb") as dst:
        for i, line in enumerate(src):
            if i >= a.warmup:
                break
            dst.write(line)
    code, _ = curl(["-o", path + ".json", "-F", "purpose=batch",
                    "-F", f"file=@{path};type=application/jsonl", f"{api}/files"])
    if code != 200:
        die(f"warm-up upload answered HTTP {code}")
    file_id = json.load(open(path + ".json"))["id"]
    code, batch = http_json("POST", f"{api}/batches", {
        "input_file_id": file_id, "endpoint": "/v1/chat/completions",
        "completion_window": "24h"})
    if code != 200:
        die(f"warm-up create answered HTTP {code}: {str(batch)[:300]}")
    deadline = time.monotonic() + 300
    while batch.get("status") != "completed":
        if batch.get("status") in ("failed", "expired", "cancelled") or time.monotonic() > deadline:
            die(f"warm-up batch ended {batch.get('status')}")
        time.sleep(0.1)
        batch = http_json("GET", f"http://127.0.0.1:{ports[-1]}/v1/batches/{batch['id']}")[1]
    if a.delete_files:
        # Its files go too: the size compared is then that of a database which has run a batch.
        for fid in (file_id, batch.get("output_file_id"), batch.get("error_file_id")):
            if fid:
                code, body = http_json("DELETE", f"{api}/files/{fid}")
                if code != 200:
                    die(f"DELETE warm-up file answered {code}: {str(body)[:300]}")
    os.unlink(path)
    os.unlink(path + ".json")
    log(f"{a.label}: warm-up batch of {a.warmup} lines completed (not measured)")


def cmd_run(a):
    ports = [int(p) for p in a.ports.split(",")]
    pids = [int(p) for p in a.pids.split(",")]
    api = f"http://127.0.0.1:{ports[0]}/v1"
    res = {"label": a.label, "replicas": len(ports), "input_bytes": os.path.getsize(a.input)}
    with open(a.input, "rb") as f:
        res["lines"] = sum(1 for _ in f)

    if a.warmup:
        warm_up(a, api, ports)
    code, _ = http_json("POST", f"{a.fake}/stats/reset")
    if code != 200:
        die(f"fake-upstream /stats/reset answered {code}")

    sampler = Sampler(pids)
    cpu = CpuPhases(pids, a.fake_pid, a.db)
    res["rss_idle_kib"] = [proc_status(p)["VmRSS"] for p in pids]
    sampler.start()

    if a.delete_files:
        res["db_bytes_before"], res["rel_bytes_before"] = db_size(a)

    # Upload (streamed from disk by curl) to replica 1.
    sampler.set_phase("upload")
    log(f"{a.label}: uploading {res['input_bytes'] / MIB:.1f} MiB ({res['lines']} lines) to replica 1")
    resp_path = a.out + ".upload.json"
    code, secs = curl(["-o", resp_path, "-F", "purpose=batch",
                       "-F", f"file=@{a.input};type=application/jsonl", f"{api}/files"])
    if code != 200:
        die(f"upload answered HTTP {code}: {open(resp_path).read()[:500]}")
    file_obj = json.load(open(resp_path))
    res["upload_s"] = secs
    if file_obj.get("bytes") != res["input_bytes"]:
        die(f"uploaded file reports {file_obj.get('bytes')} bytes, expected {res['input_bytes']}")

    # Create and poll.
    sampler.set_phase("validating")
    cpu.set_phase("validating")
    t0 = time.monotonic()
    code, batch = http_json("POST", f"{api}/batches", {
        "input_file_id": file_obj["id"], "endpoint": "/v1/chat/completions",
        "completion_window": "24h"})
    if code != 200:
        die(f"create batch answered HTTP {code}: {str(batch)[:500]}")
    bid = batch["id"]
    log(f"{a.label}: batch {bid} created; polling every {a.poll}s ({FINE_POLL}s near the end)")
    poller = KeepAlive(api)
    seen = {}          # status -> seconds since create when first seen
    t_all_done = None  # first poll where request_counts add up to the total
    last_log = 0.0
    interval = a.poll
    while True:
        time.sleep(interval)
        now = time.monotonic() - t0
        if sampler.gone:
            die(sampler.gone)
        code, batch = poller.get(f"/batches/{bid}")
        if code != 200:
            die(f"GET batch answered HTTP {code}: {str(batch)[:500]}")
        st = batch["status"]
        if st not in seen:
            seen[st] = now
            phase = {"in_progress": "executing", "finalizing": "finalizing",
                     "completed": "download"}.get(st, st)
            sampler.set_phase(phase)
            cpu.set_phase(phase)
            log(f"{a.label}: {now:7.1f}s  status -> {st}")
        rc = batch.get("request_counts") or {}
        done = rc.get("completed", 0) + rc.get("failed", 0)
        if (t_all_done is None and rc.get("total") and st in ("in_progress", "finalizing", "completed")
                and done >= rc["total"]):
            t_all_done = now
        # Polled finely once the end is near: the wall time is then late by ~FINE_POLL / 2 rather
        # than by half a poll interval, at the cost of a few hundred cheap GETs.
        if rc.get("total") and done >= NEAR_END * rc["total"]:
            interval = min(a.poll, FINE_POLL)
        if st == "in_progress" and now - last_log >= 5:
            last_log = now
            log(f"{a.label}: {now:7.1f}s  {rc.get('completed')}/{rc.get('total')} done")
        if st == "completed":
            break
        if st in ("failed", "expired", "cancelled", "cancelling"):
            die(f"batch ended {st}: {json.dumps(batch.get('errors'))[:1000]}")
        if now > a.timeout:
            die(f"batch still {st} after {a.timeout}s")
    cpu.set_phase(None)
    res["cpu"] = cpu.used
    res["wall_s"] = seen["completed"]
    # Phases from the polls (each boundary is known to within one poll interval).
    t_exec = min(seen.get(s, 1e18) for s in ("in_progress", "finalizing", "completed"))
    t_fin = min(seen.get(s, 1e18) for s in ("finalizing", "completed"))
    t_all_done = t_all_done if t_all_done is not None else t_fin
    res["validating_s"] = t_exec
    # in_progress until every line is done; None when no poll fell inside it (a run shorter than
    # the poll interval), rather than a rate divided by nothing.
    res["executing_s"] = t_all_done - t_exec if t_all_done > t_exec else None
    res["finalizing_s"] = seen["completed"] - t_all_done  # writing the output file
    res["request_counts"] = batch["request_counts"]
    res["server_ts"] = {k: batch.get(k) for k in
                        ("created_at", "in_progress_at", "finalizing_at", "completed_at")}
    res["batch_id"] = bid

    # Upstream executions.
    code, stats = http_json("GET", f"{a.fake}/stats", timeout=120)
    if code != 200:
        die(f"fake-upstream /stats answered {code}")
    res["upstream_total"] = stats["total"]

    # Output file: download (streamed by curl to disk) and check every line.
    out_id = batch.get("output_file_id")
    if not out_id:
        die(f"completed batch has no output_file_id: {batch}")
    out_path = a.out + ".output.jsonl"
    code, secs = curl(["-o", out_path, f"{api}/files/{out_id}/content"])
    if code != 200:
        die(f"output download answered HTTP {code}")
    res["download_s"] = secs
    res["output_bytes"] = os.path.getsize(out_path)
    n = ok = 0
    ids = set()
    with open(out_path, "rb") as f:
        for line in f:
            n += 1
            o = json.loads(line)
            ids.add(o.get("custom_id"))
            if (o.get("response") or {}).get("status_code") == 200 and o.get("error") is None:
                ok += 1
    os.unlink(out_path)
    res["output_lines"] = n
    res["output_ok_lines"] = ok
    res["output_ids_match"] = ids == {f"r{i}" for i in range(res["lines"])}
    res["error_file_id"] = batch.get("error_file_id")

    sampler.set_phase("end")
    sampler.stop.set()
    sampler.join()
    sampler.sample()
    hwm = []
    for i, pid in enumerate(pids):
        s = proc_status(pid)
        if s is None:
            die(f"replica {i + 1} (pid {pid}) is gone")
        hwm.append(s["VmHWM"])
    res["rss_hwm_kib"] = hwm
    res["rss_end_kib"] = sampler.peaks["end"]
    res["rss_phase_peak_kib"] = {p: sampler.peaks[p] for p in sampler.order if p != "end"}
    if a.delete_files:
        for fid in (file_obj["id"], out_id, res["error_file_id"]):
            if fid:
                code, body = http_json("DELETE", f"{api}/files/{fid}")
                if code != 200:
                    die(f"DELETE file answered {code}: {str(body)[:300]}")
        res["db_bytes_after_delete"], res["rel_bytes_after_delete"] = db_size(a, settle=20)
        left = psql(a, "SELECT (SELECT count(*) FROM batch_chunks) + (SELECT count(*) FROM batch_results)")
        res["work_rows_left"] = int(left)
    json.dump(res, open(a.out, "w"), indent=1)
    log(f"{a.label}: done in {res['wall_s']:.1f}s")


# --- one-line batches ----------------------------------------------------------------------------

def cmd_latency(a):
    ports = [int(p) for p in a.ports.split(",")]
    times = []
    for i in range(a.count):
        api = f"http://127.0.0.1:{ports[i % len(ports)]}/v1"
        line = json.dumps({"custom_id": f"one-{i}", "method": "POST", "url": "/v1/chat/completions",
                           "body": {"model": "bench-model", "messages": [{"role": "user", "content": "hi"}],
                                    "fake": {"latency_ms": a.latency_ms}}})
        path = f"{a.out}.{i}.jsonl"
        with open(path, "w") as f:
            f.write(line + "\n")
        code, _ = curl(["-o", path + ".resp", "-F", "purpose=batch", "-F", f"file=@{path}", f"{api}/files"])
        if code != 200:
            die(f"upload answered {code}")
        fid = json.load(open(path + ".resp"))["id"]
        t0 = time.monotonic()
        code, batch = http_json("POST", f"{api}/batches", {
            "input_file_id": fid, "endpoint": "/v1/chat/completions", "completion_window": "24h"})
        if code != 200:
            die(f"create answered {code}: {batch}")
        while batch["status"] != "completed":
            if batch["status"] in ("failed", "expired", "cancelled"):
                die(f"one-line batch ended {batch['status']}")
            if time.monotonic() - t0 > 30:
                die("one-line batch not completed after 30 s")
            time.sleep(0.005)
            code, batch = http_json("GET", f"{api}/batches/{batch['id']}")
        times.append(time.monotonic() - t0)
        os.unlink(path)
        os.unlink(path + ".resp")
    json.dump({"latency_ms": a.latency_ms, "seconds": times}, open(a.out, "w"))
    log(f"one-line batches: median {1000 * sorted(times)[len(times) // 2]:.0f} ms")


def cpu_ms_per_line(r):
    """PostgreSQL (bench database) and replica CPU, ms per line, from create to completed."""
    pg = rep = 0.0
    for phase in ("validating", "executing", "finalizing"):
        c = r["cpu"].get(phase)
        if c:
            pg += c["pg_bench_db_cores"] * c["secs"]
            rep += sum(c["replica_cores"]) * c["secs"]
    return 1000 * pg / r["lines"], 1000 * rep / r["lines"]


def wrk_rps(path):
    import re
    m = re.search(r"Requests/sec:\s+([0-9.]+)", open(path).read())
    if not m:
        die(f"no Requests/sec in {path}")
    return float(m[1])


# --- report -------------------------------------------------------------------------------------

def mib(kib):
    return kib / 1024


def per_replica(kibs):
    return "  ".join(f"{mib(k):7.1f}" for k in kibs)


def cmd_report(a):
    runs = [json.load(open(p)) for p in a.results]
    s = runs[0]
    ceiling = json.load(open(a.ceiling)) if a.ceiling else None
    if a.one_line:
        t = sorted(json.load(open(a.one_line))["seconds"])
        print()
        print(f"--- one-line batches against a 5 ms upstream, create -> completed ({len(t)} batches, polled every 5 ms) ---")
        print(f"median {1000 * t[len(t) // 2]:.0f} ms, p90 {1000 * t[int(len(t) * 0.9)]:.0f} ms, "
              f"min {1000 * t[0]:.0f} ms, max {1000 * t[-1]:.0f} ms")
    if ceiling:
        alone = wrk_rps(a.wrk)
        rate = ceiling["lines"] / ceiling["wall_s"]
        pg_ms, rep_ms = cpu_ms_per_line(ceiling)
        print()
        print(f"--- ceiling: CPU-bound upstream, {ceiling['lines']} lines on {ceiling['replicas']} replicas ---")
        print(f"upstream alone (wrk, 64 connections, 10 s): {alone:8.0f} req/s")
        print(f"batch, create -> completed                : {rate:8.0f} lines/s in {ceiling['wall_s']:.1f} s "
              f"= {100 * rate / alone:.1f} % of the upstream alone")
        print(f"CPU per line                              : PostgreSQL {pg_ms:.3f} ms, replicas {rep_ms:.3f} ms")
        c = ceiling["cpu"].get("executing")
        if c:
            print(f"CPU while executing: replicas {' + '.join(f'{x:.2f}' for x in c['replica_cores'])},"
                  f" PostgreSQL {c['pg_bench_db_cores']:.2f}, upstream {c['fake_cores']:.2f},"
                  f" this client {c['client_cores']:.2f},"
                  f" of {c['machine_cores']:.0f} cores ({c['machine_busy_cores']:.2f} busy)")
        if ceiling["upstream_total"] != ceiling["lines"]:
            print(f"ENGINE BENCH: {ceiling['upstream_total']} executions for {ceiling['lines']} lines", file=sys.stderr)
    lat = a.latency_ms / 1000
    nrep = s["replicas"]
    problems = []

    for r in runs:
        lines = r["lines"]
        ideal = lines * lat / (nrep * a.in_flight)
        rc = r["request_counts"]
        print()
        print(f"--- run '{r['label']}': {lines} lines, {r['input_bytes'] / MIB:.1f} MiB input "
              f"({r['input_bytes'] / lines:.0f} B/line) ---")
        print(f"replicas x in-flight          : {nrep} x {a.in_flight}  (upstream latency {a.latency_ms} ms)")
        print(f"upload (POST /v1/files)       : {r['upload_s']:8.2f} s  ({r['input_bytes'] / MIB / r['upload_s']:.1f} MiB/s)")
        print(f"wall time, create -> completed: {r['wall_s']:8.2f} s")
        print(f"  validating                  : {r['validating_s']:8.2f} s  ({lines / r['validating_s']:.0f} lines/s, "
              f"{r['input_bytes'] / MIB / r['validating_s']:.1f} MiB/s)")
        ex = r["executing_s"]
        if ex is None:
            print(f"  executing (until all done)  : no poll fell inside it (shorter than the {a.poll} s poll)")
        else:
            print(f"  executing (until all done)  : {ex:8.2f} s")
        print(f"  finalizing (output file)    : {r['finalizing_s']:8.2f} s")
        print(f"  (phase boundaries are polls every {a.poll} s, {FINE_POLL} s from {NEAR_END:.0%} done; server timestamps: "
              + ", ".join(f"{k}={v}" for k, v in r["server_ts"].items()) + ")")
        print(f"ideal execution time          : {ideal:8.2f} s  (= lines x latency / (replicas x in-flight))")
        if ex is not None:
            print(f"efficiency (ideal / executing): {100 * ideal / ex:7.1f} %")
        print(f"efficiency (ideal / wall)     : {100 * ideal / r['wall_s']:7.1f} %")
        busy = f"{lines / ex:8.0f}" if ex is not None else "     n/a"
        print(f"requests/s while executing    : {busy}   "
              f"(ceiling {nrep * a.in_flight / lat:.0f}); over the wall time: {lines / r['wall_s']:.0f}")
        for phase in ("validating", "executing", "finalizing"):
            c = r["cpu"].get(phase)
            if not c:
                continue
            gone = max(0.0, c["machine_busy_cores"] - sum(c["replica_cores"]) - sum(
                c[k] for k in ("fake_cores", "pg_bench_db_cores", "pg_other_cores", "client_cores", "other_cores")))
            print(f"CPU while {phase:<11}         : {c['machine_busy_cores']:.2f} of {c['machine_cores']:.0f} cores busy:"
                  f" replicas {' + '.join(f'{x:.2f}' for x in c['replica_cores'])},"
                  f" PostgreSQL (bench db) {c['pg_bench_db_cores']:.2f}, PostgreSQL (other) {c['pg_other_cores']:.2f},"
                  f" fake upstream {c['fake_cores']:.2f}, this client {c['client_cores']:.2f},"
                  f" other processes {c['other_cores']:.2f}, processes that exited meanwhile {gone:.2f}")
        pg_ms, rep_ms = cpu_ms_per_line(r)
        print(f"CPU per line, create->completed: PostgreSQL {pg_ms:.3f} ms, replicas {rep_ms:.3f} ms (all three)")
        if "db_bytes_after_delete" in r:
            before, after = r["db_bytes_before"], r["db_bytes_after_delete"]
            print(f"database size (after VACUUM)  : {before / MIB:.1f} MiB before the upload, {after / MIB:.1f} MiB "
                  f"after the batch's files were deleted ({100 * (after - before) / before:+.1f} %); "
                  f"work rows left: {r['work_rows_left']}")
            b0, b1 = r["rel_bytes_before"], r["rel_bytes_after_delete"]
            grown = sorted(((b1[k] - b0.get(k, 0), k) for k in b1), reverse=True)[:5]
            grew = ", ".join(f"{k} +{d / MIB:.1f} MiB" for d, k in grown if d > 0)
            print(f"  grown most                  : {grew or 'no relation grew'}")
        print(f"upstream executions (/stats)  : {r['upstream_total']}")
        print(f"request_counts                : total={rc.get('total')} completed={rc.get('completed')} "
              f"failed={rc.get('failed')}")
        print(f"output file                   : {r['output_lines']} lines, {r['output_bytes'] / MIB:.1f} MiB, "
              f"{r['output_ok_lines']} with status 200, custom_ids {'all present' if r['output_ids_match'] else 'MISMATCH'}; "
              f"downloaded in {r['download_s']:.2f} s; error file: {r['error_file_id']}")
        print(f"peak RSS per replica (VmHWM)  : {per_replica(r['rss_hwm_kib'])}  MiB")
        print(f"  idle RSS before upload      : {per_replica(r['rss_idle_kib'])}  MiB")
        for phase, kibs in r["rss_phase_peak_kib"].items():
            print(f"  peak sampled RSS, {phase:<10}: {per_replica(kibs)}  MiB")
        print(f"  RSS at the end              : {per_replica(r['rss_end_kib'])}  MiB")

        if r["upstream_total"] != lines:
            problems.append(f"{r['label']}: {r['upstream_total']} upstream executions for {lines} lines")
        if rc.get("total") != lines or rc.get("completed") != lines or rc.get("failed") != 0:
            problems.append(f"{r['label']}: request_counts {rc}")
        if r["output_lines"] != lines or r["output_ok_lines"] != lines or not r["output_ids_match"]:
            problems.append(f"{r['label']}: output file has {r['output_lines']} lines, "
                            f"{r['output_ok_lines']} ok, ids match: {r['output_ids_match']}")

    if len(runs) > 1:
        b = runs[1]
        print()
        print(f"--- memory vs input size: peak RSS (VmHWM) per replica, MiB ---")
        print(f"{'':<34}{'  '.join(f'replica {i + 1}' for i in range(nrep))}")
        for r in runs:
            print(f"{r['label'] + ' (' + format(r['input_bytes'] / MIB, '.1f') + ' MiB input)':<34}"
                  + "  ".join(f"{mib(k):9.1f}" for k in r["rss_hwm_kib"]))
        ratio = max(b["rss_hwm_kib"]) / max(s["rss_hwm_kib"])
        print(f"largest replica peak, {b['label']} / {s['label']}: {ratio:.2f}x for "
              f"{b['input_bytes'] / s['input_bytes']:.0f}x the input bytes")

    if problems:
        print("\nENGINE BENCH FAILED:", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        sys.exit(1)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("--lines", type=int, required=True)
    g.add_argument("--out", required=True)
    g.add_argument("--line-bytes", type=int, default=0)
    lt = sub.add_parser("latency")
    lt.add_argument("--ports", required=True)
    lt.add_argument("--count", type=int, default=30)
    lt.add_argument("--latency-ms", type=int, default=5)
    lt.add_argument("--out", required=True)
    r = sub.add_parser("run")
    r.add_argument("--label", required=True)
    r.add_argument("--psql", required=True)
    r.add_argument("--db-url", required=True)
    r.add_argument("--delete-files", action="store_true")
    r.add_argument("--input", required=True)
    r.add_argument("--ports", required=True)
    r.add_argument("--pids", required=True)
    r.add_argument("--fake", required=True)
    r.add_argument("--fake-pid", type=int, default=0)
    r.add_argument("--db", default="")
    r.add_argument("--out", required=True)
    r.add_argument("--poll", type=float, default=0.5)
    r.add_argument("--timeout", type=float, default=900)
    r.add_argument("--warmup", type=int, default=0, help="lines of an unmeasured batch run first")
    rep = sub.add_parser("report")
    rep.add_argument("--latency-ms", type=int, required=True)
    rep.add_argument("--in-flight", type=int, required=True)
    rep.add_argument("--poll", type=float, default=0.5)
    rep.add_argument("--one-line", default="")
    rep.add_argument("--ceiling", default="")
    rep.add_argument("--wrk", default="")
    rep.add_argument("results", nargs="+")
    a = p.parse_args()
    {"gen": cmd_gen, "run": cmd_run, "latency": cmd_latency, "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    main()
