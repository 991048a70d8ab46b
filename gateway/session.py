"""The generation session: the one way every API runs generations.

An API endpoint validates its body (its schemas), translates it into ``Choice``s (the worker's
``input`` and ``params`` per generation), and hands them to ``Generations``, which does the
rest, the same way for every API:

- resolves the model name (aliases included) once, records it for the access log and metrics;
- admission: each choice waits its turn for a worker with room (gateway/models.py: 429 when
  the queue is full, 503 after ``request_wait``), loading the model if it must;
- dispatch through the engine client, and dispatch again (once) when the worker is lost before
  the request produced anything; when it dies mid-stream, the generation is resumed on another
  worker (gateway/resume.py: up to ``resume_attempts`` times, poison requests failed);
- waits for the first event with keep-alive ticks, so an error found at once is still a plain
  JSON error, while a slow first token (a queue, a long prefill) keeps the connection alive;
  after that, a tick whenever nothing came for ``sse_keepalive`` seconds;
- watches for the client leaving and cancels the generations (freeing their batch slots);
- yields the choices' events, merged in arrival order, to the API's ``StreamFormat``, or
  collects them into ``Result``s.

So an API surface writes its schemas, its translation into choices, and its formatter (a
``StreamFormat`` for streams, a function of the ``Result``s for whole responses), nothing else.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.client import EngineClient
from gateway.errors import HearthError, InvalidRequest, WorkerFailed, from_worker
from gateway.feed import END, TICK, Feed
from gateway.metrics import Metrics
from gateway.models import Model, Models
from gateway.record import Record
from gateway.resume import Fate, fate
from gateway.router import affinity_key
from gateway.streams import Lost, RequestStream
from gateway.tasks import cancel_and_wait
from shared.config import Config, ModelConfig
from shared.protocol import (
    ERROR_NOT_READY,
    ERROR_POISON,
    ERROR_WORKER_DIED,
    RESUME_PARAM,
    Delta,
    Done,
    Error,
    Generate,
)

log = logging.getLogger("hearth.session")
DISCONNECT_POLL = 0.5  # seconds between looks at the client's connection
COUNT_TIMEOUT = 30.0  # seconds a token count may take, waiting for a ready worker included
T = TypeVar("T")


@dataclass(frozen=True)
class Choice:
    """One generation a request asks for: choice ``index`` of prompt ``prompt``."""

    index: int
    prompt: int
    input: dict[str, Any]
    params: dict[str, Any]
    affinity: str | None = None  # the client's own conversation key (Responses' prompt_cache_key)


@dataclass(frozen=True)
class Result:
    """One choice's whole answer: its deltas in order and the final ``Done``."""

    id: str  # its generation's id (the first choice's is the response's)
    choice: Choice
    done: Done
    deltas: list[Delta] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(d.text for d in self.deltas)

    @property
    def logprobs(self) -> list[Any]:
        return [e for d in self.deltas for e in d.logprobs or []]

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        return [c for d in self.deltas for c in d.tool_calls or []]


Event = tuple[Choice, Delta | Done]


class StreamFormat(Protocol):
    """What an API writes for a streamed response: bytes for each moment of the stream."""

    media_type: str
    headers: dict[str, str]

    def opening(self, rid: str) -> list[bytes]:
        """Before any event (may be empty); ``rid`` is the response's id."""
        ...

    def event(self, choice: Choice, ev: Delta | Done) -> list[bytes]: ...

    def closing(self) -> list[bytes]:
        """After every choice's ``Done``."""
        ...

    def keepalive(self) -> bytes: ...

    def failure(self, err: HearthError) -> bytes:
        """An in-band error: the generation failed after the response started."""
        ...


class ClientGone(HearthError):
    """The client hung up before its answer was ready (nginx's 499: nobody reads it)."""

    status = 499
    code = "client_closed_request"


