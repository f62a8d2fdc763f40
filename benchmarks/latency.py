"""Latency under the conditions issue 3 names, for inferd and (optionally) llama-server:

- prefix: four different ~800-token shared prefixes, interleaved, one request at a time:
  time to first token of the first request per prefix (cold) against later ones (warm).
- itl: inter-token latency p95 of running streams, alone and while a 2,000-token prompt is
  admitted (gaps between chunks of the running streams from the moment the long prompt is
  sent until its first token arrives).
- rss: the server's resident memory (now and peak) against model file + KV cache + 200 MB.
- cancel: a follow-up with the same long prompt (--long-words) after a request that ran to
  its end, and after one whose client left at its first token (a Stop button, a timeout):
  its time to first token and cached prompt tokens. Each case gets its own prompt.

Each target is a fresh server started by the script on 127.0.0.1 and stopped at the end.
Every scenario records the share of the CPU other processes took (llama.cpp's threads spin,
so a busy machine distorts latency); compare ratios, not absolute numbers across runs.

    .venv/bin/python benchmarks/latency.py
    .venv/bin/python benchmarks/latency.py --llama-server /path/to/llama-server --json
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table
from throughput import KV_FLAGS, CpuWatch, free_port, llama_server_cmd, server

from inferd.engine.backends.llamacpp import LlamaCppBackend, LlamaCppOptions
from inferd.models.spec import BUNDLED_NAME, bundled_model_path

_WORDS = (
    "river stone light garden window paper engine silver market winter forest number "
    "morning letter signal harbor planet question village orange thunder pencil mirror "
    "station candle bridge meadow copper island shadow rocket ladder lantern"
)
WORDS = _WORDS.split()


def text(words: int, rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


@dataclass
class Result:
    target: str
    cold_ttft_ms: list[float] = field(default_factory=list)
    warm_ttft_ms: list[float] = field(default_factory=list)
    prefix_tokens: int = 0
    itl_alone_p95_ms: float | None = None
    itl_admit_p95_ms: float | None = None
    itl_gaps_during_admit: int = 0
    long_prompt_tokens: int = 0
    long_prompt_ttft_ms: float | None = None
    rss_mb: float | None = None
    peak_rss_mb: float | None = None
    prefix_store_mb: float = 0.0  # inferd's saved prefix states (host memory, bounded)
    budget_mb: float | None = None
    others_cpu: dict[str, float | None] = field(default_factory=dict)
    # (time to first token in ms, cached prompt tokens) of the follow-up
    after_completed: tuple[float, int] | None = None
    after_cancelled: tuple[float, int] | None = None

    @property
    def cold(self) -> float | None:
        return statistics.mean(self.cold_ttft_ms) if self.cold_ttft_ms else None

    @property
    def warm(self) -> float | None:
        return statistics.mean(self.warm_ttft_ms) if self.warm_ttft_ms else None


async def stream(
    client: httpx.AsyncClient, body: dict[str, Any], stamps: list[float] | None = None
) -> tuple[float, int]:
    """One streaming completion: (seconds to the first text, prompt tokens if reported).
    With `stamps`, the arrival time of every text chunk is appended to it."""
    t0 = time.perf_counter()
    first: float | None = None
    prompt_tokens = 0
    payload = {**body, "stream": True, "stream_options": {"include_usage": True}}
    async with client.stream("POST", "/v1/completions", json=payload) as resp:
        if resp.status_code != 200:
            await resp.aread()
            raise RuntimeError(f"HTTP {resp.status_code}: {resp.text[:200]}")
        async for line in resp.aiter_lines():
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            obj = json.loads(line[5:])
            if obj.get("usage"):
                prompt_tokens = int(obj["usage"]["prompt_tokens"])
            if any(c.get("text") for c in obj.get("choices", [])):
                now = time.perf_counter()
                if first is None:
                    first = now - t0
                if stamps is not None:
                    stamps.append(now)
    return (first if first is not None else time.perf_counter() - t0), prompt_tokens


def p95(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    return statistics.quantiles(values, n=20, method="inclusive")[18]


async def prefix_scenario(client: httpx.AsyncClient, r: Result, rounds: int, words: int) -> None:
    rng = random.Random(1)
    prefixes = [f"Document {k}: {text(words, rng)}\n\n" for k in range(4)]
    for rnd in range(rounds):
        for k, prefix in enumerate(prefixes):
            body = {
                "model": BUNDLED_NAME,
                "prompt": f"{prefix}Question {rnd}.{k}: what is this about? Answer:",
                "max_tokens": 4,
                "temperature": 0,
            }
            ttft, n = await stream(client, body)
            (r.cold_ttft_ms if rnd == 0 else r.warm_ttft_ms).append(ttft * 1000)
            r.prefix_tokens = max(r.prefix_tokens, n)


async def itl_round(
    client: httpx.AsyncClient, streams: int, long_prompt: str | None, r: Result
) -> list[float]:
    """Run `streams` streams; return the gaps between their chunks (all of them, or with a
    long prompt only those that end while it is being admitted)."""
    stamps: list[list[float]] = [[] for _ in range(streams)]
    body = {"model": BUNDLED_NAME, "max_tokens": 160, "temperature": 0, "ignore_eos": True}
    tasks = [
        asyncio.create_task(stream(client, {**body, "prompt": f"Tell story {i}:"}, stamps[i]))
        for i in range(streams)
    ]
    window = (0.0, float("inf"))
    if long_prompt is not None:
        await asyncio.sleep(1.5)  # the streams are decoding now
        sent = time.perf_counter()
        ttft, n = await stream(
            client, {"model": BUNDLED_NAME, "prompt": long_prompt, "max_tokens": 1}
        )
        window = (sent, sent + ttft)
        r.long_prompt_tokens, r.long_prompt_ttft_ms = n, ttft * 1000
    await asyncio.gather(*tasks)
    gaps = []
    for s in stamps:
        for a, b in itertools.pairwise(s):
            if window[0] <= b <= window[1] + 1e-3 or long_prompt is None:
                gaps.append((b - a) * 1000)
    return gaps


async def follow_up(client: httpx.AsyncClient, prompt: str, *, cancel: bool) -> tuple[float, int]:
    """Send `prompt` (cut at its first token when `cancel`, else run to the end), then send
    it again: the second's (TTFT ms, cached prompt tokens)."""
    body = {"model": BUNDLED_NAME, "prompt": prompt, "temperature": 0}
    if cancel:
        payload = {**body, "max_tokens": 200, "stream": True}
        async with client.stream("POST", "/v1/completions", json=payload) as resp:
            async for line in resp.aiter_lines():
                if line.startswith("data:"):
                    break  # leave: the connection closes with the block
        await asyncio.sleep(0.5)  # the server notices and saves what it computed
    else:
        (await client.post("/v1/completions", json={**body, "max_tokens": 4})).raise_for_status()
    t0 = time.perf_counter()
    resp = await client.post("/v1/completions", json={**body, "max_tokens": 1})
    resp.raise_for_status()
    usage = resp.json().get("usage", {})
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return (time.perf_counter() - t0) * 1000, int(cached or 0)


