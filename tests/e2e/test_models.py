"""A batch naming a model nobody serves fails at validation, as with OpenAI:
`status == "failed"`, `errors.data == [BatchError(code="model_not_found",
param="body.model", line=N, ...)]`, and no line is sent anywhere.

The model is checked against the `GET /v1/models` list of the upstream it is
routed to; `fake-upstream` lists `--models` (default `fake-model`) or, with
`--no-models-endpoint`, answers 404 like a server that lists nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import openai
from openai.types import BatchError

from conftest import ServerPool, make_client
from test_execution import (  # noqa: F401 - start_upstream is a fixture used by name
    ENDPOINT_BODIES,
    FakeUpstream,
    read_lines,
    request_line,
    start_executing_server,
    start_upstream,
    submit,
    tag,
    to_jsonl,
    wait_for_status,
)


def lines_for(model: str, prefix: str, n: int = 3) -> list[dict[str, Any]]:
    body = {"model": model, **ENDPOINT_BODIES["/v1/chat/completions"](0)}
    return [request_line(f"{prefix}-{i}", body=body) for i in range(n)]


def not_supported(model: str, line: int) -> BatchError:
    return BatchError(
        code="model_not_found",
        message=f"The provided model '{model}' is not supported by the Batch API.",
        param="body.model",
        line=line,
    )


def run(client: openai.OpenAI, model: str, expect: str) -> tuple[str, Any]:
    """Submits three lines naming `model`; returns their custom_id prefix and the batch in
    its final status `expect`."""
    p = tag(model)
    created = submit(client, lines_for(model, p))
    return p, wait_for_status(client, created.id, expect)


def write_config(path: Path, routes: dict[str, tuple[str, list[str]]]) -> Path:
    """A config file (`OPENBATCH_CONFIG`) with these `[routes.<name>]`."""
    text = ""
    for name, (base_url, models) in routes.items():
        listed = ", ".join(f'"{m}"' for m in models)
        text += f'[routes.{name}]\nbase_url = "{base_url}"\nmodels = [{listed}]\n\n'
    path.write_text(text)
    return path


def test_a_batch_naming_a_model_the_upstream_does_not_serve_fails_at_validation(
    server_pool: ServerPool, start_upstream: Callable[..., FakeUpstream]
):
    upstream = start_upstream()
    server = start_executing_server(server_pool, upstream)
    with make_client(server) as client:
        # A blank first line: the error names the first line that uses the model.
        p = tag("typo")
        content = b"\n" + to_jsonl(lines_for("fake-modle", p))
        uploaded = client.files.create(file=("requests.jsonl", content), purpose="batch")
        created = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert created.status == "validating"

        batch = wait_for_status(client, created.id, "failed")

        assert batch.errors is not None and batch.errors.object == "list"
        assert batch.errors.data == [not_supported("fake-modle", 2)]
        assert isinstance(batch.failed_at, int)
        assert batch.in_progress_at is None and batch.output_file_id is None and batch.error_file_id is None
        assert upstream.stats()["total"] == 0, "no line was sent"

        # The model the upstream lists runs as usual.
        p, ok = run(client, "fake-model", "completed")
        assert ok.model == "fake-model"
        assert ok.request_counts is not None and ok.request_counts.completed == 3
        assert upstream.stats()["total"] == 3


def test_models_routed_to_a_second_upstream_are_checked_against_that_upstream(
    server_pool: ServerPool, start_upstream: Callable[..., FakeUpstream], tmp_path: Path
):
    default = start_upstream(0, "--models", "fake-model,second-b")
    second = start_upstream(0, "--models", "second-a")
    config = write_config(
        tmp_path / "openbatch.toml", {"second": (second.api_base, ["second-*", "pinned-model"])}
    )
    server = start_executing_server(server_pool, default, config_file=config)

    with make_client(server) as client:
        # Listed by the upstream it is routed to: runs there.
        p_a, a = run(client, "second-a", "completed")
        assert second.runs().keys() >= {f"{p_a}-{i}" for i in range(3)}

        # Listed by the default upstream only, but routed to `second` by `second-*`.
        _, b = run(client, "second-b", "failed")
        assert b.errors is not None and b.errors.data == [not_supported("second-b", 1)]

        # Named exactly in the route's configuration: served, whatever the upstream lists.
        p_pinned, pinned = run(client, "pinned-model", "completed")
        assert second.runs().keys() >= {f"{p_pinned}-{i}" for i in range(3)}

        # Everything else is checked against, and runs on, the default upstream.
        p_default, _ = run(client, "fake-model", "completed")
        _, unknown = run(client, "gpt-unknown", "failed")
        assert unknown.errors is not None and unknown.errors.data == [not_supported("gpt-unknown", 1)]

    assert set(default.runs()) == {f"{p_default}-{i}" for i in range(3)}
    assert second.stats()["total"] == 6
    # One list per upstream, however many batches were checked.
    assert default.stats()["model_lists"] == 1
    assert second.stats()["model_lists"] == 1


def test_an_upstream_that_does_not_list_its_models_is_not_second_guessed(
    server_pool: ServerPool, start_upstream: Callable[..., FakeUpstream]
):
    upstream = start_upstream(0, "--no-models-endpoint")
    server = start_executing_server(server_pool, upstream)
    with make_client(server) as client:
        p, batch = run(client, "some-model-it-may-serve", "completed")
    assert batch.request_counts is not None and batch.request_counts.completed == 3
    assert upstream.stats()["total"] == 3


def test_with_the_check_off_every_line_runs_and_the_upstream_answers_for_itself(
    server_pool: ServerPool, start_upstream: Callable[..., FakeUpstream]
):
    upstream = start_upstream()
    server = start_executing_server(server_pool, upstream, BATCHES__CHECK_MODELS="false")
    with make_client(server) as client:
        # fake-upstream answers 404 model_not_found for `missing-model` itself.
        p, batch = run(client, "missing-model", "completed")
        assert batch.request_counts is not None
        assert (batch.request_counts.completed, batch.request_counts.failed) == (0, 3)
        errors = read_lines(client, batch.error_file_id)
    assert [line["response"]["status_code"] for line in errors] == [404, 404, 404]
    assert upstream.stats()["model_lists"] == 0, "the upstream was not asked for its models"
