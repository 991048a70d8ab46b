"""The worker process shell: ZeroMQ, signals, the load thread and the heartbeat.

One thread owns the DEALER socket and the engine core: it reads every waiting message, runs
one batch step, sends what the step produced, and repeats; with no work it blocks on the
socket. Where the engine holds arrivals for admission (GPU backends), their chat templates are
rendered on a side thread during the next step (worker/prep.py). Loading runs in a side
thread so heartbeats go on while weights load. Signals only set flags. The worker exits when
its parent (the gateway) is gone.

Heartbeats are sent from that same loop, between batch steps, never from a side thread: a
heartbeat proves the loop makes progress, so a step that hangs stops them and the gateway's
watchdog kills the worker after ``heartbeat_timeout``. One step is a decode token per sequence
plus at most ``prefill_step`` prompt tokens of each of up to ``max_batch`` new prompts (or, on an
idle worker, one direct pass of up to ``prefill_step`` tokens), which must stay well under it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from shared.codec import ProtocolError, decode, encode
from shared.config import ModelConfig
from shared.gc_freeze import freeze_loaded
from shared.protocol import (
    ERROR_BAD_REQUEST,
    ERROR_NOT_READY,
    PROTOCOL_VERSION,
    Cancel,
    Drain,
    Embed,
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
from shared.units import format_size
from worker import memory
from worker.prep import Renderer

if TYPE_CHECKING:
    from worker.core import EngineCore, Rendered
    from worker.embedding.core import EmbeddingCore

    Core = EngineCore | EmbeddingCore

log = logging.getLogger("hearth.worker")
HEARTBEAT_EVERY = 1.0
IDLE_POLL_MS = 100
EXIT_REFUSED = 5  # the gateway refused this worker's CURVE key, or no handshake can succeed
EXIT_MEMORY = 6  # over its memory_ceiling even after a trim: drained, exits for a fresh worker
HANDSHAKE_TRIES = 20  # failed handshakes in a row (ZeroMQ retries every 0.1 s) before giving up


class _Loader(threading.Thread):
    """Loads the model off the socket thread: the core its ``kind`` needs (for a chat model,
    with the sampling self-check, the warm-up and the warm prompt cache)."""

    def __init__(self, cfg: ModelConfig, group_channel: str | None = None) -> None:
        super().__init__(name="hearth-load", daemon=True)
        self.cfg = cfg
        self.group_channel = group_channel  # rank 0 of a worker group: where its followers join
        self.core: Core | None = None
        self.error: str | None = None

    def run(self) -> None:
        try:
            if self.cfg.kind == "embedding":
                from worker.embedding.core import EmbeddingCore
                from worker.embedding.model import load_embedding_model

                model = load_embedding_model(self.cfg.path)
                # one real forward pass before `ready`: weights that can't run fail the load (its
                # detail says why), and the first request does not pay for the first pass
                model.encode(model.tokenize(["Hearth checks its encoder before it says ready."], truncate=False))
                self.core = EmbeddingCore(model, self.cfg)
                memory.bound_cache(self.cfg.cache_limit_bytes, 0)  # no prompt cache: the smallest bound
                return
            from worker.group import join_followers, make_core
            from worker.model import load_model
            from worker.device import describe
            from worker.selfcheck import self_check
            from worker.warmup import warm_up

            core = make_core(load_model(self.cfg), self.cfg)  # a GroupCore on a worker group's rank
            self_check(core)
            if self.cfg.warmup:
                t = time.perf_counter()
                shapes = warm_up(core)
                log.info(
                    "warmed up batch shapes %s in %.2fs (%s)",
                    ", ".join(f"{n}: {s:.2f}s" for n, s in shapes),
                    time.perf_counter() - t,
                    describe(),
                )
            _warm(core, save=False)
            if self.group_channel is not None:
                join_followers(core, self.group_channel)
            budget = memory.model_bytes(core.m.model) + self.cfg.prompt_cache_bytes
            limit = memory.bound_cache(self.cfg.cache_limit_bytes, budget)
            log.info("MLX buffer cache bounded at %s", format_size(limit))
            self.core = core
        except Exception as e:  # any load failure becomes the `failed` state's detail
            log.exception("loading %s failed", self.cfg.name)
            self.error = f"{type(e).__name__}: {e}"


def _ready(core: Core) -> State:
    """``ready``, with the context the worker allows (and the trained one, when that is less:
    a chat model RoPE-scaled beyond it)."""
    m = core.m
    trained = getattr(m, "trained_context", 0)  # chat models (worker.model.LoadedModel) only
    beyond = trained if m.context_length > trained > 0 else 0
    return State(WorkerState.READY, context_length=m.context_length, trained_context=beyond)


def _warm(core: Core, save: bool) -> None:
    """Load (at start) or save (at drain) the prompt caches that make a restart warm. Only an
    optimisation: a failure is logged, never a reason not to serve or not to exit."""
    try:
        t = time.perf_counter()
        n = core.save_warm() if save else core.load_warm()
        if n:
            done = "saved for the next worker" if save else "loaded (warm start)"
            log.info("%d prompt cache entries %s in %.2fs", n, done, time.perf_counter() - t)
    except Exception:
        log.exception("could not %s the prompt cache", "save" if save else "load")


class WorkerProcess:
    """``parent_pid``: a worker the gateway spawned, which exits with it. Without it the worker
    was started on its own (``hearth worker``): it watches its connection instead, says
    ``hello`` again whenever it reconnects (a restarted gateway knows nothing of it), and exits
    with ``EXIT_REFUSED`` if the gateway refuses its CURVE key. ``curve``: (this worker's
    public key, its secret key, the gateway's public key)."""

    def __init__(
        self,
        endpoint: str,
        worker_id: str,
        cfg: ModelConfig,
        parent_pid: int | None,
        curve: tuple[bytes, bytes, bytes] | None = None,
        group_channel: str | None = None,
    ):
        self.worker_id = worker_id
        self.cfg = cfg
        self.parent_pid = parent_pid
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, worker_id.encode())
        self.sock.setsockopt(zmq.LINGER, 2000)
        if curve is not None:
            self.sock.curve_publickey, self.sock.curve_secretkey, self.sock.curve_serverkey = curve
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        self.monitor: zmq.Socket[bytes] | None = None
        if parent_pid is None:
            self.monitor = self.sock.get_monitor_socket(
                zmq.EVENT_HANDSHAKE_SUCCEEDED
                | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                | zmq.EVENT_DISCONNECTED
            )
            self.poller.register(self.monitor, zmq.POLLIN)
        self.connections = 0  # handshakes that succeeded
        self.connected = False
        self.failed_handshakes = 0  # in a row
        self.sock.connect(endpoint)
        self.endpoint = endpoint
        self.loader = _Loader(cfg, group_channel)
        self.core: Core | None = None
        self.renderer: Renderer | None = None  # arrivals rendered aside (worker/prep.py), where the core does
        self.draining = False
        self.stop_signal = False
        self.phase = memory.Phase.SERVING  # against the model's memory_ceiling
        self.exit_code = 0
        self.idle_since = 0.0  # when the batch last emptied (0: released since, or never busy)

    def send(self, msg: Message) -> None:
        self.sock.send_multipart(encode(msg))

    def hello(self) -> None:
        self.send(Hello(self.worker_id, self.cfg.name, os.getpid(), PROTOCOL_VERSION, self.cfg.config_hash()))

    def run(self) -> int:
        self.hello()
        self.send(State(WorkerState.LOADING))
        self.loader.start()
        next_beat = 0.0
        while True:
            busy = self.core is not None and (self.core.has_work or bool(self.renderer))
            ready = dict(self.poller.poll(0 if busy else IDLE_POLL_MS))
            if self.renderer:
                self._add_rendered()  # what was read before the last step, rendered during it
            if self.sock in ready:
                self._read_all()
            if self.monitor is not None and self.monitor in ready and self._connection_events():
                return EXIT_REFUSED
            if self.core is None and not self.loader.is_alive():
                if self.loader.error is not None:
                    self.send(State(WorkerState.FAILED, self.loader.error))
                    return 3
                core = self.loader.core
                assert core is not None
                self.core = core
                if getattr(core, "renders_aside", False):
                    self.renderer = Renderer(core.render)  # type: ignore[union-attr]
                frozen = freeze_loaded()  # the collector stops re-walking the loaded model (shared/gc_freeze.py)
                log.info("%d objects frozen out of garbage collection (shared/gc_freeze.py)", frozen)
                self.send(_ready(core))
                self.idle_since = time.monotonic()  # what loading, the self-check and warm-up left goes too
            if self.core is not None and self.core.has_work:
                events = self.core.step()
                if len(events) > 1:  # one message per step, however many streams it advanced
                    self.send(Step(events))
                elif events:
                    self.send(events[0])
                if not self.core.has_work:
                    self.idle_since = time.monotonic()  # caches are released once it stays idle
            if self.core is not None and self.core.broken:  # a step, or a direct first token, failed
                log.error("a batch step failed (%s); exiting so the supervisor restarts this worker", self.core.broken)
                self.send(State(WorkerState.FAILED, self.core.broken))
                return 4
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + HEARTBEAT_EVERY
                self._heartbeat()
                if self.parent_pid is not None and os.getppid() != self.parent_pid:
                    log.warning("gateway (pid %s) is gone; exiting", self.parent_pid)
                    return 0
            if self.stop_signal and not self.draining:
                self._start_drain()
            if self.draining and (self.core is None or not (self.core.has_work or self.renderer)):
                if self.core is not None:
                    _warm(self.core, save=True)
                return self.exit_code

    def _connection_events(self) -> bool:
        """Rejoin after a reconnect; True when the handshake can't succeed (no use retrying): the
        gateway refused our key, or it keeps failing (a wrong --server-key, CURVE on one side
        only). Lost connections are retried by ZeroMQ."""
        assert self.monitor is not None
        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                log.error("the gateway at %s refused this worker's CURVE key; exiting", self.endpoint)
                return True
            if event in (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
                self.failed_handshakes += 1
                if self.failed_handshakes >= HANDSHAKE_TRIES:
                    log.error(
                        "no handshake with the gateway at %s succeeded in %d tries: is --server-key its public "
                        "key, and do both sides use CURVE? exiting",
                        self.endpoint,
                        self.failed_handshakes,
                    )
                    return True
            elif event == zmq.EVENT_DISCONNECTED and self.connected:
                self.connected = False
                log.warning("lost the gateway at %s; reconnecting", self.endpoint)
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.connected = True
                self.failed_handshakes = 0
                self.connections += 1
                if self.connections > 1:
                    # the gateway settles what we were running (it may have missed output)
                    running = self.core.running + self.core.waiting if self.core else 0
                    log.warning(
                        "reconnected to the gateway at %s; saying hello again, dropping %d request(s)",
                        self.endpoint,
                        running,
                    )
                    if self.renderer is not None:
                        self.renderer.clear()
                    if self.core is not None:
                        self.core.cancel_all()
                    self.hello()
                    self.send(self._state())
        return False

    def _state(self) -> State:
        """The current lifecycle state, for a hello after a reconnect."""
        if self.draining or self.phase is not memory.Phase.SERVING:
            return State(WorkerState.DRAINING)
        if self.core is not None:
            return _ready(self.core)
        return State(WorkerState.LOADING)

    def _read_all(self) -> None:
        aside = len(self.renderer) if self.renderer is not None else 0
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                if self.renderer is not None and len(self.renderer) > aside:
                    assert self.core is not None
                    self.core.arrivals_coming()  # type: ignore[union-attr]
                return
            if len(frames) != 2:
                log.warning("dropping a message of %d frames", len(frames))
                continue
            try:
                msg = decode(frames[0], frames[1])
            except ProtocolError as e:
                log.warning("dropping a bad message: %s", e)
                continue
            self._handle(msg)

    def _handle(self, msg: Message) -> None:
        if isinstance(msg, Generate):
            if self.core is None or self.draining or self.phase is not memory.Phase.SERVING:
                self.send(Error(msg.id, ERROR_NOT_READY, f"worker {self.worker_id} is not ready"))
                return
            if self.renderer is not None and (self.core.has_work or self.renderer):
                self.renderer.submit(msg)  # added after the next step (worker/prep.py)
            else:
                self._add(msg)
        elif isinstance(msg, Embed):
            self._embed(msg)
        elif isinstance(msg, Cancel):
            if self.renderer is not None and self.renderer.cancel(msg.id):
                return
            if self.core is not None:
                self.core.cancel(msg.id)
        elif isinstance(msg, Tokenize):
            if self.core is None:
                self.send(Error(msg.id, ERROR_NOT_READY, "not ready"))
                return
            try:
                self.send(Tokens(msg.id, self.core.count_tokens(msg.input)))
            except Exception as e:
                self.send(Error(msg.id, ERROR_BAD_REQUEST, str(e)))
        elif isinstance(msg, Drain):
            self._start_drain()
        else:
            log.warning("ignoring a %s message from the gateway", msg.KIND)

    def _add(self, msg: Generate, rendered: Callable[[], Rendered] | None = None) -> None:
        assert self.core is not None
        try:
            events = self.core.add(msg, rendered) if rendered is not None else self.core.add(msg)  # type: ignore[call-arg]
        except Exception as e:  # never let one request's input take the worker down
            log.exception("refusing request %s", msg.id)
            events = [
                Error(msg.id, ERROR_BAD_REQUEST, f"the worker could not take this request: {type(e).__name__}: {e}")
            ]
        for out in events:
            self.send(out)

    def _add_rendered(self) -> None:
        """Add what the renderer holds, in arrival order (waiting for what it has not rendered yet)."""
        assert self.renderer is not None
        for msg, rendered in self.renderer.take():
            self._add(msg, rendered)

    def _embed(self, msg: Embed) -> None:
        from worker.embedding.core import EmbeddingCore  # the core is loaded: so is MLX

        if self.core is None or self.draining or self.phase is not memory.Phase.SERVING:
            self.send(Error(msg.id, ERROR_NOT_READY, f"worker {self.worker_id} is not ready"))
            return
        if not isinstance(self.core, EmbeddingCore):
            why = f"'{self.cfg.name}' is a chat model: it makes no embeddings"
            self.send(Error(msg.id, ERROR_BAD_REQUEST, why, "model"))
            return
        try:
            events = self.core.embed(msg)
        except Exception as e:  # never let one request's input take the worker down
            log.exception("refusing request %s", msg.id)
            why = f"the worker could not take this request: {type(e).__name__}: {e}"
            events = [Error(msg.id, ERROR_BAD_REQUEST, why)]
        for out in events:
            self.send(out)

    def _start_drain(self, detail: str = "") -> None:
        self.draining = True
        memory.release()
        self.send(State(WorkerState.DRAINING, detail))

    def _heartbeat(self) -> None:
        core = self.core
        if core is not None and not core.has_work and self.idle_since:
            after = self.cfg.idle_release_s
            if after > 0 and time.monotonic() - self.idle_since >= after:
                memory.release(heap=True)
                self.idle_since = 0.0
        m = self._watch_memory() if core is not None else memory.read()
        hb = Heartbeat(
            running=core.running if core else 0,
            waiting=(core.waiting if core else 0) + (len(self.renderer) if self.renderer is not None else 0),
            cache_tokens=core.prompt_cache.ntokens if core and core.prompt_cache is not None else 0,
            cache_bytes=core.prompt_cache.nbytes if core and core.prompt_cache is not None else 0,
            memory_bytes=m.footprint,
            mlx_active_bytes=m.active,
            mlx_cache_bytes=m.cache,
            mlx_peak_bytes=m.peak,
        )
        if self.cfg.distributed is not None:  # rank 0 of a worker group: the group's sums, each rank
            from worker.group import group_heartbeat

            hb = group_heartbeat(core, hb, self.cfg.distributed.hosts[0])
        self.send(hb)

    def _watch_memory(self) -> memory.Reading:
        """The memory now, after acting on the model's ``memory_ceiling`` (``memory.decide``):
        shed and trim, admit again, or drain and exit for a fresh worker."""
        assert self.core is not None
        reading = memory.read()
        ceiling = self.cfg.memory_ceiling_bytes()
        action = memory.decide(self.phase, reading.footprint, ceiling)
        if action is memory.Action.TRIM:
            over = reading.footprint - int(ceiling * memory.RESUME_AT)
            freed = 0
            if self.core.prompt_cache is not None:
                freed = self.core.prompt_cache.trim(max(0, self.core.prompt_cache.nbytes - over))
            memory.release(heap=True)
            if self.phase is memory.Phase.SERVING:
                self.phase = memory.Phase.SHEDDING
                if not self.draining:
                    self.send(
                        State(
                            WorkerState.DRAINING,
                            f"memory {format_size(reading.footprint)} is over the "
                            f"memory_ceiling {format_size(ceiling)}: not admitting",
                        )
                    )
            before, reading = reading, memory.read()
            log.warning(
                "memory %s over the ceiling %s: shedding load; trimmed %s of prompt cache, now %s",
                format_size(before.footprint), format_size(ceiling), format_size(freed), format_size(reading.footprint),
            )  # fmt: skip
            action = memory.decide(self.phase, reading.footprint, ceiling, just_trimmed=True)
        if action is memory.Action.RESTART:
            self.phase = memory.Phase.LEAVING
            self.exit_code = EXIT_MEMORY
            detail = f"memory {format_size(reading.footprint)} still over the memory_ceiling {format_size(ceiling)}"
            log.error("%s after trimming; draining and exiting for a fresh worker", detail)
            self._start_drain(detail + ": restarting")
        elif action is memory.Action.RESUME:
            self.phase = memory.Phase.SERVING
            log.info("memory %s is back under the ceiling: admitting again", format_size(reading.footprint))
            if not self.draining:
                self.send(State(WorkerState.READY, context_length=self.core.m.context_length))
        return reading

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()
        if self.cfg.distributed is not None and self.core is not None:
            from worker.group import release_followers

            release_followers(self.core)
        if self.monitor is not None:
            self.sock.disable_monitor()
            self.monitor.close()
        self.sock.close()
        self.ctx.term()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m worker", description="A Hearth model worker.")
    p.add_argument("--endpoint", required=True, help="the gateway's worker endpoint (ipc:// or tcp://)")
    p.add_argument("--worker-id", required=True)
    p.add_argument("--model-json", required=True, help="the model's settings as JSON")
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    p.add_argument("--server-key", help="CURVE: the gateway's public certificate file (NAME.key)")
    p.add_argument("--key", help="CURVE: this worker's secret certificate file (NAME.key_secret)")
    p.add_argument("--group-channel", help="a worker group: rank 0's channel to its followers (tcp://HOST:PORT)")
    args = p.parse_args(argv)
    cfg = ModelConfig.from_json(args.model_json)
    rank = int(os.environ.get("MLX_RANK", "0")) if cfg.distributed is not None else 0
    if bool(args.server_key) != bool(args.key):
        p.error("--server-key and --key go together")
    who = f"{args.worker_id}/rank{rank}" if cfg.distributed is not None else args.worker_id
    logging.basicConfig(
        level=os.environ.get("HEARTH_LOG_LEVEL", "INFO").upper(),
        format=f"%(asctime)s worker[{who}] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    if cfg.distributed is not None and not args.group_channel:
        p.error("a worker group's ranks need --group-channel")
    if rank > 0:  # a follower rank: no gateway socket, only rank 0's ops (worker/follower.py)
        from worker.follower import follow

        return follow(cfg, args.group_channel, rank, args.parent_pid)
    curve = None
    if args.key:
        public, secret = zmq.auth.load_certificate(args.key)
        server_public, _ = zmq.auth.load_certificate(args.server_key)
        if secret is None:
            p.error(f"--key {args.key} holds no secret key (use the NAME.key_secret file)")
        curve = (public, secret, server_public)
    proc = WorkerProcess(args.endpoint, args.worker_id, cfg, args.parent_pid, curve, args.group_channel)

    def on_term(signum: int, frame: object) -> None:
        proc.stop_signal = True

    signal.signal(signal.SIGTERM, on_term)
    if args.parent_pid is None:  # on its own (hearth worker): Ctrl-C drains it too
        signal.signal(signal.SIGINT, on_term)
    else:  # spawned: Ctrl-C reaches the gateway too, which drains us in its own time
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return proc.run()
    finally:
        proc.close()
