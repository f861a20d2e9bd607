"""Traces and metrics as an operator sees them: spans exported over OTLP to a collector, and a
Prometheus scrape of /metrics."""

from __future__ import annotations

import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import httpx
import openai
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from conftest import OpenBatchServer, ServerPool, database_url_for, make_client, openbatch_binary, unique_key


class Collector:
    """A minimal OTLP/HTTP (protobuf) trace receiver."""

    def __init__(self) -> None:
        self.spans: list = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.path == "/v1/traces":
                    req = ExportTraceServiceRequest()
                    req.ParseFromString(body)
                    with collector.lock:
                        for rs in req.resource_spans:
                            service = {a.key: a.value.string_value for a in rs.resource.attributes}.get("service.name")
                            for ss in rs.scope_spans:
                                for span in ss.spans:
                                    collector.spans.append((service, span))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, predicate, timeout: float = 60.0) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = [s for s in self.spans if predicate(s)]
            if found:
                return found
            time.sleep(0.2)
        with self.lock:
            names = sorted({s[1].name for s in self.spans})
        raise AssertionError(f"no matching span within {timeout}s; spans seen: {names}")


class GrpcCollector(Collector):
    """The same receiver over OTLP/gRPC."""

    def __init__(self) -> None:  # noqa: D107 - replaces the HTTP server entirely
        from concurrent import futures

        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

        self.spans = []
        self.lock = threading.Lock()
        collector = self

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):  # noqa: N802 - generated name
                with collector.lock:
                    for rs in request.resource_spans:
                        service = {a.key: a.value.string_value for a in rs.resource.attributes}.get("service.name")
                        for ss in rs.scope_spans:
                            for span in ss.spans:
                                collector.spans.append((service, span))
                return trace_service_pb2.ExportTraceServiceResponse()

        self.grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self.grpc_server)
        self.port = self.grpc_server.add_insecure_port("127.0.0.1:0")
        self.grpc_server.start()


