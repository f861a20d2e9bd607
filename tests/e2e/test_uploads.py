"""OpenAI's Uploads API with the official SDK: `client.uploads.upload_file_chunked` and the
calls under it, the objects field by field, and the refusals as the SDK raises them."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import openai
import pytest

from conftest import assert_sdk_error, jsonl_requests


def test_upload_file_chunked_makes_the_file_byte_for_byte(client: openai.OpenAI, tmp_path: Path):
    data = jsonl_requests(2000)
    path = tmp_path / "big.jsonl"
    path.write_bytes(data)
    upload = client.uploads.upload_file_chunked(
        file=path,
        mime_type="application/jsonl",
        purpose="batch",
        part_size=len(data) // 3 + 1,
        md5=hashlib.md5(data).hexdigest(),
    )
    assert upload.id.startswith("upload_")
    assert upload.object == "upload"
    assert (upload.status, upload.bytes, upload.filename, upload.purpose) == ("completed", len(data), "big.jsonl", "batch")
    assert upload.expires_at == upload.created_at + 3600
    assert abs(upload.created_at - time.time()) < 3600
    file = upload.file
    assert file is not None and file.id.startswith("file-")
    assert (file.object, file.bytes, file.filename, file.purpose) == ("file", len(data), "big.jsonl", "batch")
    assert client.files.content(file.id).read() == data
    assert client.files.retrieve(file.id).bytes == len(data)


def test_the_calls_under_it_and_their_refusals(client: openai.OpenAI):
    created = client.uploads.create(bytes=6, filename="f.txt", mime_type="text/plain", purpose="user_data")
    assert (created.status, created.file) == ("pending", None)
    b = client.uploads.parts.create(upload_id=created.id, data=b"def")
    a = client.uploads.parts.create(upload_id=created.id, data=b"abc")
    assert (b.object, b.upload_id) == ("upload.part", created.id)
    assert b.id.startswith("part_") and a.id != b.id

    with pytest.raises(openai.BadRequestError) as caught:
        client.uploads.complete(upload_id=created.id, part_ids=[a.id, b.id], md5=hashlib.md5(b"defabc").hexdigest())
    assert assert_sdk_error(caught.value, 400)["param"] == "md5"
    with pytest.raises(openai.BadRequestError) as caught:
        client.uploads.complete(upload_id=created.id, part_ids=[a.id, "part_gone"])
    assert "part_gone" in assert_sdk_error(caught.value, 400)["message"]

    done = client.uploads.complete(upload_id=created.id, part_ids=[a.id, b.id], md5=hashlib.md5(b"abcdef").hexdigest())
    assert done.status == "completed" and done.file is not None
    assert client.files.content(done.file.id).read() == b"abcdef"
    with pytest.raises(openai.ConflictError) as caught:
        client.uploads.cancel(created.id)
    assert assert_sdk_error(caught.value, 409)["code"] == "upload_not_pending"

    gone = client.uploads.create(bytes=3, filename="g", mime_type="text/plain", purpose="user_data")
    assert client.uploads.cancel(gone.id).status == "cancelled"
    with pytest.raises(openai.ConflictError):
        client.uploads.parts.create(upload_id=gone.id, data=b"x")
    with pytest.raises(openai.NotFoundError) as caught:
        client.uploads.parts.create(upload_id="upload_nope", data=b"x")
    assert assert_sdk_error(caught.value, 404)["param"] == "upload_id"
    with pytest.raises(openai.BadRequestError) as caught:
        client.uploads.create(bytes=9 * 1024**3, filename="f", mime_type="text/plain", purpose="batch")
    assert assert_sdk_error(caught.value, 400)["param"] == "bytes"
