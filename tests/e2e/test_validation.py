"""Requests the server must refuse, as the SDK reports them (BadRequestError)."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from conftest import assert_sdk_error, bogus_file_id


def create(client: openai.OpenAI, **overrides: Any):
    params: dict[str, Any] = {
        "input_file_id": bogus_file_id(),
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    params.update(overrides)
    return client.batches.create(**params)


def rejected(client: openai.OpenAI, **overrides: Any) -> dict:
    with pytest.raises(openai.BadRequestError) as caught:
        create(client, **overrides)
    err = assert_sdk_error(caught.value, 400)
    assert err["type"] == "invalid_request_error", err
    return err


@pytest.mark.parametrize(
    "endpoint",
    ["/v1/unknown", "/v1/images/generations", "/v1/chat/completions/", "v1/chat/completions", "/V1/CHAT/COMPLETIONS"],
)
def test_unsupported_endpoint(client: openai.OpenAI, endpoint: str):
    err = rejected(client, endpoint=endpoint)
    assert err["param"] == "endpoint", err
    assert err["code"] == "invalid_value", err
    assert endpoint in err["message"], err


@pytest.mark.parametrize("window", ["48h", "2h", "24", "24H", "7D"])
def test_completion_window_outside_the_configured_set(client: openai.OpenAI, window: str):
    err = rejected(client, completion_window=window)
    assert err["param"] == "completion_window", err


def test_more_than_16_metadata_pairs(client: openai.OpenAI):
    err = rejected(client, metadata={f"key{i}": "v" for i in range(17)})
    assert (err["param"] or "").startswith("metadata"), err


def test_metadata_key_longer_than_64(client: openai.OpenAI):
    err = rejected(client, metadata={"k" * 65: "v"})
    assert (err["param"] or "").startswith("metadata"), err


def test_metadata_value_longer_than_512(client: openai.OpenAI):
    err = rejected(client, metadata={"note": "v" * 513})
    assert (err["param"] or "").startswith("metadata"), err


@pytest.mark.parametrize("value", [5, 1.5, True, {"nested": "x"}, ["x"]], ids=repr)
def test_metadata_values_must_be_strings(client: openai.OpenAI, value: Any):
    err = rejected(client, metadata={"fine": "ok", "count": value})
    assert err["code"] == "invalid_type", err
    assert err["param"] == "metadata.count", err


def test_nothing_is_stored_for_a_rejected_create(client: openai.OpenAI):
    missing_file = bogus_file_id()
    rejected(client, input_file_id=missing_file, endpoint="/v1/unknown")
    rejected(client, input_file_id=missing_file, metadata={"n": 1})
    assert not [b for b in client.batches.list(limit=100) if b.input_file_id == missing_file]


@pytest.mark.parametrize("limit", [0, 101, -1])
def test_batch_list_limit_out_of_range(client: openai.OpenAI, limit: int):
    with pytest.raises(openai.BadRequestError) as caught:
        client.batches.list(limit=limit)
    err = assert_sdk_error(caught.value, 400)
    assert err["param"] == "limit", err


@pytest.mark.parametrize("limit", [0, 10001])
def test_file_list_limit_out_of_range(client: openai.OpenAI, limit: int):
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.list(limit=limit)
    err = assert_sdk_error(caught.value, 400)
    assert err["param"] == "limit", err


def test_file_list_order_must_be_asc_or_desc(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.list(order="sideways")  # type: ignore[arg-type]
    err = assert_sdk_error(caught.value, 400)
    assert err["param"] == "order", err
