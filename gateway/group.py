"""Starting a worker group and watching it as one process.

A worker group (shared/group.py) is one replica to the supervisor: ``start_group`` starts its
ranks and returns a ``GroupProcess``, which the replica cycle, the watchdog and the stop ladder
use as they use a worker's ``asyncio.subprocess.Process`` (``pid``, ``returncode``, ``wait``,
``terminate``, ``kill``). Its ``wait`` ends when the group is down: any rank that exits takes
the others with it (SIGKILL), since no rank can go on alone (the others would wait in a
collective for ever), and the exit is reported as the first rank's. After a drain rank 0 exits
0 and tells its followers to go; they get ``FOLLOWER_GRACE`` seconds to save their prompt cache
shards and leave before they are killed.

With ``launcher = "hearth"`` (every rank a ring rank on this machine) each rank is exec'd here
with what ``mlx.launch`` would export for it (``MLX_RANK``, ``MLX_HOSTFILE``: a file in the
runtime folder holding the ring's addresses) and one BLAS thread. With ``mlx.launch`` the
launcher is the one child: it starts the ranks (over SSH where a host is not this one), and
ends the others when one fails; rank 0 reports every rank's pid and host in its heartbeats.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

import orjson

from shared import group
from shared.config import DistributedConfig, ModelConfig

log = logging.getLogger("hearth.supervisor")
FOLLOWER_GRACE = 10.0  # after rank 0's clean exit: the followers save their cache shards and go


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (held open together, so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def plan_ports(d: DistributedConfig) -> group.Ports:
    if d.port:
        return group.ports_from(d.port, len(d.hosts))
    ports = free_ports(len(d.hosts) + 1)
    return group.Ports(tuple(ports[:-1]), ports[-1])


class GroupProcess:
    """A worker group's processes as one (module docstring). ``procs[0]`` is rank 0 (or, under
    mlx.launch, the launcher)."""

    def __init__(self, procs: list[asyncio.subprocess.Process], hosts: list[str], launcher: bool = False) -> None:
        self.procs = procs
        self.hosts = hosts
        self.launcher = launcher  # procs[0] is mlx.launch, leading a process group of its own
        self.returncode: int | None = None
        self.why = ""  # which rank ended the group, and how
        self._done = asyncio.Event()
        self._task = asyncio.create_task(self._watch())

    @property
    def pid(self) -> int:
        return self.procs[0].pid

    def ranks(self) -> list[dict[str, object]]:
        """Each rank's pid and host, as spawned (mlx.launch's ranks come in rank 0's heartbeats)."""
        if len(self.procs) == 1:
            return []
        return [
            {"rank": r, "pid": p.pid, "host": h} for r, (p, h) in enumerate(zip(self.procs, self.hosts, strict=True))
        ]

    async def _watch(self) -> None:
        waits = {asyncio.create_task(p.wait()): r for r, p in enumerate(self.procs)}
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        first = min(waits[t] for t in done)
        rc = self.procs[first].returncode
        assert rc is not None
        if self.launcher:
            self.why = f"mlx.launch exited with {_describe(rc)} (its log names the rank that ended the group)"
        if len(self.procs) > 1:
            self.why = f"rank {first} exited with {_describe(rc)}"
            if first == 0 and rc == 0 and pending:  # a drain: rank 0 told them to go
                _, pending = await asyncio.wait(pending, timeout=FOLLOWER_GRACE)
            if pending:
                if not (first == 0 and rc == 0):
                    log.warning("worker group: %s; ending its other ranks", self.why)
                self._signal_all(signal.SIGKILL)
                await asyncio.wait(pending)
        if self.launcher:  # mlx.launch is gone: so is anything it left in its session (a rank stuck in a collective)
            self._signal_all(signal.SIGKILL)
        self.returncode = rc
        self._done.set()

    async def wait(self) -> int:
        await self._done.wait()
        assert self.returncode is not None
        return self.returncode

    def _signal_all(self, sig: int) -> None:
        if self.launcher:  # the launcher, its local ranks and its SSH sessions (whose remote ranks then hang up)
            try:
                os.killpg(self.procs[0].pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            return
        for p in self.procs:
            if p.returncode is None:
                try:
                    p.send_signal(sig)
                except ProcessLookupError:
                    pass

    def terminate(self) -> None:
        """Rank 0 takes SIGTERM as a drain and lets the followers go. Under mlx.launch (which
        does not pass signals on) the whole process group gets it: the stop ladder's second rung."""
        if self.launcher:
            self._signal_all(signal.SIGTERM)
        elif self.procs[0].returncode is None:
            self.procs[0].terminate()

    def kill(self) -> None:
        self._signal_all(signal.SIGKILL)


def _describe(rc: int) -> str:
    return f"signal {signal.Signals(-rc).name}" if rc < 0 and -rc in signal.Signals._value2member_map_ else f"code {rc}"


def launcher_command() -> list[str]:
    """``mlx.launch`` of this interpreter's environment."""
    found = shutil.which("mlx.launch", path=str(Path(sys.executable).parent)) or shutil.which("mlx.launch")
    if found is None:
        raise OSError("mlx.launch is not installed (it comes with the mlx package)")
    return [found]


def launch_command(
    d: DistributedConfig, hostfile: Path, ports: group.Ports, worker: list[str], env: Mapping[str, str]
) -> list[str]:
    """``mlx.launch --hostfile FILE --backend B [--starting-port P] --env ... -- WORKER``: the
    ranks' environment (Hearth on PYTHONPATH, one BLAS thread) travels in ``--env``, as the
    launcher passes nothing else of ours to a host it reaches over SSH."""
    keep = ("PYTHONPATH", "LD_PRELOAD", "HEARTH_LOG_LEVEL", *group.BLAS_ONE_THREAD)
    cmd = [*launcher_command(), "--hostfile", str(hostfile), "--backend", d.backend, "--python", worker[0]]
    if d.backend == "ring":
        cmd += ["--starting-port", str(ports.ring[0])]
    for k in keep:
        if k in env:
            cmd += ["--env", f"{k}={env[k]}"]
    return [*cmd, "--", *worker[1:]]


async def start_group(
    cfg: ModelConfig, worker: list[str], env: Mapping[str, str], runtime: Path, name: str
) -> GroupProcess:
    """Start the ranks of ``cfg``'s group; ``worker`` is the worker's command line without the
    group channel (added here: rank 0's host, a port of the group's)."""
    d = cfg.distributed
    assert d is not None
    ports = plan_ports(d)
    worker = [*worker, "--group-channel", f"tcp://{group._ip(d.hosts[0])}:{ports.channel}"]
    env = {**env, **group.BLAS_ONE_THREAD}
    if group.launcher_of(d.hosts, d.backend, d.launcher) == "hearth":
        hostfile = runtime / f"{name}.ring.json"
        hostfile.write_bytes(orjson.dumps(group.ring_hostfile(d.hosts, ports.ring)))
        procs: list[asyncio.subprocess.Process] = []
        try:
            for rank in range(len(d.hosts)):
                procs.append(
                    await asyncio.create_subprocess_exec(*worker, env={**env, **group.rank_env(rank, str(hostfile))})
                )
        except OSError:
            for p in procs:
                p.kill()
            raise
        return GroupProcess(procs, list(d.hosts))
    if d.hostfile is not None:  # the operator's own (jaccl's RDMA devices, several addresses per host)
        hostfile = Path(d.hostfile)
    else:
        hostfile = runtime / f"{name}.hosts.json"
        hostfile.write_bytes(orjson.dumps(group.launch_hostfile(d.hosts, d.backend)))
    # mlx.launch reads the terminal for its ranks' stdin: give it none. A session of its own, so
    # that the group's end reaches every process it started
    proc = await asyncio.create_subprocess_exec(
        *launch_command(d, hostfile, ports, worker, env),
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    return GroupProcess([proc], list(d.hosts), launcher=True)


def parent_pid_ok(cfg: ModelConfig) -> bool:
    """Whether ranks can watch the gateway's pid (they are its children only when Hearth starts them)."""
    d = cfg.distributed
    return d is None or group.launcher_of(d.hosts, d.backend, d.launcher) == "hearth"
