"""``hearth ps``: what a running Hearth has loaded, as a table (like ``ollama ps``) or JSON.

It reads ``GET /admin/models``; the API key comes from ``--api-key-env NAME`` or
``HEARTH_API_KEY``. MEMORY is what the workers really hold (RSS on Linux, the physical
footprint on macOS); MLX ACTIVE and MLX CACHE are MLX's own counters of it. A worker group (one model over
several ranks) counts as one replica; its ranks (pid, host, memory) and its memory per host are
listed under the table.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import httpx
import orjson

from shared.units import format_duration, format_size

COLUMNS = (
    "NAME", "STATE", "REPLICAS", "EST. MEMORY", "MEMORY", "MLX ACTIVE", "MLX CACHE", "RUNNING", "WAITING", "UPTIME",
    "UNTIL",
)  # fmt: skip


def _until(m: dict[str, Any]) -> str:
    """When the model unloads if it stays idle."""
    if m["state"] in ("unloaded", "failed"):
        return "-"
    if m["pinned"]:
        return "pinned"
    if m["expires_in_seconds"] is not None:
        return f"{format_duration(m['expires_in_seconds'])} from now"
    if m["keep_alive_seconds"] is None:
        return "forever"
    if m["running"] or m["waiting"]:
        return f"{format_duration(m['keep_alive_seconds'])} after use"
    return "-"


def rows(data: dict[str, Any]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for m in data["models"]:
        ready = sum(1 for w in m["workers"] if w["state"] == "ready")
        uptime = m["uptime_seconds"]
        out.append(
            (
                m["name"],
                m["state"],
                f"{ready}/{m['replicas']}",
                format_size(m["memory_estimate_bytes"]),
                format_size(m["memory_bytes"]),  # the workers' footprint (RSS / physical footprint)
                format_size(m.get("mlx_active_bytes")),
                format_size(m.get("mlx_cache_bytes")),
                str(m["running"]),
                str(m["waiting"]),
                format_duration(uptime) if uptime is not None else "-",
                _until(m),
            )
        )
    return out


def group_lines(data: dict[str, Any]) -> list[str]:
    """A worker group's ranks under the table: each rank's pid, host and memory, then the
    group's memory per host (a split model's footprint is the sum over its hosts)."""
    out: list[str] = []
    for m in data["models"]:
        for w in m["workers"]:
            for r in w.get("ranks") or []:
                mem = format_size(r["memory_bytes"]) if r.get("memory_bytes") is not None else "-"
                out.append(f"  {m['name']} {w['id']} rank {r['rank']}: pid {r['pid']} on {r['host']}, memory {mem}")
        hosts = m.get("memory_by_host") or {}
        if hosts:
            per = ", ".join(f"{h} {format_size(n)}" for h, n in hosts.items())
            out.append(f"  {m['name']} memory per host: {per}")
    return out


def table(data: dict[str, Any]) -> str:
    lines: list[tuple[str, ...]] = [COLUMNS, *rows(data)]
    widths = [max(len(r[i]) for r in lines) for i in range(len(COLUMNS))]
    text = ["   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in lines]
    groups = group_lines(data)
    if groups:
        text += ["", "worker groups:", *groups]
    limits = []
    if data.get("max_loaded_models"):
        limits.append(f"{data['loaded']}/{data['max_loaded_models']} models loaded")
    if data.get("memory_budget_bytes"):
        used = format_size(data["memory_estimate_bytes"])
        limits.append(f"{used} of {format_size(data['memory_budget_bytes'])} memory budget (estimated)")
    return "\n".join(text + ([""] + ["; ".join(limits)] if limits else []))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="hearth ps", description="Show the models of a running Hearth.")
    p.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway (default http://127.0.0.1:8080)")
    p.add_argument(
        "--api-key-env", default=None, help="environment variable holding the API key (default HEARTH_API_KEY)"
    )
    p.add_argument("--json", action="store_true", help="print /admin/models as JSON")
    args = p.parse_args(argv)
    key = os.environ.get(args.api_key_env or "HEARTH_API_KEY")
    if args.api_key_env and not key:
        print(f"hearth ps: the API key variable {args.api_key_env} is not set", file=sys.stderr)
        return 2
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        r = httpx.get(args.url.rstrip("/") + "/admin/models", headers=headers, timeout=10)
    except httpx.HTTPError as e:
        print(f"hearth ps: cannot reach {args.url}: {e}", file=sys.stderr)
        return 1
    if r.status_code != 200:
        try:
            message = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = r.text[:200]
        print(f"hearth ps: {r.status_code} from {args.url}: {message}", file=sys.stderr)
        return 1
    data = r.json()
    if args.json:
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(table(data))
    return 0
