"""What a web page can do to a local Hearth (issue 20), against the real gateway and worker.

The three attacks (a DNS-rebinding Host, a bodiless cross-site admin POST, a cross-site
``text/plain`` generation) get 403 in the API's error format and do nothing: the model stays
loaded on the same worker and no token is processed. The same requests without ``Origin`` and
with loopback Hosts succeed; a configured origin gets a 204 preflight and a streamed answer with
CORS headers; a server that must not run off loopback without a key refuses to start.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import ROOT, Gateway, chat, free_port, serving, sse_events, write_config

TRUSTED = "http://localhost:3000"
EVIL = "http://evil.example"
CHAT = "/v1/chat/completions"
ANTHROPIC_BODY = {"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture(scope="module")
def gw(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("origins")
    cfg = write_config(
        tmp / "hearth.toml",
        [{"name": "tiny", "path": str(tiny_model)}],
        server={"cors_origins": [TRUSTED], "allowed_hosts": ["hearth.test"]},
    )
    g = Gateway(["--config", str(cfg)], tmp / "gateway.log")
    try:
        g.wait_ready()
        yield g
    finally:
        g.stop()


def loopback_hosts(gw: Gateway) -> list[str]:
    return [f"localhost:{gw.port}", f"127.0.0.1:{gw.port}", f"[::1]:{gw.port}"]


def tokens_processed(gw: Gateway) -> float:
    """Prompt plus completion tokens the workers have processed, and generations answered, from
    /metrics (absent until the first one)."""
    text = gw.http.get("/metrics").text
    assert "hearth_loaded_models" in text
    tokens = re.findall(r'^hearth_(?:prompt|completion)_tokens_total\{model="tiny"\} (\S+)$', text, re.M)
    answered = re.findall(r'^hearth_requests_total\{endpoint="[^"]+",model="tiny",status="200"\} (\S+)$', text, re.M)
    return sum(float(v) for v in tokens) + sum(float(v) for v in answered)


def worker_pids(gw: Gateway) -> list[int]:
    models = gw.http.get("/admin/models").json()["models"]
    (tiny,) = models
    assert tiny["state"] == "ready", tiny
    return [w["pid"] for w in tiny["workers"]]


def assert_forbidden(r: Any, code: str, anthropic: bool = False) -> None:
    assert r.status_code == 403, r.text
    assert r.headers["content-type"].startswith("application/json")
    if anthropic:
        assert r.json()["type"] == "error"
        assert r.json()["error"]["type"] == "permission_error"
    else:
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert err["code"] == code
    assert "access-control-allow-origin" not in r.headers


def test_a_dns_rebinding_host_is_refused(gw: Gateway) -> None:
    before = tokens_processed(gw), worker_pids(gw)
    host = {"Host": f"evil.example:{gw.port}"}
    assert_forbidden(gw.http.get("/v1/models", headers=host), "host_not_allowed")
    assert_forbidden(gw.http.get("/admin/models", headers=host), "host_not_allowed")
    assert_forbidden(gw.http.post(CHAT, json=chat("tiny", max_tokens=2), headers=host), "host_not_allowed")
    assert_forbidden(gw.http.post("/v1/messages", json=ANTHROPIC_BODY, headers=host), "", anthropic=True)
    assert_forbidden(gw.http.post("/admin/models/tiny/unload", headers=host), "host_not_allowed")
    # a loopback name on another port is not this server either (something forwarded it)
    assert_forbidden(gw.http.get("/v1/models", headers={"Host": "localhost:1"}), "host_not_allowed")
    assert (tokens_processed(gw), worker_pids(gw)) == before


def test_a_cross_site_form_cannot_unload_or_load(gw: Gateway) -> None:
    pids = worker_pids(gw)
    for path in ("/admin/models/tiny/unload", "/admin/models/tiny/load"):
        r = gw.http.post(path, headers={"Origin": EVIL, "Content-Type": "application/x-www-form-urlencoded"})
        assert_forbidden(r, "origin_not_allowed")
        assert EVIL in r.json()["error"]["message"] and "cors_origins" in r.json()["error"]["message"]
    # a sandboxed page or a file:// page sends Origin: null; a browser without Origin, Sec-Fetch-Site
    assert_forbidden(gw.http.post("/admin/models/tiny/unload", headers={"Origin": "null"}), "origin_not_allowed")
    r = gw.http.post("/admin/models/tiny/unload", headers={"Sec-Fetch-Site": "cross-site"})
    assert_forbidden(r, "origin_not_allowed")
    assert worker_pids(gw) == pids  # nothing unloaded, the same worker


def test_a_cross_site_text_plain_generation_is_refused_before_any_work(gw: Gateway) -> None:
    before = tokens_processed(gw)
    body = b'{"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}'
    plain = {"Origin": EVIL, "Content-Type": "text/plain"}
    assert_forbidden(gw.http.post(CHAT, content=body, headers=plain), "origin_not_allowed")  # 403, not 415
    as_json = {"Origin": EVIL, "Content-Type": "application/json"}
    assert_forbidden(gw.http.post(CHAT, content=body, headers=as_json), "origin_not_allowed")
    completion = {"model": "tiny", "prompt": "x", "max_tokens": 2}
    assert_forbidden(gw.http.post("/v1/completions", json=completion, headers=as_json), "origin_not_allowed")
    r = gw.http.post("/v1/messages", json=ANTHROPIC_BODY, headers=as_json)
    assert_forbidden(r, "", anthropic=True)
    r = gw.http.post("/v1/messages/count_tokens", json=ANTHROPIC_BODY, headers=as_json)
    assert_forbidden(r, "", anthropic=True)
    # Ollama's native API and embeddings too, each in its own error format
    for path, body in (
        ("/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "stream": False}),
        ("/api/generate", {"model": "tiny", "prompt": "Hi", "stream": False}),
        ("/api/show", {"model": "tiny"}),
    ):
        r = gw.http.post(path, json=body, headers=as_json)
        assert r.status_code == 403 and EVIL in r.json()["error"], (path, r.text)
    r = gw.http.post("/v1/embeddings", json={"model": "tiny", "input": "x"}, headers=as_json)
    assert_forbidden(r, "origin_not_allowed")
    # a foreign page's preflight is refused too (no CORS headers, so the browser stops there)
    pre = {"Origin": EVIL, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    assert_forbidden(gw.http.options(CHAT, headers=pre), "origin_not_allowed")
    assert tokens_processed(gw) == before  # no generation started


def test_the_same_requests_without_origin_from_loopback_hosts_succeed(gw: Gateway) -> None:
    for host in loopback_hosts(gw):
        h = {"Host": host}
        r = gw.http.get("/v1/models", headers=h)
        assert r.status_code == 200 and [m["id"] for m in r.json()["data"]] == ["tiny"], (host, r.text)
        before = tokens_processed(gw)
        r = gw.http.post(CHAT, json=chat("tiny", max_tokens=2), headers=h)
        assert r.status_code == 200, (host, r.text)
        assert tokens_processed(gw) > before
        r = gw.http.post("/v1/messages/count_tokens", json=ANTHROPIC_BODY, headers=h)
        assert r.status_code == 200 and r.json()["input_tokens"] > 0, (host, r.text)
        # Hearth's own origin (a page it serves) is not cross-site
        r = gw.http.post(CHAT, json=chat("tiny", max_tokens=1), headers={**h, "Origin": f"http://{host}"})
        assert r.status_code == 200, (host, r.text)
        same = {**h, "Sec-Fetch-Site": "same-origin"}
        r = gw.http.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 1}, headers=same)
        assert r.status_code == 200, (host, r.text)
    r = gw.http.get("/v1/models", headers={"Host": "hearth.test"})  # [server] allowed_hosts
    assert r.status_code == 200, r.text


def test_a_configured_origin_gets_a_preflight_and_a_streamed_answer(gw: Gateway) -> None:
    wanted = "authorization, x-api-key, anthropic-version, content-type"
    pre = {"Origin": TRUSTED, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": wanted}
    for path in (CHAT, "/v1/messages"):
        r = gw.http.options(path, headers=pre)
        assert r.status_code == 204, r.text
        assert r.content == b""
        assert r.headers["access-control-allow-origin"] == TRUSTED
        assert "POST" in [m.strip() for m in r.headers["access-control-allow-methods"].split(",")]
        allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
        assert {"authorization", "x-api-key", "anthropic-version", "content-type"} <= allowed
    headers = {"Origin": TRUSTED}
    with gw.http.stream("POST", CHAT, json=chat("tiny", max_tokens=3, stream=True), headers=headers) as r:
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == TRUSTED
        assert "origin" in r.headers["vary"].lower()
        events = sse_events(r)
    assert events[-1] == "[DONE]" and events[0]["object"] == "chat.completion.chunk"
    with gw.http.stream("POST", "/v1/messages", json={**ANTHROPIC_BODY, "stream": True}, headers=headers) as r:
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == TRUSTED
        assert "request-id" in r.headers["access-control-expose-headers"]
        assert "event: message_stop" in r.read().decode()
    # a trusted page's error still carries the CORS headers, so it can read it
    r = gw.http.post(CHAT, json={"model": "nope", "messages": []}, headers=headers)
    assert r.status_code in (400, 404) and r.headers["access-control-allow-origin"] == TRUSTED


def test_unload_and_load_without_origin_still_work(gw: Gateway) -> None:
    h = {"Host": f"localhost:{gw.port}"}
    r = gw.http.post("/admin/models/tiny/unload", headers=h)
    assert r.status_code == 200 and r.json()["state"] == "unloaded", r.text
    r = gw.http.post("/admin/models/tiny/load", headers=h)
    assert r.status_code == 200 and r.json()["state"] == "ready", r.text


def _serve(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(free_port()), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_off_loopback_without_a_key_refuses_to_start_when_required(tiny_model: Path, tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "hearth.toml",
        [{"name": "tiny", "path": str(tiny_model)}],
        server={"require_api_key_off_loopback": True},
    )
    p = _serve(cfg, "--host", "0.0.0.0")  # refused before anything binds
    assert p.returncode == 2, p.stdout + p.stderr
    assert "require_api_key_off_loopback" in p.stderr and "0.0.0.0" in p.stderr
    assert "Traceback" not in p.stderr


def test_bad_browser_settings_fail_fast(tiny_model: Path, tmp_path: Path) -> None:
    for server, named in (
        ({"cors_origins": ["http://localhost:3000/"]}, "cors_origins"),
        ({"allowed_hosts": ["hearth.test:8080"]}, "allowed_hosts"),
    ):
        cfg = write_config(tmp_path / "hearth.toml", [{"name": "tiny", "path": str(tiny_model)}], server=server)
        p = _serve(cfg)
        assert p.returncode == 2 and named in p.stderr, p.stdout + p.stderr


def test_cors_star_lets_any_page_in_and_says_so(tiny_model: Path, tmp_path: Path) -> None:
    with serving(tmp_path, [{"name": "tiny", "path": str(tiny_model)}], server={"cors_origins": "*"}) as g:
        warnings = g.http.get("/ready").json()["warnings"]
        assert any("ANY web page" in w for w in warnings), warnings
        assert "cors_origins" in g.log() and "SECURITY" in g.log()
        r = g.http.post(CHAT, json=chat("tiny", max_tokens=1), headers={"Origin": EVIL})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*", r.text
        pre = {"Origin": EVIL, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-api-key"}
        r = g.http.options(CHAT, headers=pre)
        assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "*"
        assert g.http.post(CHAT, headers={"Host": "evil.example"}).status_code == 403  # the Host check still holds


def test_no_warnings_by_default(gw: Gateway) -> None:
    assert "warnings" not in gw.http.get("/ready").json()
