"""Batch execution as an OpenAI SDK user sees it: upload a file, create a
batch, wait for it to finish, download the results.

The servers here run their batch workers (the shared fixtures turn them off)
against `fake-upstream`, a stand-in model server whose faults are scripted per
request (`"fake": {"fail": [...]}` in the body) and which counts how often it
ran each request (keyed by the body's `user`, which we set to the custom_id).

Outcomes are checked, never timings: every wait polls with a generous deadline
that only guards against a hang.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import openai
import pytest
from openai.types import Batch, BatchError, FileObject

from conftest import (
    REPO_ROOT,
    OpenBatchServer,
    ServerPool,
    bogus_file_id,
    database_url_for,
    make_client,
    openbatch_binary,
    unique_key,
)

# Hang guard for every wait; a healthy run needs a small fraction of it.
DEADLINE_SECS = 120.0
POLL_SECS = 0.1
FINAL_STATUSES = {"completed", "failed", "expired", "cancelled"}
MODEL = "fake-model"
MAX_ATTEMPTS = 5
EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."


# --------------------------------------------------------------------------
# plumbing: the fake upstream, and servers that execute batches against it
# --------------------------------------------------------------------------


def fake_upstream_binary() -> Path:
    path = REPO_ROOT / "target" / "debug" / "fake-upstream"
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"fake-upstream binary not found at {path}: run `cargo build --bins`",
            pytrace=False,
        )
    return path


class FakeUpstream:
    """One `fake-upstream` process on a port of its own choosing; `args` are extra flags such
    as `--models a,b` (what its `GET /v1/models` lists) or `--no-models-endpoint`."""

    def __init__(self, log_path: Path, latency_ms: int = 0, args: tuple[str, ...] = ()) -> None:
        self.log_path = log_path
        self.latency_ms = latency_ms
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.base_url = ""

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/v1"

    def start(self, timeout: float = 60.0) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(fake_upstream_binary()), "--port", "0", "--latency-ms", str(self.latency_ms), *self.args],
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        assert self.proc.stdout is not None
        # Its first (and only) stdout line names the port it bound.
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        first = self.proc.stdout.readline().decode(errors="replace").strip() if ready else ""
        prefix = "listening on "
        if not first.startswith(prefix):
            self.stop()
            raise RuntimeError(f"fake-upstream did not start (first stdout line: {first!r})")
        self.base_url = first[len(prefix):]

    def stats(self) -> dict[str, Any]:
        with httpx.Client(timeout=30, trust_env=False) as http:
            resp = http.get(f"{self.base_url}/stats")
            resp.raise_for_status()
            return resp.json()

    def runs(self) -> dict[str, int]:
        """Executions so far per `user` value."""
        return self.stats()["by_key"]

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        if proc.stdout is not None:
            proc.stdout.close()


class ExecutingServer(OpenBatchServer):
    """An `openbatch serve` whose batch workers run, with extra settings."""

    def __init__(self, binary: Path, database_url: str, log_path: Path, extra_env: dict[str, str]) -> None:
        super().__init__(binary, database_url, log_path)
        self.extra_env = extra_env

    def _environment(self) -> dict[str, str]:
        env = super()._environment()
        env.update(self.extra_env)
        return env


def start_executing_server(
    pool: ServerPool,
    upstream: FakeUpstream,
    database: str | None = None,
    config_file: Path | None = None,
    **settings: str | int,
) -> OpenBatchServer:
    """Starts a server with workers on, pointed at `upstream`. `settings` are
    `SECTION__KEY=value` pairs, e.g. `WORKER__MAX_IN_FLIGHT=2`; `config_file`
    is read as `OPENBATCH_CONFIG` (for settings such as routes)."""
    env = {
        "OPENBATCH__WORKER__ENABLED": "true",
        "OPENBATCH__UPSTREAM__BASE_URL": upstream.api_base,
        "OPENBATCH__WORKER__POLL_INTERVAL_MS": "50",
        "OPENBATCH__WORKER__RETRY_BASE_MS": "50",
        "OPENBATCH__UPSTREAM__TIMEOUT_SECS": "2",
        "OPENBATCH__WORKER__MAX_ATTEMPTS": str(MAX_ATTEMPTS),
    }
    env.update({f"OPENBATCH__{k}": str(v) for k, v in settings.items()})
    if config_file is not None:
        env["OPENBATCH_CONFIG"] = str(config_file)
    database = database or pool.new_database()
    log_path = pool.log_dir / f"openbatch-{database}-{uuid.uuid4().hex[:8]}.log"
    server = ExecutingServer(openbatch_binary(), database_url_for(database), log_path, env)
    pool.servers.append(server)
    server.start(pool.timeout)
    return server


@pytest.fixture
def start_upstream(tmp_path: Path) -> Iterator[Callable[..., FakeUpstream]]:
    """Starts fake upstreams for one test; all of them are stopped after it."""
    started: list[FakeUpstream] = []

    def start(latency_ms: int = 0, *args: str) -> FakeUpstream:
        upstream = FakeUpstream(tmp_path / f"fake-upstream-{len(started)}.log", latency_ms, args)
        started.append(upstream)
        upstream.start()
        return upstream

    try:
        yield start
    finally:
        for upstream in started:
            upstream.stop()


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    """A fast fake upstream shared by the module's executing server."""
    fake = FakeUpstream(tmp_path_factory.mktemp("fake-upstream") / "fake-upstream.log")
    try:
        fake.start()
        yield fake
    finally:
        fake.stop()


