"""Times Usage API reports against a filled database (driven by bench/usage.sh)."""

import argparse
import http.client
import json
import os
import statistics
import time
import urllib.parse

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_ms(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total * 1000 / TICKS


def postgres_pids():
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().strip() == "postgres":
                        pids.append(pid)
            except OSError:
                pass
    return pids


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--start", type=int, required=True)
    ap.add_argument("--days", type=int, required=True)
    ap.add_argument("--now", type=int, required=True, help="the newest minute filled, plus a minute")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--server-pid", required=True)
    ap.add_argument("--naive-ms", default="?")
    a = ap.parse_args()
    url = urllib.parse.urlsplit(a.base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    headers = {"Authorization": f"Bearer {a.key}"}
    day, last = 86400, a.start + a.days * 86400
    reports = [
        (f"{a.days} d in days, total", dict(start_time=a.start, end_time=last, bucket_width="1d", limit=31)),
        (f"{a.days} d in days, by project and model",
         dict(start_time=a.start, end_time=last, bucket_width="1d", limit=31, group_by=["project_id", "model"])),
        (f"{a.days} d in days, one project by model",
         dict(start_time=a.start, end_time=last, bucket_width="1d", limit=31,
              project_ids="proj_bench0042", group_by="model")),
        (f"{a.days} d in days from mid-day, by model",
         dict(start_time=a.start + 12345, end_time=last - 4321, bucket_width="1d", limit=31, group_by="model")),
        (f"{a.days} d up to now (no end_time), by project",
         dict(start_time=a.now - a.days * day, bucket_width="1d", limit=31, group_by="project_id")),
        ("a day in hours, by project",
         dict(start_time=last - day, end_time=last, bucket_width="1h", limit=24, group_by="project_id")),
        ("an hour in minutes, one project",
         dict(start_time=last - 3600, end_time=last, bucket_width="1m", limit=60, project_ids="proj_bench0042")),
        ("an hour in minutes, total",
         dict(start_time=last - 3600, end_time=last, bucket_width="1m", limit=60)),
        ("a day in minutes, total (1440 buckets)",
         dict(start_time=last - day, end_time=last, bucket_width="1m", limit=1440)),
    ]
    pg = postgres_pids()
    print(f"\n{'report':44} {'median':>8} {'p95':>8} {'max':>8} {'buckets':>7} {'results':>7} "
          f"{'bytes':>9} {'replica CPU':>11} {'PG CPU':>8}")
    for name, params in reports:
        path = url.path + "/organization/usage/completions?" + urllib.parse.urlencode(params, doseq=True)
        times = []
        cpu0 = (cpu_ms([a.server_pid]), cpu_ms(pg))
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            times.append((time.perf_counter() - t0) * 1000)
            if resp.status != 200:
                raise SystemExit(f"{name}: HTTP {resp.status}: {body[:300]!r}")
        cpu1 = (cpu_ms([a.server_pid]), cpu_ms(pg))
        page = json.loads(body)
        results = sum(len(b["results"]) for b in page["data"])
        times.sort()
        p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
        print(f"{name:44} {statistics.median(times):7.1f}ms {p95:7.1f}ms {times[-1]:7.1f}ms "
              f"{len(page['data']):7} {results:7} {len(body):9} "
              f"{(cpu1[0] - cpu0[0]) / a.repeat:9.1f}ms {(cpu1[1] - cpu0[1]) / a.repeat:6.1f}ms")
    print(f"\nthe same {a.days} days summed by day, project and model straight from the minute rows "
          f"(psql, once): {a.naive_ms} ms")
    print("latency is the client's, one request at a time on one keep-alive connection; CPU is "
          "per report (10 ms clock ticks, averaged over the repeats)")


if __name__ == "__main__":
    main()
