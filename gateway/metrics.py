"""Prometheus metrics (prometheus-client), served at /metrics.

Request counts come from the request-wrap layer (gateway/wrap.py: status as sent, model as the
session resolved it); latency and token counts from each request's stream as the worker's
events arrive (gateway/streams.py); running/waiting requests, model and worker states and
restarts are read from the models and their pool at scrape time, so they are never stale.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from gateway.memory import memory_kinds

if TYPE_CHECKING:
    from gateway.models import Models
    from gateway.shutdown import Gate

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
LOAD_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("hearth_requests", "HTTP requests", ["model", "endpoint", "status"], registry=r)
        self.ttft = Histogram(
            "hearth_time_to_first_token_seconds", "Time to first token", ["model"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.itl = Histogram(
            "hearth_inter_token_latency_seconds", "Time between tokens", ["model"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.prompt_tokens = Counter("hearth_prompt_tokens", "Prompt tokens processed", ["model"], registry=r)
        self.completion_tokens = Counter("hearth_completion_tokens", "Tokens generated", ["model"], registry=r)
        self.cached_tokens = Counter(
            "hearth_prompt_cache_hit_tokens", "Prompt tokens served from the KV cache", ["model"], registry=r
        )
        self.unloads = Counter(
            "hearth_model_unloads", "Models unloaded, by reason (idle, evicted, admin)", ["model", "reason"], registry=r
        )
        self.load_seconds = Histogram(
            "hearth_model_load_seconds",
            "From a worker's hello to ready (loading weights and the self-check), as the gateway saw it",
            ["model"],
            buckets=LOAD_BUCKETS,
            registry=r,
        )
        self.omitted_media = Counter(
            "hearth_omitted_media_blocks",
            "Image and document blocks replaced by a text note (the model reads text only)",
            ["model"],
            registry=r,
        )
        self.resumes = Counter(
            "hearth_resumes",
            "Generations resumed on another worker after theirs died mid-stream",
            ["model"],
            registry=r,
        )
        self.poison = Counter(
            "hearth_poison_requests",
            "Generations failed as poison_request: their worker died twice while they were the suspect",
            ["model"],
            registry=r,
        )
        self.draft_tokens = Counter(
            "hearth_speculative_draft_tokens",
            "Draft tokens the target model verified (speculative decoding)",
            ["model"],
            registry=r,
        )
        self.accepted_tokens = Counter(
            "hearth_speculative_accepted_tokens",
            "Draft tokens the target model agreed with: acceptance = accepted / draft tokens",
            ["model"],
            registry=r,
        )
        self.decode_steps = Counter(
            "hearth_decode_steps",
            "Decode steps (forward passes) of finished generations that ran in the speculative decode batch: "
            "tokens per step = their completion tokens / steps",
            ["model"],
            registry=r,
        )
        self.speculative_tokens = Counter(
            "hearth_speculative_completion_tokens",
            "Completion tokens of the generations counted in hearth_decode_steps",
            ["model"],
            registry=r,
        )
        self.in_flight = Gauge("hearth_http_requests_in_flight", "API requests being answered", registry=r)
        self.shutting_down = Gauge("hearth_shutting_down", "1 once a shutdown has started", registry=r)

    def observe_done(self, model: str, usage: dict[str, int]) -> None:
        self.prompt_tokens.labels(model).inc(usage.get("prompt_tokens", 0))
        self.completion_tokens.labels(model).inc(usage.get("completion_tokens", 0))
        self.cached_tokens.labels(model).inc(usage.get("cached_tokens", 0))
        if usage.get("decode_steps"):
            self.draft_tokens.labels(model).inc(usage.get("draft_tokens", 0))
            self.accepted_tokens.labels(model).inc(usage.get("accepted_draft_tokens", 0))
            self.decode_steps.labels(model).inc(usage["decode_steps"])
            self.speculative_tokens.labels(model).inc(usage.get("completion_tokens", 0))

    def watch_models(self, models: Models, restarts: dict[str, int]) -> None:
        self.registry.register(_ModelsCollector(models, restarts))

    def watch_gate(self, gate: Gate) -> None:
        self.in_flight.set_function(lambda: gate.inflight)
        self.shutting_down.set_function(lambda: float(gate.draining))

    async def endpoint(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class _ModelsCollector(Collector):
    def __init__(self, models: Models, restarts: dict[str, int]) -> None:
        self.models = models
        self.restarts = restarts

    def collect(self) -> Iterator[Metric]:
        running = GaugeMetricFamily("hearth_running_requests", "Requests decoding in workers", labels=["model"])
        waiting = GaugeMetricFamily(
            "hearth_waiting_requests", "Requests waiting for a worker or a batch slot", labels=["model"]
        )
        workers = GaugeMetricFamily("hearth_workers", "Workers by state", labels=["model", "state"])
        restarts = GaugeMetricFamily(
            "hearth_worker_restarts", "Worker exits the supervisor restarted", labels=["model"]
        )
        cache = GaugeMetricFamily("hearth_prompt_cache_bytes", "KV prompt cache held by workers", labels=["model"])
        memory = GaugeMetricFamily(
            "hearth_worker_memory_bytes",
            "Workers' memory: kind=footprint is what the OS charges them (RSS / physical footprint), "
            "mlx_active, mlx_cache and mlx_peak are MLX's own counters",
            labels=["model", "kind"],
        )
        models = GaugeMetricFamily(
            "hearth_models", "Models by state (1 for the state each model is in)", labels=["model", "state"]
        )
        loaded = GaugeMetricFamily(
            "hearth_loaded_models", "Models whose workers the supervisor runs (loading, ready or unloading)"
        )
        resident = 0
        for model in self.models:
            name = model.name
            models.add_metric([name, model.state.value], 1)
            resident += model.resident
            ws = self.models.pool.of_model(name)
            running.add_metric([name], sum(w.heartbeat.running for w in ws if w.heartbeat))
            waiting.add_metric([name], len(model.queue) + sum(w.heartbeat.waiting for w in ws if w.heartbeat))
            states: dict[str, int] = {}
            for w in ws:
                key = w.state.value if w.connected else "starting"
                states[key] = states.get(key, 0) + 1
            for state, count in states.items():
                workers.add_metric([name, state], count)
            restarts.add_metric([name], self.restarts.get(name, 0))
            cache.add_metric([name], sum(w.heartbeat.cache_bytes for w in ws if w.heartbeat))
            for kind, value in memory_kinds(w.heartbeat for w in ws):
                memory.add_metric([name, kind], value)
        loaded.add_metric([], resident)
        yield from (running, waiting, workers, restarts, cache, memory, models, loaded)
