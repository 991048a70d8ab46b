"""Worker groups, the pure part: checking ``[models.distributed]``, the hostfiles and each rank's
environment.

A worker group is one model split over N processes (ranks) with MLX's own distributed backend
(``mx.distributed``) and mlx-lm's sharding; the gateway treats it as one replica. Rank 0 speaks
the wire protocol; the other ranks follow its batch decisions (worker/group.py). The group is
started either by Hearth itself, each rank with the environment ``mlx.launch`` would give it
(``MLX_RANK``, ``MLX_HOSTFILE`` holding the ring's addresses), or by ``mlx.launch`` with a
hostfile in its own format (ranks on other machines, over SSH). Both shapes are built here, so
they are unit-tested without a process.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared.shape import Shape, ShapeError, read_shape

BACKENDS = ("ring", "jaccl", "mpi", "nccl")
STRATEGIES = ("tensor", "pipeline")
LAUNCHERS = ("auto", "hearth", "mlx.launch")
DEFAULT_PORT = 32323  # mlx.launch's --starting-port


class GroupConfigError(ValueError):
    """A ``[models.distributed]`` table that can't be served; the message names the numbers."""


def is_local(host: str) -> bool:
    return host.startswith("127.") or host in ("localhost", "::1", "[::1]")


def is_this_machine(host: str) -> bool:
    """A loopback name, or an address a socket on this machine can bind (one of its own)."""
    if is_local(host):
        return True
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((_ip(host), 0))
        return True
    except OSError:
        return False


def launcher_of(hosts: Sequence[str], backend: str, launcher: str) -> str:
    """Who starts the ranks: Hearth itself (every rank on this machine, ring backend) or
    ``mlx.launch`` (ranks elsewhere, or a backend whose set-up only it knows)."""
    if launcher != "auto":
        return launcher
    return "hearth" if backend == "ring" and all(is_local(h) for h in hosts) else "mlx.launch"


def check_split(shape: Shape, ranks: int, strategy: str, pipelines: bool | None = None) -> None:
    """Raise ``GroupConfigError`` when ``shape`` can't be split over ``ranks`` that way.
    ``pipelines``: whether mlx-lm's model for this architecture has a pipeline split (None:
    unknown, left to the worker)."""
    if strategy == "tensor":
        bad = [
            f"{n} {what}"
            for n, what in (
                (shape.heads, "attention heads"),
                (shape.kv_heads, "KV heads"),
                (shape.intermediate, "MLP units"),
            )
            if n % ranks
        ]
        if bad:
            fits = [n for n in range(2, shape.kv_heads + 1) if _divides(shape, n)]
            hint = f"; group sizes that work: {', '.join(map(str, fits))}" if fits else ""
            raise GroupConfigError(
                f"tensor parallelism over {ranks} ranks needs the model's heads to divide by {ranks}: "
                f"{shape.model_type or 'the model'} has {shape.heads} attention heads, {shape.kv_heads} KV heads "
                f"and {shape.intermediate} MLP units ({', '.join(bad)} don't split in {ranks}){hint}"
            )
    elif strategy == "pipeline":
        if pipelines is False:
            raise GroupConfigError(
                f'strategy = "pipeline": mlx-lm\'s {shape.model_type} model has no pipeline split; '
                'use strategy = "tensor"'
            )
        if shape.layers < ranks:
            raise GroupConfigError(
                f"a pipeline over {ranks} ranks needs at least {ranks} layers; the model has {shape.layers}"
            )


def _divides(shape: Shape, n: int) -> bool:
    return shape.heads % n == 0 and shape.kv_heads % n == 0 and shape.intermediate % n == 0


def validate(
    hosts: Sequence[str],
    backend: str,
    strategy: str,
    launcher: str,
    port: int,
    path: str,
    kind: str,
    replicas: int,
    pipelines: bool | None = None,
) -> None:
    """Everything about a model's ``[models.distributed]`` table that can be checked before a
    process starts, the split included (the model's files are read for it)."""
    if kind != "chat":
        raise GroupConfigError("only chat models run as a worker group")
    if replicas != 1:
        raise GroupConfigError(f"a worker group is one replica: replicas = {replicas} must be 1")
    if len(hosts) < 2:
        raise GroupConfigError(f"hosts lists {len(hosts)} rank(s); a group needs at least 2 (one entry per rank)")
    if not all(isinstance(h, str) and h.strip() and h == h.strip() for h in hosts):
        raise GroupConfigError(f"hosts = {list(hosts)!r}: each entry is a host name or address")
    if backend not in BACKENDS:
        raise GroupConfigError(f"backend = {backend!r} must be one of {', '.join(BACKENDS)}")
    if strategy not in STRATEGIES:
        raise GroupConfigError(f"strategy = {strategy!r} must be one of {', '.join(STRATEGIES)}")
    if launcher not in LAUNCHERS:
        raise GroupConfigError(f"launcher = {launcher!r} must be one of {', '.join(LAUNCHERS)}")
    if not 0 <= port <= 65535 - len(hosts):
        raise GroupConfigError(f"port = {port} must be 0 (free ports) or a port with {len(hosts)} more above it")
    if not is_this_machine(hosts[0]):
        # rank 0 speaks to the gateway over its private ipc:// socket, so it runs beside the gateway
        raise GroupConfigError(
            f"hosts[0] = {hosts[0]!r} is not an address of this machine: rank 0 runs beside the gateway "
            "(127.0.0.1, or this machine's address on the link the other hosts use)"
        )
    if is_local(hosts[0]) and not all(is_local(h) for h in hosts):
        raise GroupConfigError(
            f"hosts[0] = {hosts[0]!r}: the ranks on other hosts can't reach rank 0 at a loopback address; "
            "list this machine's address on the link they use (e.g. its Thunderbolt bridge address)"
        )
    who = launcher_of(hosts, backend, launcher)
    if who == "hearth" and (backend != "ring" or not all(is_local(h) for h in hosts)):
        raise GroupConfigError(
            'launcher = "hearth" starts ring ranks on this machine only; ranks on other hosts, or the '
            f'{backend} backend, need launcher = "mlx.launch" (or "auto")'
        )
    try:
        shape = read_shape(path)
    except (ShapeError, OSError) as e:
        raise GroupConfigError(f"can't read the model's shape for the split: {e}") from None
    check_split(shape, len(hosts), strategy, pipelines)


