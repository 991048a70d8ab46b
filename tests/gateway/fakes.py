"""A fake worker for gateway tests: a real ZeroMQ DEALER that speaks the wire protocol, driven
step by step by the test instead of by a model.

One I/O thread owns the socket (ZeroMQ sockets are not thread-safe): it sends what the test
queues with ``send``/``send_raw``, a ``Heartbeat`` every ``heartbeat_every`` seconds unless
``silent`` is set, and puts every message from the gateway into a queue that ``recv`` reads.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import uuid
from typing import Any, TypeVar

import zmq

from shared.codec import decode, encode
from shared.protocol import PROTOCOL_VERSION, Delta, Done, Heartbeat, Hello, Message, State, WorkerState

T = TypeVar("T")


class FakeWorker:
    def __init__(
        self, endpoint: str, model: str, worker_id: str | None = None, *, heartbeat_every: float = 0.5
    ) -> None:
        self.endpoint = endpoint
        self.model = model
        self.worker_id = worker_id or f"fake-{model}-{uuid.uuid4().hex[:8]}"
        self.heartbeat_every = heartbeat_every
        self.silent = False  # stop heartbeats (and make close() say nothing): a hung worker
        self._outbox: queue.Queue[list[bytes]] = queue.Queue()
        self._inbox: queue.Queue[Message | Exception] = queue.Queue()
        self._stop = threading.Event()
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.IDENTITY, self.worker_id.encode())
        self._sock.setsockopt(zmq.LINGER, 1000)
        self._sock.connect(endpoint)
        self._thread = threading.Thread(target=self._loop, name=f"fake-{self.worker_id}", daemon=True)
        self._thread.start()

    # -- the I/O thread ---------------------------------------------------------------------

    def _loop(self) -> None:
        next_beat = time.monotonic() + self.heartbeat_every
        while True:
            stopping = self._stop.is_set()  # read first: what was queued before close() still goes
            while True:
                try:
                    frames = self._outbox.get_nowait()
                except queue.Empty:
                    break
                self._sock.send_multipart(frames)
            if stopping:
                return
            if not self.silent and time.monotonic() >= next_beat:
                self._sock.send_multipart(encode(Heartbeat()))
                next_beat = time.monotonic() + self.heartbeat_every
            if self._sock.poll(10, zmq.POLLIN):
                while self._sock.poll(0, zmq.POLLIN):
                    frames = self._sock.recv_multipart()
                    try:
                        if len(frames) != 2:
                            raise ValueError(f"the gateway sent {len(frames)} frames: {frames!r}")
                        self._inbox.put(decode(frames[0], frames[1]))
                    except Exception as e:  # the test sees it in recv()
                        self._inbox.put(e)

    # -- what a test calls ------------------------------------------------------------------

    def send(self, msg: Message) -> None:
        self._outbox.put(encode(msg))

    def send_raw(self, frames: list[bytes]) -> None:
        """Any frames at all (the ROUTER adds our identity in front)."""
        self._outbox.put(list(frames))

    def hello(self, protocol: int = PROTOCOL_VERSION, model: str | None = None) -> None:
        self.send(Hello(worker_id=self.worker_id, model=model or self.model, pid=os.getpid(), protocol=protocol))

    def state(self, state: str, detail: str = "", context_length: int = 0) -> None:
        self.send(State(WorkerState(state), detail, context_length))

    def heartbeat(self, **fields: int) -> None:
        self.send(Heartbeat(**fields))

    def reply(
        self,
        rid: str,
        *texts: str,
        tool_calls: list[dict[str, Any]] | None = None,
        finish: str = "stop",
        stop: str | None = None,
        usage: dict[str, int] | None = None,
    ) -> None:
        """Answer request ``rid``: a delta per text, one delta with ``tool_calls`` (complete, as
        the worker sends them), then ``done``."""
        n = 0
        for n, text in enumerate(texts, 1):
            self.send(Delta(rid, text, n))
        if tool_calls:
            self.send(Delta(rid, "", n + 1, tool_calls=tool_calls))
        usage = usage or {"prompt_tokens": 5, "completion_tokens": n + bool(tool_calls), "cached_tokens": 0}
        self.send(Done(rid, finish, usage, stop=stop))

    def recv(self, timeout: float = 5.0) -> Message:
        """The next message from the gateway; ``TimeoutError`` if none comes in time."""
        try:
            item = self._inbox.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{self.worker_id}: nothing from the gateway in {timeout}s") from None
        if isinstance(item, Exception):
            raise AssertionError(f"{self.worker_id}: the gateway sent a bad message: {item}")
        return item

    def expect(self, cls: type[T], timeout: float = 5.0) -> T:
        """The next message, which must be a ``cls``."""
        msg = self.recv(timeout)
        assert isinstance(msg, cls), f"{self.worker_id}: expected {cls.__name__}, got {msg!r}"
        return msg

    def pending(self, wait: float = 0.2) -> list[Message]:
        """Whatever arrives within ``wait`` seconds."""
        out: list[Message] = []
        deadline = time.monotonic() + wait
        while True:
            try:
                out.append(self.recv(max(deadline - time.monotonic(), 0.001)))
            except TimeoutError:
                return out

    def close(self) -> None:
        """Leave as a real worker does (``draining``, then gone), unless silent (a hung one)."""
        if self._stop.is_set():
            return
        if not self.silent:
            self.state("draining")
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def __enter__(self) -> FakeWorker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
