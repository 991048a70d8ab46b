"""The channel between a worker group's rank 0 and its followers (ZeroMQ, orjson, no pickle).

Rank 0 binds a ROUTER on ``--group-channel`` (an address of its host); each follower connects a
DEALER named ``rank-N``, says ``join`` once it has loaded, and then sends a ``beat`` (its pid,
host and memory) every second. Rank 0 sends every follower the same ops, in order, *before* it
runs them itself: ``add`` (a ``generate`` message as the gateway sent it, through the wire
codec), ``cancel``, ``cancel_all``, ``step``, ``trim``, ``save``, ``beat`` and ``exit``. A
follower that runs them in that order on its own copy of the engine core takes every batch
decision rank 0 took, so all ranks run the same ``BatchGenerator`` step and meet in the same
collectives. The channel carries no secrets of its own but does carry prompts: it listens on
rank 0's host address only, like the ring backend's sockets (docs/operations.md).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import asdict, dataclass
from typing import Any

import orjson
import zmq

from shared.codec import ProtocolError, decode, encode
from shared.protocol import Generate
from shared.typecheck import STRICT, TypeProblem, check_json

log = logging.getLogger("hearth.worker")

# ops rank 0 sends its followers
ADD, CANCEL, CANCEL_ALL, STEP, TRIM, SAVE, BEAT, EXIT = (
    b"add", b"cancel", b"cancel_all", b"step", b"trim", b"save", b"beat", b"exit",
)  # fmt: skip
OPS = frozenset((ADD, CANCEL, CANCEL_ALL, STEP, TRIM, SAVE, BEAT, EXIT))
JOIN = b"join"  # follower -> rank 0, once loaded
JOIN_TIMEOUT = 300.0  # the ranks load in lockstep (collectives), so the followers come together


class ChannelError(RuntimeError):
    """The group's channel could not be set up (a follower never joined)."""


@dataclass(frozen=True)
class RankInfo:
    """A follower's ``join`` and ``beat``: who it is, and (in a beat) its memory in bytes.
    ``entries`` / ``tokens``: its prompt cache after the warm load (a join's), which must equal
    rank 0's or every rank starts cold (ranks must hold the same cache to take the same steps)."""

    __pydantic_config__ = STRICT
    rank: int
    pid: int
    host: str
    memory_bytes: int = 0
    mlx_active_bytes: int = 0
    mlx_cache_bytes: int = 0
    mlx_peak_bytes: int = 0
    entries: int = 0
    tokens: int = 0


def rank_info(payload: bytes) -> RankInfo:
    try:
        return check_json(RankInfo, payload)
    except (TypeProblem, ValueError) as e:
        raise ProtocolError(f"bad rank message: {e}") from None


def encode_generate(req: Generate) -> bytes:
    return encode(req)[1]


def decode_generate(payload: bytes) -> Generate:
    msg = decode(b"generate", payload)
    assert isinstance(msg, Generate)
    return msg


class LeaderChannel:
    """Rank 0's end: broadcasts ops, collects the followers' joins and beats."""

    def __init__(self, endpoint: str, followers: int) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a follower gone is an error here, not a silent drop
        self.sock.bind(endpoint)
        self.followers = followers
        self.peers: list[bytes] = []
        self.ranks: dict[int, RankInfo] = {}

    def wait_joined(self, timeout: float = JOIN_TIMEOUT) -> list[RankInfo]:
        """Block until every follower said ``join``; raise ``ChannelError`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        joins: dict[int, RankInfo] = {}
        while len(joins) < self.followers:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000)):
                raise ChannelError(f"{len(joins)} of {self.followers} follower rank(s) joined within {timeout:.0f}s")
            frames = self.sock.recv_multipart()
            if len(frames) == 3 and frames[1] == JOIN:
                try:
                    info = rank_info(frames[2])
                except ProtocolError as e:
                    log.warning("dropping a join: %s", e)
                    continue
                joins[info.rank] = info
                if frames[0] not in self.peers:
                    self.peers.append(frames[0])
        self.ranks = dict(joins)
        return [joins[r] for r in sorted(joins)]

    def send(self, op: bytes, payload: bytes = b"{}") -> None:
        """One op to every follower, before rank 0 runs it. A follower that is gone raises
        (ROUTER_MANDATORY): the group can't go on without it, and the supervisor restarts it."""
        for peer in self.peers:
            self.sock.send_multipart([peer, op, payload])

    def collect(self) -> dict[int, RankInfo]:
        """The followers' latest beats (read without blocking)."""
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return self.ranks
            if len(frames) == 3 and frames[1] in (BEAT, JOIN):
                try:
                    info = rank_info(frames[2])
                except ProtocolError as e:
                    log.warning("dropping a rank message: %s", e)
                    continue
                self.ranks[info.rank] = info

    def close(self) -> None:
        try:
            self.send(EXIT)
        except zmq.ZMQError:
            pass  # a follower already gone: the supervisor ends the rest
        self.sock.close()
        self.ctx.term()


class FollowerChannel:
    """A follower's end: receives rank 0's ops, sends its join and beats."""

    def __init__(self, endpoint: str, rank: int, host: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, f"rank-{rank}".encode())
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.connect(endpoint)
        self.rank = rank
        self.host = host

    def info(self, **fields: Any) -> bytes:
        return orjson.dumps(asdict(RankInfo(self.rank, os.getpid(), self.host, **fields)))

    def join(self, entries: int, tokens: int) -> None:
        self.sock.send_multipart([JOIN, self.info(entries=entries, tokens=tokens)])

    def beat(self, memory_bytes: int, active: int, cache: int, peak: int) -> None:
        self.sock.send_multipart([BEAT, self.info(
            memory_bytes=memory_bytes, mlx_active_bytes=active, mlx_cache_bytes=cache, mlx_peak_bytes=peak
        )])  # fmt: skip

    def recv(self, timeout: float) -> list[tuple[bytes, bytes]]:
        """The ops waiting (blocking up to ``timeout`` seconds for the first)."""
        out: list[tuple[bytes, bytes]] = []
        if not self.sock.poll(int(timeout * 1000)):
            return out
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return out
            if len(frames) == 2 and frames[0] in OPS:
                out.append((frames[0], frames[1]))
            else:
                log.warning("dropping a channel message of %d frame(s)", len(frames))

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


def this_host() -> str:
    return socket.gethostname()
