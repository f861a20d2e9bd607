"""docker-compose.yml's topology as plain processes (deploy/README.md): the DATABASE_URL server
(a fresh database), one-shot `openbatch migrate`, the `openbatch serve` replicas of nginx.conf's
`upstream` block with the environment compose gives them (anchors, merge keys, `${VAR:-default}`
on a host with no such variables; only hostnames and ports replaced), the demo `fake-upstream`,
and a round-robin TCP proxy as the load balancer: each client connection goes to the next replica,
skipping one that refuses (nginx's `proxy_next_upstream error`). The SDK opens a connection per
request, so requests are balanced as nginx balances them. Twice: as compose starts by default
(content in PostgreSQL), and with `STORAGE_BACKEND=s3` and the `s3` profile (moto's server, the
release compose pins, standing in for the `s3` service).
"""

from __future__ import annotations

import asyncio
import collections
import importlib.metadata
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

import httpx
import openai
import pytest
import yaml
from openai.types import Batch
from prometheus_client.parser import text_string_to_metric_families

from conftest import REPO_ROOT, OpenBatchServer, ServerPool, database_url_for, free_port, openbatch_binary
from test_execution import FakeUpstream, custom_ids, read_lines, request_line, to_jsonl

DEADLINE_SECS = 180.0  # hang guard only; a healthy run needs a few seconds
FINAL = {"completed", "failed", "expired", "cancelled"}

_VAR = re.compile(r"\$(?:\$|\{(?P<braced>\w+)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_]\w*))")


def interpolate(value: Any, host: dict[str, str]) -> Any:
    """Compose's variable substitution: $$, $VAR, ${VAR}, ${VAR:-d}, ${VAR-d}, ${VAR:?e}, ${VAR:+a}."""
    if isinstance(value, dict):
        return {k: interpolate(v, host) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, host) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group("braced") or m.group("bare"), m.group("op"), m.group("arg") or ""
        current = host.get(name)
        present = bool(current) if op and op.startswith(":") else current is not None
        if op in (":-", "-"):
            return current if present else arg  # type: ignore[return-value]
        if op in (":?", "?"):
            assert present, f"compose would refuse to start: ${{{name}}} is required ({arg})"
        if op in (":+", "+"):
            return arg if present else ""
        return current or ""

    return _VAR.sub(substitute, value)


def load_compose(host: dict[str, str] | None = None) -> dict[str, Any]:
    # yaml.safe_load resolves anchors (&x / *x) and merge keys (<<) like compose does.
    return interpolate(yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text()), host or {})


def test_compose_refuses_to_start_without_a_database_password() -> None:
    with pytest.raises(AssertionError, match="POSTGRES_PASSWORD"):
        load_compose({})


def service_env(compose: dict[str, Any], name: str) -> dict[str, str]:
    env = compose["services"][name].get("environment") or {}
    if isinstance(env, list):  # the `- KEY=value` form
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    assert not any(isinstance(v, bool) for v in env.values()), f"compose wants strings, not booleans: {env}"
    return {k: str(v) for k, v in env.items() if v is not None}  # `KEY:` alone: the host's value (unset)


def nginx_upstreams() -> list[tuple[str, int]]:
    conf = (REPO_ROOT / "deploy" / "nginx.conf").read_text()
    block = re.search(r"upstream\s+\w+\s*\{(.*?)\}", conf, re.S)
    assert block, "deploy/nginx.conf has no upstream block"
    return [(h, int(p)) for h, p in re.findall(r"^\s*server\s+([\w.-]+):(\d+)", block.group(1), re.M)]


def container_env(env: dict[str, str]) -> dict[str, str]:
    """A container sees only its image's and compose's variables, not the test runner's."""
    return {**{k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}, **env}


