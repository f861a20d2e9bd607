"""Idempotency under a crowd: three server processes on one database, many
simultaneous creates with one key. Outcomes are checked, never timings."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from conftest import OpenBatchServer, ServerPool, bogus_file_id, make_client, unique_key

REPLICAS = 3
CALLERS = 60


@pytest.fixture
def replicas(server_pool: ServerPool) -> list[OpenBatchServer]:
    """Three servers started at the same moment on one fresh database, so they
    also race to create and migrate it."""
    database = server_pool.new_database()
    with ThreadPoolExecutor(REPLICAS) as pool:
        return list(pool.map(lambda _: server_pool.start(database), range(REPLICAS)))


def fire_together(servers: list[OpenBatchServer], bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    """POSTs every body to /v1/batches at once, spread round-robin over the servers."""
    clients = [httpx.Client(base_url=s.base_url, timeout=120, trust_env=False) for s in servers]
    start = threading.Barrier(len(bodies))

    def send(i: int) -> httpx.Response:
        start.wait()
        return clients[i % len(clients)].post(
            "/v1/batches",
            content=json.dumps(bodies[i]),
            headers={"Content-Type": "application/json"},
        )

    try:
        with ThreadPoolExecutor(len(bodies)) as pool:
            return list(pool.map(send, range(len(bodies))))
    finally:
        for c in clients:
            c.close()


def assert_no_server_errors(responses: list[httpx.Response]) -> None:
    bad = [(r.status_code, r.text[:300]) for r in responses if r.status_code >= 500]
    assert not bad, f"server errors under concurrency: {bad[:5]}"


def test_simultaneous_identical_creates_make_one_batch(replicas: list[OpenBatchServer]):
    key = unique_key("crowd")
    body = {
        "input_file_id": bogus_file_id(),
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "metadata": {"crowd": "yes"},
        "idempotency_key": key,
    }
    responses = fire_together(replicas, [body] * CALLERS)
    assert_no_server_errors(responses)
    assert [r.status_code for r in responses] == [200] * CALLERS, [
        (r.status_code, r.text[:200]) for r in responses if r.status_code != 200
    ][:5]

    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1, f"one key produced {len(ids)} batches: {ids}"
    stamps = {r.json()["created_at"] for r in responses}
    assert len(stamps) == 1
    fresh = [r for r in responses if r.headers.get("idempotent-replayed") != "true"]
    assert len(fresh) == 1, f"{len(fresh)} responses claim to have created the batch"

    for server in replicas:
        with make_client(server) as sdk:
            assert [b.id for b in sdk.batches.list(limit=100)] == list(ids)


def test_simultaneous_different_creates_with_one_key_let_exactly_one_win(replicas: list[OpenBatchServer]):
    key = unique_key("contest")
    bodies = [
        {
            "input_file_id": bogus_file_id(),
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "metadata": {"caller": str(i)},
            "idempotency_key": key,
        }
        for i in range(CALLERS)
    ]
    responses = fire_together(replicas, bodies)
    assert_no_server_errors(responses)

    codes = sorted(r.status_code for r in responses)
    assert codes == [200] + [409] * (CALLERS - 1), codes
    for r in responses:
        if r.status_code == 409:
            assert r.headers.get("x-should-retry") == "false"
            assert key in r.json()["error"]["message"]

    winner_index = next(i for i, r in enumerate(responses) if r.status_code == 200)
    winner = responses[winner_index].json()
    assert winner["input_file_id"] == bodies[winner_index]["input_file_id"]
    assert winner["metadata"] == bodies[winner_index]["metadata"]

    with make_client(replicas[0]) as sdk:
        assert [b.id for b in sdk.batches.list(limit=100)] == [winner["id"]]
        # The winner's request replays; every loser's request still conflicts.
        replay = sdk.batches.with_raw_response.create(
            **{k: v for k, v in bodies[winner_index].items() if k != "idempotency_key"},
            extra_body={"idempotency_key": key},
        )
        assert replay.headers.get("idempotent-replayed") == "true"
        assert replay.parse().id == winner["id"]
