"""Starting and stopping a real Hearth gateway (and so its real workers) for tests.

Each gateway runs as its own process (``python -m gateway serve``) on a free loopback port,
logs into a file the test can show on failure, and is stopped by the fixture that started it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml_value(v: Any) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    return json.dumps(v)


def write_config(path: Path, models: list[dict[str, Any]], server: dict[str, Any] | None = None) -> Path:
    lines = ["[server]"] + [f"{k} = {toml_value(v)}" for k, v in (server or {}).items()]
    for m in models:
        lines += ["", "[[models]]"] + [f"{k} = {toml_value(v)}" for k, v in m.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def stop_process(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> int:
    """Send ``sig`` to ``proc`` if it still runs and wait ``timeout`` seconds for it to exit, then
    kill it; its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def broken_model(folder: Path) -> Path:
    """A model folder under ``folder`` that no worker can load: a config.json and no weights."""
    path = folder / "broken-model"
    path.mkdir()
    (path / "config.json").write_text('{"model_type": "llama"}')
    return path


class Gateway:
    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        cmd = [sys.executable, "-m", "gateway", "serve", *args, "--port", str(self.port)]
        # this checkout first; an inherited PYTHONPATH (packages carried to a GPU machine) after it
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        full_env = {**os.environ, "PYTHONPATH": path, **(env or {})}
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=self.url, timeout=120)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def wait_health(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.http.get("/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"gateway not healthy in {timeout}s:\n{self.log()}")

    def wait_ready(self, timeout: float = 180) -> dict[str, Any]:
        self.wait_health()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.http.get("/ready")
            if r.status_code == 200:
                return r.json()
            time.sleep(0.2)
        raise TimeoutError(f"gateway not ready in {timeout}s: {r.text}\n{self.log()}")

    def workers(self, model: str) -> list[dict[str, Any]]:
        return self.http.get("/ready").json()["models"][model]["workers"]

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGINT, 30)
        self.http.close()
        self._log.close()


@contextlib.contextmanager
def serving(
    tmp: Path,
    models: list[dict[str, Any]],
    server: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    ready: bool = True,
) -> Iterator[Gateway]:
    """A gateway on a config written into ``tmp``; waits for /ready (or only /health); always stopped."""
    cfg = write_config(tmp / "hearth.toml", models, server)
    gw = Gateway(["--config", str(cfg)], tmp / "gateway.log", env=env)
    try:
        if ready:
            gw.wait_ready()
        else:
            gw.wait_health()
        yield gw
    finally:
        gw.stop()


def chat(model: str, content: str = "Hello", **params: Any) -> dict[str, Any]:
    """A chat completion body (greedy unless the test says otherwise)."""
    return {"model": model, "messages": [{"role": "user", "content": content}], "temperature": 0, **params}


def sse_events(response: httpx.Response) -> list[Any]:
    """Parse a whole SSE body into JSON events (and the string "[DONE]")."""
    out: list[Any] = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


# OpenAI tool definitions for the tool-calling tests: one with a required argument, one without.
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    },
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
]


def alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")
