"""The web console at /console, driven in real headless Chromium (Debian's
`chromium` + `chromium-driver`) through Selenium: upload, create, watch the
progress bar reach 100 % (driven by the batch's event stream, or by polling
when the stream is refused), download results, cancel, sign in and out, and
markup in user-controlled strings shown as text, never run.

Screenshots of each page go to $OPENBATCH_E2E_SCREENSHOTS (default:
target/console-screenshots/), so they are kept with the test output.

Waits poll the page with a deadline that only guards against a hang; no
assertion depends on speed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

import httpx
import openai
import pytest

from conftest import REPO_ROOT, OpenBatchServer, ServerPool, make_client, openbatch_binary
from test_execution import FakeUpstream, start_executing_server

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

DEADLINE_SECS = 120.0
CHROMIUM = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER_BIN", "/usr/bin/chromedriver")
SHOTS = Path(os.environ.get("OPENBATCH_E2E_SCREENSHOTS") or REPO_ROOT / "target" / "console-screenshots")
XSS_NAME = "<img src=x onerror=alert(1)>.jsonl"


def chat_lines(n: int, prefix: str = "req", extra: dict[str, Any] | None = None) -> bytes:
    lines = []
    for i in range(n):
        body: dict[str, Any] = {
            "model": "fake-model",
            "messages": [{"role": "user", "content": f"hello {i}"}],
            "user": f"{prefix}-{i}",
        }
        body.update(extra or {})
        lines.append(json.dumps({"custom_id": f"{prefix}-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}))
    return ("\n".join(lines) + "\n").encode()


def wait_until(what: str, check: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + DEADLINE_SECS
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as e:  # noqa: BLE001 - the page may be mid-render
            last = e
        else:
            if last:
                return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def shot(driver: WebDriver, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def assert_no_alert(driver: WebDriver) -> None:
    try:
        text = driver.switch_to.alert.text
    except NoAlertPresentException:
        return
    raise AssertionError(f"a script ran: alert({text!r})")


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def console_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OpenBatchServer, FakeUpstream]]:
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.fail(f"{CHROMIUM} / {CHROMEDRIVER} missing: apt-get install chromium chromium-driver", pytrace=False)
    tmp = tmp_path_factory.mktemp("console")
    upstream = FakeUpstream(tmp / "fake-upstream.log", latency_ms=20)
    pool = ServerPool(tmp)
    try:
        upstream.start()
        # Two lines in flight, so a batch runs long enough for its bar to be seen moving.
        server = start_executing_server(pool, upstream, WORKER__MAX_IN_FLIGHT=2)
        yield server, upstream
    finally:
        pool.close()
        upstream.stop()


@pytest.fixture(scope="module")
def server(console_env: tuple[OpenBatchServer, FakeUpstream]) -> OpenBatchServer:
    return console_env[0]


@pytest.fixture(scope="module")
def sdk(server: OpenBatchServer) -> Iterator[openai.OpenAI]:
    with make_client(server) as c:
        yield c


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


def new_driver(profile: Path, downloads: Path) -> WebDriver:
    opts = Options()
    opts.binary_location = CHROMIUM
    # The flags that keep Chromium from reaching for Google's hosts on a closed network.
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--window-size=1440,960", f"--user-data-dir={profile}",
    ):
        opts.add_argument(flag)
    opts.add_experimental_option("prefs", {
        "download.default_directory": str(downloads),
        "download.prompt_for_download": False,
        "safebrowsing.enabled": False,
    })
    # "performance" logs the page's network requests (see batch_requests).
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    return driver


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory, downloads: Path) -> Iterator[WebDriver]:
    d = new_driver(tmp_path_factory.mktemp("chromium-profile"), downloads)
    try:
        yield d
    finally:
        d.quit()


def open_console(driver: WebDriver, server: OpenBatchServer, hash_: str = "#/batches") -> None:
    driver.get(f"{server.base_url}/console{hash_}")
    wait_until("the console to render", lambda: driver.find_element(By.CSS_SELECTOR, "#view h1, #view .empty"))


def find(driver: WebDriver, css: str):
    return wait_until(css, lambda: driver.find_element(By.CSS_SELECTOR, css))


def click(driver: WebDriver, css: str) -> None:
    """Clicks the element `css` names, finding it again if the page re-rendered it in between
    (the detail view redraws on every event of the batch's stream)."""
    wait_until(f"a click on {css}", lambda: driver.find_element(By.CSS_SELECTOR, css).click() or True)


def text_of(driver: WebDriver, css: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, css).text


def batch_requests(driver: WebDriver, batch_id: str) -> tuple[int, int]:
    """(GETs of the batch, opened event streams of it) the page sent since the last call:
    Chromium's network log, read and emptied."""
    gets = streams = 0
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") != "Network.requestWillBeSent":
            continue
        request = message["params"]["request"]
        path = urlsplit(request["url"]).path
        if request["method"] == "GET" and path == f"/v1/batches/{batch_id}":
            gets += 1
        elif request["method"] == "GET" and path == f"/v1/batches/{batch_id}/events":
            streams += 1
    return gets, streams


def severe_console_messages(driver: WebDriver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


# --------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------


def test_console_is_served_from_the_binary_with_a_strict_csp(server: OpenBatchServer) -> None:
    with httpx.Client(base_url=server.base_url, trust_env=False) as http:
        page = http.get("/console")
        assert page.status_code == 200
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        # Every script is an external file of this origin: no inline script at all.
        assert '<script type="module" src="/console/app.js"></script>' in page.text
        assert page.text.count("<script") == 1
        assert "http://" not in page.text and "https://" not in page.text
        js = http.get("/console/app.js")
        assert js.headers["content-type"].startswith("text/javascript")
        assert http.get("/console/nope.js").status_code == 404


def test_empty_state_then_upload_create_watch_and_download(
    driver: WebDriver, server: OpenBatchServer, sdk: openai.OpenAI, downloads: Path, tmp_path: Path
) -> None:
    open_console(driver, server)
    empty = find(driver, "#view .empty")
    assert "No batches yet" in empty.text
    shot(driver, "01-batches-empty")

    # Upload through the picker: a preview and the server's line checks come first.
    # 300 ms a line, two at a time: the batch runs for seconds with the page open.
    path = tmp_path / "greetings.jsonl"
    path.write_bytes(chat_lines(40, "greet", {"fake": {"latency_ms": 300}}))
    driver.find_element(By.CSS_SELECTOR, "[data-nav=files]").click()
    find(driver, "#file-input").send_keys(str(path))
    summary = find(driver, "#check-summary")
    assert "All 40 lines pass" in summary.text
    assert "greet-0" in text_of(driver, "pre.preview")
    shot(driver, "02-files-upload-preview")
    driver.find_element(By.ID, "upload").click()

    # Create the batch with metadata; the idempotency key is prefilled.
    find(driver, "#new-batch")
    key = driver.find_element(By.ID, "idem-key").get_attribute("value")
    assert key.startswith("console-")
    assert Select(driver.find_element(By.ID, "endpoint")).first_selected_option.text == "/v1/chat/completions"
    driver.find_element(By.ID, "add-metadata").click()
    driver.find_element(By.CSS_SELECTOR, ".md-key").send_keys("team")
    driver.find_element(By.CSS_SELECTOR, ".md-value").send_keys("search")
    shot(driver, "03-new-batch")
    # A double click creates one batch (the button is disabled at once, and the form's key
    # makes any second request a replay).
    # The network log is emptied first: the page may read the new batch before this test runs
    # another line.
    driver.get_log("performance")
    ActionChains(driver).double_click(driver.find_element(By.ID, "create")).perform()

    # The detail view follows the batch's event stream until the bar reads 100 %.
    wait_until("the batch page", lambda: "/batches/batch_" in driver.current_url)
    batch_id = driver.current_url.rsplit("/", 1)[1]
    seen: set[int] = set()

    def finished() -> bool:
        bar = driver.find_element(By.CSS_SELECTOR, ".big-progress [role=progressbar]")
        seen.add(int(bar.get_attribute("aria-valuenow")))
        badge = driver.find_element(By.CSS_SELECTOR, "h1 + .badge").get_attribute("data-status")
        return badge == "completed" and bar.get_attribute("aria-valuenow") == "100"

    wait_until("the progress bar to reach 100 %", finished)
    # The batch was read once, when the page opened on it running (else it would not have
    # opened a stream); every later state, the final one too, came from the stream. A page
    # that polled would have read the batch again each second it ran.
    gets, streams = batch_requests(driver, batch_id)
    assert (gets, streams) == (1, 1), f"{gets} reads of the batch, {streams} event streams"
    assert find(driver, "#view").get_attribute("data-source") == "stream"
    assert text_of(driver, "#count-completed") == "40"
    assert text_of(driver, "#count-failed") == "0"
    shot(driver, "04-batch-completed")

    # The same batch through the API, and the key made a second create a replay.
    batch = sdk.batches.retrieve(batch_id)
    assert batch.status == "completed" and batch.metadata == {"team": "search"}
    again = sdk.batches.create(
        input_file_id=batch.input_file_id, endpoint="/v1/chat/completions", completion_window="24h",
        metadata={"team": "search"}, extra_body={"idempotency_key": key},
    )
    assert again.id == batch_id
    assert [b.id for b in sdk.batches.list() if (b.metadata or {}).get("team") == "search"] == [batch_id]

    # Download the output file through the browser.
    for old in downloads.iterdir():
        old.unlink()
    click(driver, "#download-output")
    target = downloads / f"{batch_id}.output.jsonl"
    wait_until("the download", lambda: target.exists() and not list(downloads.glob("*.crdownload")))
    assert target.read_bytes() == sdk.files.content(batch.output_file_id).read()
    ids = sorted(json.loads(line)["custom_id"] for line in target.read_text().splitlines())
    assert ids == sorted(f"greet-{i}" for i in range(40))
    assert not severe_console_messages(driver)


def test_cancel_from_the_detail_view_after_confirming(
    driver: WebDriver, server_pool: ServerPool, tmp_path: Path
) -> None:
    # A server of its own whose upstream never answers: the batch is still running whenever
    # we cancel it, and the hung requests hold no other test's worker slots.
    upstream = FakeUpstream(tmp_path / "hanging-upstream.log")
    upstream.start()
    try:
        server = start_executing_server(
            server_pool, upstream, UPSTREAM__TIMEOUT_SECS=600, WORKER__CANCEL_GRACE_SECS=1
        )
        with make_client(server) as sdk:
            cancel_through_the_console(driver, server, sdk)
    finally:
        upstream.stop()


def cancel_through_the_console(driver: WebDriver, server: OpenBatchServer, sdk: openai.OpenAI) -> None:
    f = sdk.files.create(file=("hanging.jsonl", chat_lines(3, "hang", {"fake": {"fail": ["hang"]}})), purpose="batch")
    b = sdk.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                           metadata={"purpose": "cancel demo"})
    open_console(driver, server, f"#/batches/{b.id}")
    click(driver, "#cancel")
    dialog = find(driver, "dialog#confirm[open]")
    assert "Cancel this batch?" in dialog.text
    shot(driver, "05-cancel-confirm")
    # "Keep it" leaves the batch alone.
    driver.find_element(By.ID, "confirm-no").click()
    assert sdk.batches.retrieve(b.id).status in ("validating", "in_progress")
    click(driver, "#cancel")
    find(driver, "dialog#confirm[open]")
    driver.find_element(By.ID, "confirm-yes").click()
    wait_until(
        "the batch to show as cancelled",
        lambda: driver.find_element(By.CSS_SELECTOR, "h1 + .badge").get_attribute("data-status") == "cancelled",
    )
    assert sdk.batches.retrieve(b.id).status == "cancelled"
    assert not driver.find_elements(By.ID, "cancel")
    shot(driver, "06-batch-cancelled")


def test_the_detail_view_polls_when_the_event_stream_is_refused(
    driver: WebDriver, server_pool: ServerPool, tmp_path: Path
) -> None:
    # A server that allows no event stream: every one is refused with a 429.
    upstream = FakeUpstream(tmp_path / "upstream.log")
    upstream.start()
    try:
        server = start_executing_server(
            server_pool, upstream, WORKER__MAX_IN_FLIGHT=2, LIMITS__MAX_EVENT_STREAMS=0
        )
        with make_client(server) as sdk:
            f = sdk.files.create(
                file=("slow.jsonl", chat_lines(40, "slow", {"fake": {"latency_ms": 500}})), purpose="batch"
            )
            b = sdk.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
            driver.get_log("performance")
            open_console(driver, server, f"#/batches/{b.id}")

            def finished() -> bool:
                bar = driver.find_element(By.CSS_SELECTOR, ".big-progress [role=progressbar]")
                badge = driver.find_element(By.CSS_SELECTOR, "h1 + .badge").get_attribute("data-status")
                return badge == "completed" and bar.get_attribute("aria-valuenow") == "100"

            wait_until("the progress bar to reach 100 % by polling", finished)
            gets, streams = batch_requests(driver, b.id)
            assert streams >= 1, "the page never tried the event stream"
            assert gets >= 2, f"{gets} reads of the batch: it did not poll"
            assert find(driver, "#view").get_attribute("data-source") == "poll"
            assert text_of(driver, "#count-completed") == "40"
    finally:
        upstream.stop()
        # The refused streams are logged as failed loads: not this module's later tests' concern.
        driver.get_log("browser")


def test_markup_in_names_metadata_and_errors_is_shown_as_text(
    driver: WebDriver, server: OpenBatchServer, sdk: openai.OpenAI, tmp_path: Path
) -> None:
    # A file whose name is markup, uploaded through the console.
    path = tmp_path / XSS_NAME
    path.write_bytes(chat_lines(2, "x"))
    open_console(driver, server, "#/files")
    find(driver, "#file-input").send_keys(str(path))
    find(driver, "#upload").click()
    find(driver, "#new-batch")
    assert_no_alert(driver)
    # Markup in metadata keys and values, and in a custom_id that a validation error repeats.
    bad = (
        json.dumps({"custom_id": "<img src=x onerror=alert(2)>", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": "m", "messages": []}}) + "\n"
    ) * 2
    f = sdk.files.create(file=("<script>alert(3)</script>.jsonl", bad.encode()), purpose="batch")
    failed = sdk.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
        metadata={"<b>owner</b>": "<img src=y onerror=alert(4)>", "note": "<script>alert(5)</script>"},
    )
    deadline = time.monotonic() + DEADLINE_SECS
    while sdk.batches.retrieve(failed.id).status != "failed":
        assert time.monotonic() < deadline, "validation never finished"
        time.sleep(0.1)

    for page in ("#/files", "#/batches", f"#/batches/{failed.id}"):
        open_console(driver, server, page)
        view = find(driver, "#view")
        if page == "#/files":
            wait_until("the file list", lambda: XSS_NAME in view.text)
            assert "<script>alert(3)</script>.jsonl" in view.text
        elif page == "#/batches":
            wait_until("the batch list", lambda: "<img src=y onerror=alert(4)>" in view.text)
        else:
            table = find(driver, "#validation-errors")
            assert "<img src=x onerror=alert(2)>" in table.text
            assert "duplicate_custom_id" in table.text
            shot(driver, "07-markup-shown-as-text")
        # Nothing the server sent became an element, and nothing ran.
        assert driver.execute_script("return document.querySelectorAll('#view img, #view script, #view b').length") == 0
        assert_no_alert(driver)
    assert not severe_console_messages(driver)


def test_batches_page_lists_every_state(driver: WebDriver, server: OpenBatchServer, sdk: openai.OpenAI) -> None:
    """The page a person lands on: the batches so far (completed, cancelled, failed) and a
    running one; its screenshot is the one shown in README.md (docs/console-batches.png)."""
    f = sdk.files.create(file=("backfill.jsonl", chat_lines(500, "backfill")), purpose="batch")
    stopped = sdk.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                                 metadata={"job": "backfill"})
    sdk.batches.cancel(stopped.id)
    deadline = time.monotonic() + DEADLINE_SECS
    while sdk.batches.retrieve(stopped.id).status != "cancelled":
        assert time.monotonic() < deadline, "cancel never landed"
        time.sleep(0.1)
    f = sdk.files.create(file=("nightly-eval.jsonl", chat_lines(2000, "nightly")), purpose="batch")
    running = sdk.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                                 metadata={"job": "nightly-eval"})
    open_console(driver, server)
    find(driver, "#batches")
    wait_until(
        "the running batch to show progress",
        lambda: int(driver.find_element(By.CSS_SELECTOR, f"tr[data-id='{running.id}'] [role=progressbar]")
                    .get_attribute("aria-valuenow")) > 0,
    )
    statuses = {e.get_attribute("data-status") for e in driver.find_elements(By.CSS_SELECTOR, "#batches .badge")}
    assert {"completed", "cancelled", "failed"} <= statuses
    shot(driver, "08-batches")
    # The status filter narrows the list.
    Select(driver.find_element(By.ID, "status-filter")).select_by_value("cancelled")
    wait_until("the filter", lambda: {e.get_attribute("data-status") for e in driver.find_elements(By.CSS_SELECTOR, "#batches .badge")} == {"cancelled"})
    sdk.batches.cancel(running.id)