def rss(pid: int) -> tuple[float, float]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    kb = lambda k: float(fields[k].split()[0]) / 1024  # noqa: E731
    return kb("VmRSS"), kb("VmHWM")


def kv_layout(model: Path, args: argparse.Namespace) -> tuple[bool, int, float]:
    """(a KV stream per slot?, KV cells, KV cache MB) of `inferd serve` with these flags:
    a backend with the same options, loaded and closed again."""
    split = {"auto": None, "split": True, "unified": False}[args.kv_layout]
    options = LlamaCppOptions(n_ctx=args.n_ctx, max_seqs=args.max_seqs, kv_split=split)
    backend = LlamaCppBackend(model, options)
    facts, kv_bytes = backend.facts(), backend.info.kv_bytes
    backend.close()
    return facts["kv_layout"] == "split", facts["kv_cells"], kv_bytes / 2**20


async def measure(
    target: str, base: str, pid: int, args: argparse.Namespace, budget_mb: float
) -> Result:
    r = Result(target, budget_mb=budget_mb)
    rng = random.Random(2)
    # A new connection per request: llama-server closes kept-alive connections after a few
    # requests or seconds, and a request sent on one as it closes fails ("Server disconnected").
    fresh = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base, timeout=args.timeout, limits=fresh) as client:
        warm = {"model": BUNDLED_NAME, "prompt": "Hello", "max_tokens": 2}
        (await client.post("/v1/completions", json=warm)).raise_for_status()
        watch = CpuWatch([os.getpid(), pid])
        await prefix_scenario(client, r, args.prefix_rounds, args.prefix_words)
        r.others_cpu["prefix"] = watch.others()
        watch = CpuWatch([os.getpid(), pid])
        r.itl_alone_p95_ms = p95(await itl_round(client, args.streams, None, r))
        long_prompt = f"Report: {text(args.long_words, rng)}\nSummary:"
        gaps = await itl_round(client, args.streams, long_prompt, r)
        r.itl_admit_p95_ms, r.itl_gaps_during_admit = p95(gaps), len(gaps)
        r.others_cpu["itl"] = watch.others()
        watch = CpuWatch([os.getpid(), pid])
        done, cut = (f"Report {k}: {text(args.long_words, rng)}\nSummary:" for k in "ab")
        r.after_completed = await follow_up(client, done, cancel=False)
        r.after_cancelled = await follow_up(client, cut, cancel=True)
        r.others_cpu["cancel"] = watch.others()
        if target == "inferd":
            r.prefix_store_mb, (r.rss_mb, r.peak_rss_mb) = await settled_memory(client, pid)
    if r.rss_mb is None:
        r.rss_mb, r.peak_rss_mb = rss(pid)
    return r


