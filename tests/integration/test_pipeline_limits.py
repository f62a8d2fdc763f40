"""Every limit of the one generation pipeline, in every dialect that has the parameter, on
the fake backend (these requests are refused before the engine, or need no real model)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from inferd.config import Settings
from tests.conftest import FakeFactory

USER = [{"role": "user", "content": "hi"}]

# route -> (dialect, body without the parameters under test)
ROUTES: dict[str, tuple[str, dict[str, Any]]] = {
    "/v1/chat/completions": ("openai", {"messages": USER}),
    "/v1/completions": ("openai", {"prompt": "hi"}),
    "/api/generate": ("ollama", {"model": "fake", "prompt": "hi", "stream": False}),
    "/api/chat": ("ollama", {"model": "fake", "messages": USER, "stream": False}),
    "/generate": ("native", {"prompt": "hi"}),
    "/chat": ("native", {"messages": USER}),
    "/generate/stream": ("native", {"prompt": "hi"}),
    "/api/chat/stream": ("native", {"messages": USER}),
}
ALL = list(ROUTES)
OPENAI = [r for r in ALL if ROUTES[r][0] == "openai"]
# how Ollama spells the neutral options
OLLAMA_OPTIONS = {"max_tokens": "num_predict", "stop": "stop"}


def body(route: str, **params: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """The route's body with `params` as its dialect takes them, and the wire name of each."""
    dialect, base = ROUTES[route]
    out = {**base}
    names = {}
    for name, value in params.items():
        if dialect == "ollama" and name in OLLAMA_OPTIONS:
            wire = OLLAMA_OPTIONS[name]
            out.setdefault("options", {})[wire] = value
            names[name] = f"options.{wire}"
        else:
            out[name] = value
            names[name] = name
    return out, names


def assert_400(route: str, r: httpx.Response, param: str, code: str = "invalid_request") -> None:
    assert r.status_code == 400, (route, r.status_code, r.text)
    error = r.json()["error"]
    if ROUTES[route][0] == "ollama":
        assert isinstance(error, str) and error, route  # Ollama's shape: a message
    else:
        assert error["param"] == param, (route, error)
        assert error["code"] == code, (route, error)


def completion_tokens(route: str, r: httpx.Response) -> int:
    assert r.status_code == 200, (route, r.text)
    if route.endswith("/stream"):
        lines = [x for x in r.text.splitlines() if x.startswith("data: ")]
        final = json.loads(lines[-1][len("data: ") :])
        assert final["done"] is True
        return int(final["tokens_generated"])
    b = r.json()
    dialect = ROUTES[route][0]
    if dialect == "openai":
        return int(b["usage"]["completion_tokens"])
    if dialect == "ollama":
        return int(b["eval_count"])
    return int(b["tokens_generated"])


@pytest.mark.parametrize("route", ALL)
async def test_max_tokens_limit(fake_app: FakeFactory, route: str) -> None:
    async with fake_app(Settings(max_tokens_limit=5)) as h:
        sent, names = body(route, max_tokens=50)
        r = await h.client.post(route, json=sent)
        assert_400(route, r, names["max_tokens"])
        if ROUTES[route][0] == "ollama":
            assert names["max_tokens"] in r.json()["error"]
        sent, _ = body(route, max_tokens=5)
        assert completion_tokens(route, await h.client.post(route, json=sent)) == 5
        # nothing asked for: the limit does not cap the default (fill the context)
        sent, _ = body(route)
        assert completion_tokens(route, await h.client.post(route, json=sent)) > 5


@pytest.mark.parametrize("route", OPENAI)
async def test_max_n_and_batch_choices(fake_app: FakeFactory, route: str) -> None:
    async with fake_app(Settings(max_n=3, max_batch_choices=4)) as h:
        sent, _ = body(route, n=4)
        assert_400(route, await h.client.post(route, json=sent), "n")
        sent, _ = body(route, n=3, max_tokens=2)
        r = await h.client.post(route, json=sent)
        assert r.status_code == 200 and len(r.json()["choices"]) == 3
        if route == "/v1/completions":
            sent = {"prompt": ["a", "b", "c"], "n": 2}
            assert_400(route, await h.client.post(route, json=sent), "prompt")


@pytest.mark.parametrize("route", ALL)
async def test_stop_count_and_length(fake_app: FakeFactory, route: str) -> None:
    async with fake_app(Settings(max_stop=2, max_stop_length=4)) as h:
        for stop in (["a", "b", "c"], ["ok", "12345"]):
            sent, names = body(route, stop=stop)
            assert_400(route, await h.client.post(route, json=sent), names["stop"])
        sent, _ = body(route, stop=["from", "xyz"])
        r = await h.client.post(route, json=sent)
        assert r.status_code == 200, r.text
        if not route.endswith("/stream"):  # the reply stops before "from"
            text = r.text
            assert "Hello" in text and "fake backend" not in text


@pytest.mark.parametrize("route", OPENAI)
async def test_logit_bias_count(fake_app: FakeFactory, route: str) -> None:
    async with fake_app(Settings(max_logit_bias=2)) as h:
        sent, _ = body(route, logit_bias={"1": 1, "2": 1, "3": 1})
        assert_400(route, await h.client.post(route, json=sent), "logit_bias")
        sent, _ = body(route, logit_bias={"1": 1, "2": 1}, max_tokens=2)
        assert (await h.client.post(route, json=sent)).status_code == 200


@pytest.mark.parametrize("route", ALL)
async def test_context_budget(fake_app: FakeFactory, route: str) -> None:
    """The fake model has 512 tokens of context, one a byte."""
    async with fake_app() as h:
        dialect, base = ROUTES[route]
        long = "x" * 600
        sent = {**base}
        if "messages" in base:
            sent["messages"] = [{"role": "user", "content": long}]
        else:
            sent["prompt"] = long
        param = "messages" if "messages" in base else "prompt"
        assert_400(route, await h.client.post(route, json=sent), param, "context_length_exceeded")
        # a prompt that fits, asking for more than the room: a 400, except on Ollama's
        # routes, which cut num_predict to the room as Ollama does
        sent, names = body(route, max_tokens=1000)
        r = await h.client.post(route, json=sent)
        if dialect == "ollama":
            assert completion_tokens(route, r) > 0
        else:
            assert_400(route, r, names["max_tokens"], "context_length_exceeded")