@pytest.fixture(scope="module")
def exec_server(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream) -> Iterator[OpenBatchServer]:
    pool = ServerPool(tmp_path_factory.mktemp("openbatch-exec"))
    try:
        yield start_executing_server(pool, upstream)
    finally:
        pool.close()


@pytest.fixture(scope="module")
def exec_client(exec_server: OpenBatchServer) -> Iterator[openai.OpenAI]:
    with make_client(exec_server) as c:
        yield c


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

# A minimal valid body per endpoint, and what a successful response looks like.
ENDPOINT_BODIES: dict[str, Callable[[int], dict[str, Any]]] = {
    "/v1/chat/completions": lambda i: {"messages": [{"role": "user", "content": f"hello there number {i}"}]},
    "/v1/completions": lambda i: {"prompt": f"complete this sentence {i}"},
    "/v1/embeddings": lambda i: {"input": f"embed these few words {i}"},
    "/v1/responses": lambda i: {"input": f"respond to this {i}"},
    "/v1/moderations": lambda i: {"input": f"moderate this text {i}"},
}
RESPONSE_OBJECT = {
    "/v1/chat/completions": "chat.completion",
    "/v1/completions": "text_completion",
    "/v1/embeddings": "list",
    "/v1/responses": "response",
    "/v1/moderations": None,  # OpenAI's moderation object has no `object` field
}


def tag(label: str) -> str:
    """A custom_id prefix no other test shares, so fake-upstream counts stay apart."""
    return f"{label}-{uuid.uuid4().hex[:10]}"


def request_line(
    custom_id: str,
    endpoint: str = "/v1/chat/completions",
    body: dict[str, Any] | None = None,
    url: str | None = None,
) -> dict[str, Any]:
    full = {"model": MODEL, "user": custom_id}
    full.update(body if body is not None else ENDPOINT_BODIES[endpoint](0))
    return {"custom_id": custom_id, "method": "POST", "url": url or endpoint, "body": full}


def to_jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode("utf-8")


def upload(client: openai.OpenAI, lines: list[dict[str, Any]]) -> FileObject:
    uploaded = client.files.create(file=("requests.jsonl", to_jsonl(lines)), purpose="batch")
    assert uploaded.purpose == "batch"
    return uploaded


def submit(client: openai.OpenAI, lines: list[dict[str, Any]], endpoint: str = "/v1/chat/completions") -> Batch:
    uploaded = upload(client, lines)
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
    )
    assert batch.status == "validating", batch
    assert batch.input_file_id == uploaded.id
    return batch


def wait_until(
    client: openai.OpenAI,
    batch_id: str,
    done: Callable[[Batch], bool],
    what: str,
) -> Batch:
    """Polls until `done(batch)` or the batch reaches a final status."""
    deadline = time.monotonic() + DEADLINE_SECS
    while True:
        batch = client.batches.retrieve(batch_id)
        if done(batch) or batch.status in FINAL_STATUSES:
            return batch
        if time.monotonic() > deadline:
            pytest.fail(
                f"batch {batch_id} did not reach {what} within {DEADLINE_SECS:.0f}s; "
                f"last seen: {batch.model_dump_json()}"
            )
        time.sleep(POLL_SECS)


def wait_for_status(client: openai.OpenAI, batch_id: str, status: str) -> Batch:
    batch = wait_until(client, batch_id, lambda b: b.status == status, repr(status))
    assert batch.status == status, f"expected {status!r}, got: {batch.model_dump_json(indent=2)}"
    return batch


