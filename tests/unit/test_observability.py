"""Metrics, request ids, log lines and traces, on the fake backend."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from inferd.api.app import create_app
from inferd.config import ModelConfig, Settings
from inferd.engine.backends.fake import FakeBackend
from inferd.models.engines import BackendEngineFactory
from inferd.models.registry import ModelRegistry
from inferd.models.spec import ModelSpec
from inferd.observability.logging import (
    JsonFormatter,
    RequestIdFilter,
    choose_format,
    sanitize_request_id,
)
from inferd.observability.tracing import Tracing
from tests.conftest import AppHandle, FakeFactory

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5}
OLLAMA = {"model": "fake", "prompt": "x", "options": {"num_predict": 5}}
HEX32 = re.compile(r"[0-9a-f]{32}")


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(
    scraped: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return samples(r.text)


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """Everything logged while the test runs, as JSON lines with the request id filter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def parsed(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line]


def access_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [r for r in parsed(stream) if r["logger"] == "inferd.access"]


# ---- metrics ------------------------------------------------------------------------------


async def test_metrics_count_requests_and_generations(fake_app: FakeFactory) -> None:
    async with fake_app() as h:
        c = h.client
        for _ in range(3):
            assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 200
        for _ in range(2):
            r = await c.post("/v1/chat/completions", json={**CHAT, "stream": True})
            assert r.status_code == 200 and "[DONE]" in r.text
        r = await c.post("/api/generate", json={**OLLAMA, "stream": False})
        assert r.status_code == 200
        assert (await c.get("/no/such/route")).status_code == 404
        assert (await c.post("/v1/chat/completions", json={"model": "nope"})).status_code in (
            400,
            404,
        )
        assert (await c.get("/health")).status_code == 200

        m = await scrape(c)
        req = "inferd_http_requests_total"
        chat = {"dialect": "openai", "route": "/v1/chat/completions", "method": "POST"}
        assert value(m, req, **chat, status="200") == 5
        assert (
            value(m, req, dialect="ollama", route="/api/generate", method="POST", status="200") == 1
        )
        # no route: no dialect (nothing is guessed from the path)
        assert value(m, req, dialect="none", route="<unmatched>", method="GET", status="404") == 1
        assert value(m, req, dialect="ops", route="/health", method="GET", status="200") == 1
        # never the raw URL
        assert not any("/no/such/route" in str(k) for k in m)
        assert value(m, "inferd_http_request_duration_seconds_count", **chat) == 6
        assert value(m, "inferd_http_requests_in_flight", dialect="openai") == 0
        assert value(m, "inferd_http_requests_in_flight", dialect="ops") == 1  # this scrape

        # six generations: five chats and one Ollama generate
        assert value(m, "inferd_generations_total", model="fake", finish_reason="length") == 6
        for hist in (
            "inferd_time_to_first_token_seconds",
            "inferd_e2e_request_latency_seconds",
            "inferd_queue_time_seconds",
            "inferd_request_prompt_tokens",
            "inferd_request_generation_tokens",
        ):
            assert value(m, f"{hist}_count", model="fake") == 6, hist
        assert value(m, "inferd_request_generation_tokens_sum", model="fake") == 30
        # five tokens each: four gaps between them, six generations
        assert value(m, "inferd_inter_token_latency_seconds_count", model="fake") == 24
        stats = h.engine().stats()
        assert value(m, "inferd_engine_generation_tokens_total", model="fake") == 30
        assert value(m, "inferd_engine_steps_total", model="fake") == stats.steps
        assert value(m, "inferd_engine_step_sequences_count", model="fake") == stats.steps
        # requests ran one at a time here: every step ran one sequence
        assert value(m, "inferd_engine_step_sequences_bucket", model="fake", le="1") == stats.steps
        assert value(m, "inferd_engine_step_sequences_sum", model="fake") == stats.steps
        assert value(m, "inferd_engine_step_tokens_total", model="fake") >= stats.steps
        assert value(m, "inferd_engine_prefix_cache_entries", model="fake") >= 1
        assert value(m, "inferd_engine_prefix_cache_queries_total", model="fake") == 6
        assert value(m, "inferd_engine_running_sequences", model="fake") == 0
        assert value(m, "inferd_engine_waiting_sequences", model="fake") == 0
        ratio = value(m, "inferd_engine_kv_cache_usage_ratio", model="fake")
        assert ratio == stats.kv_cells_used / stats.kv_cells_total
        assert value(m, "inferd_models_loaded") == 1
        assert value(m, "inferd_model_ready", model="fake") == 1
        assert value(m, "inferd_model_load_failures_total", model="fake") == 0
        assert value(m, "inferd_model_load_duration_seconds", model="fake") > 0


