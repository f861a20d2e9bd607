"""The docker-compose topology, started as plain processes (see deploy/README.md).

What compose starts, this module starts: the PostgreSQL of DATABASE_URL (a fresh database),
the one-shot `openbatch migrate`, the `openbatch serve` replicas listed in deploy/nginx.conf's
`upstream` block, the demo profile's `fake-upstream`, and a load balancer in front. The
replicas' environment is read from docker-compose.yml itself (anchors, merge keys and
`${VAR:-default}` resolved as compose does on a host with none of those variables set); only
what must differ between containers and processes is replaced: hostnames and ports.

The load balancer is a small round-robin TCP proxy (nginx need not be installed): each
client connection goes to the next replica in turn and a replica refusing the connection is
skipped, like nginx's `upstream` with `proxy_next_upstream error`. The SDK client opens a new
connection per request, so requests are balanced the way nginx balances them.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import signal
import subprocess
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

from conftest import REPO_ROOT, OpenBatchServer, ServerPool, database_url_for, openbatch_binary
from test_execution import FakeUpstream, custom_ids, read_lines, request_line, to_jsonl

DEADLINE_SECS = 180.0  # hang guard only; a healthy run needs a few seconds
FINAL = {"completed", "failed", "expired", "cancelled"}
TRUE = {"true", "1", "yes", "on"}

# --------------------------------------------------------------------------
# docker-compose.yml and deploy/nginx.conf, read the way compose and nginx read them
# --------------------------------------------------------------------------

_VAR = re.compile(
    r"\$(?:\$|\{(?P<braced>\w+)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_]\w*))"
)


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
    raw = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    return interpolate(raw, host or {})


def service_env(compose: dict[str, Any], name: str) -> dict[str, str]:
    env = compose["services"][name].get("environment") or {}
    if isinstance(env, list):  # the `- KEY=value` form
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    out = {}
    for key, value in env.items():
        assert not isinstance(value, bool), f"{name}: {key} must be a string for compose"
        if value is not None:  # `KEY:` alone passes the host's value through: unset here
            out[key] = str(value)
    return out


def nginx_upstreams() -> list[tuple[str, int]]:
    conf = (REPO_ROOT / "deploy" / "nginx.conf").read_text()
    block = re.search(r"upstream\s+\w+\s*\{(.*?)\}", conf, re.S)
    assert block, "deploy/nginx.conf has no upstream block"
    return [(h, int(p)) for h, p in re.findall(r"^\s*server\s+([\w.-]+):(\d+)", block.group(1), re.M)]


def seconds(duration: str) -> float:
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in re.findall(r"(\d+)([hms])", duration))


# --------------------------------------------------------------------------
# processes: the CLI, the replicas, the load balancer
# --------------------------------------------------------------------------


def container_env(env: dict[str, str]) -> dict[str, str]:
    """A container sees only its image's and compose's variables, not the test runner's."""
    return {**{k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}, **env}


def run_cli(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        [str(openbatch_binary()), *args], env=container_env(env), cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, f"openbatch {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout


class Replica(OpenBatchServer):
    """`openbatch serve` with exactly the compose service's environment (plus its own port)."""

    def __init__(self, name: str, env: dict[str, str], log_path: Path) -> None:
        super().__init__(openbatch_binary(), env["OPENBATCH__DATABASE__URL"], log_path)
        self.name, self.env = name, env

    def _environment(self) -> dict[str, str]:
        return container_env({**self.env, "OPENBATCH__SERVER__PORT": str(self.port)})

    def wait_ready(self) -> None:
        """Compose's healthcheck: GET /readyz answers 200."""
        deadline = time.monotonic() + DEADLINE_SECS
        while httpx.get(f"{self.base_url}/readyz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, f"{self.name} never became ready:\n{self.log_tail()}"
            time.sleep(0.2)

    def metric(self, name: str, match: Callable[[dict[str, str]], bool] = lambda _: True) -> float:
        text = httpx.get(f"{self.base_url}/metrics", timeout=30).text
        return sum(
            s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == name and match(s.labels)
        )


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        pass


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
        try:
            for i in range(len(self.ports)):
                b = (first + i) % len(self.ports)
                try:  # proxy_connect_timeout 5s
                    up_r, up_w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.ports[b]), 5)
                except OSError:
                    self.refused[b] += 1
                    continue
                self.connections[b] += 1
                try:
                    await asyncio.gather(_pipe(client_r, up_w), _pipe(up_r, client_w))
                finally:
                    up_w.close()
                return
        finally:
            client_w.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)