def run_cli(args: list[str], env: dict[str, str]) -> str:
    cmd = [str(openbatch_binary()), *args]
    done = subprocess.run(cmd, env=container_env(env), cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"openbatch {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout


class Replica(OpenBatchServer):
    """`openbatch serve` with exactly the compose service's environment (plus its own port)."""

    def __init__(self, name: str, env: dict[str, str], log_path: Path) -> None:
        super().__init__(openbatch_binary(), env["OPENBATCH__DATABASE__URL"], log_path)
        self.name, self.env = name, env
        # Each container has its own metrics port (9090); on one host each needs its own.
        self.metrics_port = free_port() if "OPENBATCH__SERVER__METRICS_ADDRESS" in env else None

    def _environment(self) -> dict[str, str]:
        env = {**self.env, "OPENBATCH__SERVER__PORT": str(self.port)}
        if self.metrics_port is not None:
            env["OPENBATCH__SERVER__METRICS_ADDRESS"] = f"127.0.0.1:{self.metrics_port}"
        return container_env(env)

    @property
    def metrics_url(self) -> str:
        if self.metrics_port is None:
            return f"{self.base_url}/metrics"
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def wait_ready(self) -> None:
        """Compose's healthcheck: GET /readyz answers 200."""
        deadline = time.monotonic() + DEADLINE_SECS
        while httpx.get(f"{self.base_url}/readyz", timeout=10, trust_env=False).status_code != 200:
            assert time.monotonic() < deadline, f"{self.name} never became ready:\n{self.log_tail()}"
            time.sleep(0.2)

    def metric(self, name: str, match: Callable[[dict[str, str]], bool] = lambda _: True) -> float:
        text = httpx.get(self.metrics_url, timeout=30, trust_env=False).text
        samples = (s for family in text_string_to_metric_families(text) for s in family.samples)
        return sum(s.value for s in samples if s.name == name and match(s.labels))


async def _relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter,
                 up_r: asyncio.StreamReader, up_w: asyncio.StreamWriter, sent: bytearray) -> bool:
    """Pipes a connection both ways until the backend's side ends; whether it answered at all.
    `sent` (what the client sent before) goes first, and grows until the backend answers."""
    answered = False

    async def upward() -> None:
        try:
            up_w.write(bytes(sent))
            while data := await client_r.read(1 << 16):
                if not answered:
                    sent.extend(data)
                up_w.write(data)
                await up_w.drain()
            if up_w.can_write_eof():
                up_w.write_eof()
        except OSError:
            pass

    up = asyncio.ensure_future(upward())
    try:
        while data := await up_r.read(1 << 16):
            answered = True
            client_w.write(data)
            await client_w.drain()
        if answered and client_w.can_write_eof():
            client_w.write_eof()
    except OSError:
        pass
    finally:
        up.cancel()
    return answered