async def test_each_app_has_its_own_registry(fake_app: FakeFactory) -> None:
    async with fake_app() as a, fake_app() as b:
        await a.client.get("/health/live")
        await a.client.get("/health/live")
        await b.client.get("/health/live")
        live = {"dialect": "ops", "route": "/health/live", "method": "GET", "status": "200"}
        assert value(await scrape(a.client), "inferd_http_requests_total", **live) == 2
        assert value(await scrape(b.client), "inferd_http_requests_total", **live) == 1


async def test_load_failures_are_counted() -> None:
    spec = ModelSpec("bad", Path("bad.gguf"), ModelConfig(path=Path("bad.gguf")), ())

    def loader(_spec: ModelSpec) -> FakeBackend:
        raise RuntimeError("boom")

    handle = AppHandle(Settings(), ModelRegistry([spec], BackendEngineFactory(loader)))
    async with handle as h:
        m = await scrape(h.client)
        assert value(m, "inferd_model_load_failures_total", model="bad") == 1
        assert value(m, "inferd_model_ready", model="bad") == 0
        assert value(m, "inferd_models_loaded") == 0


# ---- request ids and logs -----------------------------------------------------------------


async def test_request_id_is_in_the_header_and_on_every_log_line(
    fake_app: FakeFactory, log_lines: io.StringIO
) -> None:
    async with fake_app() as h:
        observe = h.app.state.observe_generation

        def hook(*args: Any) -> None:  # a line logged while the request is handled
            logging.getLogger("test.inner").info("generation finished")
            observe(*args)

        h.app.state.observe_generation = hook
        sent = "client-id_1.2"
        r = await h.client.post("/v1/chat/completions", json=CHAT, headers={"X-Request-ID": sent})
        assert r.status_code == 200
        rid = r.headers["x-request-id"]
        # the server's own id, unique (a client's id may repeat); the client's is logged
        assert HEX32.fullmatch(rid)
        assert r.json()["id"] == f"chatcmpl-{rid}"

    records = parsed(log_lines)
    inner_line = next(r for r in records if r["logger"] == "test.inner")
    assert inner_line["request_id"] == rid
    (access,) = access_lines(log_lines)
    assert access["request_id"] == rid
    assert access["client_request_id"] == sent
    assert access["dialect"] == "openai"
    assert access["method"] == "POST"
    assert access["route"] == "/v1/chat/completions"
    assert access["status"] == 200
    assert access["duration_ms"] >= 0
    assert access["model"] == "fake"
    assert access["completion_tokens"] == 5
    assert access["prompt_tokens"] > 0
    # never the prompt
    assert all("Hi" not in line for line in log_lines.getvalue().splitlines())


async def test_generated_and_replaced_request_ids(
    fake_app: FakeFactory, log_lines: io.StringIO
) -> None:
    async with fake_app() as h:
        sent = [None, "bad id!", "x" * 129, "", "ok\u00e9"]
        got = []
        for rid in sent:
            headers = {} if rid is None else {"X-Request-ID": rid.encode("utf-8")}
            r = await h.client.get("/health/live", headers=headers)  # type: ignore[arg-type]
            assert r.status_code == 200
            got.append(r.headers["x-request-id"])
    assert all(HEX32.fullmatch(g) for g in got)
    assert len(set(got)) == len(got)
    assert [a["request_id"] for a in access_lines(log_lines)] == got


