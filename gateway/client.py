"""The one object endpoints talk to: it owns the ROUTER socket and every request's mailbox.

One receive task reads the socket and puts each worker message into its request's mailbox
(``RequestStream``); a response that stops reading (client gone) closes its stream, which sends
``cancel``. Requests wait, bounded in number and time, for a ready worker with room. When a
worker dies, a request that had no output yet is re-dispatched once; one that had output ends
with an error, never with a truncated answer dressed as success.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator

from gateway.curve import CurveServer, start_authenticator
from gateway.errors import HearthError, InvalidRequest, ModelNotFound, QueueFull, Unavailable, WorkerFailed, from_worker
from gateway.metrics import Metrics
from gateway.pool import Pool, WorkerHandle
from gateway.router import affinity_key
from shared.codec import ProtocolError, decode, encode
from shared.config import Config
from shared.protocol import (
    ERROR_NOT_READY,
    ERROR_WORKER_DIED,
    PROTOCOL_VERSION,
    Cancel,
    Delta,
    Done,
    Drain,
    Embed,
    Embeddings,
    Error,
    Generate,
    Heartbeat,
    Hello,
    Message,
    State,
    Step,
    Tokenize,
    Tokens,
    WorkerState,
)
from shared.units import parse_duration

log = logging.getLogger("hearth.client")
COUNT_TIMEOUT = 30.0  # seconds a token count may take, waiting for a ready worker included
FORGET_AT_MOST = 10_000  # ids of gone workers kept to tell a returning one from a new one


@dataclass(frozen=True)
class Result:
    """A whole answer: its text, the final ``Done``, logprobs entries, and the tool calls
    (``shared.protocol.Delta.tool_calls`` entries, in order)."""

    text: str
    done: Done
    logprobs: list[Any] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


class RequestStream:
    """A request's mailbox: deltas, then exactly one ``Done`` (or an exception for ``error``);
    for an ``Embed``, one ``Embeddings`` (``embeddings()``)."""

    def __init__(self, client: EngineClient, msg: Generate | Embed) -> None:
        self.client = client
        self.msg = msg
        self.id = msg.id
        self.worker_id: str | None = None
        self.queue: asyncio.Queue[Message] = asyncio.Queue()
        self.started = False  # any output reached us
        self.redispatched = False
        self.finished = False
        self.t_submit = time.monotonic()
        self.t_first = 0.0  # when the first delta arrived
        self.done: Done | None = None  # the final message, for the access log
        self.error: str | None = None  # the error code it ended with instead
        self._t_last = 0.0  # when the last delta arrived, for inter-token latency
        self._tokens = 0

    def _observe(self, item: Message) -> None:
        now = time.monotonic()
        if isinstance(item, Delta) and not self.t_first:
            self.t_first = now
        elif isinstance(item, Done):
            self.done = item
        elif isinstance(item, Error):
            self.error = item.code
        metrics = self.client.metrics
        if metrics is None:
            return
        model = self.msg.model
        if isinstance(item, Delta):
            if not self._t_last:
                metrics.ttft.labels(model).observe(now - self.t_submit)
            elif item.tokens > self._tokens:
                gap = (now - self._t_last) / (item.tokens - self._tokens)
                for _ in range(item.tokens - self._tokens):
                    metrics.itl.labels(model).observe(gap)
            self._t_last, self._tokens = now, item.tokens
        elif isinstance(item, Done):
            metrics.observe_done(model, item.usage)

    async def __aiter__(self) -> AsyncIterator[Delta | Done]:
        """Deltas (merged when several wait: a slow reader gets fewer, larger ones), then Done.
        Merging keeps order: text that came after a tool call is not merged in front of it."""
        pending: Message | None = None
        while True:
            item = pending if pending is not None else await self.queue.get()
            if pending is None:
                self._observe(item)
            pending = None
            if isinstance(item, Delta):
                if self.queue.empty():  # the reader keeps up (the usual case): pass it on as it is
                    yield item
                    continue
                parts, tokens, logprobs = [item.text], item.tokens, list(item.logprobs or [])
                calls = list(item.tool_calls or [])
                end: Message | None = None
                while not self.queue.empty():
                    nxt = self.queue.get_nowait()
                    self._observe(nxt)
                    if not isinstance(nxt, Delta):
                        end = nxt
                        break
                    if calls and nxt.text:
                        pending = nxt
                        break
                    parts.append(nxt.text)
                    tokens = nxt.tokens
                    logprobs.extend(nxt.logprobs or [])
                    calls.extend(nxt.tool_calls or [])
                yield Delta(self.id, "".join(parts), tokens, logprobs or None, calls or None)
                if end is None:
                    continue
                item = end
            self.finished = True
            if isinstance(item, Done):
                yield item
                return
            assert isinstance(item, Error)
            assert isinstance(self.msg, Generate)
            raise from_worker(item.code, item.message, item.param or next(iter(self.msg.input), None))

    async def embeddings(self) -> Embeddings:
        """The answer of an ``Embed`` request."""
        item = await self.queue.get()
        self.finished = True
        if isinstance(item, Embeddings):
            if self.client.metrics is not None:
                self.client.metrics.observe_done(self.msg.model, item.usage)
            return item
        if isinstance(item, Error):
            self.error = item.code
            raise from_worker(item.code, item.message, item.param or "input")
        raise WorkerFailed(f"the worker answered an embed request with {item.KIND}")

    async def collect(self) -> Result:
        """The whole answer (non-streaming): text, tool calls, the final Done, logprobs entries."""
        parts: list[str] = []
        logprobs: list[Any] = []
        calls: list[dict[str, Any]] = []
        async for ev in self:
            if isinstance(ev, Delta):
                parts.append(ev.text)
                logprobs.extend(ev.logprobs or [])
                calls.extend(ev.tool_calls or [])
            else:
                return Result("".join(parts), ev, logprobs, calls)
        raise WorkerFailed("the request ended without a result")

    def close(self) -> None:
        """The response is over: cancel the generation if it is still running."""
        if not self.finished:
            self.finished = True
            self.client.cancel(self)


class EngineClient:
    """``endpoint`` is the private socket of the workers the supervisor spawns; the configured
    ``[server] endpoint`` (if any) is bound on the same ROUTER for workers started on their own,
    with CURVE when ``curve`` is given."""

    def __init__(
        self, config: Config, endpoint: str, metrics: Metrics | None = None, curve: CurveServer | None = None
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.endpoint = endpoint
        self.curve = curve
        self._auth: AsyncioAuthenticator | None = None
        self.pool = Pool(config)
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self._streams: dict[str, RequestStream] = {}
        # set by the supervisor: load a model if need be; returns why it can't load yet (None: it is
        # loaded or loading), raises Unavailable if it never can
        self.on_demand: Callable[[str], str | None] | None = None
        self._refused: set[str] = set()  # refused at hello: their later messages are dropped quietly
        self._counts: dict[str, tuple[str, asyncio.Future[int]]] = {}  # tokenize id -> (worker, answer)
        self._forgotten: set[str] = set()  # workers whose process ended or that went silent
        self._unknown: set[str] = set()  # sent something before their hello (logged once)
        self._tasks: set[asyncio.Task[Any]] = set()
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
        for t in list(self._tasks):
            t.cancel()
        self.sock.close()
        if self._auth is not None:
            self._auth.stop()
        self.ctx.term()

    def send(self, worker_id: str, msg: Message) -> None:
        self.sock.send_multipart([worker_id.encode(), *encode(msg)])

    # -- requests ---------------------------------------------------------------------------

    def resolve(self, model: str) -> str:
        """The configured model a request's name (or alias) means; 404 if none."""
        cfg = self.config.model(model)
        if cfg is None or cfg.name not in self.pool.models:
            raise ModelNotFound(f"the model '{model}' does not exist", param="model")
        return cfg.name

    async def submit(
        self,
        model: str,
        inp: dict[str, Any],
        params: dict[str, Any],
        stream: bool,
        keep_alive: float | str | None = None,
    ) -> RequestStream:
        """Queue a generation for ``model`` (a name or alias) and dispatch it to a worker; errors
        before any output.

        ``keep_alive`` (seconds or "5m"; -1/"forever": never; 0: at once) is how long the model
        stays loaded once idle after this request, as with Ollama: each request sets it, and a
        request without it goes back to the model's configured ``keep_alive``."""
        model = self._admit(model, "chat", keep_alive)
        msg = Generate(id=uuid.uuid4().hex, model=model, input=inp, params=params, stream=stream)
        rs = RequestStream(self, msg)
        await self._dispatch(rs)
        return rs

    async def submit_embed(
        self, model: str, inputs: list[Any], params: dict[str, Any], keep_alive: float | str | None = None
    ) -> RequestStream:
        """Queue an ``Embed`` for the embedding model ``model`` and dispatch it, like ``submit``."""
        model = self._admit(model, "embedding", keep_alive)
        rs = RequestStream(self, Embed(id=uuid.uuid4().hex, model=model, inputs=inputs, params=params))
        await self._dispatch(rs)
        return rs

    def _admit(self, model: str, kind: str, keep_alive: float | str | None) -> str:
        """The configured name of ``model``, if it is of ``kind`` (a 400 otherwise); sets the
        request's ``keep_alive`` and marks the model used."""
        model = self.resolve(model)
        entry = self.pool.models[model]
        if entry.cfg.kind != kind:
            what = (
                "an embedding model: it makes embeddings, not text"
                if kind == "chat"
                else "a chat model: it makes no embeddings"
            )
            raise InvalidRequest(f"'{model}' is {what}", param="model", code="wrong_model_kind")
        try:
            entry.keep_alive = None if keep_alive is None else parse_duration(keep_alive)
        except ValueError as e:
            raise InvalidRequest(str(e), param="keep_alive") from None
        self.pool.touch(model)
        return model

    async def _dispatch(self, rs: RequestStream, since: float | None = None, admitted: bool = False) -> None:
        model = rs.msg.model
        key = affinity_key(rs.msg.input) if isinstance(rs.msg, Generate) else None
        worker = await self._wait_for_worker(model, rs.t_submit if since is None else since, admitted, key)
        self.pool.remember(model, key, worker.worker_id)
        rs.worker_id = worker.worker_id
        worker.inflight.add(rs.id)
        self._streams[rs.id] = rs
        self.send(worker.worker_id, rs.msg)

    async def _wait_for_worker(
        self, model: str, since: float, admitted: bool = False, affinity: str | None = None
    ) -> WorkerHandle:
        """A worker with room, first come first served; bounded in number (429) and time (503).
        ``admitted``: a re-dispatched request, already past the queue bound once."""
        entry = self.pool.models[model]
        blocked = self._load(model)  # a model that is not loaded starts on its first request
        if not entry.queue and blocked is None:
            worker = self.pool.pick(model, affinity)
            if worker is not None:
                return worker
        if not admitted and len(entry.queue) >= entry.cfg.max_queue:
            raise QueueFull(f"too many requests are waiting for '{model}'; retry shortly")
        deadline = since + self.config.server.request_wait
        ticket = object()
        if admitted:
            entry.queue.appendleft(ticket)
        else:
            entry.queue.append(ticket)
        try:
            while True:
                if entry.failed:
                    raise Unavailable(f"the model '{model}' failed to start: {entry.failed}", code="model_failed")
                blocked = self._load(model)
                if entry.queue[0] is ticket and blocked is None:
                    worker = self.pool.pick(model, affinity)
                    if worker is not None:
                        return worker
                left = deadline - time.monotonic()
                if left <= 0:
                    if blocked is not None:
                        raise Unavailable(f"the model '{model}' could not be loaded in time: {blocked}")
                    raise Unavailable(
                        f"no worker for '{model}' became ready in time; state: {self.pool.model_state(model)}"
                    )
                await self.pool.wait_change(left)
        finally:
            entry.queue.remove(ticket)
            self.pool.notify()  # the next in line may go now

    def _load(self, model: str) -> str | None:
        return self.on_demand(model) if self.on_demand is not None else None

    async def count_tokens(self, model: str, inp: dict[str, Any]) -> int:
        """How many prompt tokens ``inp`` (a ``Generate.input``) is for ``model``: asked of one of
        its ready workers (busy or not: tokenizing doesn't take a batch slot). 503 if no answer
        within ``COUNT_TIMEOUT`` (or ``request_wait``, if shorter), waiting for a worker included."""
        model = self.resolve(model)
        deadline = time.monotonic() + min(COUNT_TIMEOUT, self.config.server.request_wait)
        while True:
            self._load(model)  # an unloaded model loads (within the residency limits) to count
            ready = [w for w in self.pool.of_model(model) if w.connected and w.state is WorkerState.READY]
            if ready:
                break
            entry = self.pool.models[model]
            if entry.failed:
                raise Unavailable(f"the model '{model}' failed to start: {entry.failed}", code="model_failed")
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unavailable(
                    f"no worker for '{model}' is ready to count tokens; state: {self.pool.model_state(model)}"
                )
            await self.pool.wait_change(left)
        worker = min(ready, key=lambda w: len(w.inflight))
        rid = uuid.uuid4().hex
        answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._counts[rid] = (worker.worker_id, answer)
        try:
            self.send(worker.worker_id, Tokenize(rid, inp))
            return await asyncio.wait_for(answer, max(deadline - time.monotonic(), 0.1))
        except TimeoutError:
            raise Unavailable(f"the worker for '{model}' did not count the tokens in time") from None
        finally:
            self._counts.pop(rid, None)

    def cancel(self, rs: RequestStream) -> None:
        log.debug("cancelling request %s on %s", rs.id, rs.worker_id)
        self._streams.pop(rs.id, None)
        worker = self.pool.workers.get(rs.worker_id or "")
        if worker is not None:
            if rs.id in worker.inflight:
                worker.inflight.discard(rs.id)
                self.pool.touch(worker.model)
                self.pool.notify()
            self.send(worker.worker_id, Cancel(rs.id))

    # -- workers ----------------------------------------------------------------------------

    def worker_exited(self, worker_id: str, why: str) -> None:
        """The supervisor saw a worker's process end: settle every request it held."""
        handle = self.pool.remove(worker_id)
        for wid, answer in self._counts.values():
            if wid == worker_id and not answer.done():
                answer.set_exception(Unavailable(f"the model worker died while counting tokens ({why})"))
        if handle is None:
            return
        if len(self._forgotten) > FORGET_AT_MOST:
            self._forgotten.clear()
        self._forgotten.add(worker_id)
        self._settle(handle, why)

    def _settle(self, handle: WorkerHandle, why: str) -> None:
        """Every request ``handle`` held is lost: one without output moves, the others fail."""
        worker_id = handle.worker_id
        held, handle.inflight = handle.inflight, set()
        if handle.model in self.pool.models and held:
            self.pool.touch(handle.model)
        for rid in list(held):
            rs = self._streams.get(rid)
            if rs is None:
                continue
            if not rs.started and not rs.redispatched:
                rs.redispatched = True
                del self._streams[rid]
                log.warning("worker %s died (%s); re-dispatching request %s", worker_id, why, rid)
                self._spawn(self._redispatch(rs))
            else:
                self._streams.pop(rid, None)
                rs.queue.put_nowait(Error(rid, ERROR_WORKER_DIED, f"the model worker died mid-request ({why})"))

    async def _redispatch(self, rs: RequestStream) -> None:
        if rs.finished:
            return  # the client left meanwhile
        try:
            await self._dispatch(rs, since=time.monotonic(), admitted=True)
            if rs.finished:
                self.cancel(rs)
        except HearthError as e:
            rs.queue.put_nowait(
                Error(rs.id, ERROR_WORKER_DIED, f"the model worker died and no other took over: {e.message}")
            )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
            if msg.state == WorkerState.LOADING:
                handle.loading_since = handle.last_seen
            elif msg.state == WorkerState.READY and handle.loading_since and self.metrics is not None:
                self.metrics.load_seconds.labels(handle.model).observe(handle.last_seen - handle.loading_since)
            if msg.state != WorkerState.LOADING:
                handle.loading_since = 0.0
            handle.state = msg.state
            handle.detail = msg.detail
            handle.context_length = msg.context_length or handle.context_length
            entry = self.pool.models[handle.model]
            if msg.state is WorkerState.READY and entry.ready_since is None:
                entry.ready_since = time.monotonic()
            log.info("worker %s is %s %s", worker_id, msg.state, msg.detail)
            self.pool.notify()
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
            rs = self._streams.get(msg.id)
            if rs is None:
                if isinstance(msg, Delta):  # cancelled, or from before a gateway restart: stop it
                    self.send(worker_id, Cancel(msg.id))
                return
            if rs.worker_id != worker_id:
                log.warning("dropping %s for request %s from %s, which does not hold it", msg.KIND, msg.id, worker_id)
                return
            if isinstance(msg, (Done, Error, Embeddings)):
                del self._streams[msg.id]
                handle.inflight.discard(msg.id)
                self.pool.touch(handle.model)
                self.pool.notify()
                if isinstance(msg, Error) and msg.code == ERROR_NOT_READY and not rs.started and not rs.redispatched:
                    rs.redispatched = True  # a draining worker turned it away: another replica may take it
                    self._spawn(self._redispatch(rs))
                    return
            else:
                rs.started = True
            rs.queue.put_nowait(msg)

    def _on_hello(self, worker_id: str, msg: Hello, handle: WorkerHandle | None) -> None:
        if msg.protocol != PROTOCOL_VERSION:
            log.error(
                "refusing worker %s: it speaks protocol %s, this gateway %s", worker_id, msg.protocol, PROTOCOL_VERSION
            )
            if handle is not None:
                handle.detail = f"protocol {msg.protocol} != {PROTOCOL_VERSION}"
            self._refuse(worker_id)
            return
        if msg.worker_id != worker_id:
            log.error("refusing worker %s: its hello says it is %s", worker_id, msg.worker_id)
            self._refuse(worker_id)
            return
        if msg.model not in self.pool.models:
            log.error("refusing worker %s: it serves unknown model %s", worker_id, msg.model)
            self._refuse(worker_id)
            return
        expected = self.pool.models[msg.model].cfg.config_hash()
        if msg.config_hash != expected:
            log.warning(
                "worker %s runs %s with other settings than this gateway's (hash %s, expected %s)",
                worker_id,
                msg.model,
                msg.config_hash,
                expected,
            )
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
        if self.pool.models[msg.model].unloading:
            self.send(worker_id, Drain())  # its model is being unloaded: it exits rather than serve
        self.pool.notify()
