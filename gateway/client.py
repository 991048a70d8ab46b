"""The engine client: the gateway's ROUTER socket, the demux of worker messages, and dispatch.

One receive task reads the socket. Worker lifecycle messages (hello, state, heartbeat) update
the ``Pool`` and call ``Models.changed``; a request's events go into its ``RequestStream``
(gateway/streams.py). ``dispatch`` sends a generation to the worker the session picked,
``cancel`` stops one, ``count_tokens`` asks a worker to tokenize. An ``embed`` travels the same
way as a generation (its mailbox gets the one ``embeddings`` answer). When a worker is lost, every
request it held gets a worker-died error, and the death is counted (and charged, see
gateway/resume.py) over all of them at once: the session decides whether to run each again.
Which workers may join is gateway/hello.py's; which worker serves a request, models.py's.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterable
from typing import Any

import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator

from gateway.curve import CurveServer, start_authenticator
from gateway.errors import Unavailable, from_worker
from gateway.hello import judge
from gateway.metrics import Metrics
from gateway.models import Models
from gateway.pool import WorkerHandle
from gateway.resume import died
from gateway.streams import RequestStream
from shared.codec import ProtocolError, decode, encode
from shared.config import Config
from shared.protocol import (
    ERROR_WORKER_DIED,
    Cancel,
    Delta,
    Done,
    Drain,
    Embeddings,
    Error,
    Heartbeat,
    Hello,
    Message,
    State,
    Step,
    Tokenize,
    Tokens,
    WorkerState,
)

log = logging.getLogger("hearth.client")
FORGET_AT_MOST = 10_000  # ids of gone workers kept to tell a returning one from a new one


class EngineClient:
    """``endpoint`` is the private socket of the workers the supervisor spawns; the configured
    ``[server] endpoint`` (if any) is bound on the same ROUTER for workers started on their own,
    with CURVE when ``curve`` is given."""

    def __init__(
        self,
        config: Config,
        models: Models,
        endpoint: str,
        metrics: Metrics | None = None,
        curve: CurveServer | None = None,
    ) -> None:
        self.config = config
        self.models = models
        self.pool = models.pool
        self.metrics = metrics
        self.endpoint = endpoint
        self.curve = curve
        self._auth: AsyncioAuthenticator | None = None
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self._streams: dict[str, RequestStream] = {}
        self._refused: set[str] = set()  # refused at hello: their later messages are dropped quietly
        self._counts: dict[str, tuple[str, asyncio.Future[int]]] = {}  # tokenize id -> (worker, answer)
        self._forgotten: set[str] = set()  # workers whose process ended or that went silent
        self._unknown: set[str] = set()  # sent something before their hello (logged once)
        self._recv_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.sock.bind(self.endpoint)
        external = self.config.server.endpoint
        if external:
            if self.curve is not None:
                # socket options apply to the binds after them: the ipc:// bind above stays plain
                self._auth = start_authenticator(self.ctx, self.curve)
                self.sock.curve_secretkey = self.curve.secret
                self.sock.curve_publickey = self.curve.public
                self.sock.curve_server = True
            self.sock.bind(external)
            log.info("workers started on their own connect to %s%s", external, " (CURVE)" if self.curve else "")
        self._recv_task = asyncio.create_task(self._receive(), name="hearth-receive")

    async def stop(self) -> None:
        if self._recv_task:
            self._recv_task.cancel()
        self.sock.close()
        if self._auth is not None:
            self._auth.stop()
        self.ctx.term()

    def send(self, worker_id: str, msg: Message) -> None:
        self.sock.send_multipart([worker_id.encode(), *encode(msg)])

    # -- requests ---------------------------------------------------------------------------

    def dispatch(self, rs: RequestStream, worker: WorkerHandle) -> None:
        """Send ``rs``'s generation to ``worker`` (picked by ``Models.admit``)."""
        rs.worker_id = worker.worker_id
        worker.inflight.add(rs.id)
        self._streams[rs.id] = rs
        self.send(worker.worker_id, rs.msg)

    def cancel(self, rs: RequestStream) -> None:
        log.debug("cancelling request %s on %s", rs.id, rs.worker_id)
        self._streams.pop(rs.id, None)
        worker = self.pool.workers.get(rs.worker_id or "")
        if worker is not None:
            if rs.id in worker.inflight:
                worker.inflight.discard(rs.id)
                self.models.changed()
            self.send(worker.worker_id, Cancel(rs.id))

    async def count_tokens(self, worker: WorkerHandle, inp: dict[str, Any], timeout: float) -> int:
        """How many prompt tokens ``inp`` (a ``Generate.input``) is, asked of ``worker``."""
        rid = uuid.uuid4().hex
        answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._counts[rid] = (worker.worker_id, answer)
        try:
            self.send(worker.worker_id, Tokenize(rid, inp))
            return await asyncio.wait_for(answer, max(timeout, 0.1))
        except TimeoutError:
            raise Unavailable(f"the worker for '{worker.model}' did not count the tokens in time") from None
        finally:
            self._counts.pop(rid, None)

    # -- workers ----------------------------------------------------------------------------

    def worker_exited(self, worker_id: str, why: str) -> None:
        """The supervisor saw a worker's process end (or gave up on a silent one): settle every
        request it held."""
        handle = self.pool.remove(worker_id)
        for wid, answer in self._counts.values():
            if wid == worker_id and not answer.done():
                answer.set_exception(Unavailable(f"the model worker died while counting tokens ({why})"))
        if handle is not None:
            if len(self._forgotten) > FORGET_AT_MOST:
                self._forgotten.clear()
            self._forgotten.add(worker_id)
            self._settle(handle, why)
        self.models.changed()

    def _settle(self, handle: WorkerHandle, why: str) -> None:
        """Every request ``handle`` held is lost: each gets a worker-died error."""
        held, handle.inflight = handle.inflight, set()
        lost = [rs for rid in held if (rs := self._streams.pop(rid, None)) is not None]
        died([rs.progress for rs in lost])  # who is to blame is decided over all of them at once
        for rs in lost:
            rs.lost_why = why
            rs.arrive(Error(rs.id, ERROR_WORKER_DIED, f"the model worker died mid-request ({why})"))

    def drain(self, worker_ids: Iterable[str]) -> None:
        for wid in worker_ids:
            self.send(wid, Drain())

    def _refuse(self, worker_id: str) -> None:
        self._refused.add(worker_id)
        self.send(worker_id, Drain())

    # -- receiving --------------------------------------------------------------------------

    async def _receive(self) -> None:
        while True:
            try:
                frames = await self.sock.recv_multipart()
            except asyncio.CancelledError:
                raise
            except zmq.ZMQError as e:
                log.error("worker socket error: %s", e)
                await asyncio.sleep(0.1)
                continue
            if len(frames) != 3:
                log.warning("dropping a message of %d frames", len(frames))
                continue
            try:
                worker_id = frames[0].decode()
                msg = decode(frames[1], frames[2])
                self._on_message(worker_id, msg)
            except (ProtocolError, UnicodeDecodeError) as e:
                log.warning("dropping a bad message from a worker: %s", e)
            except Exception:  # a bad message never kills the loop
                log.exception("error handling a worker message")

    def _on_message(self, worker_id: str, msg: Message) -> None:
        if isinstance(msg, Step):  # one batch step's events, each as if sent alone
            for ev in msg.events:
                self._on_message(worker_id, ev)
            return
        handle = self.pool.workers.get(worker_id)
        if isinstance(msg, Hello):
            self._on_hello(worker_id, msg, handle)
            return
        if handle is None or not handle.connected:
            if worker_id in self._forgotten and worker_id not in self._refused:
                # a worker that went silent and was given up on, now back: it drains and exits,
                # and its own supervisor (launchd, systemd) starts it afresh
                log.warning("%s from worker %s, given up on: asking it to drain", msg.KIND, worker_id)
                self._refuse(worker_id)
            elif worker_id not in self._refused and worker_id not in self._unknown:
                # e.g. a worker on its own whose messages were queued while this gateway
                # restarted: it says hello again once its connection is back
                self._unknown.add(worker_id)
                log.warning("%s from unknown worker %s: ignored until it says hello", msg.KIND, worker_id)
            return
        handle.last_seen = time.monotonic()
        if isinstance(msg, State):
            self._on_state(handle, msg)
        elif isinstance(msg, Heartbeat):
            handle.heartbeat = msg
        elif isinstance(msg, (Tokens, Error)) and msg.id in self._counts:
            wid, answer = self._counts[msg.id]
            if wid == worker_id and not answer.done():
                if isinstance(msg, Tokens):
                    answer.set_result(msg.count)
                else:
                    answer.set_exception(from_worker(msg.code, msg.message, msg.param or "messages"))
        elif isinstance(msg, (Delta, Done, Error, Embeddings)):
            self._on_event(handle, msg)

    def _on_event(self, handle: WorkerHandle, msg: Delta | Done | Error | Embeddings) -> None:
        rs = self._streams.get(msg.id)
        if rs is None:
            if isinstance(msg, Delta):  # cancelled, or from before a gateway restart: stop it
                self.send(handle.worker_id, Cancel(msg.id))
            return
        if rs.worker_id != handle.worker_id:
            log.warning(
                "dropping %s for request %s from %s, which does not hold it", msg.KIND, msg.id, handle.worker_id
            )
            return
        if not isinstance(msg, Delta):
            del self._streams[msg.id]
            handle.inflight.discard(msg.id)
            self.models.changed()
        rs.arrive(msg)

    def _on_state(self, handle: WorkerHandle, msg: State) -> None:
        if msg.state == WorkerState.LOADING:
            handle.loading_since = handle.last_seen
        elif msg.state == WorkerState.READY and handle.loading_since and self.metrics is not None:
            self.metrics.load_seconds.labels(handle.model).observe(handle.last_seen - handle.loading_since)
        if msg.state != WorkerState.LOADING:
            handle.loading_since = 0.0
        handle.state = msg.state
        handle.detail = msg.detail
        handle.context_length = msg.context_length or handle.context_length
        handle.trained_context = msg.trained_context or handle.trained_context
        log.info("worker %s is %s %s", handle.worker_id, msg.state, msg.detail)
        self.models.changed()

    def _on_hello(self, worker_id: str, msg: Hello, handle: WorkerHandle | None) -> None:
        verdict = judge(worker_id, msg, self.config)
        if verdict.refusal:
            log.error("refusing worker %s: %s", worker_id, verdict.refusal)
            if handle is not None:
                handle.detail = verdict.refusal
            self._refuse(worker_id)
            return
        if verdict.warning:
            log.warning("worker %s %s", worker_id, verdict.warning)
        self._refused.discard(worker_id)
        self._forgotten.discard(worker_id)
        self._unknown.discard(worker_id)
        if handle is not None and handle.connected and handle.inflight:
            # its connection broke and came back: it dropped what it was running, and output in
            # flight may have been lost, so its requests are settled as if it had died
            self._settle(handle, "its connection was lost")
        if handle is None:  # a worker started on its own (launchd, systemd, another machine)
            handle = self.pool.add(worker_id, msg.model)
        handle.connected = True
        handle.pid = msg.pid
        handle.last_seen = time.monotonic()
        log.info("worker %s (pid %s) joined for %s", worker_id, msg.pid, msg.model)
        if not self.models[msg.model].accepting:
            self.send(worker_id, Drain())  # its model is being unloaded: it exits rather than serve
        self.models.changed()
