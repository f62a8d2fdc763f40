"""Load generation against an OpenAI-compatible /v1/completions endpoint, with latency stats."""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx


@dataclass
class RequestResult:
    ok: bool
    latency: float = 0.0
    ttft: float | None = None
    itls: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    error: str | None = None

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.completion_tokens < 2:
            return None
        return (self.latency - self.ttft) / (self.completion_tokens - 1)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@dataclass
class LevelResult:
    """One concurrency level (or request rate) of a sweep."""

    concurrency: int
    rate: float | None
    requests: int
    errors: int
    duration: float
    completion_tokens: int
    prompt_tokens: int
    cached_tokens: int
    ttft: dict[str, float | None]
    tpot: dict[str, float | None]
    itl: dict[str, float | None]

    @property
    def output_tokens_per_s(self) -> float:
        return self.completion_tokens / self.duration if self.duration else 0.0

    @property
    def requests_per_s(self) -> float:
        return (self.requests - self.errors) / self.duration if self.duration else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "concurrency": self.concurrency,
            "rate": self.rate,
            "requests": self.requests,
            "errors": self.errors,
            "duration_s": round(self.duration, 3),
            "output_tokens_per_s": round(self.output_tokens_per_s, 2),
            "requests_per_s": round(self.requests_per_s, 3),
            "completion_tokens": self.completion_tokens,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "ttft_s": self.ttft,
            "tpot_s": self.tpot,
            "itl_s": self.itl,
        }


def _stats(values: list[float]) -> dict[str, float | None]:
    return {
        "mean": statistics.fmean(values) if values else None,
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
    }


def summarize(
    concurrency: int, rate: float | None, results: list[RequestResult], duration: float
) -> LevelResult:
    ok = [r for r in results if r.ok]
    return LevelResult(
        concurrency=concurrency,
        rate=rate,
        requests=len(results),
        errors=len(results) - len(ok),
        duration=duration,
        completion_tokens=sum(r.completion_tokens for r in ok),
        prompt_tokens=sum(r.prompt_tokens for r in ok),
        cached_tokens=sum(r.cached_tokens for r in ok),
        ttft=_stats([r.ttft for r in ok if r.ttft is not None]),
        tpot=_stats([t for r in ok if (t := r.tpot) is not None]),
        itl=_stats([x for r in ok for x in r.itls]),
    )


async def one_request(
    client: httpx.AsyncClient,
    model: str | None,
    prompt: str,
    max_tokens: int,
    *,
    ignore_eos: bool = True,
    read_timeout: float = 600.0,
) -> RequestResult:
    """One streaming completion; times the first token and the gaps between tokens."""
    body: dict[str, object] = {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": ignore_eos,
    }
    if model:
        body["model"] = model
    start = time.perf_counter()
    last = start
    result = RequestResult(ok=False)
    chunks = 0
    try:
        async with client.stream(
            "POST", "/v1/completions", json=body, timeout=read_timeout
        ) as resp:
            if resp.status_code != 200:
                await resp.aread()
                result.error = f"HTTP {resp.status_code}: {resp.text[:200]}"
                return result
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    result.error = str(event["error"])[:200]
                    return result
                now = time.perf_counter()
                if any(c.get("text") for c in event.get("choices") or []):
                    chunks += 1
                    if result.ttft is None:
                        result.ttft = now - start
                    else:
                        result.itls.append(now - last)
                    last = now
                usage = event.get("usage")
                if usage:
                    result.completion_tokens = usage.get("completion_tokens", 0)
                    result.prompt_tokens = usage.get("prompt_tokens", 0)
                    details = usage.get("prompt_tokens_details") or {}
                    result.cached_tokens = details.get("cached_tokens") or 0
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:200]
        return result
    result.latency = time.perf_counter() - start
    result.completion_tokens = result.completion_tokens or chunks
    result.ok = True
    return result


async def run_level(
    base_url: str,
    model: str | None,
    prompts: list[str],
    max_tokens: int,
    *,
    concurrency: int,
    rate: float | None = None,
    ignore_eos: bool = True,
    on_done: Callable[[RequestResult], None] | None = None,
    seed: int = 0,
) -> LevelResult:
    """Send every prompt once. Closed loop: `concurrency` clients back to back. With
    `rate`: Poisson arrivals at that many requests/s, at most `concurrency` in flight."""
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency)
    results: list[RequestResult] = []
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=600) as client:

        async def fire(prompt: str) -> None:
            async with gate:
                r = await one_request(client, model, prompt, max_tokens, ignore_eos=ignore_eos)
            results.append(r)
            if on_done:
                on_done(r)

        start = time.perf_counter()
        if rate is None:
            await asyncio.gather(*(fire(p) for p in prompts))
        else:
            rng = random.Random(seed)
            tasks = []
            for p in prompts:
                tasks.append(asyncio.create_task(fire(p)))
                await asyncio.sleep(rng.expovariate(rate))
            await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
    return summarize(concurrency, rate, results, duration)
