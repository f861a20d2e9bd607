"""Creating, reading and cancelling batches through the official SDK."""

from __future__ import annotations

import time

import openai
import pytest

from conftest import assert_sdk_error, bogus_file_id, jsonl_requests

BATCH_FIELDS = {
    "id", "object", "endpoint", "model", "errors", "input_file_id", "completion_window",
    "status", "output_file_id", "error_file_id", "created_at", "in_progress_at", "expires_at",
    "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at", "cancelled_at",
    "request_counts", "usage", "metadata",
}  # fmt: skip

NOT_YET_HAPPENED = (
    "in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
    "cancelling_at", "cancelled_at", "output_file_id", "error_file_id",
)  # fmt: skip

SUPPORTED_ENDPOINTS = [
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
]


def test_a_new_batch_carries_every_field_of_the_openai_batch_object(client: openai.OpenAI):
    missing_file = bogus_file_id()
    raw = client.batches.with_raw_response.create(
        input_file_id=missing_file,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"team": "e2e", "run": "fields"},
    )
    assert raw.status_code == 200
    assert raw.headers.get("content-type", "").startswith("application/json")
    assert raw.headers.get("x-request-id")

    body = raw.http_response.json()
    missing = BATCH_FIELDS - set(body)
    assert not missing, f"batch object lacks {sorted(missing)}: {body}"

    assert body["id"].startswith("batch_")
    assert body["object"] == "batch"
    assert body["status"] == "validating"
    assert body["endpoint"] == "/v1/chat/completions"
    assert body["input_file_id"] == missing_file
    assert body["completion_window"] == "24h"
    assert body["metadata"] == {"team": "e2e", "run": "fields"}
    assert isinstance(body["created_at"], int)
    assert abs(body["created_at"] - time.time()) < 3600, "created_at is not a current Unix time in seconds"
    assert body["expires_at"] == body["created_at"] + 86400
    for field in NOT_YET_HAPPENED:
        assert body[field] is None, f"{field} should be null on a new batch: {body}"
    counts = body["request_counts"]
    assert isinstance(counts, dict), f"request_counts should be an object: {body}"
    for name in ("total", "completed", "failed"):
        assert isinstance(counts.get(name), int), f"request_counts.{name}: {counts}"

    # The SDK's own model accepts it too.
    batch = raw.parse()
    assert isinstance(batch, openai.types.Batch)
    assert batch.id == body["id"]


def test_a_batch_on_an_uploaded_file_refers_to_it(client: openai.OpenAI):
    uploaded = client.files.create(
        file=("requests.jsonl", jsonl_requests(3), "application/jsonl"), purpose="batch"
    )
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.input_file_id == uploaded.id
    assert batch.status in ("validating", "in_progress", "failed", "completed", "finalizing")


def test_a_missing_input_file_does_not_stop_creation(client: openai.OpenAI):
    missing_file = bogus_file_id()
    batch = client.batches.create(
        input_file_id=missing_file, endpoint="/v1/embeddings", completion_window="24h"
    )
    assert batch.status == "validating"
    assert client.batches.retrieve(batch.id).input_file_id == missing_file


@pytest.mark.parametrize("endpoint", SUPPORTED_ENDPOINTS)
def test_every_supported_endpoint_is_accepted(client: openai.OpenAI, endpoint: str):
    batch = client.batches.create(
        input_file_id=bogus_file_id(), endpoint=endpoint, completion_window="24h"
    )
    assert batch.endpoint == endpoint
    assert batch.status == "validating"


def test_metadata_at_its_limits_is_accepted(client: openai.OpenAI):
    metadata = {f"k{i:02d}": f"v{i}" for i in range(14)}
    metadata["k" * 64] = "longest key"
    metadata["long value"] = "v" * 512
    assert len(metadata) == 16
    batch = client.batches.create(
        input_file_id=bogus_file_id(),
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata=metadata,
    )
    assert batch.metadata == metadata
    assert client.batches.retrieve(batch.id).metadata == metadata


def test_metadata_may_be_left_out_or_null(client: openai.OpenAI):
    without = client.batches.create(
        input_file_id=bogus_file_id(), endpoint="/v1/chat/completions", completion_window="24h"
    )
    # The SDK sends `"metadata": null` for an explicit None.
    explicit_null = client.batches.create(
        input_file_id=bogus_file_id(),
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata=None,
    )
    for batch in (without, explicit_null):
        assert not batch.metadata


def test_output_expires_after_is_accepted(client: openai.OpenAI):
    batch = client.batches.create(
        input_file_id=bogus_file_id(),
        endpoint="/v1/chat/completions",
        completion_window="24h",
        output_expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert batch.status == "validating"


def test_retrieve_returns_what_create_returned(client: openai.OpenAI):
    created = client.batches.create(
        input_file_id=bogus_file_id(),
        endpoint="/v1/completions",
        completion_window="24h",
        metadata={"x": "y"},
    )
    raw = client.batches.with_raw_response.retrieve(created.id)
    assert raw.headers.get("x-request-id")
    fetched = raw.parse()
    assert fetched.model_dump() == created.model_dump()


def test_cancelling_a_validating_batch(client: openai.OpenAI):
    batch = client.batches.create(
        input_file_id=bogus_file_id(), endpoint="/v1/chat/completions", completion_window="24h"
    )

    cancelled = client.batches.cancel(batch.id)
    assert cancelled.id == batch.id
    assert cancelled.status == "cancelling"
    assert isinstance(cancelled.cancelling_at, int)
    assert cancelled.cancelling_at >= batch.created_at
    assert cancelled.created_at == batch.created_at

    stored = client.batches.retrieve(batch.id)
    assert stored.status == "cancelling"
    assert stored.cancelling_at == cancelled.cancelling_at

    # Asking again is harmless and changes nothing.
    again = client.batches.cancel(batch.id)
    assert again.status == "cancelling"
    assert again.cancelling_at == cancelled.cancelling_at


def test_unknown_batch_is_404_batch_not_found_naming_the_id(client: openai.OpenAI):
    missing = "batch_doesnotexist0123456789abcdef"
    for call in (client.batches.retrieve, client.batches.cancel):
        with pytest.raises(openai.NotFoundError) as caught:
            call(missing)
        err = assert_sdk_error(caught.value, 404)
        assert err["code"] == "batch_not_found", err
        assert err["type"] == "invalid_request_error"
        assert missing in err["message"], err
        assert "no batch found" in err["message"].lower(), err