class Generations:
    """The session's entry points (``app.state.generations``)."""

    def __init__(self, config: Config, models: Models, client: EngineClient, metrics: Metrics | None = None) -> None:
        self.config = config
        self.models = models
        self.client = client
        self.metrics = metrics
        # per model: the probation slot, held by the one suspect of a poison hunt that runs now
        self.probation: dict[str, asyncio.Lock] = {}

    def model(self, request: Request, name: str, kind: str = "chat") -> ModelConfig:
        """The configured model ``name`` means (404 if none), recorded for the log and metrics;
        a 400 if it is not of ``kind`` (an embedding model asked to chat, or the reverse)."""
        record = Record.of(request)
        try:
            model = self.models.resolve(name)
        except HearthError:
            record.model = "unknown"
            raise
        record.model = model.name
        if model.cfg.kind != kind:
            what = (
                "an embedding model: it makes embeddings, not text"
                if kind == "chat"
                else "a chat model: it makes no embeddings"
            )
            raise InvalidRequest(f"'{name}' is {what}", param="model", code="wrong_model_kind")
        return model.cfg

    async def collect(
        self, request: Request, cfg: ModelConfig, choices: list[Choice], keep_alive: float | None = None
    ) -> list[Result]:
        """Every choice's whole answer, in choice order."""
        run = _Run(self, Record.of(request), cfg, choices, stream=False, keep_alive=keep_alive)
        return await _watch(request, run.collect())

    async def stream(
        self,
        request: Request,
        cfg: ModelConfig,
        choices: list[Choice],
        fmt: StreamFormat,
        keep_alive: float | None = None,
    ) -> Response:
        """A streamed response in ``fmt``. Errors before the first event (or within
        ``sse_keepalive`` seconds) are raised, for a plain JSON error response."""
        run = _Run(self, Record.of(request), cfg, choices, stream=True, keep_alive=keep_alive)
        events = run.events()
        first = asyncio.ensure_future(_next(events))
        every = self.config.server.sse_keepalive or None  # 0: no keep-alives
        try:
            if await _watch(request, first, patience=every, handover=True):
                first.result()  # raises the error, if that is what came
        except BaseException:
            await cancel_and_wait(first)
            await events.aclose()
            raise
        body = _body(fmt, run.pairs[0][1].id, events, first, every)
        return StreamingResponse(body, media_type=fmt.media_type, headers=fmt.headers)

    async def count_tokens(self, request: Request, cfg: ModelConfig, inp: dict[str, Any]) -> int:
        """How many prompt tokens ``inp`` is for the model: asked of one of its ready workers (busy
        or not: tokenizing takes no batch slot), loading it if need be. 503 if no answer within
        ``COUNT_TIMEOUT`` (or ``request_wait``, if shorter), waiting for a worker included."""
        model = self.models[cfg.name]
        deadline = time.monotonic() + min(COUNT_TIMEOUT, self.config.server.request_wait)
        worker = await self.models.wait_until(
            model,
            lambda: self.models.ready_worker(model),
            deadline,
            f"no worker for '{model.name}' is ready to count tokens",
        )
        return await _watch(request, self.client.count_tokens(worker, inp, deadline - time.monotonic()))


async def _body(
    fmt: StreamFormat,
    rid: str,
    events: AsyncGenerator[Event],
    first: asyncio.Future[Event | None],
    every: float | None,
) -> AsyncIterator[bytes]:
    """The stream's bytes: the opening, the events (those that came together in one write),
    keep-alive ticks in the gaps, the closing; an in-band failure if the generation fails.
    Closing it (the client left) cancels the rest."""
    feed = Feed(first, events, every)  # gateway/feed.py
    try:
        opening = b"".join(fmt.opening(rid))
        if opening:
            yield opening
        while True:
            out: list[bytes] = []
            for item in await feed.take():
                if item is TICK:
                    out.append(fmt.keepalive())
                elif item is END:
                    out += fmt.closing()
                    yield b"".join(out)
                    return
                elif isinstance(item, HearthError):  # after the first byte an error can only be in-band
                    out.append(fmt.failure(item))
                    yield b"".join(out)
                    return
                elif isinstance(item, BaseException):
                    raise item
                else:
                    out += fmt.event(*item)
            yield b"".join(out)
    finally:
        await feed.close()
        await events.aclose()