def test_the_usage_page_shows_tokens_by_project_and_model(
    driver: WebDriver, server: OpenBatchServer, sdk: openai.OpenAI
) -> None:
    """Auth is off here, so the console may read the Admin API's usage report."""
    f = sdk.files.create(file=("metered.jsonl", chat_lines(5, "metered")), purpose="batch")
    b = sdk.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="1h")
    deadline = time.monotonic() + DEADLINE_SECS
    while (done := sdk.batches.retrieve(b.id)).status != "completed":
        assert time.monotonic() < deadline, f"the batch never completed: {done.status}"
        time.sleep(0.1)
    assert done.usage is not None and done.usage.input_tokens > 0
    open_console(driver, server, "#/usage")
    row = find(driver, f"#usage tr[data-project='proj_default'][data-model='{done.model}']")
    # Earlier batches of this module count in the same day, project and model.
    shown = int(row.find_element(By.CSS_SELECTOR, ".input").text.replace(",", ""))
    assert shown >= done.usage.input_tokens
    shot(driver, "12-usage")


def test_sign_in_with_a_key_and_sign_out(
    tmp_path: Path, server_pool: ServerPool, downloads: Path
) -> None:
    database = server_pool.new_database()
    from conftest import database_url_for

    url = database_url_for(database)
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update({"OPENBATCH__DATABASE__URL": url, "OPENBATCH__AUTH__ENABLED": "true", "RUST_LOG": "warn"})
    key = subprocess.run([str(openbatch_binary()), "keys", "create", "--project", "console"],
                         env=env, capture_output=True, text=True, check=True).stdout.strip()

    class AuthServer(OpenBatchServer):
        def _environment(self) -> dict[str, str]:
            e = super()._environment()
            e["OPENBATCH__AUTH__ENABLED"] = "true"
            return e

    server = AuthServer(openbatch_binary(), url, tmp_path / "auth-server.log")
    server_pool.servers.append(server)
    server.start(server_pool.timeout)

    d = new_driver(tmp_path / "profile", downloads)
    try:
        d.get(f"{server.base_url}/console")
        form = find(d, "form#signin")
        assert "needs an API key" in form.text
        shot(d, "09-sign-in")
        find(d, "#api-key").send_keys("obk_000000000000_" + "0" * 64)
        d.find_element(By.CSS_SELECTOR, "#signin button[type=submit]").click()
        wait_until("the rejection", lambda: "invalid_api_key" in d.find_element(By.CSS_SELECTOR, "#signin .error").text)
        find(d, "#api-key").send_keys(key)
        d.find_element(By.CSS_SELECTOR, "#signin button[type=submit]").click()
        find(d, "#view .empty")
        assert d.execute_script("return sessionStorage.getItem('openbatch.apiKey')") == key
        assert key not in d.current_url
        find(d, "#signout").click()
        find(d, "form#signin")
        assert d.execute_script("return sessionStorage.getItem('openbatch.apiKey')") is None
    finally:
        d.quit()


def test_the_batches_list_pages_older_and_newer(
    driver: WebDriver, fresh_server: OpenBatchServer, fresh_client: openai.OpenAI
) -> None:
    # Workers are off on this server: the batches stay `validating`, and the list keeps
    # refreshing itself, so every click finds its button afresh.
    created = [
        fresh_client.batches.create(
            input_file_id=f"file-none{i:02d}", endpoint="/v1/chat/completions", completion_window="24h"
        ).id
        for i in range(25)
    ]
    newest_first = created[::-1]

    def rows() -> list[str]:
        return [r.get_attribute("data-id") for r in driver.find_elements(By.CSS_SELECTOR, "#batches tbody tr")]

    def click(element_id: str) -> bool:
        driver.find_element(By.ID, element_id).click()
        return True

    open_console(driver, fresh_server)
    wait_until("the first page", lambda: rows() == newest_first[:20])
    assert not driver.find_element(By.ID, "newer").is_enabled()
    wait_until("a click on Older", lambda: click("older"))
    wait_until("the second page", lambda: rows() == newest_first[20:])
    assert not driver.find_element(By.ID, "older").is_enabled()
    wait_until("a click on Newer", lambda: click("newer"))
    wait_until("the first page again", lambda: rows() == newest_first[:20])