class RoundRobinProxy:
    """nginx's `upstream` round-robin with `proxy_next_upstream error`, at the TCP level."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.connections = [0] * len(ports)  # connections piped to each backend
        self.refused = [0] * len(ports)  # connection attempts each backend refused
        self._turn = 0
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        start = asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.server = asyncio.run_coroutine_threadsafe(start, self.loop).result(10)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        first, self._turn = self._turn, self._turn + 1
        sent = bytearray()  # the request so far, for the next backend if this one fails
        try:
            for i in range(len(self.ports)):
                b = (first + i) % len(self.ports)
                try:  # proxy_connect_timeout 5s
                    up_r, up_w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.ports[b]), 5)
                except OSError:
                    self.refused[b] += 1
                    continue
                self.connections[b] += 1
                answered = await _relay(client_r, client_w, up_r, up_w, sent)
                up_w.close()
                # A backend that closed or reset the connection without answering (a replica
                # stopping with the request in its accept queue): nginx passes an idempotent
                # request to the next one, and answers 502 otherwise.
                if answered or not sent.startswith((b"GET ", b"HEAD ")):
                    return
        finally:
            client_w.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(lambda: (self.server.close(), self.loop.stop()))


@dataclass
class Stack:
    compose: dict[str, Any]
    replicas: list[Replica]
    proxy: RoundRobinProxy
    key: str

    def client(self, api_key: str | None = None) -> openai.OpenAI:
        # A connection per request (no keep-alive), so the TCP proxy balances requests.
        http = openai.DefaultHttpxClient(limits=httpx.Limits(max_keepalive_connections=0), trust_env=False)
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.proxy.port}/v1", api_key=api_key or self.key,
                             max_retries=0, timeout=120, http_client=http)


class S3Service:
    """The compose `s3` profile's server as a process: moto's server from this venv, the release
    the compose image pins, and its bucket made as the one-shot `s3-bucket` service makes it."""

    def __init__(self, services: dict[str, Any], log_path: Path) -> None:
        image = services["s3"]["image"]
        assert image == f"motoserver/moto:{importlib.metadata.version('moto')}", f"compose runs {image}"
        assert "s3" in services["s3"]["profiles"] and "s3" in services["s3-bucket"]["profiles"]
        self.bucket = services["s3-bucket"]["command"][0]
        self.port, self.log = free_port(), open(log_path, "w")
        moto = Path(sys.executable).parent / "moto_server"
        self.proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + DEADLINE_SECS
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/", timeout=5, trust_env=False)
                break
            except httpx.TransportError:
                assert self.proc.poll() is None and time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.2)
        made = httpx.put(f"http://127.0.0.1:{self.port}/{self.bucket}", timeout=10, trust_env=False)
        assert made.status_code == 200, made.text

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.log.close()


# The stack as compose starts it, and with `STORAGE_BACKEND=s3 ... --profile s3` (file content
# in the s3 service's bucket).
@pytest.fixture(scope="module", params=["postgres", "s3"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # The one variable compose requires (no default database password); the local test
    # server trusts every login, so its value is carried, not checked.
    host = {"POSTGRES_PASSWORD": "compose-test-password"}
    if request.param == "s3":
        host["STORAGE_BACKEND"] = "s3"
    compose, tmp = load_compose(host), tmp_path_factory.mktemp("compose")
    services, upstreams = compose["services"], nginx_upstreams()
    assert len({host for host, _ in upstreams}) == len(upstreams) >= 2, f"nginx balances over {upstreams}"
    fake_cmd = services["fake-upstream"]["command"]
    flags = dict(zip(fake_cmd[::2], fake_cmd[1::2]))
    assert len(fake_cmd) == 2 * len(flags) and set(flags) == {"--host", "--port", "--latency-ms"}, fake_cmd
    assert services["migrate"]["command"] == ["migrate"]

    pool, fake, proxy = ServerPool(tmp), FakeUpstream(tmp / "fake-upstream.log", int(flags["--latency-ms"])), None
    s3 = None
    try:
        fake.start()
        database = database_url_for(pool.new_database())
        if request.param == "s3":
            s3 = S3Service(services, tmp / "s3.log")

        def localize(name: str) -> dict[str, str]:
            env = service_env(compose, name)
            assert env["OPENBATCH__STORAGE__BACKEND"] == request.param, f"{name}: {env['OPENBATCH__STORAGE__BACKEND']}"
            if s3 is not None:
                endpoint = urlsplit(env["AWS_ENDPOINT_URL"])
                assert (endpoint.hostname, endpoint.port) == ("s3", 5000), f"{name}: {endpoint.geturl()}"
                assert env["OPENBATCH__STORAGE__S3__BUCKET"] == s3.bucket, name
                env["AWS_ENDPOINT_URL"] = endpoint._replace(netloc=f"127.0.0.1:{s3.port}").geturl()
            db = urlsplit(env["OPENBATCH__DATABASE__URL"])
            assert db.hostname == "postgres" and "postgres" in services, f"{name}: {db.hostname}"
            up = urlsplit(env["OPENBATCH__UPSTREAM__BASE_URL"])
            assert (up.hostname, up.port) == ("fake-upstream", int(flags["--port"])), f"{name}: {up.geturl()}"
            env["OPENBATCH__DATABASE__URL"] = database
            env["OPENBATCH__UPSTREAM__BASE_URL"] = up._replace(netloc=urlsplit(fake.base_url).netloc).geturl()
            return env

        run_cli(["migrate"], localize("migrate"))  # the one-shot service, exit 0 first
        replicas = []
        for name, port in upstreams:
            env = localize(name)
            assert services[name]["command"] == ["serve"], name
            assert env["OPENBATCH__AUTH__ENABLED"] == "true", f"{name} runs without auth"
            assert env.get("OPENBATCH__WORKER__ENABLED", "true") == "true", f"{name} runs no worker"
            assert (env["OPENBATCH__SERVER__HOST"], int(env["OPENBATCH__SERVER__PORT"])) == ("0.0.0.0", port)
            env["OPENBATCH__SERVER__HOST"] = "127.0.0.1"  # the port: a free one, set by start()
            # Uploads spool to a volume of the service's own (never the memory-backed /tmp).
            spool = env["OPENBATCH__LIMITS__UPLOAD_SPOOL_DIR"]
            assert spool in services[name].get("volumes", []), f"{name}: {spool} is not a volume"
            (local_spool := tmp / f"{name}-spool").mkdir()
            env["OPENBATCH__LIMITS__UPLOAD_SPOOL_DIR"] = str(local_spool)
            replicas.append(replica := Replica(name, env, tmp / f"{name}.log"))
            pool.servers.append(replica)
            replica.start(pool.timeout)
            replica.wait_ready()
        key = run_cli(["keys", "create", "--project", "compose-test"], localize("migrate")).strip()
        assert key.startswith("obk_") and "\n" not in key, key
        proxy = RoundRobinProxy([r.port for r in replicas])
        yield Stack(compose, replicas, proxy, key)
    finally:
        if proxy is not None:
            proxy.close()
        pool.close()
        fake.stop()
        if s3 is not None:
            s3.stop()


def wait_until(client: openai.OpenAI, batch_id: str, done: Callable[[Batch], bool]) -> Batch:
    deadline = time.monotonic() + DEADLINE_SECS
    while not done(batch := client.batches.retrieve(batch_id)):
        assert batch.status not in FINAL, f"batch ended {batch.status}: {batch.model_dump_json()}"
        assert time.monotonic() < deadline, f"batch hung: {batch.model_dump_json()}"
        time.sleep(0.05)
    return batch


def run_batch(client: openai.OpenAI, lines: list[dict[str, Any]]) -> Batch:
    uploaded = client.files.create(file=("requests.jsonl", to_jsonl(lines)), purpose="batch")
    return client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")


def assert_every_line_once(client: openai.OpenAI, batch: Batch, lines: list[dict[str, Any]]) -> None:
    assert batch.status == "completed" and batch.error_file_id is None, batch
    assert batch.request_counts and (batch.request_counts.completed, batch.request_counts.failed) == (len(lines), 0)
    out = read_lines(client, batch.output_file_id)
    assert collections.Counter(custom_ids(out)) == collections.Counter(custom_ids(lines)), "each custom_id exactly once"
    assert all(line["response"]["status_code"] == 200 and line["error"] is None for line in out)


def succeeded(replica: Replica) -> float:
    return replica.metric("openbatch_lines_processed_total", lambda labels: labels["outcome"] == "succeeded")


def test_a_batch_through_the_load_balancer_runs_on_every_replica(stack: Stack) -> None:
    lines = [request_line(f"lb-{i}") for i in range(400)]  # one model throughout
    with stack.client() as client:
        batch = wait_until(client, run_batch(client, lines).id, lambda b: b.status == "completed")
        assert_every_line_once(client, batch, lines)
    assert all(stack.proxy.connections), f"connections per replica: {stack.proxy.connections}"
    api = [r.metric("openbatch_http_requests_total", lambda l: l["route"].startswith("/v1")) for r in stack.replicas]
    assert all(api), f"/v1 requests served per replica: {api}"
    done = [succeeded(r) for r in stack.replicas]
    assert all(done), f"every replica's worker executes lines: {done}"
    assert sum(done) == len(lines), f"each line executed once across the replicas: {done}"


def test_a_request_without_the_key_is_refused_through_the_load_balancer(stack: Stack) -> None:
    with stack.client() as client, pytest.raises(openai.AuthenticationError):  # no Authorization header
        client.files.list(extra_headers={"Authorization": openai.Omit()})
    with stack.client(api_key="obk_0000_not-a-key") as client, pytest.raises(openai.AuthenticationError):
        client.batches.list()


def test_a_batch_completes_when_a_replica_is_stopped_half_way(stack: Stack) -> None:
    victim, survivors = stack.replicas[0], stack.replicas[1:]
    assert (proc := victim.proc) is not None
    grace = int(re.fullmatch(r"(\d+)s", stack.compose["services"][victim.name]["stop_grace_period"])[1])
    # Slower lines (the fake's per-request latency) so the batch is surely running at the SIGTERM.
    body = {"messages": [{"role": "user", "content": "hello"}], "fake": {"latency_ms": 200}}
    lines = [request_line(f"failover-{i}", body=body) for i in range(600)]
    before = [succeeded(r) for r in survivors]
    with stack.client() as client:
        created = run_batch(client, lines)
        running = wait_until(client, created.id, lambda b: bool(b.request_counts and b.request_counts.completed))
        assert running.status == "in_progress", running
        proc.send_signal(signal.SIGTERM)  # what `docker compose stop` sends
        batch = wait_until(client, created.id, lambda b: b.status == "completed")
        assert proc.wait(timeout=grace) == 0, f"{victim.name} did not drain in time:\n{victim.log_tail()}"
        victim.stop()
        for _ in range(len(stack.replicas)):  # the proxy now meets a refused connection
            assert client.batches.retrieve(created.id).status == "completed"
        assert_every_line_once(client, batch, lines)
    assert stack.proxy.refused[0] > 0, f"connections refused per replica: {stack.proxy.refused}"
    after = [succeeded(r) for r in survivors]
    assert all(a > b for a, b in zip(after, before)), f"the survivors took over: {before} -> {after}"
