"""``GroupProcess``: a worker group's ranks as one process to the supervisor. Real child
processes (``sleep``, a shell), no MLX: any rank that exits takes the others down and names
itself; after rank 0's clean exit the followers get their grace to leave on their own."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

from gateway import group as gg
from gateway.group import GroupProcess


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for whoever reaps orphans here)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return "State:\tZ" not in f.read()
    except FileNotFoundError:
        return False


async def spawn(*cmd: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(*cmd)


def test_a_follower_that_dies_takes_the_group_down() -> None:
    async def run() -> tuple[int, str, list[int | None]]:
        procs = [await spawn("sleep", "60") for _ in range(3)]
        g = GroupProcess(procs, ["127.0.0.1"] * 3)
        assert g.pid == procs[0].pid and g.returncode is None
        assert [r["rank"] for r in g.ranks()] == [0, 1, 2]
        await asyncio.sleep(0.2)
        os.kill(procs[2].pid, signal.SIGKILL)
        rc = await asyncio.wait_for(g.wait(), 10)
        return rc, g.why, [p.returncode for p in procs]

    rc, why, codes = asyncio.run(run())
    assert rc == -signal.SIGKILL and why == "rank 2 exited with signal SIGKILL"
    assert codes == [-signal.SIGKILL] * 3  # rank 0 and rank 1 were killed with it


def test_rank_0s_clean_exit_leaves_the_followers_time_to_go() -> None:
    async def run() -> tuple[int, str, float]:
        rank0 = await spawn(sys.executable, "-c", "pass")
        follower = await spawn(sys.executable, "-c", "import time; time.sleep(0.5)")
        t = time.monotonic()
        g = GroupProcess([rank0, follower], ["127.0.0.1"] * 2)
        rc = await asyncio.wait_for(g.wait(), 10)
        assert follower.returncode == 0  # it left on its own, not killed
        return rc, g.why, time.monotonic() - t

    rc, why, took = asyncio.run(run())
    assert rc == 0 and why == "rank 0 exited with code 0" and took < gg.FOLLOWER_GRACE


def test_a_follower_that_outstays_the_grace_is_killed() -> None:
    gg.FOLLOWER_GRACE, saved = 0.3, gg.FOLLOWER_GRACE
    try:

        async def run() -> int | None:
            rank0 = await spawn(sys.executable, "-c", "pass")
            follower = await spawn("sleep", "60")
            g = GroupProcess([rank0, follower], ["127.0.0.1"] * 2)
            await asyncio.wait_for(g.wait(), 10)
            return follower.returncode

        assert asyncio.run(run()) == -signal.SIGKILL
    finally:
        gg.FOLLOWER_GRACE = saved


def test_kill_ends_every_rank_and_terminate_only_rank_0() -> None:
    async def run() -> tuple[list[int | None], list[int | None]]:
        procs = [await spawn("sleep", "60") for _ in range(2)]
        g = GroupProcess(procs, ["127.0.0.1"] * 2)
        await asyncio.sleep(0.2)  # the child watcher knows them (a child reaped before it does reads 255)
        g.terminate()  # rank 0 drains on SIGTERM (here: sleep just ends); the follower then goes with it
        await asyncio.wait_for(g.wait(), 10)
        first = [p.returncode for p in procs]
        more = [await spawn("sleep", "60") for _ in range(2)]
        g2 = GroupProcess(more, ["127.0.0.1"] * 2)
        await asyncio.sleep(0.2)  # the child watcher knows them (a child reaped before it does reads 255)
        g2.kill()
        await asyncio.wait_for(g2.wait(), 10)
        return first, [p.returncode for p in more]

    first, killed = asyncio.run(run())
    assert first == [-signal.SIGTERM, -signal.SIGKILL]
    assert killed == [-signal.SIGKILL, -signal.SIGKILL]


def test_mlx_launchs_session_is_ended_with_it() -> None:
    """Under mlx.launch the group is the launcher's session: what it leaves behind is killed."""

    async def run() -> tuple[int, bool]:
        # a "launcher" that starts a child in its session and exits at once
        proc = await asyncio.create_subprocess_exec(
            "sh", "-c", "sleep 60 >/dev/null & echo $! ; exit 3", stdout=asyncio.subprocess.PIPE, start_new_session=True
        )
        assert proc.stdout is not None
        child = int((await proc.stdout.readline()).decode())
        g = GroupProcess([proc], ["127.0.0.1", "10.0.0.2"], launcher=True)
        rc = await asyncio.wait_for(g.wait(), 10)
        await asyncio.sleep(0.2)
        return rc, running(child)

    rc, alive = asyncio.run(run())
    assert rc == 3 and not alive
