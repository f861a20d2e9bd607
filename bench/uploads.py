"""Sends a file through the Uploads API in 64 MiB parts, streamed from disk, and times it
(driven by bench/uploads.sh). No dependencies beyond the standard library, so that the load
generator costs little next to the server."""

import argparse
import hashlib
import http.client
import json
import os
import time
import urllib.parse

PART = 64 * 1024 * 1024
BOUNDARY = "openbatch-bench-boundary"


def post(conn, path, body, headers):
    conn.request("POST", path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        raise SystemExit(f"POST {path}: HTTP {resp.status}: {data[:300]!r}")
    return json.loads(data)


def part_body(path, offset, length):
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"data\"; filename=\"upload\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()

    def chunks():
        yield head
        with open(path, "rb") as f:
            f.seek(offset)
            left = length
            while left:
                piece = f.read(min(1 << 20, left))
                left -= len(piece)
                yield piece
        yield tail

    return chunks(), len(head) + length + len(tail)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--file", required=True)
    ap.add_argument("--md5", required=True)
    a = ap.parse_args()
    url = urllib.parse.urlsplit(a.base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
    size = os.path.getsize(a.file)
    json_headers = {"Content-Type": "application/json"}
    t0 = time.perf_counter()
    upload = post(conn, url.path + "/uploads", json.dumps(
        {"filename": "big.jsonl", "purpose": "batch", "bytes": size, "mime_type": "application/jsonl"}),
        json_headers)
    parts = []
    for offset in range(0, size, PART):
        body, length = part_body(a.file, offset, min(PART, size - offset))
        headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}", "Content-Length": str(length)}
        parts.append(post(conn, f"{url.path}/uploads/{upload['id']}/parts", body, headers)["id"])
    t1 = time.perf_counter()
    done = post(conn, f"{url.path}/uploads/{upload['id']}/complete",
                json.dumps({"part_ids": parts, "md5": a.md5}), json_headers)
    t2 = time.perf_counter()
    assert done["status"] == "completed" and done["file"]["bytes"] == size, done
    print(json.dumps({"bytes": size, "parts": len(parts), "parts_secs": t1 - t0,
                      "complete_secs": t2 - t1, "file_id": done["file"]["id"]}))


if __name__ == "__main__":
    main()
