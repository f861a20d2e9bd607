"""The Admin API through the official SDK's `client.admin.organization`, with only `base_url`
changed: the objects it parses, its cursor pager, and its errors."""

from __future__ import annotations

import time
from pathlib import Path

import openai
import pytest

from conftest import OpenBatchServer, ServerPool, database_url_for, openbatch_binary
from test_schemathesis import SecuredServer, create_admin_key


@pytest.fixture
def secured(server_pool: ServerPool, tmp_path: Path) -> OpenBatchServer:
    server = SecuredServer(openbatch_binary(), database_url_for(server_pool.new_database()), tmp_path / "s.log")
    server_pool.servers.append(server)
    server.start(server_pool.timeout)
    return server


def test_an_admin_manages_projects_service_accounts_and_keys_with_the_sdk(secured: OpenBatchServer) -> None:
    admin = openai.OpenAI(
        base_url=secured.api_base, api_key="unused", admin_api_key=create_admin_key(secured.database_url), max_retries=0
    )
    org = admin.admin.organization

    made = [org.projects.create(name=f"team-{i}") for i in range(3)]
    assert all(p.object == "organization.project" and p.status == "active" and p.archived_at is None for p in made)
    # The pager follows `last_id` across pages of one.
    listed = [p.id for p in org.projects.list(limit=1)]
    assert listed == ["proj_default"] + [p.id for p in made]

    renamed = org.projects.update(made[0].id, name="team-renamed")
    assert renamed.name == "team-renamed"
    assert org.projects.retrieve(made[0].id).name == "team-renamed"

    account = org.projects.service_accounts.create(made[0].id, name="ci")
    assert account.object == "organization.project.service_account"
    assert account.api_key is not None and account.api_key.value.startswith("obk_")
    user = openai.OpenAI(base_url=secured.api_base, api_key=account.api_key.value, max_retries=0)
    assert list(user.files.list()) == []

    keys = list(org.projects.api_keys.list(made[0].id))
    assert [k.id for k in keys] == [account.api_key.id]
    assert keys[0].object == "organization.project.api_key"
    assert keys[0].owner.type == "service_account"
    assert keys[0].owner.service_account.id == account.id
    assert org.projects.api_keys.retrieve(account.api_key.id, project_id=made[0].id).id == account.api_key.id

    # Scopes are permission errors; unknown objects are not-found errors.
    project_key_as_admin = openai.OpenAI(
        base_url=secured.api_base, api_key="unused", admin_api_key=account.api_key.value, max_retries=0
    )
    with pytest.raises(openai.PermissionDeniedError) as refused:
        project_key_as_admin.admin.organization.projects.list()
    assert refused.value.body["code"] == "insufficient_permissions"
    with pytest.raises(openai.NotFoundError):
        org.projects.retrieve("proj_missing")
    with pytest.raises(openai.BadRequestError) as taken:
        org.projects.create(name="team-1")
    assert taken.value.body["code"] == "project_name_taken"

    archived = org.projects.archive(made[0].id)
    assert archived.status == "archived" and archived.archived_at is not None
    # Every replica's key copy hears of it by NOTIFY, within milliseconds; this only waits out that.
    deadline = time.monotonic() + 30
    while True:
        try:
            user.files.list()
        except openai.AuthenticationError:
            break
        assert time.monotonic() < deadline, "the archived project's key still works"
        time.sleep(0.02)
    assert made[0].id not in [p.id for p in org.projects.list()]
    assert made[0].id in [p.id for p in org.projects.list(include_archived=True)]

    deleted = org.projects.service_accounts.delete(account.id, project_id=made[0].id)
    assert deleted.deleted and deleted.object == "organization.project.service_account.deleted"


def test_usage_reports_page_through_the_sdk(secured: OpenBatchServer) -> None:
    admin = openai.OpenAI(
        base_url=secured.api_base, api_key="unused", admin_api_key=create_admin_key(secured.database_url), max_retries=0
    )
    usage = admin.admin.organization.usage
    start = 1_700_000_000
    # The SDK sends arrays as `group_by[]=…` and booleans as `true`.
    first = usage.completions(
        start_time=start,
        end_time=start + 3 * 86_400,
        limit=2,
        group_by=["project_id", "model"],
        project_ids=["proj_default"],
        batch=True,
    )
    assert first.object == "page" and len(first.data) == 2
    assert first.data[0].object == "bucket" and first.data[0].start_time == start
    assert first.data[0].results == []
    assert first.has_more and first.next_page
    rest = usage.completions(
        start_time=start, end_time=start + 3 * 86_400, limit=2, group_by=["project_id", "model"], page=first.next_page
    )
    assert len(rest.data) == 2 and not rest.has_more and rest.next_page is None
    assert rest.data[-1].end_time == start + 3 * 86_400

    hours = usage.embeddings(start_time=start, end_time=start + 7200, bucket_width="1h")
    assert [b.end_time - b.start_time for b in hours.data][-1] > 0
    with pytest.raises(openai.BadRequestError) as bad:
        usage.embeddings(start_time=start, group_by=["batch"])  # type: ignore[list-item]
    assert bad.value.body["param"] == "group_by"