def check_hostfile(path: str, hosts: Sequence[str], launcher: str) -> None:
    """An operator's ``mlx.launch`` hostfile: JSON with one ``hosts`` entry per rank, in the
    order of ``hosts`` (whose names ``hearth ps`` shows), for mlx.launch."""
    import json

    if launcher != "mlx.launch":
        raise GroupConfigError('hostfile is for launcher = "mlx.launch" (Hearth writes the ring\'s own)')
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise GroupConfigError(f"hostfile {path}: {e}") from None
    listed = data.get("hosts") if isinstance(data, dict) else data
    if not isinstance(listed, list) or len(listed) != len(hosts):
        n = len(listed) if isinstance(listed, list) else 0
        raise GroupConfigError(f"hostfile {path} lists {n} host(s); hosts lists {len(hosts)} ranks")


# -- hostfiles and environments -------------------------------------------------------------------


def ring_hostfile(hosts: Sequence[str], ports: Sequence[int]) -> list[list[str]]:
    """``MLX_HOSTFILE``'s contents for the ring backend, as ``mlx.launch`` writes them: one list
    of ``ip:port`` per rank (one connection per address)."""
    if len(ports) != len(hosts):
        raise ValueError("one port per rank")
    return [[f"{_ip(h)}:{p}"] for h, p in zip(hosts, ports, strict=True)]


def _ip(host: str) -> str:
    """The ring backend wants addresses, not names (mlx.launch refuses names for it)."""
    h = host.strip("[]")
    if h == "localhost":
        return "127.0.0.1"
    try:
        ipaddress.ip_address(h)
        return h
    except ValueError:
        return socket.gethostbyname(h)


def launch_hostfile(hosts: Sequence[str], backend: str, envs: Sequence[str] = ()) -> dict[str, Any]:
    """A hostfile in ``mlx.launch --hostfile``'s JSON format: one entry per rank, the SSH name
    and the address the ring connects over (jaccl needs its RDMA devices listed by the operator,
    so for it the operator's own hostfile is the way: docs/operations.md)."""
    return {
        "backend": backend,
        "envs": list(envs),
        # mlx.launch runs a rank without SSH only for the name 127.0.0.1; the ring connects over `ips`
        "hosts": [
            {"ssh": "127.0.0.1" if is_this_machine(h) else h, "ips": [_ip(h)] if backend == "ring" else []}
            for h in hosts
        ],
    }


def rank_env(rank: int, hostfile_path: str) -> dict[str, str]:
    """What ``mlx.launch --backend ring`` exports for a rank, plus one BLAS thread per rank
    (ranks on one machine would otherwise each start a thread per core and fight over them)."""
    return {
        "MLX_RANK": str(rank),
        "MLX_HOSTFILE": hostfile_path,
        **BLAS_ONE_THREAD,
    }


BLAS_ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


@dataclass(frozen=True)
class Ports:
    """The ring's ports (one per rank) and the followers' channel to rank 0."""

    ring: tuple[int, ...]
    channel: int


def ports_from(base: int, ranks: int) -> Ports:
    """Consecutive ports from ``base``: the ring's first, as mlx.launch numbers them, then the channel."""
    return Ports(tuple(range(base, base + ranks)), base + ranks)


def pipelines(model_type: str) -> bool | None:
    """Whether mlx-lm's model for ``model_type`` has a pipeline split (its inner model takes
    ``PipelineMixin``), read from the installed mlx-lm's source without importing it (the
    gateway never imports MLX); None when that can't be told."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(f"mlx_lm.models.{model_type}")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    try:
        with open(spec.origin, encoding="utf-8") as f:
            return "PipelineMixin" in f.read()
    except OSError:
        return None
