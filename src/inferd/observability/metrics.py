"""Prometheus metrics in the app's own CollectorRegistry (never the global default one).

HTTP metrics are recorded by the request middleware, generation histograms by the engine's
finish hook, and engine/model state is read from the model registry at scrape time.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from inferd.engine.types import STEP_SEQ_BUCKETS, GenerationOutput
from inferd.models.registry import ModelRegistry, ModelStatus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
_ITL_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5,
)  # fmt: skip
_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


class WriterStats(Protocol):
    """What the usage store's writer tells about itself (storage.writer.UsageWriter)."""

    healthy: bool
    written: int
    submitted: int
    write_errors: int

    @property
    def spool_bytes(self) -> int: ...


class StoreCollector(Collector):
    """The usage store's writer, read when scraped (none until a store is open)."""

    def __init__(self, writer: Callable[[], WriterStats | None]) -> None:
        self._writer = writer

    def collect(self) -> Iterator[Metric]:
        w = self._writer()
        if w is None:
            return
        p = "inferd_store_"
        yield GaugeMetricFamily(p + "healthy", "1 while the database takes writes", w.healthy)
        yield GaugeMetricFamily(
            p + "spool_bytes", "Usage records waiting in the spool file, in bytes", w.spool_bytes
        )
        yield CounterMetricFamily(
            p + "records_submitted", "Usage and message records handed to the writer", w.submitted
        )
        yield CounterMetricFamily(
            p + "records_written", "Records written to the database", w.written
        )
        yield CounterMetricFamily(
            p + "write_errors",
            "Batches the database refused (kept spooled, retried)",
            w.write_errors,
        )

    def describe(self) -> Iterator[Metric]:
        return iter(())


class EngineCollector(Collector):
    """Engine and model state per model, read from the registry when scraped."""

    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        m = "model"

        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"inferd_{name}", doc, labels=[m])

        def counter(name: str, doc: str) -> CounterMetricFamily:
            return CounterMetricFamily(f"inferd_{name}", doc, labels=[m])

        loaded = GaugeMetricFamily("inferd_models_loaded", "Models loaded and ready")
        ready = gauge("model_ready", "1 when the model is loaded and ready, else 0")
        load_seconds = gauge("model_load_duration_seconds", "How long the last load took")
        failures = counter("model_load_failures", "Failed loads of the model")
        running = gauge("engine_running_sequences", "Sequences being decoded")
        waiting = gauge("engine_waiting_sequences", "Sequences waiting to be scheduled")
        kv_usage = gauge("engine_kv_cache_usage_ratio", "Used KV cells / all KV cells (0-1)")
        kv_total = gauge("engine_kv_cache_cells", "KV cache cells shared by all sequences")
        cached = gauge("engine_prefix_cache_entries", "Finished sequences' saved KV states")
        cached_bytes = gauge("engine_prefix_cache_bytes", "Host memory held by saved KV states")
        prefix_queries = counter("engine_prefix_cache_queries", "Prefix cache lookups")
        prefix_hits = counter("engine_prefix_cache_hits", "Prefix cache lookups that hit")
        reused = counter("engine_prefix_cache_reused_tokens", "Prompt tokens reused from cache")
        preemptions = counter("engine_preemptions", "Sequences preempted for KV room")
        moves = counter("engine_kv_moves", "Split KV: sequences moved into a freed lower slot")
        prompt_tokens = counter("engine_prompt_tokens", "Prompt tokens admitted")
        gen_tokens = counter("engine_generation_tokens", "Tokens generated")
        steps = counter("engine_steps", "Engine steps (one batch decode each)")
        step_tokens = counter("engine_step_tokens", "Tokens fed to the model in engine steps")
        draft_tokens = counter(
            "engine_draft_tokens", "Speculative decoding: draft tokens verified in steps"
        )
        draft_accepted = counter(
            "engine_draft_accepted_tokens", "Speculative decoding: draft tokens accepted"
        )
        step_seqs = HistogramMetricFamily(
            "inferd_engine_step_sequences",
            "Sequences per engine step (the batch size)",
            labels=["model"],
        )

        n_loaded = 0
        for entry in self._registry.entries():
            name = [entry.spec.name]
            is_ready = entry.status is ModelStatus.READY and entry.model is not None
            n_loaded += is_ready
            ready.add_metric(name, 1.0 if is_ready else 0.0)
            failures.add_metric(name, entry.load_failures)
            if entry.load_seconds:
                load_seconds.add_metric(name, entry.load_seconds)
            if entry.model is None:
                continue
            st = entry.model.engine.stats()
            running.add_metric(name, st.running)
            waiting.add_metric(name, st.waiting)
            total = st.kv_cells_total
            kv_usage.add_metric(name, st.kv_cells_used / total if total else 0.0)
            kv_total.add_metric(name, total)
            cached.add_metric(name, st.cached_prefixes)
            cached_bytes.add_metric(name, st.prefix_cache_bytes)
            prefix_queries.add_metric(name, st.prefix_queries)
            prefix_hits.add_metric(name, st.prefix_hits)
            reused.add_metric(name, st.reused_tokens_total)
            preemptions.add_metric(name, st.preemptions)
            moves.add_metric(name, st.kv_moves)
            prompt_tokens.add_metric(name, st.prompt_tokens_total)
            gen_tokens.add_metric(name, st.generated_tokens_total)
            steps.add_metric(name, st.steps)
            step_tokens.add_metric(name, st.step_tokens_total)
            draft_tokens.add_metric(name, st.draft_tokens_total)
            draft_accepted.add_metric(name, st.draft_accepted_total)
            if st.step_seqs_counts:
                bounds = [*map(str, STEP_SEQ_BUCKETS), "+Inf"]
                cumulative = list(itertools.accumulate(st.step_seqs_counts))
                step_seqs.add_metric(
                    name, list(zip(bounds, cumulative, strict=True)), st.step_seqs_total
                )
        loaded.add_metric([], n_loaded)
        yield from (
            loaded, ready, load_seconds, failures, running, waiting, kv_usage, kv_total,
            cached, cached_bytes, prefix_queries, prefix_hits, reused, preemptions, moves,
            prompt_tokens, gen_tokens, steps, step_tokens, draft_tokens, draft_accepted,
            step_seqs,
        )  # fmt: skip

    def describe(self) -> Iterator[Metric]:
        return iter(())  # scraped lazily: nothing to check for name clashes up front