def read_lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    """The lines of an output or error file, checked for the OpenAI line shape."""
    assert file_id is not None, "expected a result file, got no file id"
    text = client.files.content(file_id).read().decode("utf-8")
    lines = []
    for number, raw in enumerate(text.splitlines(), start=1):
        assert raw.strip(), f"blank line {number} in {file_id}"
        line = json.loads(raw)
        assert isinstance(line, dict) and set(line) == {"id", "custom_id", "response", "error"}, line
        assert isinstance(line["id"], str) and line["id"].startswith("batch_req_"), line
        assert isinstance(line["custom_id"], str), line
        response = line["response"]
        if response is not None:
            assert isinstance(response["status_code"], int), line
            assert isinstance(response["body"], dict), f"the body must be JSON, not a string: {line}"
        lines.append(line)
    return lines


def custom_ids(lines: list[dict[str, Any]]) -> list[str]:
    return [line["custom_id"] for line in lines]


def assert_batch_output_file(client: openai.OpenAI, file_id: str | None) -> FileObject:
    assert file_id is not None
    meta = client.files.retrieve(file_id)
    assert meta.id == file_id
    assert meta.purpose == "batch_output"
    assert meta.bytes == len(client.files.content(file_id).read())
    return meta


def usage_sums(lines: list[dict[str, Any]]) -> tuple[int, int, int]:
    """input, output and total tokens over the lines' `response.body.usage`."""
    total_in = total_out = total = 0
    for line in lines:
        usage = line["response"]["body"].get("usage") or {}
        n_in = usage.get("prompt_tokens", usage.get("input_tokens", 0))
        n_out = usage.get("completion_tokens", usage.get("output_tokens", 0))
        total_in += n_in
        total_out += n_out
        total += usage.get("total_tokens", n_in + n_out)
    return total_in, total_out, total


# --------------------------------------------------------------------------
# 1. the whole lifecycle, for every endpoint
# --------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", list(ENDPOINT_BODIES))
def test_a_batch_runs_to_completion_and_its_results_can_be_downloaded(
    exec_client: openai.OpenAI, upstream: FakeUpstream, endpoint: str
):
    prefix = tag("life")
    count = 12
    lines = [request_line(f"{prefix}-{i}", endpoint, ENDPOINT_BODIES[endpoint](i)) for i in range(count)]
    created = submit(exec_client, lines, endpoint)

    batch = wait_for_status(exec_client, created.id, "completed")

    assert batch.id == created.id
    assert batch.endpoint == endpoint
    assert batch.model == MODEL
    assert batch.errors is None
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (
        count,
        count,
        0,
    ), batch.request_counts
    for stamp in ("in_progress_at", "finalizing_at", "completed_at"):
        assert getattr(batch, stamp) is not None, f"{stamp} not set: {batch}"
    assert batch.created_at <= batch.in_progress_at <= batch.finalizing_at <= batch.completed_at  # type: ignore[operator]
    assert batch.expires_at == batch.created_at + 24 * 3600
    for never in ("failed_at", "expired_at", "cancelling_at", "cancelled_at"):
        assert getattr(batch, never) is None, f"{never} set on a completed batch: {batch}"
    assert batch.error_file_id is None, "nothing failed, so there is no error file"

    assert_batch_output_file(exec_client, batch.output_file_id)
    out = read_lines(exec_client, batch.output_file_id)
    assert custom_ids(out) == custom_ids(lines), "one line per request, in input order"
    expected_object = RESPONSE_OBJECT[endpoint]
    for line in out:
        assert line["error"] is None, line
        response = line["response"]
        assert response["status_code"] == 200, line
        assert isinstance(response["request_id"], str) and response["request_id"], line
        body = response["body"]
        if expected_object is None:
            assert isinstance(body.get("results"), list) and body["results"], line
        else:
            assert body.get("object") == expected_object, line
    # Every request reached the model exactly once.
    runs = upstream.runs()
    assert {cid: runs.get(cid, 0) for cid in custom_ids(lines)} == {cid: 1 for cid in custom_ids(lines)}

    assert batch.usage is not None, "a completed batch reports its token usage"
    want_in, want_out, want_total = usage_sums(out)
    assert (batch.usage.input_tokens, batch.usage.output_tokens, batch.usage.total_tokens) == (
        want_in,
        want_out,
        want_total,
    ), batch.usage
    if endpoint != "/v1/moderations":
        assert batch.usage.input_tokens > 0, batch.usage


