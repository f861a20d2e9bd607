"""Two teams share one OpenBatch: each sees only its own files and batches, through the SDK."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from conftest import OpenBatchServer, ServerPool, database_url_for, openbatch_binary, unique_key
from test_schemathesis import SecuredServer, create_key


@pytest.fixture
def secured(server_pool: ServerPool, tmp_path: Path) -> OpenBatchServer:
    server = SecuredServer(openbatch_binary(), database_url_for(server_pool.new_database()), tmp_path / "s.log")
    server_pool.servers.append(server)
    server.start(server_pool.timeout)
    return server


def client(server: OpenBatchServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api_base, api_key=key, max_retries=0, timeout=60)


def test_each_project_sees_only_its_own_objects(secured: OpenBatchServer) -> None:
    alpha = client(secured, create_key(secured.database_url, "alpha"))
    beta = client(secured, create_key(secured.database_url, "beta"))

    f = alpha.files.create(file=("a.jsonl", b'{"x": 1}\n'), purpose="batch")
    key = unique_key("tenancy")
    b = alpha.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h", extra_body={"idempotency_key": key}
    )

    calls = {
        "files.retrieve": lambda c, fid, bid: c.files.retrieve(fid),
        "files.content": lambda c, fid, bid: c.files.content(fid).read(),
        "files.delete": lambda c, fid, bid: c.files.delete(fid),
        "batches.retrieve": lambda c, fid, bid: c.batches.retrieve(bid),
        "batches.cancel": lambda c, fid, bid: c.batches.cancel(bid),
    }
    for name, call in calls.items():
        with pytest.raises(openai.NotFoundError) as theirs:
            call(beta, f.id, b.id)
        with pytest.raises(openai.NotFoundError) as missing:
            call(beta, "file-missing", "batch_missing")
        # Indistinguishable from objects that do not exist.
        assert theirs.value.body["message"].replace(f.id, "ID").replace(b.id, "ID") == (
            missing.value.body["message"].replace("file-missing", "ID").replace("batch_missing", "ID")
        ), name
        assert theirs.value.body["param"] == missing.value.body["param"], name

    assert [x.id for x in beta.files.list()] == []
    assert [x.id for x in beta.batches.list()] == []
    # The same idempotency key is beta's own.
    b2 = beta.batches.create(
        input_file_id="file-beta", endpoint="/v1/chat/completions", completion_window="24h", extra_body={"idempotency_key": key}
    )
    assert b2.id != b.id

    # Alpha's objects are untouched by all of it.
    assert alpha.batches.retrieve(b.id).status == b.status
    assert alpha.files.content(f.id).read() == b'{"x": 1}\n'
    assert [x.id for x in alpha.batches.list()] == [b.id]


def test_bad_keys_are_authentication_errors(secured: OpenBatchServer) -> None:
    good = create_key(secured.database_url, "gamma")
    for bad in ["", "sk-not-ours", good[:-1] + ("0" if good[-1] != "0" else "1")]:
        with pytest.raises(openai.AuthenticationError) as e:
            client(secured, bad or "x").batches.list()
        assert e.value.status_code == 401
        assert e.value.body["code"] == "invalid_api_key"
    raw = httpx.get(f"{secured.api_base}/files", timeout=30)
    assert raw.status_code == 401 and raw.headers["content-type"].startswith("application/json")
    assert client(secured, good).batches.list().data == []
