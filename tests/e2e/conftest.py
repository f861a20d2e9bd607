"""Fixtures that run the real `openbatch serve` binary against PostgreSQL.

Every server gets a database of its own (`ob_e2e_<hex>`), which the server
creates and migrates itself.  A module shares one server; tests that must see
an empty database ask for `fresh_server` instead.  When a test fails, the tail
of every live server's log is attached to the report.

Environment:
  OPENBATCH_BIN                 binary to run (default: <repo>/target/debug/openbatch)
  DATABASE_URL                  admin URL of the PostgreSQL to use
                                (default: postgres://postgres@127.0.0.1:5432/postgres)
  OPENBATCH_E2E_START_TIMEOUT   seconds to wait for /healthz (default: 60)
  OPENBATCH_E2E_KEEP_DB=1       keep the test databases for inspection
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit, urlunsplit

import httpx
import openai
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/postgres"
LOG_TAIL_LINES = 80

# Servers currently running, so a failing test can show what they logged.
_LIVE_SERVERS: list["OpenBatchServer"] = []


# --------------------------------------------------------------------------
# helpers shared by the test modules (import them with `from conftest import`)
# --------------------------------------------------------------------------


def unique_key(label: str = "key") -> str:
    """An idempotency key no other test (or earlier run) can have used."""
    return f"e2e-{label}-{uuid.uuid4().hex}"


def bogus_file_id() -> str:
    """An input file id that names no file on the server."""
    return f"file-doesnotexist{uuid.uuid4().hex[:12]}"


def jsonl_requests(count: int, endpoint: str = "/v1/chat/completions") -> bytes:
    lines = []
    for i in range(count):
        lines.append(
            '{"custom_id": "req-%d", "method": "POST", "url": "%s", '
            '"body": {"model": "test-model", "messages": [{"role": "user", "content": "Hallo Welt #%d \u00e9\u00e8 \u2603"}]}}'
            % (i, endpoint, i)
        )
    return ("\n".join(lines) + "\n").encode("utf-8")


def assert_error_envelope(body: Any) -> dict:
    """`body` is the whole JSON document of an error response; returns the inner error."""
    assert isinstance(body, dict), f"error body is not a JSON object: {body!r}"
    assert set(body) >= {"error"}, f"error body has no 'error' key: {body!r}"
    err = body["error"]
    assert isinstance(err, dict), f"'error' is not an object: {body!r}"
    missing = {"message", "type", "param", "code"} - set(err)
    assert not missing, f"error object lacks {sorted(missing)}: {body!r}"
    assert isinstance(err["message"], str) and err["message"], f"empty message: {body!r}"
    assert isinstance(err["type"], str) and err["type"], f"empty type: {body!r}"
    assert err["param"] is None or isinstance(err["param"], str), body
    assert err["code"] is None or isinstance(err["code"], str), body
    return err


def assert_sdk_error(exc: openai.APIStatusError, status: int) -> dict:
    """Checks an SDK exception carries a well-formed OpenAI error; returns the inner error."""
    assert exc.status_code == status, f"expected HTTP {status}, got {exc.status_code}: {exc}"
    headers = exc.response.headers
    assert headers.get("content-type", "").startswith("application/json"), headers
    assert headers.get("x-request-id"), f"no x-request-id on error response: {dict(headers)}"
    assert exc.request_id == headers.get("x-request-id")
    # The SDK unwraps the envelope: exc.body is the inner error object.
    assert isinstance(exc.body, dict), f"SDK could not parse the error body: {exc.body!r}"
    return assert_error_envelope({"error": exc.body})


def assert_raw_error(resp: httpx.Response, statuses: int | tuple[int, ...]) -> dict:
    """Checks a raw httpx response is a 4xx with the OpenAI error envelope."""
    if isinstance(statuses, int):
        statuses = (statuses,)
    assert resp.status_code in statuses, (
        f"expected HTTP {statuses}, got {resp.status_code}: {resp.text[:500]!r}"
    )
    assert resp.headers.get("content-type", "").startswith("application/json"), (
        resp.status_code,
        dict(resp.headers),
        resp.text[:500],
    )
    assert resp.headers.get("x-request-id"), f"no x-request-id: {dict(resp.headers)}"
    return assert_error_envelope(resp.json())


# --------------------------------------------------------------------------
# database and server plumbing
# --------------------------------------------------------------------------


def admin_database_url() -> str:
    return os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL


def database_url_for(name: str) -> str:
    parts = urlsplit(admin_database_url())
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def new_database_name() -> str:
    return f"ob_e2e_{uuid.uuid4().hex}"


def psql_binary() -> str | None:
    found = shutil.which("psql")
    if found:
        return found
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"))
    return candidates[-1] if candidates else None


def drop_database(name: str) -> None:
    """Best effort: drops a test database if a PostgreSQL client is at hand."""
    if os.environ.get("OPENBATCH_E2E_KEEP_DB") == "1":
        return
    statement = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    try:
        import psycopg  # type: ignore[import-not-found]
    except ImportError:
        psycopg = None
    try:
        if psycopg is not None:
            with psycopg.connect(admin_database_url(), autocommit=True) as conn:
                conn.execute(statement)
        elif psql_binary():
            subprocess.run(
                [psql_binary(), admin_database_url(), "-q", "-v", "ON_ERROR_STOP=1", "-c", statement],
                capture_output=True,
                timeout=60,
                check=False,
            )
    except Exception:  # noqa: BLE001 - cleanup must never fail a test run
        pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def openbatch_binary() -> Path:
    configured = os.environ.get("OPENBATCH_BIN")
    path = Path(configured) if configured else REPO_ROOT / "target" / "debug" / "openbatch"
    if not path.is_absolute():
        path = REPO_ROOT / path
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"openbatch binary not found at {path}: run `cargo build --bin openbatch` "
            "or set OPENBATCH_BIN",
            pytrace=False,
        )
    return path


class OpenBatchServer:
    """One `openbatch serve` process listening on 127.0.0.1:<port>."""

    def __init__(self, binary: Path, database_url: str, log_path: Path) -> None:
        self.binary = binary
        self.database_url = database_url
        self.log_path = log_path
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/v1"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"<no log: {e}>"
        return "\n".join(text.splitlines()[-lines:])

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # The server also honours DATABASE_URL; make sure only our URL is seen.
        env.pop("DATABASE_URL", None)
        env["OPENBATCH__SERVER__HOST"] = "127.0.0.1"
        env["OPENBATCH__SERVER__PORT"] = str(self.port)
        env["OPENBATCH__DATABASE__URL"] = self.database_url
        env.setdefault("RUST_BACKTRACE", "1")
        env.setdefault("RUST_LOG", "info")
        env.setdefault("NO_COLOR", "1")  # keep the log tails readable
        # These tests pin down the API surface, so a batch must stay where the
        # API put it (`validating`, `cancelling`) instead of being picked up
        # by a batch worker racing the assertions. Unknown keys are ignored.
        env.setdefault("OPENBATCH__WORKER__ENABLED", "false")
        return env

    def start(self, timeout: float) -> None:
        for attempt in range(3):
            self.port = free_port()
            with open(self.log_path, "ab") as log:
                log.write(f"=== openbatch serve on port {self.port} (attempt {attempt + 1}) ===\n".encode())
                log.flush()
                self.proc = subprocess.Popen(
                    [str(self.binary), "serve"],
                    cwd=REPO_ROOT,
                    env=self._environment(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            outcome = self._wait_healthy(timeout)
            if outcome == "up":
                _LIVE_SERVERS.append(self)
                return
            self.stop()
            if outcome.startswith("exited") and "in use" in self.log_tail(20).lower():
                continue  # lost the race for the port we picked; pick another
            raise RuntimeError(
                f"openbatch serve did not become healthy ({outcome}) on port {self.port} "
                f"with database {self.database_url}; log tail:\n{self.log_tail()}"
            )
        raise RuntimeError(f"could not find a free port for openbatch serve; log tail:\n{self.log_tail()}")

    def _wait_healthy(self, timeout: float) -> str:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=5, trust_env=False) as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    return f"exited with status {self.proc.returncode}"
                try:
                    if http.get(f"{self.base_url}/healthz").status_code == 200:
                        return "up"
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
        return f"no 200 from /healthz within {timeout:.0f}s"

    def stop(self) -> None:
        if self in _LIVE_SERVERS:
            _LIVE_SERVERS.remove(self)
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


class ServerPool:
    """Starts servers on demand and tears all of them (and their databases) down."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.servers: list[OpenBatchServer] = []
        self.databases: list[str] = []
        self.timeout = float(os.environ.get("OPENBATCH_E2E_START_TIMEOUT", "60"))

    def new_database(self) -> str:
        name = new_database_name()
        self.databases.append(name)
        return name

    def start(self, database: str | None = None) -> OpenBatchServer:
        binary = openbatch_binary()
        database = database or self.new_database()
        log_path = self.log_dir / f"openbatch-{database}-{uuid.uuid4().hex[:8]}.log"
        server = OpenBatchServer(binary, database_url_for(database), log_path)
        self.servers.append(server)
        server.start(self.timeout)
        return server

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        for name in self.databases:
            drop_database(name)