# --------------------------------------------------------------------------
# 2. upstream faults: retried when transient, recorded when final
# --------------------------------------------------------------------------


def test_transient_upstream_faults_are_retried_and_a_permanent_error_lands_in_the_error_file(
    exec_client: openai.OpenAI, upstream: FakeUpstream
):
    p = tag("mixed")
    plan = [
        # custom_id,          fault script,                   executions expected
        (f"{p}-ok", None, 1),
        (f"{p}-500-503", [500, 503], 3),
        (f"{p}-429", [429], 2),
        (f"{p}-drop", ["drop"], 2),
        (f"{p}-hang", ["hang"], 2),  # answered by a retry after the 2 s timeout
        (f"{p}-404", [404], 1),  # final: not retried
        # Backpressure is not the line's fault: 503s past max_attempts use none of them.
        (f"{p}-many-503", [503] * (MAX_ATTEMPTS + 2), MAX_ATTEMPTS + 3),
        (f"{p}-always-500", [500] * (MAX_ATTEMPTS + 2), MAX_ATTEMPTS),  # gives up
    ]
    lines = []
    for cid, fail, _ in plan:
        line = request_line(cid)
        if fail is not None:
            line["body"]["fake"] = {"fail": fail}
        lines.append(line)
    created = submit(exec_client, lines)

    batch = wait_for_status(exec_client, created.id, "completed")

    recovered = [f"{p}-ok", f"{p}-500-503", f"{p}-429", f"{p}-drop", f"{p}-hang", f"{p}-many-503"]
    failed = [f"{p}-404", f"{p}-always-500"]
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (
        len(plan),
        len(recovered),
        len(failed),
    ), batch.request_counts

    out = read_lines(exec_client, batch.output_file_id)
    assert custom_ids(out) == recovered, "recovered lines, in input order"
    for line in out:
        assert line["response"]["status_code"] == 200, line
        assert line["response"]["body"]["object"] == "chat.completion", line
        assert line["error"] is None, line

    assert_batch_output_file(exec_client, batch.error_file_id)
    err = read_lines(exec_client, batch.error_file_id)
    assert custom_ids(err) == failed, "failed lines, in input order"
    by_id = {line["custom_id"]: line for line in err}
    not_found = by_id[f"{p}-404"]
    assert not_found["response"]["status_code"] == 404, not_found
    assert isinstance(not_found["response"]["body"].get("error"), dict), not_found
    assert not_found["error"] is None, "an upstream answer is recorded as the response, not as an error"
    gave_up = by_id[f"{p}-always-500"]
    assert gave_up["response"]["status_code"] == 500, gave_up
    assert isinstance(gave_up["response"]["body"].get("error"), dict), gave_up

    assert batch.usage is not None
    want_in, want_out, want_total = usage_sums(out)
    assert (batch.usage.input_tokens, batch.usage.output_tokens, batch.usage.total_tokens) == (
        want_in,
        want_out,
        want_total,
    ), "usage counts the successful responses only"

    runs = upstream.runs()
    assert {cid: runs.get(cid, 0) for cid, _, _ in plan} == {cid: n for cid, _, n in plan}


# --------------------------------------------------------------------------
# 3. validation failures, read through the SDK's typed objects
# --------------------------------------------------------------------------


def _duplicate_custom_id(p: str) -> tuple[list[dict[str, Any]], str, str, int]:
    lines = [request_line(f"{p}-a"), request_line(f"{p}-b"), request_line(f"{p}-a")]
    return lines, "duplicate_custom_id", "custom_id", 3


def _wrong_url(p: str) -> tuple[list[dict[str, Any]], str, str, int]:
    lines = [request_line(f"{p}-a"), request_line(f"{p}-b", url="/v1/embeddings"), request_line(f"{p}-c")]
    return lines, "invalid_url", "url", 2


@pytest.mark.parametrize("case", [_duplicate_custom_id, _wrong_url], ids=["duplicate_custom_id", "wrong_url"])
def test_an_invalid_input_file_fails_the_batch_with_a_typed_error(
    exec_client: openai.OpenAI, upstream: FakeUpstream, case: Callable[[str], Any]
):
    p = tag("invalid")
    lines, code, param, line_no = case(p)
    created = submit(exec_client, lines)

    batch = wait_for_status(exec_client, created.id, "failed")

    assert batch.failed_at is not None
    assert batch.in_progress_at is None, "a batch that fails validation never starts"
    assert batch.output_file_id is None and batch.error_file_id is None
    assert batch.errors is not None and batch.errors.object == "list", batch.errors
    assert batch.errors.data, batch.errors
    first = batch.errors.data[0]
    assert isinstance(first, BatchError)
    assert (first.code, first.param, first.line) == (code, param, line_no), batch.errors
    assert first.message, batch.errors
    runs = upstream.runs()
    assert not any(runs.get(cid, 0) for cid in custom_ids(lines)), "no line of a failed batch is executed"


