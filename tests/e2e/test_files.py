"""Files API round trips with the official SDK: upload, read back, list, delete."""

from __future__ import annotations

import time

import openai
import pytest

from conftest import assert_sdk_error, jsonl_requests

VALID_PURPOSES = ["assistants", "batch", "fine-tune", "user_data", "evals"]


def upload(client: openai.OpenAI, data: bytes, purpose: str = "batch", name: str = "input.jsonl", **kw):
    return client.files.create(file=(name, data, "application/jsonl"), purpose=purpose, **kw)


def test_upload_retrieve_download_delete(client: openai.OpenAI):
    data = jsonl_requests(5)
    created = upload(client, data, name="requests.jsonl")

    assert created.id.startswith("file-")
    assert created.object == "file"
    assert created.bytes == len(data)
    assert created.filename == "requests.jsonl"
    assert created.purpose == "batch"
    assert created.status == "processed"
    assert isinstance(created.created_at, int)
    assert abs(created.created_at - time.time()) < 3600

    fetched = client.files.retrieve(created.id)
    assert fetched.model_dump() == created.model_dump()

    assert client.files.wait_for_processing(created.id).status == "processed"
    assert client.files.content(created.id).read() == data

    assert created.id in {f.id for f in client.files.list(limit=10000)}

    deleted = client.files.delete(created.id)
    assert deleted.id == created.id
    assert deleted.deleted is True
    assert deleted.object == "file"

    for call in (client.files.retrieve, client.files.content, client.files.delete):
        with pytest.raises(openai.NotFoundError) as caught:
            call(created.id)
        err = assert_sdk_error(caught.value, 404)
        assert created.id in err["message"], err
    assert created.id not in {f.id for f in client.files.list(limit=10000)}


def test_content_comes_back_byte_for_byte(client: openai.OpenAI):
    # CRLF line ends, multi-byte characters, no final newline: stored as sent.
    data = (
        '{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"x": "\u00fc\u00df\u20ac\U0001f600"}}\r\n'
        '{"custom_id": "b", "method": "POST", "url": "/v1/chat/completions", "body": {"x": "\u65e5\u672c\u8a9e"}}'
    ).encode("utf-8")
    created = upload(client, data)
    assert created.bytes == len(data)
    assert client.files.content(created.id).read() == data


def test_a_large_file_survives_the_round_trip(client: openai.OpenAI):
    line = jsonl_requests(1)
    data = b"".join(line.replace(b"req-0", b"req-%07d" % i) for i in range(30_000))
    assert len(data) > 4 * 1024 * 1024
    created = upload(client, data, name="big.jsonl")
    assert created.bytes == len(data)
    assert client.files.retrieve(created.id).bytes == len(data)
    assert client.files.content(created.id).read() == data


def test_binary_content_for_a_non_batch_purpose(client: openai.OpenAI):
    data = bytes(range(256)) * 64 + b"\x00\xff\x00"
    created = client.files.create(file=("blob.bin", data, "application/octet-stream"), purpose="user_data")
    assert created.purpose == "user_data"
    assert created.bytes == len(data)
    assert client.files.content(created.id).read() == data


@pytest.mark.parametrize("purpose", VALID_PURPOSES)
def test_every_uploadable_purpose_is_accepted(client: openai.OpenAI, purpose: str):
    created = upload(client, jsonl_requests(1), purpose=purpose)
    assert created.purpose == purpose
    assert client.files.retrieve(created.id).purpose == purpose


def test_expires_after_sets_expires_at(client: openai.OpenAI):
    created = upload(client, jsonl_requests(1), expires_after={"anchor": "created_at", "seconds": 3600})
    assert created.expires_at == created.created_at + 3600
    assert client.files.retrieve(created.id).expires_at == created.created_at + 3600


@pytest.mark.parametrize("purpose", ["nonsense", "BATCH", "batch_output", ""])
def test_unknown_purpose_is_rejected(client: openai.OpenAI, purpose: str):
    with pytest.raises(openai.BadRequestError) as caught:
        upload(client, jsonl_requests(1), purpose=purpose)
    err = assert_sdk_error(caught.value, 400)
    assert err["param"] == "purpose", err


def test_batch_file_must_be_utf8(client: openai.OpenAI):
    data = b'{"custom_id": "a", "body": "\xff\xfe\xc3\x28"}\n'
    with pytest.raises(openai.BadRequestError) as caught:
        upload(client, data)
    assert_sdk_error(caught.value, 400)


def test_empty_file_is_rejected(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as caught:
        upload(client, b"")
    assert_sdk_error(caught.value, 400)


def test_unknown_file_is_404_naming_the_id(client: openai.OpenAI):
    missing = "file-doesnotexist0123456789"
    for call in (client.files.retrieve, client.files.content, client.files.delete):
        with pytest.raises(openai.NotFoundError) as caught:
            call(missing)
        err = assert_sdk_error(caught.value, 404)
        assert missing in err["message"], err
        assert err["type"] == "invalid_request_error", err


def test_raw_responses_carry_a_request_id(client: openai.OpenAI):
    raw = client.files.with_raw_response.create(
        file=("r.jsonl", jsonl_requests(1), "application/jsonl"), purpose="batch"
    )
    assert raw.status_code == 200
    assert raw.headers.get("x-request-id")
    file_id = raw.parse().id
    for raw in (
        client.files.with_raw_response.retrieve(file_id),
        client.files.with_raw_response.list(),
        client.files.with_raw_response.content(file_id),
        client.files.with_raw_response.delete(file_id),
    ):
        assert raw.status_code == 200
        assert raw.headers.get("x-request-id"), (raw.url, dict(raw.headers))
