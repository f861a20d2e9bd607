"""List endpoints and the SDK's auto-pagination. Each test gets an empty
database of its own so it can count every object it sees."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from conftest import bogus_file_id, jsonl_requests


def create_batches(client: openai.OpenAI, count: int) -> list[str]:
    """Creates `count` batches one after another; returns their ids in creation order."""
    return [
        client.batches.create(
            input_file_id=bogus_file_id(),
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"n": str(i)},
        ).id
        for i in range(count)
    ]


def list_json(client: openai.OpenAI, resource: str, **params: Any) -> dict:
    raw = getattr(client, resource).with_raw_response.list(**params)
    assert raw.status_code == 200
    body = raw.http_response.json()
    assert body.get("object") == "list", body
    assert "has_more" in body and isinstance(body["has_more"], bool), f"has_more must always be sent: {body}"
    assert isinstance(body.get("data"), list), body
    if body["data"]:
        assert body.get("first_id") == body["data"][0]["id"], body
        assert body.get("last_id") == body["data"][-1]["id"], body
    return body


def test_an_empty_batch_list(fresh_client: openai.OpenAI):
    body = list_json(fresh_client, "batches")
    assert body["data"] == []
    assert body["has_more"] is False
    assert list(fresh_client.batches.list()) == []


def test_batch_pages_by_hand(fresh_client: openai.OpenAI):
    created = create_batches(fresh_client, 5)
    all_ids = [b["id"] for b in list_json(fresh_client, "batches", limit=100)["data"]]
    assert sorted(all_ids) == sorted(created)

    seen: list[str] = []
    after: str | None = None
    pages = []
    while True:
        params: dict[str, Any] = {"limit": 2}
        if after:
            params["after"] = after
        page = list_json(fresh_client, "batches", **params)
        pages.append(page)
        seen += [b["id"] for b in page["data"]]
        if not page["has_more"]:
            break
        assert len(pages) < 10, "pagination does not end"
        after = page["last_id"]

    assert [len(p["data"]) for p in pages] == [2, 2, 1]
    assert [p["has_more"] for p in pages] == [True, True, False]
    assert seen == all_ids
    assert len(set(seen)) == 5

    # A page that ends exactly on the last batch says there is no more.
    assert list_json(fresh_client, "batches", limit=5)["has_more"] is False
    assert list_json(fresh_client, "batches", limit=4)["has_more"] is True
    assert list_json(fresh_client, "batches", limit=2, after=all_ids[2])["has_more"] is False
    assert [b["id"] for b in list_json(fresh_client, "batches", limit=2, after=all_ids[2])["data"]] == all_ids[3:]
    # After the oldest batch there is nothing.
    tail = list_json(fresh_client, "batches", after=all_ids[-1])
    assert tail["data"] == [] and tail["has_more"] is False


def test_auto_pagination_walks_every_batch_once_newest_first(fresh_client: openai.OpenAI):
    created = create_batches(fresh_client, 23)

    walked = list(fresh_client.batches.list(limit=2))
    ids = [b.id for b in walked]
    assert len(ids) == len(set(ids)), f"auto-pagination returned duplicates: {ids}"
    assert set(ids) == set(created)
    stamps = [b.created_at for b in walked]
    assert stamps == sorted(stamps, reverse=True), f"not newest first: {stamps}"

    # The default page size is 20.
    first = list_json(fresh_client, "batches")
    assert len(first["data"]) == 20
    assert first["has_more"] is True
    rest = list_json(fresh_client, "batches", after=first["last_id"])
    assert len(rest["data"]) == 3
    assert rest["has_more"] is False
    assert [b["id"] for b in first["data"] + rest["data"]] == ids

    for limit in (1, 7, 100):
        assert [b.id for b in fresh_client.batches.list(limit=limit)] == ids


def test_batches_created_in_sequence_list_in_reverse_creation_order(fresh_client: openai.OpenAI):
    """Several batches share a created_at second here; "newest first" must
    still hold among them."""
    created = create_batches(fresh_client, 8)
    assert [b.id for b in fresh_client.batches.list(limit=3)] == created[::-1]


def test_file_listing(fresh_client: openai.OpenAI):
    client = fresh_client
    assert list(client.files.list()) == []
    empty = list_json(client, "files")
    assert empty["data"] == [] and empty["has_more"] is False

    purposes = ["batch", "user_data", "batch", "batch", "user_data", "batch"]
    created = [
        client.files.create(file=(f"f{i}.jsonl", jsonl_requests(1), "application/jsonl"), purpose=p).id
        for i, p in enumerate(purposes)
    ]
    batch_files = [fid for fid, p in zip(created, purposes) if p == "batch"]

    desc = [f.id for f in client.files.list()]
    assert desc == created[::-1], "default order is newest first"
    asc = [f.id for f in client.files.list(order="asc")]
    assert asc == created
    assert [f.id for f in client.files.list(order="desc")] == desc

    only_batch = list(client.files.list(purpose="batch"))
    assert {f.purpose for f in only_batch} == {"batch"}
    assert [f.id for f in only_batch] == batch_files[::-1]

    # Pages by hand, newest first.
    page = list_json(client, "files", limit=4)
    assert [f["id"] for f in page["data"]] == desc[:4]
    assert page["has_more"] is True
    page = list_json(client, "files", limit=4, after=page["last_id"])
    assert [f["id"] for f in page["data"]] == desc[4:]
    assert page["has_more"] is False

    # Pages by hand, oldest first, filtered.
    page = list_json(client, "files", limit=2, order="asc", purpose="batch")
    assert [f["id"] for f in page["data"]] == batch_files[:2]
    assert page["has_more"] is True
    page = list_json(client, "files", limit=2, order="asc", purpose="batch", after=page["last_id"])
    assert [f["id"] for f in page["data"]] == batch_files[2:]
    assert page["has_more"] is False

    # The SDK's auto-pagination keeps order and filter across pages.
    assert [f.id for f in client.files.list(limit=1)] == desc
    assert [f.id for f in client.files.list(limit=2, order="asc")] == created
    assert [f.id for f in client.files.list(limit=1, purpose="batch", order="asc")] == batch_files

    # A deleted file drops out of every listing.
    client.files.delete(created[0])
    assert [f.id for f in client.files.list(limit=2)] == desc[:-1]


@pytest.mark.parametrize("limit", [1, 100])
def test_batch_list_limit_bounds_are_allowed(client: openai.OpenAI, limit: int):
    body = list_json(client, "batches", limit=limit)
    assert len(body["data"]) <= limit