class Metrics:
    """Every metric of one app, in its own registry."""

    def __init__(self, models: ModelRegistry | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        http = ["dialect", "route", "method", "status"]
        self.http_requests = Counter(
            "inferd_http_requests", "HTTP requests handled", http, registry=r
        )
        self.http_in_flight = Gauge(
            "inferd_http_requests_in_flight", "HTTP requests being handled", ["dialect"], registry=r
        )
        self.http_duration = Histogram(
            "inferd_http_request_duration_seconds",
            "Time to handle an HTTP request (to the end of its stream)",
            ["dialect", "route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.generations = Counter(
            "inferd_generations",
            "Generations (one per choice) finished by the engine",
            ["model", "finish_reason"],
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "inferd_time_to_first_token_seconds",
            "From the engine receiving a request to its first generated token",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inter_token_latency = Histogram(
            "inferd_inter_token_latency_seconds",
            "Time between two consecutive generated tokens of a generation",
            ["model"],
            buckets=_ITL_BUCKETS,
            registry=r,
        )
        self.e2e_latency = Histogram(
            "inferd_e2e_request_latency_seconds",
            "From submitting a generation to the engine to its last token",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "inferd_queue_time_seconds",
            "From the engine receiving a request to its first scheduling",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Histogram(
            "inferd_request_prompt_tokens",
            "Prompt tokens per generation",
            ["model"],
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.generation_tokens = Histogram(
            "inferd_request_generation_tokens",
            "Generated tokens per generation",
            ["model"],
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        if models is not None:
            r.register(EngineCollector(models))

    def watch_store(self, writer: Callable[[], WriterStats | None]) -> None:
        """Export the usage store's writer state (`writer` is asked at every scrape)."""
        self.registry.register(StoreCollector(writer))

    def observe_generation(self, model: str, out: GenerationOutput, seconds: float) -> None:
        """Record a finished generation (its final output)."""
        self.generations.labels(model, str(out.finish_reason)).inc()
        self.e2e_latency.labels(model).observe(seconds)
        if out.queue_time is not None:
            self.queue_time.labels(model).observe(out.queue_time)
        if out.time_to_first_token is not None:
            self.time_to_first_token.labels(model).observe(out.time_to_first_token)
        if out.inter_token_latencies:
            itl = self.inter_token_latency.labels(model)
            for gap in out.inter_token_latencies:
                itl.observe(gap)
        self.prompt_tokens.labels(model).observe(out.usage.prompt_tokens)
        self.generation_tokens.labels(model).observe(out.usage.completion_tokens)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