@pytest.mark.parametrize("input_file_id", ["bogus-id", bogus_file_id()], ids=["bogus-id", "well-formed-missing"])
def test_a_batch_on_a_missing_input_file_is_created_then_fails_validation(
    exec_client: openai.OpenAI, input_file_id: str
):
    # The seed's scenario: the user's client passes `idem_tok` and an input file that does not exist.
    created = exec_client.batches.create(
        input_file_id=input_file_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_body={"idem_tok": unique_key("exec-missing-file")},
    )
    assert created.status == "validating"

    batch = wait_for_status(exec_client, created.id, "failed")

    assert batch.input_file_id == input_file_id
    assert batch.errors is not None and batch.errors.data, batch
    first = batch.errors.data[0]
    assert isinstance(first, BatchError)
    assert (first.code, first.param) == ("invalid_request", "input_file_id"), batch.errors
    assert first.line is None, batch.errors
    assert first.message and input_file_id in first.message, batch.errors
    assert batch.output_file_id is None and batch.error_file_id is None


# --------------------------------------------------------------------------
# 4. cancelling on one replica a batch another replica created
# --------------------------------------------------------------------------


def test_a_batch_cancelled_through_another_replica_ends_cancelled_with_every_line_accounted_for(
    server_pool: ServerPool, start_upstream: Callable[[int], FakeUpstream]
):
    upstream = start_upstream(100)
    database = server_pool.new_database()
    settings = {"WORKER__MAX_IN_FLIGHT": 2, "WORKER__CHUNK_LINES": 2}
    server_a = start_executing_server(server_pool, upstream, database, **settings)
    server_b = start_executing_server(server_pool, upstream, database, **settings)
    p = tag("cancel")
    count = 200
    lines = [request_line(f"{p}-{i}") for i in range(count)]

    with make_client(server_a) as client_a, make_client(server_b) as client_b:
        created = submit(client_a, lines)
        running = wait_until(
            client_a,
            created.id,
            lambda b: b.request_counts is not None and b.request_counts.completed >= 2,
            "2 completed requests",
        )
        assert running.status == "in_progress", running

        cancelling = client_b.batches.cancel(created.id)
        assert cancelling.id == created.id
        assert cancelling.status == "cancelling", cancelling
        assert cancelling.cancelling_at is not None

        batch = wait_for_status(client_a, created.id, "cancelled")
        assert client_b.batches.retrieve(created.id).status == "cancelled", "both replicas agree"

        assert batch.cancelled_at is not None and batch.cancelling_at == cancelling.cancelling_at
        assert batch.completed_at is None
        out = read_lines(client_b, batch.output_file_id)
        err = read_lines(client_b, batch.error_file_id)
        assert_batch_output_file(client_a, batch.output_file_id)
        assert_batch_output_file(client_a, batch.error_file_id)

    assert len(out) + len(err) == count, (len(out), len(err))
    assert sorted(custom_ids(out) + custom_ids(err)) == sorted(custom_ids(lines)), "each custom_id exactly once"
    assert len(out) >= 2, "lines finished before the cancel are kept"
    assert err, "the cancel stopped the batch before every line ran"
    for line in out:
        assert line["response"]["status_code"] == 200 and line["error"] is None, line
    for line in err:
        assert line["response"] is None, line
        assert line["error"]["code"] == "batch_cancelled", line
        assert isinstance(line["error"]["message"], str) and line["error"]["message"], line
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (
        count,
        len(out),
        len(err),
    ), batch.request_counts

    runs = upstream.runs()
    executed = {cid: n for cid, n in runs.items() if cid.startswith(p)}
    assert all(n == 1 for n in executed.values()), f"a line ran twice: {executed}"
    assert set(custom_ids(out)) <= set(executed), "every output line came from the upstream"
    assert len(executed) < count, "claiming stopped at the cancel"


# --------------------------------------------------------------------------
# 5. expiry
# --------------------------------------------------------------------------


