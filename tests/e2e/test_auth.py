"""The optional API key: every API path needs it (Bearer or x-api-key), the probes don't, and a
gateway told to use a key that isn't set refuses to start, naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import ROOT, Gateway, chat, free_port, sse_events, write_config

KEY_ENV = "HEARTH_TEST_KEY"
KEY = "sekret"
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def config(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("auth")
    return write_config(
        tmp / "hearth.toml", [{"name": "tiny", "path": str(tiny_model)}], server={"api_key_env": KEY_ENV}
    )


@pytest.fixture(scope="module")
def gw(config: Path) -> Iterator[Gateway]:
    g = Gateway(["--config", str(config)], config.parent / "gateway.log", env={KEY_ENV: KEY})
    try:
        g.wait_ready()
        yield g
    finally:
        g.stop()


def assert_unauthorized(r) -> None:  # type: ignore[no-untyped-def]
    assert r.status_code == 401, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "authentication_error"
    assert err["code"] == "invalid_api_key"
    assert "key" in err["message"].lower()
    assert KEY not in r.text


BAD_HEADERS = {
    "none": {},
    "wrong-bearer": {"Authorization": "Bearer wrong"},
    "wrong-x-api-key": {"x-api-key": "wrong"},
    "bearer-without-key": {"Authorization": "Bearer"},
    "key-without-bearer": {"Authorization": KEY},
    "basic-scheme": {"Authorization": f"Basic {KEY}"},
    "prefix-of-key": {"Authorization": f"Bearer {KEY[:-1]}"},
    "key-with-suffix": {"Authorization": f"Bearer {KEY}x"},
    "wrong-case": {"Authorization": f"Bearer {KEY.upper()}"},
    "wrong-bearer-beats-right-x-api-key": {"Authorization": "Bearer wrong", "x-api-key": KEY},
}


@pytest.mark.parametrize("headers", list(BAD_HEADERS.values()), ids=list(BAD_HEADERS))
def test_chat_needs_the_key(gw: Gateway, headers: dict[str, str]) -> None:
    assert_unauthorized(gw.http.post(CHAT, json=chat("tiny", max_tokens=2), headers=headers))


GOOD_HEADERS = {
    "bearer": {"Authorization": f"Bearer {KEY}"},
    "bearer-lowercase-scheme": {"authorization": f"bearer {KEY}"},
    "x-api-key": {"x-api-key": KEY},
    "X-Api-Key-capitalised": {"X-API-Key": KEY},
}


@pytest.mark.parametrize("headers", list(GOOD_HEADERS.values()), ids=list(GOOD_HEADERS))
def test_chat_with_the_key(gw: Gateway, headers: dict[str, str]) -> None:
    r = gw.http.post(CHAT, json=chat("tiny", max_tokens=2), headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["finish_reason"] in ("length", "stop")


def test_streaming_with_the_key(gw: Gateway) -> None:
    with gw.http.stream("POST", CHAT, json=chat("tiny", max_tokens=3, stream=True), headers={"x-api-key": KEY}) as r:
        assert r.status_code == 200
        assert sse_events(r)[-1] == "[DONE]"


def test_every_api_path_needs_the_key(gw: Gateway) -> None:
    assert_unauthorized(gw.http.get("/v1/models"))
    assert_unauthorized(gw.http.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 1}))
    assert_unauthorized(gw.http.get("/v1/nope"))  # no probing the routes without a key
    assert_unauthorized(gw.http.post(CHAT, content=b"not json", headers={"content-type": "application/json"}))
    r = gw.http.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200
    assert [m["id"] for m in r.json()["data"]] == ["tiny"]
    r = gw.http.post(
        "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 1}, headers={"x-api-key": KEY}
    )
    assert r.status_code == 200, r.text


def test_admin_needs_the_key_and_hearth_ps_sends_it(gw: Gateway) -> None:
    assert_unauthorized(gw.http.get("/admin/models"))
    assert_unauthorized(gw.http.get("/admin/models", headers={"Authorization": "Bearer wrong"}))
    assert_unauthorized(gw.http.post("/admin/models/tiny/unload"))
    assert_unauthorized(gw.http.post("/admin/models/nope/load"))  # no probing model names either
    r = gw.http.get("/admin/models", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and [m["name"] for m in r.json()["models"]] == ["tiny"]
    assert gw.http.get("/ready").json()["models"]["tiny"]["state"] == "ready"  # nothing was unloaded

    env = {**os.environ, "PYTHONPATH": str(ROOT), "HEARTH_TEST_KEY": KEY}
    env.pop("HEARTH_API_KEY", None)
    ps = [sys.executable, "-m", "gateway", "ps", "--url", gw.url]
    without = subprocess.run(ps, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert without.returncode == 1 and "401" in without.stderr and KEY not in without.stderr
    with_key = subprocess.run(
        [*ps, "--api-key-env", KEY_ENV], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )
    assert with_key.returncode == 0, with_key.stderr
    assert with_key.stdout.splitlines()[1].split()[:2] == ["tiny", "ready"]
    from_default_env = subprocess.run(
        ps, cwd=ROOT, env={**env, "HEARTH_API_KEY": KEY}, capture_output=True, text=True, timeout=30
    )
    assert from_default_env.returncode == 0 and "tiny" in from_default_env.stdout


def test_probes_are_open(gw: Gateway) -> None:
    assert gw.http.get("/health").status_code == 200
    r = gw.http.get("/ready")
    assert r.status_code == 200 and r.json()["ready"] is True
    assert gw.http.get("/metrics").status_code == 200


def _serve_without_key(config: Path, env_value: str | None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(KEY_ENV, None)
    if env_value is not None:
        env[KEY_ENV] = env_value
    cmd = [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(free_port())]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("env_value", [None, ""], ids=["unset", "empty"])
def test_a_missing_key_variable_fails_fast(config: Path, env_value: str | None) -> None:
    try:
        p = _serve_without_key(config, env_value)
    except subprocess.TimeoutExpired as e:  # it would be serving without a key, or hanging
        pytest.fail(f"the gateway did not exit: {e.stderr!r}")
    assert p.returncode != 0
    out = p.stdout + p.stderr
    assert KEY_ENV in out, out
    assert "Traceback" not in out, out  # a clear message, not a crash