class _Run:
    """One API request's generations: opened together, read together, closed together."""

    def __init__(
        self,
        gens: Generations,
        record: Record,
        cfg: ModelConfig,
        choices: list[Choice],
        stream: bool,
        keep_alive: float | None,
    ) -> None:
        self.gens = gens
        self.model: Model = gens.models[cfg.name]
        self.record = record
        self.keep_alive = keep_alive
        self.pairs = [
            (c, RequestStream(Generate(uuid.uuid4().hex, cfg.name, c.input, c.params, stream), gens.metrics))
            for c in choices
        ]
        self.affinity = {rs.id: c.affinity for c, rs in self.pairs if c.affinity}

    async def open(self) -> None:
        """Admit and dispatch every choice; if one can't be, the others are cancelled."""
        self.model.requested(self.keep_alive)
        for choice, rs in self.pairs:
            self.record.generations.append((choice, rs))
            await self._dispatch(rs, since=rs.t_submit)

    async def _dispatch(self, rs: RequestStream, since: float, front: bool = False) -> None:
        models = self.gens.models
        key = (self.affinity.get(rs.id) or affinity_key(rs.msg.input)) if isinstance(rs.msg, Generate) else None
        worker = await models.admit(self.model, since, key, front=front)
        models.pool.remember(self.model.name, key, worker.worker_id)
        self.gens.client.dispatch(rs, worker)

    async def _choice(self, rs: RequestStream) -> AsyncIterator[Delta | Done]:
        """One choice's events, as one stream whatever happens to its workers: a worker that
        turned it away before any output gets one more try elsewhere; one that died gets it
        dispatched again, or resumed where it was if it had output (``_again``)."""
        progress = rs.progress
        try:
            while True:
                try:
                    async for ev in rs:
                        if isinstance(ev, Delta):
                            progress.forwarded(ev)
                        elif progress.resumes:
                            ev = dataclasses.replace(ev, usage={**ev.usage, "resumed": progress.resumes})
                        yield ev
                    return
                except Lost as lost:
                    self._leave_probation(rs)
                    try:
                        await self._again(rs, lost)
                    except HearthError as e:
                        rs.finished = True  # no worker holds it: nothing to cancel
                        rs.error = e.code  # for the access log
                        raise
        finally:
            self._leave_probation(rs)

    async def _again(self, rs: RequestStream, lost: Lost) -> None:
        """Dispatch ``rs`` again after ``lost``, resumed if it had output, or raise its error."""
        err, progress = lost.error, rs.progress
        why = rs.lost_why or err.message
        if err.code == ERROR_NOT_READY:  # turned away (draining, loading): one more try, as it was
            if rs.redispatched:
                raise from_worker(err.code, err.message) from None
            rs.redispatched = True
            log.warning("worker %s turned request %s away (%s); dispatching it again", rs.worker_id, rs.id, why)
        else:
            self._unless_failed(rs, fate(progress, self.gens.config.server.resume_attempts), err, why)
            if progress.started:  # the client has output: the next worker continues it
                params = {**rs.msg.params, RESUME_PARAM: progress.resume()}
                rs.msg = dataclasses.replace(rs.msg, params=params)
                progress.resumes += 1
                if self.gens.metrics is not None:
                    self.gens.metrics.resumes.labels(self.model.name).inc()
                n = len(progress.tokens)
                log.warning("worker %s died (%s); resuming request %s after %d tokens", rs.worker_id, why, rs.id, n)
            else:
                log.warning("worker %s died (%s); re-dispatching request %s", rs.worker_id, why, rs.id)
        since = time.monotonic()
        try:
            if progress.isolate:
                await self._enter_probation(rs, since)
            await self._dispatch(rs, since=since, front=True)
        except HearthError as e:
            raise WorkerFailed(
                f"the model worker died and no other took over: {e.message}", code=ERROR_WORKER_DIED
            ) from None

    def _unless_failed(self, rs: RequestStream, verdict: Fate, err: Error, why: str) -> None:
        """Raise the request's error when its ``fate`` is to fail (counting a poison request)."""
        progress = rs.progress
        if verdict is Fate.POISON:
            if self.gens.metrics is not None:
                self.gens.metrics.poison.labels(self.model.name).inc()
            log.error("request %s killed its worker again (%s): failing it as a poison request", rs.id, why)
            raise WorkerFailed(
                f"the model worker died while running this request, {progress.charged} times; "
                f"it is not tried again ({why})",
                code=ERROR_POISON,
            )
        if verdict is Fate.WORKER_DIED:
            raise from_worker(err.code, err.message)

    async def _enter_probation(self, rs: RequestStream, since: float) -> None:
        """Wait for the model's probation slot: one suspect of a poison hunt runs at a time."""
        slot = self.gens.probation.setdefault(self.model.name, asyncio.Lock())
        wait = max(0.0, since + self.gens.config.server.request_wait - time.monotonic())
        try:
            await asyncio.wait_for(slot.acquire(), wait)
        except TimeoutError:
            raise WorkerFailed(
                f"the model worker died; this request waited {wait:.0f}s to run again on its own "
                "(other requests of its worker's are suspected of killing it) and gave up",
                code=ERROR_WORKER_DIED,
            ) from None
        rs.progress.on_probation = True
        log.info("request %s runs on probation (suspected of killing its worker)", rs.id)

    def _leave_probation(self, rs: RequestStream) -> None:
        if rs.progress.on_probation:
            rs.progress.on_probation = False
            self.gens.probation[self.model.name].release()

    async def events(self) -> AsyncGenerator[Event]:
        """Every choice's events in arrival order (opening them first). Closing it cancels
        whatever still runs."""
        try:
            await self.open()
            if len(self.pairs) == 1:
                choice, rs = self.pairs[0]
                async for ev in self._choice(rs):
                    yield choice, ev
                return
            queue: asyncio.Queue[Event | HearthError] = asyncio.Queue()

            async def pump(choice: Choice, rs: RequestStream) -> None:
                try:
                    async for ev in self._choice(rs):
                        await queue.put((choice, ev))
                except HearthError as e:
                    await queue.put(e)

            tasks = [asyncio.create_task(pump(c, rs)) for c, rs in self.pairs]
            try:
                finished = 0
                while finished < len(self.pairs):
                    got = await queue.get()
                    if isinstance(got, HearthError):
                        raise got
                    finished += isinstance(got[1], Done)
                    yield got
            finally:
                for t in tasks:
                    t.cancel()
        finally:
            self.close()

    async def collect(self) -> list[Result]:
        deltas: dict[int, list[Delta]] = {c.index: [] for c, _ in self.pairs}
        dones: dict[int, Done] = {}
        async for choice, ev in self.events():
            if isinstance(ev, Delta):
                deltas[choice.index].append(ev)
            else:
                dones[choice.index] = ev
        return [Result(rs.id, c, dones[c.index], deltas[c.index]) for c, rs in self.pairs]

    def close(self) -> None:
        """The response is over: cancel what still runs; the model's keep-alive counts from now."""
        for _, rs in self.pairs:
            if not rs.finished:
                rs.finished = True
                self.gens.client.cancel(rs)
        self.model.touch()
        self.gens.models.changed()


async def _next(events: AsyncGenerator[Event]) -> Event | None:
    """The next event, or None at the end."""
    try:
        return await anext(events)
    except StopAsyncIteration:
        return None


async def _watch(request: Request, work: Awaitable[T], patience: float | None = None, handover: bool = False) -> Any:
    """Await ``work`` while watching the client: if it hangs up first, cancel the work and raise
    ``ClientGone``. With ``handover``: after ``patience`` seconds return False with the work
    still running (True once it is done); without, return the work's result."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    deadline = None if patience is None else loop.time() + patience
    try:
        while True:
            timeout = DISCONNECT_POLL if deadline is None else max(0.0, min(DISCONNECT_POLL, deadline - loop.time()))
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if done:
                return True if handover else task.result()
            if await request.is_disconnected():
                raise ClientGone("the client closed the connection")
            if deadline is not None and loop.time() >= deadline:
                return False
    except BaseException:
        await cancel_and_wait(task)
        raise