def test_a_batch_not_done_within_its_window_expires_with_partial_results(
    server_pool: ServerPool, start_upstream: Callable[[int], FakeUpstream]
):
    upstream = start_upstream(200)
    server = start_executing_server(
        server_pool,
        upstream,
        BATCHES__EXPIRY_OVERRIDE_SECS=3,
        WORKER__MAX_IN_FLIGHT=1,
        WORKER__CHUNK_LINES=1,
    )
    p = tag("expire")
    count = 100
    lines = [request_line(f"{p}-{i}") for i in range(count)]

    with make_client(server) as client:
        created = submit(client, lines)
        assert created.expires_at == created.created_at + 3

        batch = wait_for_status(client, created.id, "expired")

        assert batch.expired_at is not None and batch.expired_at >= batch.expires_at  # type: ignore[operator]
        assert batch.completed_at is None
        out = read_lines(client, batch.output_file_id) if batch.output_file_id else []
        err = read_lines(client, batch.error_file_id)
        assert_batch_output_file(client, batch.error_file_id)

    assert len(out) + len(err) == count, (len(out), len(err))
    assert sorted(custom_ids(out) + custom_ids(err)) == sorted(custom_ids(lines)), "each custom_id exactly once"
    assert err, "some lines could not run in the window"
    for line in out:
        assert line["response"]["status_code"] == 200 and line["error"] is None, line
    for line in err:
        assert line["response"] is None, line
        assert line["error"] == {"code": "batch_expired", "message": EXPIRED_MESSAGE}, line
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (
        count,
        len(out),
        len(err),
    ), batch.request_counts


# --------------------------------------------------------------------------
# 6. listing finished batches and their result files
# --------------------------------------------------------------------------


def test_finished_batches_and_their_result_files_show_up_in_listings(exec_client: openai.OpenAI):
    p = tag("listed")
    not_found = request_line(f"{p}-404")
    not_found["body"]["fake"] = {"fail": [404]}
    finished = submit(exec_client, [request_line(f"{p}-ok"), not_found])
    rejected = submit(exec_client, [request_line(f"{p}-dup"), request_line(f"{p}-dup")])
    completed = wait_for_status(exec_client, finished.id, "completed")
    failed = wait_for_status(exec_client, rejected.id, "failed")
    assert completed.output_file_id and completed.error_file_id

    listed = {b.id: b for b in exec_client.batches.list(limit=100)}  # iterating pages through
    assert finished.id in listed and rejected.id in listed, sorted(listed)
    assert listed[finished.id].status == "completed"
    assert listed[finished.id].output_file_id == completed.output_file_id
    assert listed[finished.id].error_file_id == completed.error_file_id
    assert listed[finished.id].request_counts == completed.request_counts
    assert listed[rejected.id].status == "failed"
    assert listed[rejected.id].errors == failed.errors

    outputs = {f.id: f for f in exec_client.files.list(purpose="batch_output")}
    assert completed.output_file_id in outputs and completed.error_file_id in outputs, sorted(outputs)
    assert all(f.purpose == "batch_output" for f in outputs.values())
    assert finished.input_file_id not in outputs, "input files are not batch output"
    inputs = {f.id for f in exec_client.files.list(purpose="batch")}
    assert finished.input_file_id in inputs
    assert completed.output_file_id not in inputs and completed.error_file_id not in inputs


def test_a_file_sent_with_upload_file_chunked_runs_as_a_batch(
    exec_client: openai.OpenAI, tmp_path: Path
):
    # The SDK's own chunked upload (parts of 16 KiB here, sent one by one), then a batch on
    # the file it made.
    prefix = tag("chunked")
    count = 400
    lines = [request_line(f"{prefix}-{i}", "/v1/chat/completions", ENDPOINT_BODIES["/v1/chat/completions"](i)) for i in range(count)]
    path = tmp_path / "requests.jsonl"
    path.write_bytes(to_jsonl(lines))
    assert path.stat().st_size > 3 * 16 * 1024, "several parts"
    upload = exec_client.uploads.upload_file_chunked(
        file=path, mime_type="application/jsonl", purpose="batch", part_size=16 * 1024
    )
    assert upload.status == "completed"
    assert upload.file is not None and upload.file.bytes == path.stat().st_size
    batch = exec_client.batches.create(
        input_file_id=upload.file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_for_status(exec_client, batch.id, "completed")
    assert done.request_counts is not None and done.request_counts.completed == count
    assert custom_ids(read_lines(exec_client, done.output_file_id)) == custom_ids(lines)