async def settled_memory(client: httpx.AsyncClient, pid: int) -> tuple[float, tuple[float, float]]:
    """inferd's prefix store (MB) and its RSS and peak, read together: a finished request's
    prefix state is saved (resident) just after its last token is sent and only then counted
    in the store (a 1,955-token prompt's 43 MB, read too early, counted as the server's own),
    so the RSS is read between two equal reads of the store."""

    async def stored() -> float:
        health = (await client.get("/health")).json()
        return sum(m.get("prefix_cache_bytes", 0) for m in health["models"]) / 2**20

    before = await stored()
    for _ in range(20):
        await asyncio.sleep(0.5)
        memory = rss(pid)
        after = await stored()
        if after == before:
            break
        before = after
    return after, memory


def fmt(x: float | None, spec: str = ".0f") -> str:
    return "—" if x is None else format(x, spec)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def report(results: list[Result], model_mb: float, kv_mb: float) -> Table:
    t = Table(title="latency (ms) and memory (MB)")
    for col in (
        "target",
        "prefix tok",
        "cold TTFT",
        "warm TTFT",
        "cold/warm",
        "ITL p95 alone",
        "ITL p95 admitting",
        "admit/alone",
        "long prompt tok",
        "long prompt TTFT",
        "RSS",
        "peak RSS",
        "prefix store",
        "RSS - store",
        "model+KV+200",
        "after done: TTFT / cached",
        "after cancel: TTFT / cached",
        "others' CPU",
    ):
        t.add_column(col, justify="right")
    for r in results:
        noise = [v for v in r.others_cpu.values() if v is not None]
        t.add_row(
            r.target,
            str(r.prefix_tokens),
            fmt(r.cold),
            fmt(r.warm),
            fmt(ratio(r.cold, r.warm), ".1f"),
            fmt(r.itl_alone_p95_ms),
            fmt(r.itl_admit_p95_ms),
            fmt(ratio(r.itl_admit_p95_ms, r.itl_alone_p95_ms), ".2f"),
            str(r.long_prompt_tokens),
            fmt(r.long_prompt_ttft_ms),
            fmt(r.rss_mb),
            fmt(r.peak_rss_mb),
            fmt(r.prefix_store_mb),
            fmt(r.rss_mb - r.prefix_store_mb if r.rss_mb is not None else None),
            fmt(r.budget_mb),
            *(f"{x[0]:.0f} / {x[1]}" if x else "—" for x in (r.after_completed, r.after_cancelled)),
            f"{max(noise):.0%}" if noise else "—",
        )
    return t


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n-ctx", type=int, default=4096, help="context per sequence (4096)")
    ap.add_argument("--max-seqs", type=int, default=16, help="slots (16)")
    ap.add_argument("--prefix-words", type=int, default=780, help="words per prefix (~800 tokens)")
    ap.add_argument("--prefix-rounds", type=int, default=4, help="rounds over the 4 prefixes (4)")
    ap.add_argument("--streams", type=int, default=8, help="running streams in the ITL test (8)")
    ap.add_argument(
        "--long-words", type=int, default=1950, help="words of the long prompt (~2000 tokens)"
    )
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--inferd-args", default="", help="extra `inferd serve` flags")
    ap.add_argument("--skip-inferd", action="store_true")
    ap.add_argument(
        "--kv-layout",
        choices=tuple(KV_FLAGS),
        default="auto",
        help="inferd's KV layout: 'auto' (its default), 'split' (--kv-split: a KV stream per "
        "slot, each of n_ctx cells) or 'unified' (--no-kv-split: one shared cache); "
        "llama-server gets the same cells and layout",
    )
    ap.add_argument("--llama-server", type=Path, help="a llama-server binary to measure too")
    ap.add_argument("--llama-server-args", default="", help="extra llama-server flags")
    ap.add_argument("--json", action="store_true", help="print JSON (the table goes to stderr)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=True)
    model = bundled_model_path()
    split, cells, kv_mb = kv_layout(model, args)
    model_mb = model.stat().st_size / 2**20
    budget = model_mb + kv_mb + 200
    results: list[Result] = []
    if not args.skip_inferd:
        console.print("inferd")
        port = free_port()
        cmd = [sys.executable, "-m", "inferd", "serve", "--port", str(port), "--log-level"]
        cmd += ["warning", "--n-ctx", str(args.n_ctx), "--max-seqs", str(args.max_seqs)]
        cmd += KV_FLAGS[args.kv_layout]
        cmd += shlex.split(args.inferd_args)
        base = f"http://127.0.0.1:{port}"
        with server(cmd, f"{base}/health/ready") as pid:
            results.append(asyncio.run(measure("inferd", base, pid, args, budget)))
    if args.llama_server:
        console.print("llama-server")
        port = free_port()
        cmd = llama_server_cmd(args.llama_server, model, port, cells, args.max_seqs, split=split)
        cmd += shlex.split(args.llama_server_args)
        base = f"http://127.0.0.1:{port}"
        try:
            with server(cmd, f"{base}/health") as pid:
                results.append(asyncio.run(measure("llama-server", base, pid, args, budget)))
        except (httpx.HTTPError, RuntimeError, TimeoutError) as exc:
            console.print(f"[red]llama-server failed:[/red] {type(exc).__name__}: {exc}"[:500])
    out = Console(stderr=args.json, width=None if sys.stdout.isatty() else 200)
    out.print(report(results, model_mb, kv_mb))
    out.print(
        f"model {model.name} ({model_mb:.0f} MB), KV cache {cells} cells ({kv_mb:.0f} MB f16), "
        f"{args.max_seqs} slots{' (a KV stream each)' if split else ' (one shared KV cache)'}, "
        f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}"
    )
    if args.json:
        meta = {"model_mb": model_mb, "kv_mb": kv_mb, "cells": cells, "args": vars(args)}
        data = [{**asdict(r), "cold": r.cold, "warm": r.warm} for r in results]
        print(json.dumps({"meta": meta, "results": data}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
