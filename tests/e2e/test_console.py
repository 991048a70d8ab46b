"""The web console (issue 17) in a real browser: Debian's headless Chromium driven by Playwright,
against one real gateway (API key on) and real workers on the tiny model.

The tests share one page and run in order, as a person would use it: the page asks for the key,
lists the models with their states, streams a chat, stops one (and the worker frees the
sequence), shows a 400's message, loads and unloads a model, shows a model that failed with its
reason, and its Live chart moves under load. Screenshots go to ``.artifacts/console/`` (git-ignored).
"""

from __future__ import annotations

import concurrent.futures
import http.server
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import ROOT, Gateway, broken_model, chat, serving

KEY = "console-test-key"
ARTIFACTS = ROOT / ".artifacts" / "console"
CHROMIUM = os.environ.get("HEARTH_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
AUTH = {"Authorization": f"Bearer {KEY}"}

try:
    import playwright.sync_api as playwright
except ImportError:
    playwright = None  # type: ignore[assignment]
if CHROMIUM is None or playwright is None:
    missing = "chromium" if CHROMIUM is None else "playwright"
    if os.environ.get("CI"):  # CI's set-up installs both: their absence is a failure there
        pytest.fail(f"no {missing}: scripts/setup.sh installs it", pytrace=False)
    pytest.skip(f"no {missing} (scripts/setup.sh installs Debian's chromium and Playwright)", allow_module_level=True)


@pytest.fixture(scope="module")
def gw(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("console")
    models = [
        {"name": "tiny", "path": str(tiny_model)},
        {"name": "spare", "path": str(tiny_model), "preload": False},
        {"name": "broken", "path": str(broken_model(tmp)), "preload": False},
    ]
    server = {"api_key_env": "HEARTH_CONSOLE_KEY", "restart_limit": 1, "restart_window": 120.0}
    with serving(tmp, models, server, env={"HEARTH_CONSOLE_KEY": KEY}) as g:
        yield g


class Browser:
    """One page of headless Chromium, with every console message and page error it logged."""

    def __init__(self, url: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.pw = playwright.sync_playwright().start()
        # --no-sandbox: CI runs as root; --disable-dev-shm-usage: a container's /dev/shm is small
        args = ["--no-sandbox", "--disable-dev-shm-usage"]
        self.browser = self.pw.chromium.launch(executable_path=CHROMIUM, args=args)
        self.context = self.browser.new_context(viewport={"width": 1366, "height": 900})
        self.page = self.context.new_page()
        self.page.set_default_timeout(20_000)
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        self.url = url

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def state(self, model: str) -> str:
        return self.page.locator(f'tr[data-model="{model}"]').get_attribute("data-state") or ""

    def close(self) -> None:
        self.context.close()
        self.browser.close()
        self.pw.stop()


@pytest.fixture(scope="module")
def b(gw: Gateway) -> Iterator[Browser]:
    br = Browser(gw.url)
    try:
        yield br
    finally:
        br.close()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.1)


def admin_model(gw: Gateway, name: str) -> dict[str, Any]:
    r = gw.http.get("/admin/models", headers=AUTH)
    assert r.status_code == 200, r.text
    return next(m for m in r.json()["models"] if m["name"] == name)


def test_the_page_is_served_without_the_key_and_guarded(gw: Gateway) -> None:
    page = gw.http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert 'data-key-required="true"' in page.text
    assert gw.http.get("/console").text == page.text
    assert gw.http.get("/console/console.js").headers["content-type"].startswith("text/javascript")
    # the data behind the page needs the key, and a foreign page can't hold the stream open
    assert gw.http.get("/console/events").status_code == 401
    foreign = gw.http.get("/console/events", headers={**AUTH, "Origin": "http://evil.example"})
    assert foreign.status_code == 403 and foreign.json()["error"]["code"] == "origin_not_allowed"
    for site in ("cross-site", "same-site"):  # same-site: a no-cors GET from another port of this host
        assert gw.http.get("/console/events", headers={**AUTH, "Sec-Fetch-Site": site}).status_code == 403
    with gw.http.stream("GET", "/console/events", headers=AUTH) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
    assert '"name":"tiny","state":"ready"' in first


def test_the_page_asks_for_the_key_then_lists_the_models(gw: Gateway, b: Browser) -> None:
    b.page.goto(gw.url + "/")
    form = b.page.locator("#key-form")
    form.wait_for(state="visible")
    assert b.page.evaluate("document.activeElement.id") == "key-input"  # the keyboard goes straight there
    unlabelled = b.page.evaluate(
        "[...document.querySelectorAll('input, select, textarea')].filter(e => !e.labels.length).map(e => e.id)"
    )
    assert unlabelled == []
    b.shot("01-key")
    b.page.keyboard.type("wrong-key")
    b.page.keyboard.press("Enter")
    b.page.locator("#key-why", has_text="refused").wait_for()
    assert [e for e in b.errors if "401" not in e] == [], b.errors  # only the refused key's 401
    b.errors.clear()
    b.page.fill("#key-input", KEY)
    b.page.keyboard.press("Enter")
    b.page.locator('tr[data-model="tiny"][data-state="ready"]').wait_for()
    assert b.page.evaluate("sessionStorage.getItem('hearth.apiKey')") == KEY
    assert b.page.evaluate("localStorage.length") == 0
    assert form.is_hidden()
    assert b.page.locator("#p-schema").is_hidden()  # shown only for response_format json_schema
    assert b.state("spare") == "unloaded" and b.state("broken") == "unloaded"
    row = b.page.locator('tr[data-model="tiny"]').inner_text()
    assert "1/1" in row and "16,384" in row  # workers and the context length
    assert b.page.locator("#conn").inner_text() == "live"
    assert [o for o in b.page.locator("#p-model option").all_inner_texts()] == ["tiny", "spare", "broken"]
    b.shot("02-models")
    assert b.errors == []


def test_a_chat_streams_a_reply_with_its_usage(gw: Gateway, b: Browser) -> None:
    b.page.select_option("#p-model", "tiny")
    b.page.fill("#p-max-tokens", "24")
    b.page.fill("#p-temperature", "0")  # greedy, so it runs to max tokens (its text is whitespace)
    b.page.fill("#p-system", "You are terse.")
    b.page.fill("#p-prompt", "Say hello")
    b.page.keyboard.press("Enter")  # in the message box: sends
    done = b.page.locator('.msg.assistant[data-done="ok"]')
    done.wait_for()
    stats = done.locator(".stats").inner_text()
    assert re.search(r"prompt \d+ \(cached \d+\) · completion 24 ·", stats), stats
    assert "first token" in stats and "finish: length" in stats
    assert done.locator(".text").inner_text()
    # the same conversation again: its prefix comes from the worker's prompt cache
    b.page.fill("#p-prompt", "And again")
    b.page.click("#send")
    second = b.page.locator('.msg.assistant[data-done="ok"]').nth(1)
    second.wait_for()
    cached = int(re.search(r"cached (\d+)", second.locator(".stats").inner_text()).group(1))  # type: ignore[union-attr]
    assert cached > 0
    b.shot("03-chat")
    assert b.errors == []


def test_stop_cancels_the_generation_in_the_worker(gw: Gateway, b: Browser) -> None:
    b.page.click("#clear")
    b.page.fill("#p-max-tokens", "15000")
    b.page.fill("#p-prompt", "Go on forever")
    b.page.click("#send")
    reply = b.page.locator(".msg.assistant.streaming .text")
    wait_for("streamed text", lambda: len(reply.inner_text()) > 20)
    assert gw.workers("tiny")[0]["inflight"] == 1
    assert b.page.evaluate("document.activeElement.id") == "stop"  # Space or Enter stops it
    b.shot("04-streaming")
    b.page.keyboard.press("Enter")
    b.page.locator('.msg.assistant[data-done="stopped"]').wait_for()

    # the gateway saw the disconnect and cancelled: the worker freed the sequence
    def freed() -> bool:
        w = gw.workers("tiny")[0]
        return (w["inflight"], w["running"], w["waiting"]) == (0, 0, 0)

    wait_for("the worker to free the sequence", freed, timeout=10)
    text = gw.http.get("/metrics").text
    assert 'hearth_running_requests{model="tiny"} 0.0' in text
    assert b.page.locator("#send").is_enabled() and b.page.locator("#stop").is_disabled()
    assert b.errors == []


def test_a_bad_request_shows_its_message(gw: Gateway, b: Browser) -> None:
    b.page.fill("#p-max-tokens", "8")
    b.page.select_option("#p-format", "json_schema")
    b.page.fill("#p-schema", '{"type": "array", "uniqueItems": true}')
    b.page.fill("#p-prompt", "A list")
    b.page.click("#send")
    error = b.page.locator("#chat-error")
    error.wait_for(state="visible")
    assert error.inner_text().startswith("400: ") and "uniqueItems" in error.inner_text()
    failed = b.page.locator('.msg.assistant[data-done="failed"] .stats')
    assert "failed: 400: " in failed.inner_text()
    b.shot("05-error")
    b.page.select_option("#p-format", "json_object")
    b.page.fill("#p-max-tokens", "40")
    b.page.fill("#p-prompt", "A JSON object please")
    b.page.click("#send")
    playwright.expect(b.page.locator(".msg.assistant").last).to_have_attribute("data-done", "ok")
    assert error.is_hidden()
    b.page.select_option("#p-format", "text")
    # the 400's resource error is the only console error
    assert [e for e in b.errors if "400" not in e] == [], b.errors
    b.errors.clear()


def test_load_and_unload_change_the_state_shown(gw: Gateway, b: Browser) -> None:
    b.page.click('button[aria-label="load spare"]')
    b.page.locator('tr[data-model="spare"][data-state="ready"]').wait_for(timeout=60_000)
    assert admin_model(gw, "spare")["state"] == "ready"
    b.shot("06-loaded")
    b.page.click('button[aria-label="unload spare"]')
    b.page.locator('tr[data-model="spare"][data-state="unloaded"]').wait_for(timeout=60_000)
    assert admin_model(gw, "spare")["workers"] == []
    assert b.errors == []


def test_a_model_that_fails_shows_why(gw: Gateway, b: Browser) -> None:
    b.page.click('button[aria-label="load broken"]')
    row = b.page.locator('tr[data-model="broken"][data-state="failed"]')
    row.wait_for(timeout=90_000)
    reason = admin_model(gw, "broken")["detail"]
    assert reason and reason in row.locator(".detail").inner_text()
    b.shot("07-failed")
    assert b.errors == []


def test_the_live_chart_moves_under_load(gw: Gateway, b: Browser) -> None:
    """Three clients keep requests going until the panel shows them in flight: it reads the
    in-flight gauge once a second, and a fixed handful of the tiny model's requests can all end
    between two readings (it did on CI once the CPU kernels got faster)."""
    seen = threading.Event()

    def load(client: int) -> list[int]:
        codes: list[int] = []
        with httpx.Client(base_url=gw.url, headers=AUTH, timeout=120) as c:
            while not codes or (not seen.is_set() and len(codes) < 100):
                body = chat("tiny", f"load {client} {len(codes)}", max_tokens=300)
                codes.append(c.post("/v1/chat/completions", json=body).status_code)
        return codes

    with concurrent.futures.ThreadPoolExecutor(3) as ex:
        futures = [ex.submit(load, i) for i in range(3)]
        try:
            # the latest reading, not the chart's maximum: that may still hold an earlier test's
            wait_for("requests in flight now", lambda: b.page.locator("#v-inflight").inner_text() not in ("–", "0"))
            assert float(b.page.get_attribute("#c-inflight", "data-max") or 0) > 0
        finally:
            seen.set()
        codes = [code for f in futures for code in f.result()]
    assert codes and set(codes) == {200}
    wait_for("tokens per second on the chart", lambda: float(b.page.get_attribute("#c-tps", "data-max") or 0) > 0)
    assert int(b.page.get_attribute("#c-tps", "data-points") or 0) >= 2
    assert b.page.locator("#v-p50").inner_text().endswith("s")  # TTFT from the histogram: ms or s
    assert b.page.locator("#v-cache").inner_text().endswith("%")
    b.shot("08-live")
    assert b.errors == []


def test_dark_mode_and_a_laptop_screen(gw: Gateway, b: Browser) -> None:
    b.page.emulate_media(color_scheme="dark")
    b.page.set_viewport_size({"width": 1280, "height": 800})
    bg = b.page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert bg == "rgb(22, 22, 24)"
    # nothing wider than the screen: no sideways scrolling of the page
    assert b.page.evaluate("document.documentElement.scrollWidth") <= 1280
    b.shot("09-dark")
    b.page.emulate_media(color_scheme="light")
    assert b.errors == []


def test_forgetting_the_key_asks_again(gw: Gateway, b: Browser) -> None:
    b.page.click("#key-button")
    b.page.click("#key-forget")
    b.page.reload()
    b.page.locator("#key-form").wait_for(state="visible")
    assert b.page.evaluate("sessionStorage.getItem('hearth.apiKey')") is None
    assert b.errors == []


class _OtherPage(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.end_headers()
        self.wfile.write(b"<title>another page</title>")

    def log_message(self, format: str, *args: Any) -> None:
        return None


def test_another_pages_origin_cannot_use_the_consoles_calls(gw: Gateway, b: Browser) -> None:
    """A page of another origin on this machine (another loopback port, so Chromium's local
    network rules let it try) does what the console does: the gateway's guard refuses the unload
    and the stream's preflight, the answers stay unreadable, the model stays on the same worker."""
    pid = admin_model(gw, "tiny")["workers"][0]["pid"]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OtherPage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    other = f"http://127.0.0.1:{server.server_port}"
    context = b.browser.new_context()
    try:
        page = context.new_page()
        page.goto(other + "/")
        outcome = page.evaluate(
            """async ([url, key]) => {
                const tries = [
                    fetch(url + "/console/events", {headers: {Authorization: "Bearer " + key}}),
                    fetch(url + "/console/events", {mode: "no-cors"}),
                    fetch(url + "/admin/models/tiny/unload", {method: "POST", mode: "no-cors"}),
                ];
                return Promise.all(tries.map((p) => p.then((r) => r.type + " " + r.status, () => "blocked")));
            }""",
            [gw.url, KEY],
        )
    finally:
        context.close()
        server.shutdown()
        server.server_close()
    assert outcome == ["blocked", "opaque 0", "opaque 0"], outcome  # nothing readable
    log = gw.log()
    assert f"refused OPTIONS /console/events: requests from the web page origin '{other}'" in log
    assert f"refused POST /admin/models/tiny/unload: requests from the web page origin '{other}'" in log
    tiny = admin_model(gw, "tiny")
    assert tiny["state"] == "ready" and tiny["workers"][0]["pid"] == pid
