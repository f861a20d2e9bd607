"""Results while a batch runs, its events, and retrying what failed, as an SDK user sees
them: the official `openai` SDK for the standard calls (files, batches), httpx for the
OpenBatch extensions (`/results`, `/events`, `/retry`), against a real server whose workers run
against `fake-upstream`.

Outcomes are checked, never timings: waits poll with a deadline that only guards against a
hang.
"""

from __future__ import annotations

import io
import json
import time
from typing import Any, Callable, Iterator

import httpx
import openai
import pytest

from conftest import ServerPool, make_client
from test_execution import FakeUpstream, start_executing_server, start_upstream  # noqa: F401

DEADLINE_SECS = 180.0
FINAL = {"completed", "failed", "expired", "cancelled"}


def line(custom_id: str, fake: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "fake-model",
        "messages": [{"role": "user", "content": f"hello {custom_id}"}],
        "user": custom_id,
    }
    if fake is not None:
        body["fake"] = fake
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(l) + "\n" for l in lines).encode()


def wait(client: openai.OpenAI, batch_id: str, done: Callable[[Any], bool]) -> Any:
    deadline = time.monotonic() + DEADLINE_SECS
    while True:
        b = client.batches.retrieve(batch_id)
        if done(b):
            return b
        assert time.monotonic() < deadline, f"batch stuck: {b}"
        time.sleep(0.1)


def records(http: httpx.Client, batch_id: str, after: str | None = None) -> tuple[httpx.Response, list[dict]]:
    params = {"after": after} if after else {}
    resp = http.get(f"/batches/{batch_id}/results", params=params)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/x-ndjson"
    return resp, [json.loads(l) for l in resp.text.splitlines()]


@pytest.fixture
def setup(server_pool: ServerPool, start_upstream: Callable[..., FakeUpstream]) -> Iterator[tuple[openai.OpenAI, httpx.Client]]:
    upstream = start_upstream()
    server = start_executing_server(server_pool, upstream, UPSTREAM__TIMEOUT_SECS=10)
    client = make_client(server)
    with httpx.Client(base_url=server.api_base, timeout=60, trust_env=False) as http:
        yield client, http
    client.close()


def test_results_are_read_while_running_then_from_the_files(setup: tuple[openai.OpenAI, httpx.Client]) -> None:
    client, http = setup
    # r0..r9 answer at once, r10 and r11 with a final 400, r12..r14 hang until the upstream
    # timeout (then succeed when retried): the batch runs a while with most lines done.
    lines = [line(f"r{i}") for i in range(10)]
    lines += [line(f"r{i}", {"fail": [400]}) for i in (10, 11)]
    lines += [line(f"r{i}", {"fail": ["hang"]}) for i in (12, 13, 14)]
    f = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait(client, b.id, lambda x: x.request_counts is not None
         and x.request_counts.completed + x.request_counts.failed >= 12)

    resp, live = records(http, b.id)
    assert resp.headers["openbatch-results-complete"] == "false"
    assert sorted(r["line"] for r in live) == list(range(1, 13))
    for r in live:
        assert r["custom_id"] == f"r{r['line'] - 1}"
        assert r["file"] == ("output" if r["response"]["status_code"] == 200 else "error")

    # The SDK sees the batch end; the results are then served from its files, in input order.
    done = wait(client, b.id, lambda x: x.status in FINAL)
    assert done.status == "completed"
    resp, final = records(http, b.id)
    assert resp.headers["openbatch-results-complete"] == "true"
    assert [r["line"] for r in final] == list(range(1, 16))
    # Each record is its file line plus `line`, `cursor` and `file`.
    in_files = {}
    for file_id in (done.output_file_id, done.error_file_id):
        for text in client.files.content(file_id).text.splitlines():
            in_files[json.loads(text)["custom_id"]] = json.loads(text)
    for r in final + live:
        bare = {k: v for k, v in r.items() if k not in ("line", "cursor", "file")}
        assert bare == in_files[r["custom_id"]]
    # Resuming: the rest, no gap, no repeat.
    _, rest = records(http, b.id, final[6]["cursor"])
    assert [r["line"] for r in rest] == list(range(8, 16))

    # A cursor taken while it ran still says what its reader has: the lines finished since,
    # in input order, each once; and from part-way through the live records, the rest.
    resp, after_live = records(http, b.id, live[-1]["cursor"])
    assert resp.headers["openbatch-results-complete"] == "true"
    assert [r["line"] for r in after_live] == [13, 14, 15]
    _, after_part = records(http, b.id, live[4]["cursor"])
    read = {r["line"] for r in live[:5]}
    assert [r["line"] for r in after_part] == [n for n in range(1, 16) if n not in read]
    _, tail = records(http, b.id, after_part[2]["cursor"])
    assert tail == after_part[3:]


def test_events_then_retry_of_the_failed_lines(setup: tuple[openai.OpenAI, httpx.Client]) -> None:
    client, http = setup
    lines = [line(f"q{i}", {"fail": [500 if i == 2 else 400]} if i in (1, 2, 4) else None) for i in range(6)]
    # 500 is retried by the server until it succeeds; 400 is final.
    f = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")

    events = []
    with http.stream("GET", f"/batches/{b.id}/events") as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "text/event-stream"
        for text in resp.iter_lines():
            if text.startswith("data: "):
                events.append(json.loads(text[len("data: "):]))
    assert events[-1]["status"] == "completed"
    assert events[-1]["request_counts"] == {"total": 6, "completed": 4, "failed": 2}

    # The SDK's own object for the retry: extension fields are kept by the SDK.
    resp = http.post(f"/batches/{b.id}/retry", json={"status_codes": [400]}, headers={"Idempotency-Key": "e2e-retry"})
    assert resp.status_code == 200, resp.text
    retry_id = resp.json()["id"]
    again = http.post(f"/batches/{b.id}/retry", json={"status_codes": [400]}, headers={"Idempotency-Key": "e2e-retry"})
    assert again.json()["id"] == retry_id
    assert again.headers["idempotent-replayed"] == "true"
    conflict = http.post(f"/batches/{b.id}/retry", json={"error_codes": ["x"]}, headers={"Idempotency-Key": "e2e-retry"})
    assert conflict.status_code == 409

    retry = client.batches.retrieve(retry_id)
    assert retry.model_extra["retry_of"] == b.id
    assert client.batches.retrieve(b.id).model_extra["retries"] == [retry_id]
    content = client.files.content(retry.input_file_id).content
    assert content == jsonl([lines[1], lines[4]])
    finished = wait(client, retry_id, lambda x: x.status in FINAL)
    assert finished.status == "completed"
    assert finished.request_counts.completed == 2

    # A retry of a batch whose every line succeeded: a clear 409 (the batch's state).
    nothing = http.post(f"/batches/{retry_id}/retry")
    assert nothing.status_code == 409
    assert nothing.json()["error"]["code"] == "nothing_to_retry"
