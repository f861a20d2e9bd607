"""Malformed requests no SDK would send: always a 4xx with the OpenAI error
envelope, JSON content type and a request id, never a 5xx."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from conftest import assert_raw_error, bogus_file_id, unique_key

JSON = {"Content-Type": "application/json"}


def valid_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "input_file_id": bogus_file_id(),
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    body.update(overrides)
    return body


def test_the_valid_body_used_below_is_accepted(http: httpx.Client):
    resp = http.post("/v1/batches", content=json.dumps(valid_body()), headers=JSON)
    assert resp.status_code == 200, resp.text
    assert resp.headers.get("x-request-id")
    assert resp.headers.get("content-type", "").startswith("application/json")


@pytest.mark.parametrize(
    "payload",
    [b'{"endpoint": ', b"{not json}", b'{"endpoint": "/v1/chat/completions",}', b"", b"   "],
    ids=["truncated", "garbage", "trailing-comma", "empty", "blank"],
)
def test_malformed_json(http: httpx.Client, payload: bytes):
    assert_raw_error(http.post("/v1/batches", content=payload, headers=JSON), 400)


@pytest.mark.parametrize("payload", [b"[]", b'"a string"', b"null", b"42"])
def test_json_that_is_not_an_object(http: httpx.Client, payload: bytes):
    assert_raw_error(http.post("/v1/batches", content=payload, headers=JSON), 400)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml", None])
def test_wrong_content_type(http: httpx.Client, content_type: str | None):
    headers = {"Content-Type": content_type} if content_type else {}
    resp = http.post("/v1/batches", content=json.dumps(valid_body()).encode(), headers=headers)
    assert_raw_error(resp, (400, 415))


def test_non_utf8_json_body(http: httpx.Client):
    payload = b'{"input_file_id": "file-\xff\xfe\xfa", "endpoint": "/v1/chat/completions", "completion_window": "24h"}'
    assert_raw_error(http.post("/v1/batches", content=payload, headers=JSON), 400)


@pytest.mark.parametrize(
    "field, value",
    [
        ("endpoint", 5),
        ("input_file_id", 123),
        ("input_file_id", ["file-x"]),
        ("completion_window", 24),
        ("metadata", "not-an-object"),
        ("metadata", ["a", "b"]),
    ],
    ids=repr,
)
def test_wrong_json_types(http: httpx.Client, field: str, value: Any):
    resp = http.post("/v1/batches", content=json.dumps(valid_body(**{field: value})), headers=JSON)
    err = assert_raw_error(resp, 400)
    assert err["code"] == "invalid_type", err
    assert err["param"] == field, err


@pytest.mark.parametrize("key_field", ["idempotency_key", "idem_tok"])
def test_idempotency_key_must_be_a_string(http: httpx.Client, key_field: str):
    resp = http.post("/v1/batches", content=json.dumps(valid_body(**{key_field: 12345})), headers=JSON)
    assert_raw_error(resp, 400)


@pytest.mark.parametrize("field", ["input_file_id", "endpoint", "completion_window"])
def test_missing_required_field(http: httpx.Client, field: str):
    body = valid_body()
    del body[field]
    err = assert_raw_error(http.post("/v1/batches", content=json.dumps(body), headers=JSON), 400)
    assert field in err["message"] or err["param"] == field, err


def test_oversized_json_body(http: httpx.Client):
    body = valid_body(metadata={"blob": "x" * (4 * 1024 * 1024)})
    assert_raw_error(http.post("/v1/batches", content=json.dumps(body), headers=JSON), (400, 413))


def test_a_conflict_over_raw_http_has_the_envelope_and_no_retry_hint(http: httpx.Client):
    key = unique_key("raw-conflict")
    first = http.post("/v1/batches", content=json.dumps(valid_body(idempotency_key=key)), headers=JSON)
    assert first.status_code == 200, first.text
    again = http.post("/v1/batches", content=json.dumps(valid_body(idempotency_key=key)), headers=JSON)
    err = assert_raw_error(again, 409)
    assert key in err["message"]
    assert again.headers.get("x-should-retry") == "false"


def test_cancel_without_any_body(http: httpx.Client):
    created = http.post("/v1/batches", content=json.dumps(valid_body()), headers=JSON).json()
    resp = http.post(f"/v1/batches/{created['id']}/cancel")
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "cancelling"


# ---- /v1/files ----------------------------------------------------------------

BOUNDARY = "e2eboundary7MA4YWxkTrZu0gW"
MULTIPART = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def multipart(*parts: tuple[str, bytes, str | None]) -> bytes:
    """parts: (field name, value, filename or None)."""
    out = b""
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n".encode()
        if filename is not None:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + value + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def test_multipart_with_no_parts(http: httpx.Client):
    assert_raw_error(http.post("/v1/files", content=multipart(), headers=MULTIPART), 400)


def test_multipart_without_a_body_at_all(http: httpx.Client):
    assert_raw_error(http.post("/v1/files", content=b"", headers=MULTIPART), 400)


def test_upload_without_file_part(http: httpx.Client):
    resp = http.post("/v1/files", content=multipart(("purpose", b"batch", None)), headers=MULTIPART)
    assert_raw_error(resp, 400)


def test_upload_without_purpose(http: httpx.Client):
    resp = http.post(
        "/v1/files", content=multipart(("file", b'{"a": 1}\n', "x.jsonl")), headers=MULTIPART
    )
    err = assert_raw_error(resp, 400)
    assert err["param"] == "purpose" or "purpose" in err["message"], err


def test_upload_of_an_empty_file(http: httpx.Client):
    resp = http.post(
        "/v1/files",
        content=multipart(("purpose", b"batch", None), ("file", b"", "empty.jsonl")),
        headers=MULTIPART,
    )
    assert_raw_error(resp, 400)


def test_upload_that_is_not_multipart(http: httpx.Client):
    resp = http.post("/v1/files", content=json.dumps({"purpose": "batch", "file": "abc"}), headers=JSON)
    assert_raw_error(resp, (400, 415))


def test_truncated_multipart(http: httpx.Client):
    body = multipart(("purpose", b"batch", None), ("file", b'{"a": 1}\n', "x.jsonl"))
    resp = http.post("/v1/files", content=body[: len(body) // 2], headers=MULTIPART)
    assert_raw_error(resp, 400)


# ---- routing ------------------------------------------------------------------


def test_unknown_path(http: httpx.Client):
    assert_raw_error(http.get("/v1/nothing-here"), 404)


@pytest.mark.parametrize("path", ["/v1/batches/%FF%FE", "/v1/files/%FF", "/v1/files/%FF/content"])
def test_ids_that_are_not_utf8(http: httpx.Client, path: str):
    assert_raw_error(http.get(path), (400, 404))


def test_wrong_method(http: httpx.Client):
    assert_raw_error(http.put("/v1/batches", content=b"{}", headers=JSON), (404, 405))


def test_health_endpoints(http: httpx.Client):
    for path in ("/healthz", "/readyz"):
        resp = http.get(path)
        assert resp.status_code == 200, (path, resp.text)
        assert resp.headers.get("x-request-id"), (path, dict(resp.headers))