def make_client(server: OpenBatchServer, **kwargs: Any) -> openai.OpenAI:
    kwargs.setdefault("max_retries", 0)
    kwargs.setdefault("timeout", 120)
    return openai.OpenAI(base_url=server.api_base, api_key="test", **kwargs)


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBatchServer]:
    """One server with its own database, shared by the tests of a module."""
    pool = ServerPool(tmp_path_factory.mktemp("openbatch-module"))
    try:
        yield pool.start()
    finally:
        pool.close()


@pytest.fixture(scope="module")
def client(server: OpenBatchServer) -> Iterator[openai.OpenAI]:
    with make_client(server) as c:
        yield c


@pytest.fixture(scope="module")
def http(server: OpenBatchServer) -> Iterator[httpx.Client]:
    """A plain HTTP client for requests the SDK would never send."""
    with httpx.Client(base_url=server.base_url, timeout=120, trust_env=False) as c:
        yield c


@pytest.fixture
def server_pool(tmp_path: Path) -> Iterator[ServerPool]:
    """For tests that need their own database or several servers on one database."""
    pool = ServerPool(tmp_path)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def fresh_server(server_pool: ServerPool) -> OpenBatchServer:
    return server_pool.start()


@pytest.fixture
def fresh_client(fresh_server: OpenBatchServer) -> Iterator[openai.OpenAI]:
    with make_client(fresh_server) as c:
        yield c


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for server in list(_LIVE_SERVERS):
            report.sections.append(
                (f"openbatch log tail ({server.log_path})", server.log_tail())
            )