async def test_streams_keep_working_and_log_when_they_end(
    fake_app: FakeFactory, log_lines: io.StringIO
) -> None:
    async with fake_app() as h:
        c = h.client
        async with c.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
            sse1 = r.headers["x-request-id"]
            events = [line async for line in r.aiter_lines() if line.startswith("data:")]
        assert events[-1] == "data: [DONE]"
        async with c.stream("POST", "/api/chat", json={**CHAT, "stream": True}) as r:
            nd1 = r.headers["x-request-id"]
            lines = [json.loads(line) async for line in r.aiter_lines() if line]
        assert lines[-1]["done"] is True
    by_id = {a["request_id"]: a for a in access_lines(log_lines)}
    assert by_id[sse1]["status"] == 200 and by_id[sse1]["completion_tokens"] == 5
    assert by_id[nd1]["dialect"] == "ollama" and by_id[nd1]["route"] == "/api/chat"
    assert by_id[nd1]["completion_tokens"] == 5


def test_sanitize_request_id() -> None:
    assert sanitize_request_id("abc.DEF_1-2") == "abc.DEF_1-2"
    assert sanitize_request_id("a" * 128) == "a" * 128
    for bad in (None, "", "a" * 129, "a b", "a/b", "a\nb", "é"):
        assert HEX32.fullmatch(sanitize_request_id(bad))


def test_log_format_choice() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert choose_format("auto", io.StringIO()) == "json"
    assert choose_format("auto", Tty()) == "pretty"
    assert choose_format("json", Tty()) == "json"
    assert choose_format("pretty", io.StringIO()) == "pretty"
    assert Settings(log_format="json").log_format == "json"


# ---- tracing ------------------------------------------------------------------------------


def test_tracing_is_off_without_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    assert not Tracing().enabled


async def test_spans_for_request_and_generation() -> None:
    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    spec = ModelSpec("fake", Path("fake.gguf"), ModelConfig(path=Path("fake.gguf")), ())
    registry = ModelRegistry([spec], BackendEngineFactory(lambda _spec: FakeBackend()))
    app = create_app(Settings(), registry, tracer_provider=provider)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent = "00f067aa0ba902b7"
    await registry.load_all()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
        ) as client:
            r = await client.post(
                "/v1/chat/completions",
                json={**CHAT, "n": 2},
                headers={"traceparent": f"00-{trace_id}-{parent}-01", "X-Request-ID": "t1"},
            )
            assert r.status_code == 200
    finally:
        await registry.close()
    spans = exporter.get_finished_spans()
    (server,) = [s for s in spans if s.name == "POST /v1/chat/completions"]
    gens = [s for s in spans if s.name == "generate"]
    assert len(gens) == 2
    assert format(server.context.trace_id, "032x") == trace_id
    assert server.parent is not None and format(server.parent.span_id, "016x") == parent
    assert server.attributes["http.route"] == "/v1/chat/completions"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["inferd.request_id"] == r.headers["x-request-id"]
    for g in gens:
        assert g.parent is not None and g.parent.span_id == server.context.span_id
        assert g.attributes["inferd.model"] == "fake"
        assert g.attributes["inferd.completion_tokens"] == 5
        assert g.attributes["inferd.prompt_tokens"] > 0
        assert g.start_time <= g.end_time
        assert {e.name for e in g.events} >= {"scheduled", "first_token"}


# ---- OpenAI timings extension -------------------------------------------------------------


async def test_openai_responses_carry_timings(fake_app: FakeFactory) -> None:
    async with fake_app(step_delay=0.002) as h:
        chat = (await h.client.post("/v1/chat/completions", json={**CHAT, "n": 2})).json()
        comp = (
            await h.client.post(
                "/v1/completions", json={"model": "fake", "prompt": "Hi", "max_tokens": 5}
            )
        ).json()
        stream = await h.client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    for body in (chat, comp):
        t = body["timings"]
        assert t["queue_s"] >= 0
        assert t["time_to_first_token_s"] >= t["queue_s"]
        assert t["decode_tokens_per_s"] > 0
    assert "timings" not in stream.text
