#!/usr/bin/env python3
"""Driver of bench/fleet.sh (the GPU-sharing benchmark of issue 21). Standard library only.

    fleet.py scenarios --bin BIN --fake FAKE --db-url URL --work DIR [--only a,b,..] ...
    fleet.py load --url URL:CONNS [--url ...] --seconds S --out JSON   (the ceiling's load)
    fleet.py interactive --url URL --out JSON [--seconds S]            (one request at a time)

`scenarios` starts fake-upstream GPUs (`--gpu-slots`) and `openbatch serve` replicas itself,
runs the scenarios and prints the figures. Every process it starts is listed in WORK/pids, so
that fleet.sh's exit trap stops them even if this driver dies. The load generators run as
separate processes: their CPU is measured apart from everything else, and the interactive
client's latencies are not skewed by this driver's threads (one GIL).
"""

import argparse
import asyncio
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import engine  # noqa: E402  (gen, HTTP helpers, /proc readers)
from engine import KeepAlive, all_procs_cpu, curl, http_json, machine_cpu, proc_cpu  # noqa: E402

MODEL = "bench-model"


def log(msg):
    print(f"[fleet {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def die(msg):
    print(f"\nFLEET BENCH FAILED: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def self_cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# --- load generators (separate processes) --------------------------------------------------------

def chat_request(host, port, content):
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": content}]}).encode()
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (host.encode(), port, len(body))) + body


class Conn:
    """One kept-alive HTTP/1.1 connection; reopened after an error or `Connection: close`."""

    def __init__(self, host, port):
        self.host, self.port, self.rw = host, port, None

    async def send(self, req):
        """(status, retry_after or None); status 599 for a transport error."""
        try:
            if self.rw is None:
                self.rw = await asyncio.open_connection(self.host, self.port)
            reader, writer = self.rw
            writer.write(req)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            await reader.readexactly(int(m.group(1)) if m else 0)
            if re.search(rb"(?i)\r\nconnection:\s*close", head):
                self.close()
            return status
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            self.close()
            return 599

    def close(self):
        if self.rw:
            self.rw[1].close()
        self.rw = None


def split_url(url):
    m = re.match(r"^http://([^:/]+):(\d+)", url)
    if not m:
        die(f"not an http://host:port URL: {url}")
    return m.group(1), int(m.group(2))


def cmd_load(a):
    """CONNS connections per URL, each sending back to back for --seconds: with at least twice
    the slots, every slot of the GPU stays busy, which is the server's capacity."""
    targets = []
    for spec in a.url:
        url, conns = spec.rsplit(":", 1)
        targets.append((url, int(conns)))
    counts = {url: {} for url, _ in targets}
    # Counted: answers that arrive inside [start + WARM, stop_at], so neither the connections'
    # opening nor the last requests' drain after stop_at is in the rate.
    warm = 0.5
    start = time.monotonic()
    stop_at = start + warm + a.seconds

    async def worker(url):
        host, port = split_url(url)
        conn, req = Conn(host, port), chat_request(host, port, "ceiling")
        while time.monotonic() < stop_at:
            st = await conn.send(req)
            if start + warm <= time.monotonic() <= stop_at:
                counts[url][st] = counts[url].get(st, 0) + 1
        conn.close()

    async def main():
        await asyncio.gather(*(worker(url) for url, n in targets for _ in range(n)))

    cpu0 = self_cpu()
    asyncio.run(main())
    secs = a.seconds
    out = {"secs": secs, "cpu_cores": (self_cpu() - cpu0) / (time.monotonic() - start),
           "per_url": {url: {"ok": c.get(200, 0), "statuses": c, "rps": c.get(200, 0) / secs}
                       for url, c in counts.items()}}
    json.dump(out, open(a.out, "w"))


def cmd_interactive(a):
    """One chat request at a time to the GPU, each timed, until --seconds or SIGTERM."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    host, port = split_url(a.url)
    samples = []  # [wall-clock start, seconds, status]

    async def main():
        conn = Conn(host, port)
        end = time.monotonic() + a.seconds if a.seconds else None
        i = 0
        while not stop.is_set() and (end is None or time.monotonic() < end):
            i += 1
            wall, t0 = time.time(), time.perf_counter()
            st = await conn.send(chat_request(host, port, f"interactive {i}"))
            samples.append((wall, time.perf_counter() - t0, st))
            if st != 200:
                await asyncio.sleep(0.05)  # a 429 or an error: do not spin

    cpu0, t0 = self_cpu(), time.monotonic()
    asyncio.run(main())
    secs = time.monotonic() - t0
    json.dump({"samples": samples, "secs": secs, "cpu_cores": (self_cpu() - cpu0) / secs},
              open(a.out, "w"))


def percentile(xs, p):
    xs = sorted(xs)
    if not xs:
        return None
    k = max(0, min(len(xs) - 1, int(round(p / 100 * len(xs) + 0.5)) - 1))  # nearest rank
    return xs[k]


def latency_summary(samples, t_from=None, t_to=None):
    sel = [s for s in samples if (t_from is None or s[0] >= t_from) and (t_to is None or s[0] <= t_to)]
    ok = [s[1] for s in sel if s[2] == 200]
    return {"n": len(sel), "ok": len(ok), "not_ok": len(sel) - len(ok),
            "p50_ms": None if not ok else 1000 * percentile(ok, 50),
            "p99_ms": None if not ok else 1000 * percentile(ok, 99),
            "max_ms": None if not ok else 1000 * max(ok)}


# --- processes ------------------------------------------------------------------------------------

class Fleet:
    def __init__(self, a):
        self.a = a
        self.fakes = []     # (Popen, url, slots, service_ms)
        self.replicas = []  # (Popen, port)

    def note_pid(self, pid):
        with open(os.path.join(self.a.work, "pids"), "a") as f:
            f.write(f"{pid}\n")

    def start_gpu(self, slots, service_ms, queue_max=None):
        args = [self.a.fake, "--port", "0", "--gpu-slots", str(slots), "--service-ms", str(service_ms),
                "--models", MODEL]
        if queue_max is not None:
            args += ["--queue-max", str(queue_max)]
        err = open(os.path.join(self.a.work, f"fake-{len(self.fakes)}.err"), "w")
        p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, text=True)
        self.note_pid(p.pid)
        line = p.stdout.readline().strip()
        m = re.match(r"^listening on (http://[0-9.:]+)$", line)
        if not m:
            die(f"fake-upstream printed {line!r}")
        self.fakes.append((p, m.group(1), slots, service_ms))
        return m.group(1)

    def start_replicas(self, n, label, extra_env):
        ports = []
        for _ in range(n):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                ports.append(s.getsockname()[1])
        for i, port in enumerate(ports):
            env = dict(os.environ)
            env.update({"OPENBATCH__SERVER__HOST": "127.0.0.1", "OPENBATCH__SERVER__PORT": str(port),
                        "OPENBATCH__DATABASE__URL": self.a.db_url, "RUST_LOG": self.a.rust_log})
            env.update(extra_env)
            logf = open(os.path.join(self.a.work, f"replica-{label}-{i}.log"), "w")
            p = subprocess.Popen([self.a.bin, "serve"], env=env, stdout=logf, stderr=subprocess.STDOUT)
            self.note_pid(p.pid)
            self.replicas.append((p, port))
        for p, port in self.replicas:
            deadline = time.monotonic() + 60
            while True:
                if p.poll() is not None:
                    die(f"replica on port {port} exited at start: see {self.a.work}/replica-{label}-*.log")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    die(f"replica on port {port} not ready after 60 s")
                time.sleep(0.1)
        # The steady state is measured, not a cluster starting: a replica joining a running
        # cluster sends nothing upstream for two heartbeats (openbatch_cluster_joining).
        deadline = time.monotonic() + 30
        for p, port in self.replicas:
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                        text = r.read().decode()
                except OSError:
                    text = ""
                counted = re.search(r"^openbatch_cluster_replicas (\d+)", text, re.M)
                joining = re.search(r"^openbatch_cluster_joining (\d+)", text, re.M)
                if counted and int(counted.group(1)) == n and joining and joining.group(1) == "0":
                    break
                if time.monotonic() > deadline:
                    die(f"replica on port {port} did not count {n} replicas and finish joining in 30 s")
                time.sleep(0.1)
        log(f"{label}: {n} replicas ready and counting each other "
            f"({', '.join(f'{k}={v}' for k, v in extra_env.items())})")

    def stop_replicas(self):
        for p, _ in self.replicas:
            p.terminate()
        deadline = time.monotonic() + 15
        for p, _ in self.replicas:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.replicas = []

    def stop_fakes(self):
        for p, *_ in self.fakes:
            if p.poll() is None:
                p.terminate()
                p.wait()
        self.fakes = []

    def stop_all(self):
        self.stop_replicas()
        self.stop_fakes()


def gpu_stats(url):
    code, body = http_json("GET", f"{url}/stats", timeout=10)
    return body.get("gpu") if code == 200 else None


class GpuSampler(threading.Thread):
    """Samples each GPU's gauges every 0.1 s: the peak of running + waiting seen from outside,
    as a check on the fake's own peak counters."""

    def __init__(self, urls, trace_ports=None):
        super().__init__(daemon=True)
        self.urls, self.stop = urls, threading.Event()
        self.peak = {u: {"running": 0, "waiting": 0, "requests": 0} for u in urls}
        self.dead = set()
        # FLEET_TRACE=1: every sample, with each replica's endpoint limits and in-flight.
        self.trace_ports, self.trace = trace_ports or [], []

    def replica_gauges(self, port):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return None
        out = {}
        for m in re.finditer(r'^openbatch_upstream_endpoint_(limit|in_flight)\{[^}]*\} ([0-9.e+-]+)$',
                             text, re.M):
            out[m.group(1)] = out.get(m.group(1), 0) + float(m.group(2))
        return out

    def run(self):
        t0 = time.monotonic()
        while not self.stop.wait(0.1):
            if self.trace_ports:
                self.trace.append({"t": round(time.monotonic() - t0, 2),
                                   "replicas": [self.replica_gauges(p) for p in self.trace_ports]})
            for u in self.urls:
                if u in self.dead:
                    continue
                try:
                    g = gpu_stats(u)
                except OSError:
                    g = None
                if g is None:
                    continue
                if self.trace_ports:
                    self.trace[-1].setdefault("gpus", []).append([g["running"], g["waiting"]])
                pk = self.peak[u]
                pk["running"] = max(pk["running"], g["running"])
                pk["waiting"] = max(pk["waiting"], g["waiting"])
                pk["requests"] = max(pk["requests"], g["running"] + g["waiting"])


def cpu_snapshot():
    busy, total = machine_cpu()
    return time.monotonic(), busy, total, all_procs_cpu()


def cpu_between(s0, s1, replica_pids, fake_pids, client_pids):
    """Cores used between two snapshots: the machine, the replicas, the GPUs, our load
    generators and this driver, PostgreSQL, and everything else."""
    t0, b0, _, p0 = s0
    t1, b1, _, p1 = s1
    secs = max(t1 - t0, 1e-9)
    u = {"secs": secs, "machine": (b1 - b0) / secs, "replicas": 0.0, "replica_cpu_s": 0.0,
         "gpus": 0.0, "clients": 0.0, "postgres": 0.0, "other": 0.0, "other_top": {}}
    for pid, (cmd, c1) in p1.items():
        c0 = p0[pid][1] if pid in p0 and p0[pid][0] == cmd else 0.0
        d = c1 - c0
        if pid in replica_pids:
            u["replicas"] += d / secs
            u["replica_cpu_s"] += d
        elif pid in fake_pids:
            u["gpus"] += d / secs
        elif pid in client_pids or pid == os.getpid():
            u["clients"] += d / secs
        elif cmd.startswith("postgres:") or "/postgresql/" in cmd.split(" ")[0]:
            u["postgres"] += d / secs
        elif d > 0:
            u["other"] += d / secs
            name = os.path.basename(cmd.split(" ")[0]) or "?"
            u["other_top"][name] = u["other_top"].get(name, 0) + d / secs
    u["other_top"] = dict(sorted(u["other_top"].items(), key=lambda kv: -kv[1])[:3])
    return u


# --- one batch ------------------------------------------------------------------------------------

def run_batch(fleet, label, lines, input_path, interactive_url=None, kill=None, pool_check=False):
    """Uploads, creates, polls until done; returns the figures. `kill` = (fraction, fake index):
    SIGKILL that GPU once that share of the lines is done. `pool_check`: a few seconds in,
    checks that every GPU got traffic; if not, cancels the batch and says so."""
    a = fleet.a
    ports = [p for _, p in fleet.replicas]
    api = f"http://127.0.0.1:{ports[0]}/v1"
    urls = [u for _, u, *_ in fleet.fakes]
    for u in urls:
        http_json("POST", f"{u}/stats/reset")
    res = {"label": label, "lines": lines, "replicas": len(ports)}
    code, _ = curl(["-o", f"{a.work}/upload.json", "-F", "purpose=batch",
                    "-F", f"file=@{input_path};type=application/jsonl", f"{api}/files"])
    if code != 200:
        die(f"{label}: upload answered HTTP {code}")
    fid = json.load(open(f"{a.work}/upload.json"))["id"]
    inter = None
    if interactive_url:
        inter_out = f"{a.work}/{label}.interactive.json"
        inter = subprocess.Popen([sys.executable, __file__, "interactive", "--url", interactive_url,
                                  "--out", inter_out])
        fleet.note_pid(inter.pid)
    sampler = GpuSampler(urls, ports if os.environ.get("FLEET_TRACE") == "1" else None)
    sampler.start()
    replica_pids = {p.pid for p, _ in fleet.replicas}
    fake_pids = {p.pid for p, *_ in fleet.fakes}
    client_pids = {inter.pid} if inter else set()

    code, batch = http_json("POST", f"{api}/batches", {
        "input_file_id": fid, "endpoint": "/v1/chat/completions", "completion_window": "24h"})
    if code != 200:
        die(f"{label}: create answered HTTP {code}: {str(batch)[:300]}")
    bid = batch["id"]
    poller = KeepAlive(api)
    t0 = time.monotonic()
    t_exec = t_done = None
    wall_exec = wall_done = None
    cpu_exec = cpu_done = None
    killed = None
    last_log = 0
    while True:
        time.sleep(a.poll)
        now = time.monotonic() - t0
        code, batch = poller.get(f"/batches/{bid}")
        if code != 200:
            die(f"{label}: GET batch answered {code}: {str(batch)[:300]}")
        st = batch["status"]
        rc = batch.get("request_counts") or {}
        done = rc.get("completed", 0) + rc.get("failed", 0)
        if t_exec is None and st in ("in_progress", "finalizing", "completed"):
            t_exec, wall_exec, cpu_exec = now, time.time(), cpu_snapshot()
            log(f"{label}: {now:6.1f}s in_progress")
        if t_exec is not None and t_done is None and rc.get("total") and done >= rc["total"]:
            t_done, wall_done, cpu_done = now, time.time(), cpu_snapshot()
            log(f"{label}: {now:6.1f}s all {done} lines done")
        if kill and killed is None and rc.get("total") and done >= kill[0] * rc["total"]:
            p, u, slots, _ = fleet.fakes[kill[1]]
            p.kill()
            p.wait()
            sampler.dead.add(u)
            killed = {"at_s": now - t_exec, "lines_done": done, "slots": slots}
            log(f"{label}: killed the {slots}-slot GPU (SIGKILL) at {done}/{rc['total']} lines")
        if pool_check and t_exec is not None and now - t_exec > a.pool_check_s:
            pool_check = False
            served = [(gpu_stats(u) or {}).get("served", 0) + (gpu_stats(u) or {}).get("running", 0)
                      for u in urls]
            res["pool_served_at_check"] = served
            if not all(served):
                log(f"{label}: after {a.pool_check_s}s in_progress the pool's GPUs served {served}: "
                    "the replicas do not spread lines over OPENBATCH__UPSTREAM__BASE_URLS; cancelling")
                http_json("POST", f"{api}/batches/{bid}/cancel")
                res["pool_unsupported"] = True
                res["request_counts"] = rc
                break
        if now - last_log >= 5 and st == "in_progress":
            last_log = now
            log(f"{label}: {now:6.1f}s {done}/{rc.get('total')} lines")
        if st == "completed":
            break
        if st in ("failed", "expired", "cancelled", "cancelling"):
            die(f"{label}: batch ended {st}: {json.dumps(batch.get('errors'))[:500]}")
        if now > a.timeout:
            log(f"{label}: still {st} after {a.timeout}s: cancelling it")
            http_json("POST", f"{api}/batches/{bid}/cancel")
            res["timed_out"] = True
            res["request_counts"] = rc
            break
    sampler.stop.set()
    sampler.join()
    if sampler.trace:
        with open(f"{a.work}/{label}.trace.json", "w") as f:
            json.dump(sampler.trace, f)
        log(f"{label}: trace of gauges and limits in {a.work}/{label}.trace.json")
    if inter:
        inter.terminate()
        inter.wait()
        idata = json.load(open(inter_out))
        res["interactive"] = latency_summary(idata["samples"], wall_exec, wall_done)
        res["interactive_cpu_cores"] = idata["cpu_cores"]
    res["gpu"] = [{"url": u, "sampled_peak": sampler.peak[u], **(
        (gpu_stats(u) or {"dead": True}) if u not in sampler.dead else {"dead": True})} for u in urls]
    if killed:
        res["killed"] = killed
    if res.get("pool_unsupported") or res.get("timed_out"):
        return res
    res["request_counts"] = batch["request_counts"]
    res["executing_s"] = t_done - t_exec
    res["lines_per_s"] = lines / res["executing_s"]
    res["cpu"] = cpu_between(cpu_exec, cpu_done, replica_pids, fake_pids, client_pids)
    res["replica_us_per_line"] = 1e6 * res["cpu"]["replica_cpu_s"] / lines
    # Every custom_id exactly once across the output and error files.
    seen = {}
    for key in ("output_file_id", "error_file_id"):
        if batch.get(key):
            path = f"{a.work}/{label}.{key}.jsonl"
            code, _ = curl(["-o", path, f"{api}/files/{batch[key]}/content"])
            if code != 200:
                die(f"{label}: download of {key} answered {code}")
            with open(path) as f:
                for line in f:
                    cid = json.loads(line).get("custom_id")
                    seen[cid] = seen.get(cid, 0) + 1
            os.unlink(path)
    expected = {f"r{i}" for i in range(lines)}
    res["ids_missing"] = len(expected - set(seen))
    res["ids_twice"] = sum(1 for c in seen.values() if c > 1)
    res["ids_unknown"] = len(set(seen) - expected)
    return res


# --- scenarios ------------------------------------------------------------------------------------

def capacity(fleet):
    return sum(slots * 1000 / ms for _, _, slots, ms in fleet.fakes)


def measure_ceiling(fleet, seconds, label):
    """All GPUs of the fleet driven alone at twice their slots: their capacity, measured."""
    out = f"{fleet.a.work}/{label}.load.json"
    args = [sys.executable, __file__, "load", "--seconds", str(seconds), "--out", out]
    for _, u, slots, _ in fleet.fakes:
        args += ["--url", f"{u}:{2 * slots}"]
    s0 = cpu_snapshot()
    p = subprocess.Popen(args)
    fleet.note_pid(p.pid)
    if p.wait() != 0:
        die(f"{label}: the load generator failed")
    cpu = cpu_between(s0, cpu_snapshot(), set(), {q.pid for q, *_ in fleet.fakes}, {p.pid})
    data = json.load(open(out))
    rps = sum(v["rps"] for v in data["per_url"].values())
    bad = {u: {k: n for k, n in v["statuses"].items() if k != "200"} for u, v in data["per_url"].items()}
    return {"rps": rps, "nominal": capacity(fleet), "loadgen_cores": data["cpu_cores"],
            "non_200": {u: b for u, b in bad.items() if b}, "cpu": cpu}


def scenario_batch(fleet, label, replicas, env, a, lines, interactive=True, **kw):
    fleet.start_replicas(replicas, label, env)
    try:
        return run_batch(fleet, label, lines, a.input_for(lines),
                         interactive_url=fleet.fakes[0][1] if interactive else None, **kw)
    finally:
        fleet.stop_replicas()


def main_scenarios(a):
    only = [s for s in a.only.split(",") if s]
    known = ["ceiling", "idle", "queue", "gateway", "cap", "pool", "failover", "cpu"]
    for s in only:
        if s not in known:
            die(f"unknown scenario {s!r}; known: {', '.join(known)}")
    want = lambda s: not only or s in only  # noqa: E731
    inputs = {}

    def input_for(lines):
        if lines not in inputs:
            path = f"{a.work}/in-{lines}.jsonl"
            subprocess.run([sys.executable, engine.__file__, "gen", "--lines", str(lines), "--out", path],
                           check=True, stdout=subprocess.DEVNULL)
            inputs[lines] = path
        return inputs[lines]
    a.input_for = input_for
    fleet = Fleet(a)
    results = {"config": {"slots": a.slots, "service_ms": a.service_ms, "replicas": a.replicas,
                          "lines": a.lines, "queue_max": a.queue_max, "cap": a.cap,
                          "cap_replicas": a.cap_replicas}}
    base_env = {"OPENBATCH__WORKER__ENABLED": "true"}
    try:
        if want("ceiling") or want("idle") or want("queue"):
            url = fleet.start_gpu(a.slots, a.service_ms)
            upstream = {**base_env, "OPENBATCH__UPSTREAM__BASE_URL": f"{url}/v1"}
            if want("ceiling"):
                log(f"ceiling: {a.slots} slots x {a.service_ms} ms driven alone for {a.ceiling_s}s")
                results["ceiling"] = measure_ceiling(fleet, a.ceiling_s, "ceiling")
            if want("idle") or want("queue"):
                log(f"idle: the interactive client alone for {a.idle_s}s")
                out = f"{a.work}/idle.interactive.json"
                p = subprocess.run([sys.executable, __file__, "interactive", "--url", url,
                                    "--seconds", str(a.idle_s), "--out", out])
                if p.returncode != 0:
                    die("the interactive client failed")
                d = json.load(open(out))
                results["idle"] = {**latency_summary(d["samples"]), "cpu_cores": d["cpu_cores"]}
            if want("queue"):
                results["queue"] = scenario_batch(fleet, "queue", a.replicas, upstream, a, a.lines)
            fleet.stop_fakes()
        if want("gateway"):
            url = fleet.start_gpu(a.slots, a.service_ms, a.queue_max)
            env = {**base_env, "OPENBATCH__UPSTREAM__BASE_URL": f"{url}/v1"}
            results["gateway"] = scenario_batch(fleet, "gateway", a.replicas, env, a, a.lines)
            fleet.stop_fakes()
        if want("cap"):
            url = fleet.start_gpu(a.slots, a.service_ms)
            env = {**base_env, "OPENBATCH__UPSTREAM__BASE_URL": f"{url}/v1",
                   "OPENBATCH__UPSTREAM__MAX_IN_FLIGHT": str(a.cap)}
            results["cap"] = scenario_batch(fleet, "cap", a.cap_replicas, env, a, a.lines,
                                            interactive=False)
            fleet.stop_fakes()
        # pool: the pool's throughput; failover: the same pool with one GPU SIGKILLed mid-batch.
        for key in ("pool", "failover"):
            if not want(key):
                continue
            urls = [fleet.start_gpu(int(s), a.service_ms) for s in a.pool_slots.split(",")]
            if "pool_ceiling" not in results:
                log(f"pool: ceiling of the {a.pool_slots}-slot pool, driven alone for {a.ceiling_s}s")
                results["pool_ceiling"] = measure_ceiling(fleet, a.ceiling_s, "pool-ceiling")
            env = {**base_env, "OPENBATCH__UPSTREAM__BASE_URLS": ",".join(f"{u}/v1" for u in urls)}
            kill = (a.kill_at, 1) if key == "failover" else None
            results[key] = scenario_batch(fleet, key, a.replicas, env, a, a.pool_lines,
                                          interactive=False, kill=kill, pool_check=True)
            fleet.stop_fakes()
        # cpu: the limiter's cost alone. A GPU with room for the whole cap, so that adaptive on
        # and off run at the same concurrency (the cap) and rate; alternated, `cpu_rounds` each.
        if want("cpu"):
            url = fleet.start_gpu(4 * a.cpu_cap, a.service_ms)
            runs = []
            for i in range(2 * a.cpu_rounds):
                adaptive = "true" if i % 2 == 0 else "false"
                env = {**base_env, "OPENBATCH__UPSTREAM__BASE_URL": f"{url}/v1",
                       "OPENBATCH__UPSTREAM__MAX_IN_FLIGHT": str(a.cpu_cap),
                       "OPENBATCH__UPSTREAM__ADAPTIVE": adaptive}
                r = scenario_batch(fleet, f"cpu-{i}", a.replicas, env, a, a.lines, interactive=False)
                runs.append({"adaptive": adaptive == "true", "lines_per_s": r["lines_per_s"],
                             "us_per_line": r["replica_us_per_line"], "other": r["cpu"]["other"],
                             "failed": r["request_counts"].get("failed", 0)})
                log(f"cpu: adaptive {adaptive}: {r['lines_per_s']:.0f} lines/s, "
                    f"{r['replica_us_per_line']:.0f} µs of replica CPU per line")
            results["cpu"] = {"cap": a.cpu_cap, "gpu_slots": 4 * a.cpu_cap, "runs": runs}
            fleet.stop_fakes()
    finally:
        fleet.stop_all()
    json.dump(results, open(a.out, "w"), indent=1)


# --- report ---------------------------------------------------------------------------------------

def fmt(v, spec=".0f", none="-"):
    return none if v is None else format(v, spec)


def cmd_report(a):
    r = json.load(open(a.results))
    c = r["config"]
    ceil = r.get("ceiling")
    nominal = c["slots"] * 1000 / c["service_ms"]
    cap_rps = ceil["rps"] if ceil else nominal
    basis = "measured ceiling" if ceil else "nominal capacity (ceiling not run)"
    idle = r.get("idle")
    idle_p99 = idle["p99_ms"] if idle else None
    print(f"GPU: {c['slots']} slots x {c['service_ms']} ms = {nominal:.0f} req/s nominal; "
          f"{c['replicas']} replicas; {c['lines']}-line batches")
    if ceil:
        print(f"ceiling: {ceil['rps']:.0f} req/s measured alone ({ceil['rps'] / nominal:.2f} of nominal); "
              f"load generator {ceil['loadgen_cores']:.2f} cores, machine {ceil['cpu']['machine']:.2f} "
              f"busy cores, other processes {ceil['cpu']['other']:.2f}"
              + (f"; NON-200: {ceil['non_200']}" if ceil["non_200"] else ""))
    if idle:
        print(f"interactive alone: {idle['ok']} requests, p50 {fmt(idle['p50_ms'])} ms, "
              f"p99 {fmt(idle['p99_ms'])} ms (idle p99), client {idle['cpu_cores']:.3f} cores")
    print()
    head = ["scenario", "lines/s", "of ceiling", "inter. p50", "inter. p99", "p99/idle", "inter. !200",
            "failed", "429s", "peak run/wait/all", "µs CPU/line", "loadgen", "other CPU"]
    rows = []
    for key in ("queue", "gateway", "cap", "pool", "failover"):
        x = r.get(key)
        if not x:
            continue
        if x.get("pool_unsupported"):
            rows.append([key, "NOT MEASURED: the replicas ignored OPENBATCH__UPSTREAM__BASE_URLS "
                         f"(GPUs served {x['pool_served_at_check']} after {a.pool_check_s:.0f}s)"])
            continue
        if x.get("timed_out"):
            rows.append([key, f"DID NOT COMPLETE in time: request_counts {x['request_counts']}"])
            continue
        basis_rps = cap_rps
        if key in ("pool", "failover"):
            basis_rps = r["pool_ceiling"]["rps"]
        it = x.get("interactive") or {}
        g = x["gpu"][0]
        shed = sum(gg.get("shed", 0) for gg in x["gpu"])
        peak = f"{g.get('peak_running', '?')}/{g.get('peak_waiting', '?')}/{g.get('peak_requests', '?')}"
        if key in ("pool", "failover"):
            peak = " ".join(f"{gg.get('slots', '†')}:{gg.get('served', 'killed')}" for gg in x["gpu"])
        rows.append([
            key, f"{x['lines_per_s']:.0f}", f"{x['lines_per_s'] / basis_rps:.2f}",
            fmt(it.get("p50_ms")), fmt(it.get("p99_ms")),
            fmt(None if not it.get("p99_ms") or not idle_p99 else it["p99_ms"] / idle_p99, ".1f") + ("×" if it.get("p99_ms") and idle_p99 else ""),
            fmt(it.get("not_ok")) if it else "-",
            f"{x['request_counts'].get('failed', 0)}/{x['lines']}", str(shed), peak,
            f"{x['replica_us_per_line']:.0f}", fmt(x.get("interactive_cpu_cores"), ".3f"),
            f"{x['cpu']['other']:.2f}"])
    widths = [max(len(str(row[i])) for row in [head] + [r_ for r_ in rows if len(r_) > 2])
              for i in range(len(head))]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for row in rows:
        if len(row) == 2:
            print(f"{row[0].ljust(widths[0])}  {row[1]}")
        else:
            print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)))
    print()
    for key in ("queue", "gateway", "cap", "pool", "failover"):
        x = r.get(key)
        if not x or "executing_s" not in x:
            continue
        ids = f"ids missing {x['ids_missing']}, twice {x['ids_twice']}, unknown {x['ids_unknown']}"
        extra = ""
        if key == "cap":
            g = x["gpu"][0]
            extra = (f"; requests at the GPU at once: peak {g['peak_requests']} (its counter), "
                     f"{g['sampled_peak']['requests']} (sampled every 0.1 s); cap asked: "
                     f"{c['cap']} per endpoint for the cluster of {c['cap_replicas']} replicas")
        if key in ("pool", "failover"):
            pc = r["pool_ceiling"]
            extra = f"; pool ceiling {pc['rps']:.0f} req/s measured alone (nominal {pc['nominal']:.0f})"
            if x.get("killed"):
                k = x["killed"]
                extra += (f"; the {k['slots']}-slot GPU SIGKILLed {k['at_s']:.1f}s into execution "
                          f"at {k['lines_done']} lines done")
        print(f"{key}: executing {x['executing_s']:.1f}s, {ids}; replicas {x['cpu']['replicas']:.2f} cores, "
              f"GPUs {x['cpu']['gpus']:.2f}, PostgreSQL {x['cpu']['postgres']:.2f}, "
              f"bench clients {x['cpu']['clients']:.2f}, other {x['cpu']['other']:.2f} "
              f"{x['cpu']['other_top'] or ''}{extra}")
    cpu = r.get("cpu")
    if cpu:
        def med(xs):
            xs = sorted(xs)
            return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2
        on = [x for x in cpu["runs"] if x["adaptive"]]
        off = [x for x in cpu["runs"] if not x["adaptive"]]
        print(f"\ncpu: a {cpu['gpu_slots']}-slot GPU, max_in_flight={cpu['cap']}, adaptive on and off "
              f"alternated ({len(on)} runs each), replica CPU per line:")
        for name, xs in (("on", on), ("off", off)):
            each = ", ".join(f"{x['us_per_line']:.0f}" for x in xs)
            print(f"  adaptive {name:3}: median {med([x['us_per_line'] for x in xs]):.0f} µs/line "
                  f"(runs: {each}), median "
                  f"{med([x['lines_per_s'] for x in xs]):.0f} lines/s, failed {sum(x['failed'] for x in xs)}")
        print(f"  difference: {med([x['us_per_line'] for x in on]) - med([x['us_per_line'] for x in off]):+.0f} "
              "µs/line (on − off)")
    print(f"\nthroughput is a share of the {basis}; p99/idle divides by the interactive client's "
          "p99 alone on the same GPU in this run")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("scenarios")
    for name, kind, default in [
            ("bin", str, None), ("fake", str, None), ("db-url", str, None), ("work", str, None),
            ("out", str, None), ("only", str, ""), ("rust-log", str, "warn"),
            ("slots", int, 32), ("service-ms", int, 100), ("replicas", int, 3), ("lines", int, 6000),
            ("queue-max", int, 16), ("cap", int, 40), ("cap-replicas", int, 6),
            ("pool-slots", str, "32,16,8"), ("pool-lines", int, 6000), ("kill-at", float, 0.4),
            ("pool-check-s", float, 3.0), ("ceiling-s", float, 5.0), ("idle-s", float, 10.0),
            ("cpu-cap", int, 64), ("cpu-rounds", int, 2),
            ("poll", float, 0.1), ("timeout", float, 300.0)]:
        s.add_argument(f"--{name}", type=kind, default=default, required=default is None)
    ld = sub.add_parser("load")
    ld.add_argument("--url", action="append", required=True)
    ld.add_argument("--seconds", type=float, required=True)
    ld.add_argument("--out", required=True)
    it = sub.add_parser("interactive")
    it.add_argument("--url", required=True)
    it.add_argument("--seconds", type=float, default=0)
    it.add_argument("--out", required=True)
    rp = sub.add_parser("report")
    rp.add_argument("--results", required=True)
    rp.add_argument("--pool-check-s", type=float, default=3.0)
    a = p.parse_args()
    {"scenarios": main_scenarios, "load": cmd_load, "interactive": cmd_interactive,
     "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    main()
