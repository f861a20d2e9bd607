"""Idempotent batch creation through the three ways a client can send a key."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from conftest import (
    OpenBatchServer,
    assert_sdk_error,
    bogus_file_id,
    make_client,
    unique_key,
)

# How a key travels: (name, function turning a key into create() kwargs).
TRANSPORTS = {
    "body idempotency_key": lambda key: {"extra_body": {"idempotency_key": key}},
    "body idem_tok": lambda key: {"extra_body": {"idem_tok": key}},
    "header Idempotency-Key": lambda key: {"extra_headers": {"Idempotency-Key": key}},
}


def batch_params(**overrides: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "input_file_id": bogus_file_id(),
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "metadata": {"suite": "e2e", "topic": "idempotency"},
    }
    params.update(overrides)
    return params


def create_raw(client: openai.OpenAI, params: dict[str, Any], **key_kwargs: Any):
    raw = client.batches.with_raw_response.create(**params, **key_kwargs)
    assert raw.status_code == 200, raw.text
    assert raw.headers.get("x-request-id"), dict(raw.headers)
    return raw, raw.parse()


def all_batches(client: openai.OpenAI) -> list:
    return list(client.batches.list(limit=100))


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_same_key_and_same_request_replays_the_batch(client: openai.OpenAI, transport: str):
    key = unique_key("replay")
    params = batch_params()
    key_kwargs = TRANSPORTS[transport](key)

    first_raw, first = create_raw(client, params, **key_kwargs)
    assert first_raw.headers.get("idempotent-replayed") != "true", (
        "a first creation must not claim to be a replay"
    )
    assert first.status == "validating"

    reordered = dict(params, metadata=dict(reversed(list(params["metadata"].items()))))
    second_raw, second = create_raw(client, reordered, **key_kwargs)
    assert second_raw.headers.get("idempotent-replayed") == "true", dict(second_raw.headers)
    assert second.id == first.id
    assert second.created_at == first.created_at
    assert second.input_file_id == params["input_file_id"]
    assert second.metadata == params["metadata"]

    # A third identical call is a replay as well: the key is not "used up".
    third_raw, third = create_raw(client, params, **key_kwargs)
    assert third_raw.headers.get("idempotent-replayed") == "true"
    assert third.id == first.id


@pytest.mark.parametrize(
    "first_transport, second_transport",
    [
        ("body idempotency_key", "header Idempotency-Key"),
        ("header Idempotency-Key", "body idem_tok"),
        ("body idem_tok", "body idempotency_key"),
    ],
)
def test_a_key_is_the_same_key_whichever_way_it_arrives(
    client: openai.OpenAI, first_transport: str, second_transport: str
):
    key = unique_key("cross")
    params = batch_params()
    _, first = create_raw(client, params, **TRANSPORTS[first_transport](key))
    raw, second = create_raw(client, params, **TRANSPORTS[second_transport](key))
    assert raw.headers.get("idempotent-replayed") == "true"
    assert second.id == first.id
    assert second.created_at == first.created_at


def test_replay_returns_the_batch_as_it_is_now(client: openai.OpenAI):
    key = unique_key("current")
    params = batch_params()
    created = client.batches.create(**params, extra_body={"idempotency_key": key})
    cancelled = client.batches.cancel(created.id)
    assert cancelled.status == "cancelling"

    raw, replayed = create_raw(client, params, extra_body={"idempotency_key": key})
    assert raw.headers.get("idempotent-replayed") == "true"
    assert replayed.id == created.id
    assert replayed.status == "cancelling"
    assert replayed.cancelling_at == cancelled.cancelling_at


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_same_key_with_other_parameters_is_rejected_with_409(client: openai.OpenAI, transport: str):
    key = unique_key("conflict")
    params = batch_params(metadata={"attempt": "first"})
    key_kwargs = TRANSPORTS[transport](key)
    original = client.batches.create(**params, **key_kwargs)

    other = batch_params(metadata={"attempt": "second"})
    with pytest.raises(openai.ConflictError) as caught:
        client.batches.create(**other, **key_kwargs)

    exc = caught.value
    err = assert_sdk_error(exc, 409)
    assert "conflict" in str(exc).lower()
    assert "conflict" in err["message"].lower()
    assert key in err["message"], f"the 409 message should name the key {key!r}: {err['message']!r}"
    assert err["type"] == "invalid_request_error"
    assert exc.response.headers.get("x-should-retry") == "false", dict(exc.response.headers)

    stored = client.batches.retrieve(original.id)
    assert stored.id == original.id
    assert stored.created_at == original.created_at
    assert stored.input_file_id == params["input_file_id"]
    assert stored.metadata == {"attempt": "first"}
    assert stored.status == "validating"
    assert not [b for b in all_batches(client) if b.input_file_id == other["input_file_id"]], (
        "the rejected request must not have created a batch"
    )

    # The key is not spoiled by the conflict: the original request still replays.
    raw, replayed = create_raw(client, params, **key_kwargs)
    assert raw.headers.get("idempotent-replayed") == "true"
    assert replayed.id == original.id


# Each variant changes exactly one parameter of the first request.
CHANGES = {
    "input_file_id": lambda p: dict(p, input_file_id=bogus_file_id()),
    "endpoint": lambda p: dict(p, endpoint="/v1/embeddings"),
    "metadata value": lambda p: dict(p, metadata={**p["metadata"], "topic": "something else"}),
    "extra metadata pair": lambda p: dict(p, metadata={**p["metadata"], "extra": "x"}),
    "metadata pair removed": lambda p: dict(p, metadata={"suite": "e2e"}),
    "output_expires_after": lambda p: dict(
        p, output_expires_after={"anchor": "created_at", "seconds": 7200}
    ),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_any_changed_parameter_conflicts(client: openai.OpenAI, change: str):
    key = unique_key("changed")
    params = batch_params()
    original = client.batches.create(**params, extra_body={"idempotency_key": key})

    changed = CHANGES[change](params)
    with pytest.raises(openai.ConflictError) as caught:
        client.batches.create(**changed, extra_body={"idempotency_key": key})
    assert_sdk_error(caught.value, 409)
    assert key in caught.value.body["message"]

    mine = [b for b in all_batches(client) if b.input_file_id in (params["input_file_id"], changed["input_file_id"])]
    assert [b.id for b in mine] == [original.id]


def test_sdk_does_not_retry_a_conflict(server: OpenBatchServer):
    """With the SDK's default retries on, a 409 must still be one request:
    the server's `x-should-retry: false` overrides the SDK's habit of
    retrying 409s."""
    requests: list[httpx.Request] = []
    http_client = httpx.Client(event_hooks={"request": [requests.append]})
    with make_client(server, max_retries=2, http_client=http_client) as sdk:
        key = unique_key("no-retry")
        sdk.batches.create(**batch_params(), extra_body={"idempotency_key": key})
        requests.clear()
        with pytest.raises(openai.ConflictError):
            sdk.batches.create(**batch_params(), extra_body={"idempotency_key": key})
        assert len(requests) == 1, f"the SDK sent {len(requests)} requests for one conflicting create"


@pytest.mark.parametrize(
    "first, second",
    [
        ("body idempotency_key", "header Idempotency-Key"),
        ("body idem_tok", "header Idempotency-Key"),
        ("body idempotency_key", "body idem_tok"),
    ],
)
def test_two_different_keys_in_one_request_are_rejected(client: openai.OpenAI, first: str, second: str):
    key_a, key_b = unique_key("a"), unique_key("b")
    kwargs_a, kwargs_b = TRANSPORTS[first](key_a), TRANSPORTS[second](key_b)
    merged: dict[str, Any] = {}
    for kw in (kwargs_a, kwargs_b):
        for name, value in kw.items():
            merged.setdefault(name, {}).update(value)
    params = batch_params()

    with pytest.raises(openai.BadRequestError) as caught:
        client.batches.create(**params, **merged)
    assert_sdk_error(caught.value, 400)

    # Nothing was stored under either key: both now create fresh batches.
    raw_a, batch_a = create_raw(client, params, extra_body={"idempotency_key": key_a})
    raw_b, batch_b = create_raw(client, params, extra_body={"idempotency_key": key_b})
    assert raw_a.headers.get("idempotent-replayed") != "true"
    assert raw_b.headers.get("idempotent-replayed") != "true"
    assert batch_a.id != batch_b.id


def test_the_same_key_in_body_and_header_is_fine(client: openai.OpenAI):
    key = unique_key("both")
    params = batch_params()
    _, first = create_raw(
        client,
        params,
        extra_body={"idempotency_key": key, "idem_tok": key},
        extra_headers={"Idempotency-Key": key},
    )
    raw, second = create_raw(client, params, extra_headers={"Idempotency-Key": key})
    assert raw.headers.get("idempotent-replayed") == "true"
    assert second.id == first.id


def test_different_keys_create_different_batches(client: openai.OpenAI):
    params = batch_params()
    one = client.batches.create(**params, extra_body={"idempotency_key": unique_key("one")})
    two = client.batches.create(**params, extra_body={"idempotency_key": unique_key("two")})
    assert one.id != two.id


def test_without_a_key_identical_creates_make_separate_batches(client: openai.OpenAI):
    params = batch_params()
    raw_one, one = create_raw(client, params)
    raw_two, two = create_raw(client, params)
    assert one.id != two.id
    assert raw_one.headers.get("idempotent-replayed") != "true"
    assert raw_two.headers.get("idempotent-replayed") != "true"
    assert raw_one.headers["x-request-id"] != raw_two.headers["x-request-id"]
    ids = {b.id for b in all_batches(client) if b.input_file_id == params["input_file_id"]}
    assert ids == {one.id, two.id}