class TracedServer(OpenBatchServer):
    def __init__(self, *args, extra_env: dict[str, str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.extra_env = extra_env

    def _environment(self) -> dict[str, str]:
        env = super()._environment()
        env.update(self.extra_env)
        return env


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.server.shutdown()


def start(pool: ServerPool, tmp_path: Path, env: dict[str, str]) -> OpenBatchServer:
    database = pool.new_database()
    server = TracedServer(openbatch_binary(), database_url_for(database), tmp_path / "server.log", extra_env=env)
    pool.servers.append(server)
    server.start(pool.timeout)
    return server


def attrs(span) -> dict:
    out = {}
    for a in span.attributes:
        v = a.value
        out[a.key] = v.string_value if v.HasField("string_value") else v.int_value if v.HasField("int_value") else v.bool_value
    return out


def test_a_create_batch_request_is_traced_under_the_callers_trace(server_pool, tmp_path, collector) -> None:
    server = start(
        server_pool,
        tmp_path,
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_SERVICE_NAME": "openbatch-under-test",
            "OPENBATCH__LOG__FORMAT": "json",
        },
    )
    trace_id = os.urandom(16).hex()
    parent_span = os.urandom(8).hex()
    with make_client(server) as client:
        batch = client.batches.create(
            input_file_id="file-traced",
            endpoint="/v1/chat/completions",
            completion_window="24h",
            extra_headers={"traceparent": f"00-{trace_id}-{parent_span}-01"},
            extra_body={"idempotency_key": unique_key("traced")},
        )

    def in_trace(s) -> bool:
        return s[1].trace_id.hex() == trace_id

    http_spans = collector.wait_for(lambda s: in_trace(s) and s[1].name == "POST /v1/batches")
    service, span = http_spans[0]
    assert service == "openbatch-under-test"
    assert span.parent_span_id.hex() == parent_span, "the caller's span is the parent"
    a = attrs(span)
    assert a["http.route"] == "/v1/batches"
    assert a["http.request.method"] == "POST"
    assert a["http.response.status_code"] == 200
    assert a["batch_id"] == batch.id
    db = collector.wait_for(lambda s: in_trace(s) and s[1].name == "db.batches.create")
    assert db[0][1].parent_span_id == span.span_id, "database work is a child of the request"

    # JSON log lines carry the trace id of the request they were written in.
    import json

    records = [json.loads(l) for l in server.log_tail(10_000).splitlines() if l.startswith("{")]
    created = [r for r in records if r.get("fields", {}).get("message") == "batch created"]
    assert created, "no JSON log line for the creation"
    assert created[0]["span"]["trace_id"] == trace_id


def test_metrics_are_scrapable_and_count_what_happened(fresh_server, fresh_client: openai.OpenAI) -> None:
    key = unique_key("metrics")
    args = dict(input_file_id="file-m", endpoint="/v1/chat/completions", completion_window="24h")
    fresh_client.batches.create(**args, extra_body={"idempotency_key": key})
    fresh_client.batches.create(**args, extra_body={"idempotency_key": key})
    with pytest.raises(openai.ConflictError):
        fresh_client.batches.create(**{**args, "input_file_id": "file-other"}, extra_body={"idempotency_key": key})
    with pytest.raises(openai.NotFoundError):
        fresh_client.batches.retrieve("batch_nope")

    def scrape() -> tuple[str, dict]:
        text = httpx.get(f"{fresh_server.base_url}/metrics", timeout=30).text
        return text, {f.name: f for f in text_string_to_metric_families(text)}

    def value(family: str, sample: str, **labels) -> float:
        for s in families[family].samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
        raise AssertionError(f"no {sample} {labels} in {family}")

    # The database gauges are refreshed by a background task (server.metrics_refresh_secs), not
    # by the scrape: wait for the refresh that sees the new batch.
    deadline = time.monotonic() + 60
    while True:
        text, families = scrape()
        if value("openbatch_batches", "openbatch_batches", status="validating") == 1:
            break
        assert time.monotonic() < deadline, "the batches gauge never counted the new batch"
        time.sleep(0.5)

    assert value("openbatch_http_requests", "openbatch_http_requests_total", route="/v1/batches", status="200") >= 2
    assert value("openbatch_http_requests", "openbatch_http_requests_total", route="/v1/batches/{batch_id}", status="404") >= 1
    assert value("openbatch_http_request_duration_seconds", "openbatch_http_request_duration_seconds_count", route="/v1/batches") >= 3
    assert value("openbatch_idempotent_replays", "openbatch_idempotent_replays_total") == 1
    assert value("openbatch_idempotency_conflicts", "openbatch_idempotency_conflicts_total") == 1
    assert value("openbatch_batches", "openbatch_batches", status="validating") == 1
    assert value("openbatch_work_queue_lines", "openbatch_work_queue_lines", state="pending") == 0
    assert value("openbatch_db_pool_connections", "openbatch_db_pool_connections", state="open") >= 1
    for family in [
        "openbatch_lines_processed",
        "openbatch_upstream_retries",
        "openbatch_lease_takeovers",
    ]:
        assert family in families, f"{family} missing from /metrics"
    assert "batch_nope" not in text, "ids never become label values"


def test_grpc_export_and_worker_spans_link_back_to_the_creating_trace(server_pool, tmp_path) -> None:
    from test_execution import FakeUpstream

    collector = GrpcCollector()
    upstream = FakeUpstream(tmp_path / "fake-upstream.log", latency_ms=0)
    upstream.start()
    try:
        server = start(
            server_pool,
            tmp_path,
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OPENBATCH__WORKER__ENABLED": "true",
                "OPENBATCH__WORKER__POLL_INTERVAL_MS": "50",
                "OPENBATCH__UPSTREAM__BASE_URL": upstream.api_base,
            },
        )
        trace_id = os.urandom(16).hex()
        line = (
            '{"custom_id": "t1", "method": "POST", "url": "/v1/chat/completions", '
            '"body": {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}}\n'
        )
        with make_client(server) as client:
            f = client.files.create(file=("in.jsonl", line.encode()), purpose="batch")
            batch = client.batches.create(
                input_file_id=f.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                extra_headers={"traceparent": f"00-{trace_id}-{os.urandom(8).hex()}-01"},
            )
            deadline = time.monotonic() + 120
            while client.batches.retrieve(batch.id).status != "completed":
                assert time.monotonic() < deadline, "batch did not complete"
                time.sleep(0.2)

        collector.wait_for(lambda s: s[1].trace_id.hex() == trace_id and s[1].name == "POST /v1/batches")
        lines = collector.wait_for(
            lambda s: s[1].name == "batch_line" and any(l.trace_id.hex() == trace_id for l in s[1].links)
        )
        line_span = lines[0][1]
        calls = collector.wait_for(
            lambda s: s[1].name == "POST /v1/chat/completions" and s[1].parent_span_id == line_span.span_id
        )
        assert attrs(calls[0][1])["http.response.status_code"] == 200
    finally:
        upstream.stop()
        collector.grpc_server.stop(0)


def test_a_dead_collector_never_holds_up_requests(server_pool, tmp_path) -> None:
    # Nothing listens on port 1: every export fails.
    server = start(server_pool, tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"})
    with make_client(server, timeout=10) as client:
        for _ in range(50):
            client.batches.create(input_file_id="f", endpoint="/v1/embeddings", completion_window="24h")
        assert len(client.batches.list(limit=100).data) == 50
    assert httpx.get(f"{server.base_url}/readyz", timeout=10).status_code == 200