@dataclass
class Stack:
    compose: dict[str, Any]
    replicas: list[Replica]
    fake: FakeUpstream
    proxy: RoundRobinProxy
    key: str

    def client(self, api_key: str | None = None) -> openai.OpenAI:
        # A connection per request (no keep-alive), so the TCP proxy balances requests.
        http = openai.DefaultHttpxClient(limits=httpx.Limits(max_keepalive_connections=0), trust_env=False)
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.proxy.port}/v1", api_key=api_key or self.key,
                             max_retries=0, timeout=120, http_client=http)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    compose, tmp = load_compose(), tmp_path_factory.mktemp("compose")
    services = compose["services"]
    upstreams = nginx_upstreams()
    names = [host for host, _ in upstreams]
    assert len(names) >= 2 and len(set(names)) == len(names), f"nginx balances over {names}"
    fake_cmd = services["fake-upstream"]["command"]
    flags = dict(zip(fake_cmd[::2], fake_cmd[1::2]))
    assert len(fake_cmd) == 2 * len(flags) and set(flags) == {"--host", "--port", "--latency-ms"}, fake_cmd
    assert services["migrate"]["command"] == ["migrate"]

    pool, fake, proxy = ServerPool(tmp), FakeUpstream(tmp / "fake-upstream.log", int(flags["--latency-ms"])), None
    try:
        fake.start()
        database = database_url_for(pool.new_database())

        def localize(name: str) -> dict[str, str]:
            env = service_env(compose, name)
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
            assert env["OPENBATCH__AUTH__ENABLED"].lower() in TRUE, f"{name} runs without auth"
            assert env.get("OPENBATCH__WORKER__ENABLED", "true").lower() in TRUE, f"{name} runs no worker"
            assert (env["OPENBATCH__SERVER__HOST"], int(env["OPENBATCH__SERVER__PORT"])) == ("0.0.0.0", port)
            env["OPENBATCH__SERVER__HOST"] = "127.0.0.1"  # the port: a free one, set by start()
            replica = Replica(name, env, tmp / f"{name}.log")
            pool.servers.append(replica)
            replica.start(pool.timeout)
            replica.wait_ready()
            replicas.append(replica)
        key = run_cli(["keys", "create", "--project", "compose-test"], localize("migrate")).strip()
        assert key.startswith("obk_") and "\n" not in key, key
        proxy = RoundRobinProxy([r.port for r in replicas])
        yield Stack(compose, replicas, fake, proxy, key)
    finally:
        if proxy is not None:
            proxy.close()
        pool.close()
        fake.stop()


# --------------------------------------------------------------------------
# the tests
# --------------------------------------------------------------------------


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
    api_requests = [r.metric("openbatch_http_requests_total", lambda l: l["route"].startswith("/v1")) for r in stack.replicas]
    assert all(api_requests), f"/v1 requests served per replica: {api_requests}"
    done = [succeeded(r) for r in stack.replicas]
    assert all(done), f"every replica's worker executes lines: {done}"
    assert sum(done) == len(lines), f"each line executed once across the replicas: {done}"


def test_a_request_without_the_key_is_refused_through_the_load_balancer(stack: Stack) -> None:
    with stack.client() as client:
        with pytest.raises(openai.AuthenticationError):
            client.files.list(extra_headers={"Authorization": openai.Omit()})
    with stack.client(api_key="obk_0000_not-a-key") as client:
        with pytest.raises(openai.AuthenticationError):
            client.batches.list()


def test_a_batch_completes_when_a_replica_is_stopped_half_way(stack: Stack) -> None:
    victim, survivors = stack.replicas[0], stack.replicas[1:]
    grace = seconds(stack.compose["services"][victim.name]["stop_grace_period"])
    # Slower lines (the fake's per-request latency) so the batch is surely running at the SIGTERM.
    lines = [request_line(f"failover-{i}") for i in range(600)]
    for line in lines:
        line["body"]["fake"] = {"latency_ms": 200}
    before = [succeeded(r) for r in survivors]
    with stack.client() as client:
        created = run_batch(client, lines)
        running = wait_until(client, created.id, lambda b: bool(b.request_counts and b.request_counts.completed))
        assert running.status == "in_progress", running

        assert victim.proc is not None
        victim.proc.send_signal(signal.SIGTERM)  # `docker compose stop openbatch-1`
        batch = wait_until(client, created.id, lambda b: b.status == "completed")
        assert victim.proc.wait(timeout=grace) == 0, f"{victim.name} did not drain:\n{victim.log_tail()}"
        victim.stop()
        for _ in range(len(stack.replicas)):  # the proxy now meets a refused connection
            assert client.batches.retrieve(created.id).status == "completed"
        assert_every_line_once(client, batch, lines)

    victim_index = stack.replicas.index(victim)
    assert stack.proxy.refused[victim_index] > 0, f"refused per replica: {stack.proxy.refused}"
    after = [succeeded(r) for r in survivors]
    assert all(a > b for a, b in zip(after, before)), f"survivors took over: {before} -> {after}"
    runs = stack.fake.runs()
    assert all(runs.get(cid, 0) >= 1 for cid in custom_ids(lines)), "every line reached the upstream"
