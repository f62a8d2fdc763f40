"""`inferd serve` as a subprocess on 127.0.0.1: cancellation, concurrency, shutdown, the CLI."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

import inferd
from tests.conftest import LiveServer

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
FREED_WITHIN = 1.0  # seconds: a cancelled request's sequence and KV cells must be gone by then
LONG = {"prompt": "Once upon a time", "max_tokens": 1000, "ignore_eos": True}
# Generous: a 200-token stream takes ~3 s here, but ten times that on a machine busy with
# other work, and the tests below wait only as long as the server takes.
DRAIN_TIMEOUT = 60


def model_stats(url: str) -> dict[str, Any]:
    resp = httpx.get(f"{url}/health", timeout=5)
    resp.raise_for_status()
    models: list[dict[str, Any]] = resp.json()["models"]
    return models[0]


def busy_cells(stats: dict[str, Any]) -> int:
    """KV cells held by live sequences (finished ones leave none: their prefixes are saved
    in host memory)."""
    return int(stats["kv_cells_used"])


def is_idle(stats: dict[str, Any]) -> bool:
    return stats["running"] == 0 and stats["waiting"] == 0 and busy_cells(stats) == 0


def wait_idle(url: str, timeout: float) -> tuple[bool, float, dict[str, Any]]:
    """Poll /health until nothing runs. Returns (idle, seconds it took, last stats)."""
    start = time.monotonic()
    while True:
        stats = model_stats(url)
        elapsed = time.monotonic() - start
        if is_idle(stats) or elapsed > timeout:
            return is_idle(stats), elapsed, stats
        time.sleep(0.02)


def sse_data(line: str) -> str | None:
    return line[len("data: ") :] if line.startswith("data: ") else None


# ---- (a) cancellation --------------------------------------------------------------------------
#
# The requirement is "freed within a second". An abort takes effect at the next step boundary,
# so on a CPU shared with other busy processes, where one decode step alone can take a good
# part of a second (llama.cpp's threads spin at barriers), the bound stretches to a few steps as
# measured just before. On a machine generating at its normal speed it is the plain second.
# Independently of speed, the engine must stop generating at once: at most a couple of tokens
# after the client is gone.


def freed_limit(url: str) -> float:
    """FREED_WITHIN, or four decode steps as long as they take right now if that is longer."""
    n = 8
    started = time.monotonic()
    resp = httpx.post(
        f"{url}{COMPLETIONS}",
        json={"prompt": "Hi", "max_tokens": n, "ignore_eos": True},
        timeout=120,
    )
    assert resp.status_code == 200, resp.text
    step = (time.monotonic() - started) / n
    return max(FREED_WITHIN, 4 * step)


@pytest.mark.parametrize("path", [COMPLETIONS, CHAT])
def test_closing_a_stream_frees_the_sequence_within_a_second(
    live_server: LiveServer, path: str
) -> None:
    url = live_server.url
    assert wait_idle(url, 30)[0]
    limit = freed_limit(url)
    body: dict[str, Any] = {**LONG, "stream": True}
    if path == CHAT:
        body = {"messages": [{"role": "user", "content": "Tell me a story."}], **body}
        body.pop("prompt")
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", f"{url}{path}", json=body) as resp:
            assert resp.status_code == 200
            seen = 0
            # keep the iterator referenced: a dropped httpx line iterator closes the
            # connection, and the request would be cancelled before we look at it
            lines = resp.iter_lines()
            for line in lines:
                seen += sse_data(line) is not None
                if seen >= 6:
                    break
            during = model_stats(url)
            assert during["running"] == 1, during
            assert busy_cells(during) > 0, during
        closed = time.monotonic()
    idle, _, stats = wait_idle(url, 60)
    took = time.monotonic() - closed
    assert idle, stats
    assert took <= limit, f"freed after {took:.2f}s (limit {limit:.2f}s): {stats}"
    after = stats["generated_tokens_total"] - during["generated_tokens_total"]
    assert after <= 3, f"{after} tokens generated after the client left"


def test_client_timeout_on_a_plain_request_frees_the_sequence_within_a_second(
    live_server: LiveServer,
) -> None:
    url = live_server.url
    assert wait_idle(url, 30)[0]
    limit = freed_limit(url)
    before = model_stats(url)
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{url}{COMPLETIONS}", json=LONG, timeout=0.5)
    gave_up = time.monotonic()
    at_timeout = model_stats(url)
    idle, _, stats = wait_idle(url, 60)
    took = time.monotonic() - gave_up
    assert idle, stats
    assert took <= limit, f"freed after {took:.2f}s (limit {limit:.2f}s): {stats}"
    assert at_timeout["steps"] > before["steps"] or at_timeout["running"] == 1, at_timeout
    after = stats["generated_tokens_total"] - at_timeout["generated_tokens_total"]
    assert after <= 3, f"{after} tokens generated after the client left"


def test_server_answers_after_cancellations(live_server: LiveServer) -> None:
    resp = httpx.post(
        f"{live_server.url}{COMPLETIONS}", json={"prompt": "Hi", "max_tokens": 3}, timeout=30
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["completion_tokens"] >= 1


# ---- (b) concurrency ---------------------------------------------------------------------------


async def test_sixteen_concurrent_streams_each_get_all_their_tokens(
    live_server: LiveServer,
) -> None:
    n, max_tokens = 16, 32  # every slot at once, each stream to exactly max_tokens

    async def one(client: httpx.AsyncClient, i: int) -> tuple[int, str | None, bool]:
        body = {
            "prompt": f"Story number {i}:",
            "max_tokens": max_tokens,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        usage, finish, done = -1, None, False
        async with client.stream("POST", COMPLETIONS, json=body) as resp:
            assert resp.status_code == 200
            async for line in resp.aiter_lines():
                data = sse_data(line)
                if data is None:
                    continue
                if data == "[DONE]":
                    done = True
                    continue
                chunk = json.loads(data)
                assert "error" not in chunk, chunk
                for choice in chunk["choices"]:
                    finish = choice["finish_reason"] or finish
                if chunk.get("usage"):
                    usage = chunk["usage"]["completion_tokens"]
        return usage, finish, done

    assert wait_idle(live_server.url, 30)[0]
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(base_url=live_server.url, timeout=240, limits=limits) as client:
        results = await asyncio.wait_for(
            asyncio.gather(*(one(client, i) for i in range(n))), timeout=270
        )
    assert results == [(max_tokens, "length", True)] * n
    assert wait_idle(live_server.url, 30)[0]


# ---- (c) graceful shutdown ---------------------------------------------------------------------
#
# SIGTERM with nothing in flight exits 0: the tests that stop a server of their own check it
# (LiveServer.stop() == 0 in test_store_server.py and test_ollama_client.py).


def start_server() -> LiveServer:
    return LiveServer.started("--drain-timeout", str(DRAIN_TIMEOUT))


async def refused_soon(url: str, within: float = 15.0) -> bool:
    """Whether new connections are refused within `within` seconds."""
    deadline = time.monotonic() + within
    # every attempt on a new connection: a kept-alive one opened before the listener closed
    # would go on being served while the server drains
    fresh = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=1, limits=fresh) as client:
        while time.monotonic() < deadline:
            try:
                await client.get(f"{url}/health/live")
            except httpx.TransportError:
                return True
            await asyncio.sleep(0.05)
    return False


async def stream_then_terminate(
    server: LiveServer, max_tokens: int = 200
) -> tuple[list[str], BaseException | None, bool]:
    """Start a stream, SIGTERM the server after a few chunks, read on to the end.

    Returns the data lines, the error that ended the stream early (if any), and whether new
    connections were refused while the stream was draining.
    """
    body = {"prompt": "Once upon a time", "max_tokens": max_tokens, "ignore_eos": True}
    data: list[str] = []
    error: BaseException | None = None
    refused = False
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        try:
            async with client.stream("POST", COMPLETIONS, json={**body, "stream": True}) as resp:
                assert resp.status_code == 200
                lines = resp.aiter_lines()
                async for line in lines:
                    if (d := sse_data(line)) is not None:
                        data.append(d)
                    if len(data) >= 5:
                        break
                server.proc.terminate()
                refused = await refused_soon(server.url)
                async for line in lines:
                    if (d := sse_data(line)) is not None:
                        data.append(d)
        except httpx.HTTPError as exc:
            error = exc
    return data, error, refused


async def test_sigterm_lets_an_inflight_stream_finish_and_refuses_new_connections() -> None:
    """One stream in flight at SIGTERM: new connections are refused at once, the stream runs
    to its end, its usage record is written, and the server exits 0 within the drain timeout."""
    server = start_server()
    try:
        data, error, refused = await stream_then_terminate(server, max_tokens=200)
        assert refused, "a new connection was still accepted after SIGTERM"
        assert error is None, f"stream cut after {len(data)} events: {error!r}"
        assert data[-1] == "[DONE]"
        finals = [json.loads(d) for d in data[:-1]]
        assert finals[-1]["choices"][0]["finish_reason"] == "length"
        assert server.proc.wait(DRAIN_TIMEOUT + 10) == 0
    finally:
        server.stop(5)
    assert "Traceback" not in server.output()
    with sqlite3.connect(Path(server.data_dir) / "inferd.db") as conn:
        rows = conn.execute("SELECT status, completion_tokens FROM usage").fetchall()
    assert rows == [("length", 200)]


# ---- (d) the CLI -------------------------------------------------------------------------------


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inferd", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_version() -> None:
    for flag in ("--version", "-V"):
        done = run_cli(flag)
        assert done.returncode == 0, done.stderr
        assert inferd.__version__ in done.stdout
        assert done.stdout.strip() == f"inferd {inferd.__version__}"


def test_serve_with_a_missing_model_file_fails_cleanly() -> None:
    started = time.monotonic()
    done = run_cli("serve", "--model", "/nonexistent.gguf", "--port", "0")
    assert time.monotonic() - started < 30
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert "/nonexistent.gguf" in out
    assert "no such file" in out.lower()
    assert "Traceback" not in out
    assert "serving" not in out  # it never got as far as starting the server
