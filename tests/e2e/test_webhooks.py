"""Webhooks (an OpenBatch extension) as a user of the official SDK receives them: each terminal
batch status becomes an event that `client.webhooks.unwrap(...)` verifies and parses unchanged,
also across a secret rotation.

The receiver is a small HTTP server on a thread of this process; the servers allow private
networks (OPENBATCH__WEBHOOKS__ALLOW_PRIVATE_NETWORKS=true) so that it may listen on 127.0.0.1.
Every wait polls with a deadline that only guards against a hang.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import httpx
import openai
import pytest
from openai import InvalidWebhookSignatureError

from conftest import ServerPool, bogus_file_id, make_client
from test_execution import FakeUpstream, start_executing_server

DEADLINE_SECS = 120.0
WEBHOOK_SETTINGS = {
    "WEBHOOKS__ALLOW_PRIVATE_NETWORKS": "true",
    "WEBHOOKS__RETRY_BASE_MS": "50",
    "WEBHOOKS__POLL_INTERVAL_MS": "100",
    "WORKER__CANCEL_GRACE_SECS": "1",
}


class Receiver:
    """Records every POST (raw body and headers) and answers 200."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, dict[str, str]]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver.lock:
                    receiver.received.append((body, {k.lower(): v for k, v in self.headers.items()}))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def wait_for_batch(self, batch_id: str) -> tuple[bytes, dict[str, str]]:
        deadline = time.monotonic() + DEADLINE_SECS
        while time.monotonic() < deadline:
            with self.lock:
                for body, headers in self.received:
                    if json.loads(body)["data"]["id"] == batch_id:
                        return body, headers
            time.sleep(0.05)
        raise AssertionError(f"no event for {batch_id}; received {self.received}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[FakeUpstream]:
    fake = FakeUpstream(tmp_path / "fake-upstream.log")
    try:
        fake.start()
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[ServerPool]:
    p = ServerPool(tmp_path)
    try:
        yield p
    finally:
        p.close()


def chat_line(custom_id: str, fake: dict[str, Any] | None = None) -> str:
    body: dict[str, Any] = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
    if fake:
        body["fake"] = fake
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})


def create_batch(client: openai.OpenAI, lines: list[str]) -> str:
    f = client.files.create(file=("in.jsonl", ("\n".join(lines) + "\n").encode()), purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h").id


def wait_for_status(client: openai.OpenAI, batch_id: str, status: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECS
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status == status:
            return
        time.sleep(0.1)
    raise AssertionError(f"{batch_id} never became {status}: {batch}")


def register(server_api: str, url: str) -> dict[str, Any]:
    with httpx.Client(timeout=30, trust_env=False) as http:
        resp = http.post(f"{server_api}/webhook_endpoints", json={"url": url})
        assert resp.status_code == 200, resp.text
        return resp.json()


SLOW = {"latency_ms": 60_000}  # past the 2 s upstream timeout on every attempt


def test_every_terminal_status_sends_an_event_the_sdk_verifies(
    pool: ServerPool, upstream: FakeUpstream, receiver: Receiver
) -> None:
    server = start_executing_server(pool, upstream, **WEBHOOK_SETTINGS)
    # A second replica on the same database whose batches expire after 3 s (the window is
    # fixed when a batch is created, by the replica that creates it).
    expiring = start_executing_server(
        pool, upstream, database=server.database_url.rsplit("/", 1)[1],
        BATCHES__EXPIRY_OVERRIDE_SECS=3, **WEBHOOK_SETTINGS,
    )
    client = make_client(server)
    endpoint = register(server.api_base, receiver.url)
    secret = endpoint["secret"]
    assert secret.startswith("whsec_")

    completed = create_batch(client, [chat_line("ok")])
    failed = client.batches.create(
        input_file_id=bogus_file_id(), endpoint="/v1/chat/completions", completion_window="24h"
    ).id
    cancelled = create_batch(client, [chat_line(f"slow-{i}", SLOW) for i in range(3)])
    expired = create_batch(make_client(expiring), [chat_line(f"late-{i}", SLOW) for i in range(3)])
    wait_for_status(client, cancelled, "in_progress")
    client.batches.cancel(cancelled)

    for batch_id, status in [
        (completed, "completed"), (failed, "failed"), (cancelled, "cancelled"), (expired, "expired")
    ]:
        wait_for_status(client, batch_id, status)
        body, headers = receiver.wait_for_batch(batch_id)
        event = client.webhooks.unwrap(body, headers, secret=secret)
        assert event.type == f"batch.{status}"
        assert event.object == "event"
        assert event.data.id == batch_id
        assert event.id == headers["webhook-id"]
        assert isinstance(event.created_at, int)
        with pytest.raises(InvalidWebhookSignatureError):
            client.webhooks.unwrap(body, headers, secret="whsec_" + "A" * 43 + "=")
        with pytest.raises(InvalidWebhookSignatureError):
            client.webhooks.unwrap(body.replace(b"batch.", b"batch_"), headers, secret=secret)
    assert len(receiver.received) == 4, "one event per terminal status, none twice"


def test_after_a_rotation_the_old_and_the_new_secret_both_verify_then_only_the_new(
    pool: ServerPool, upstream: FakeUpstream, receiver: Receiver
) -> None:
    server = start_executing_server(pool, upstream, **WEBHOOK_SETTINGS)
    client = make_client(server)
    endpoint = register(server.api_base, receiver.url)
    old = endpoint["secret"]
    with httpx.Client(timeout=30, trust_env=False) as http:
        rotate = f"{server.api_base}/webhook_endpoints/{endpoint['id']}/rotate_secret"
        new = http.post(rotate).json()["secret"]
        first = create_batch(client, [chat_line("a")])
        body, headers = receiver.wait_for_batch(first)
        assert client.webhooks.unwrap(body, headers, secret=old).data.id == first
        assert client.webhooks.unwrap(body, headers, secret=new).data.id == first

        # The grace period over (ended at once here), only the new secret signs.
        newest = http.post(rotate, json={"grace_period_seconds": 0}).json()["secret"]
    second = create_batch(client, [chat_line("b")])
    body, headers = receiver.wait_for_batch(second)
    assert client.webhooks.unwrap(body, headers, secret=newest).data.id == second
    for stale in (old, new):
        with pytest.raises(InvalidWebhookSignatureError):
            client.webhooks.unwrap(body, headers, secret=stale)
