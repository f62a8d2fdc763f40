"""Aggregate decode throughput: inferd over HTTP vs the in-process llama.cpp ceiling vs
llama-cpp-python's own server, on the same model and the same workload.

Workload: for each concurrency C, C concurrent streaming POST /v1/completions requests,
greedy, `max_tokens` tokens each with end-of-generation suppressed, so every request
generates exactly `max_tokens` tokens. Throughput = completion tokens / wall time of the batch.

    .venv/bin/python benchmarks/throughput.py --concurrency 1,8,16 --max-tokens 128
    make bench ARGS="--skip-llama-cpp-server"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from inferd.engine.backends.llamacpp import LlamaCppBackend, LlamaCppOptions
from inferd.engine.types import SamplingParams
from inferd.models.spec import BUNDLED_NAME, bundled_model_path

# Short, distinct prompts (request i uses PROMPTS[i % len(PROMPTS)]).
PROMPTS = [
    f"Write a short story about {topic}. Once upon a time,"
    for topic in (
        "a lighthouse keeper",
        "a lost robot",
        "a dragon who bakes bread",
        "two rival chess players",
        "a city under the sea",
        "a talking cat",
        "the last train home",
        "a garden on the moon",
        "a clockmaker's apprentice",
        "a storm at sea",
        "a library that never closes",
        "a fox and a crow",
        "an old map",
        "a violin in the attic",
        "a snowy mountain pass",
        "a market at midnight",
    )
]

# llama-cpp-python 0.3.36 segfaults in ggml_backend_amx_mul_mat on CPUs with AMX as soon as a
# batch holds more than one token, unless the model is loaded with use_extra_bufts=False.
# `python -m llama_cpp.server` has no flag for it, so it is started through this launcher,
# which patches the default model params and then runs the stock server entry point.
LLAMA_SERVER_LAUNCHER = """
import sys
import llama_cpp.llama_cpp as lib
_default_params = lib.llama_model_default_params
def _params():
    p = _default_params()
    p.use_extra_bufts = False
    return p
lib.llama_model_default_params = _params
from llama_cpp.server.__main__ import main
sys.argv[0] = "llama_cpp.server"
main()
"""


@dataclass
class Round:
    tokens: int
    seconds: float
    ttft: float | None = None  # mean time to first token, HTTP targets only
    prefill_seconds: float | None = None  # ceiling only
    others_cpu: float | None = None  # share of the machine's CPU other processes used

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Point:
    """One target at one concurrency: every round, and the best one."""

    rounds: list[Round] = field(default_factory=list)
    e2e_rounds: list[Round] = field(default_factory=list)  # ceiling incl. prefill
    error: str | None = None

    @property
    def best(self) -> Round | None:
        return max(self.rounds, key=lambda r: r.tok_s) if self.rounds else None

    @property
    def best_e2e(self) -> Round | None:
        return max(self.e2e_rounds, key=lambda r: r.tok_s) if self.e2e_rounds else None


Results = dict[str, dict[int, Point]]  # target -> concurrency -> point


# ---- noise: how much CPU did other processes take during a round (Linux only) ---------------


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of the whole machine since boot."""
    vals = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(vals) - vals[3] - vals[4], sum(vals)


def _process_ticks(pid: int) -> int:
    """User + system clock ticks of one process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


class CpuWatch:
    """Share of the machine's CPU used by processes other than `pids` since construction."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self._start: tuple[int, int, int] | None
        try:
            self._start = (*_machine_ticks(), sum(map(_process_ticks, pids)))
        except (OSError, ValueError, IndexError):
            self._start = None

    def others(self) -> float | None:
        if self._start is None:
            return None
        try:
            busy, total = _machine_ticks()
            own = sum(map(_process_ticks, self.pids))
        except (OSError, ValueError, IndexError):
            return None
        b0, t0, o0 = self._start
        if total <= t0:
            return None
        return min(1.0, max(0.0, ((busy - b0) - (own - o0)) / (total - t0)))


# ---- the in-process ceiling ------------------------------------------------------------------


def ceiling_round(
    backend: LlamaCppBackend, prompts: list[list[int]], max_tokens: int
) -> tuple[Round, Round]:
    """Prefill the prompts (packed into batches of at most n_batch tokens), then decode one
    token per sequence per step until each has `max_tokens`: the first token comes from the
    prefill, the rest from max_tokens - 1 decode steps. Returns (decode only, incl. prefill)."""
    n = len(prompts)
    budget = backend.info.max_batch_tokens
    greedy = SamplingParams(temperature=0.0, ignore_eos=True)
    samplers = [backend.new_sampler(greedy) for _ in range(n)]
    last = [0] * n
    watch = CpuWatch([os.getpid()])
    try:
        t0 = time.perf_counter()
        i = 0
        while i < n:
            tokens: list[int] = []
            positions: list[int] = []
            seq_ids: list[int] = []
            logits: list[bool] = []
            rows: list[tuple[int, int]] = []
            while i < n and (not tokens or len(tokens) + len(prompts[i]) <= budget):
                p = prompts[i]
                tokens += p
                positions += range(len(p))
                seq_ids += [i] * len(p)
                logits += [False] * (len(p) - 1) + [True]
                rows.append((i, len(tokens) - 1))
                i += 1
            if not backend.decode(tokens, positions, seq_ids, logits):
                raise RuntimeError("no KV room for the prefill")
            for s, row in rows:
                last[s] = samplers[s].sample(row)
        t1 = time.perf_counter()
        seq_ids = list(range(n))
        out_rows = [True] * n
        for step in range(max_tokens - 1):
            positions = [len(p) + step for p in prompts]
            if not backend.decode(last, positions, seq_ids, out_rows):
                raise RuntimeError("no KV room for a decode step")
            last = [samplers[s].sample(s) for s in seq_ids]
        t2 = time.perf_counter()
    finally:
        for s in range(n):
            samplers[s].close()
            backend.free_seq(s)
    others = watch.others()
    decode = Round(n * (max_tokens - 1), t2 - t1, prefill_seconds=t1 - t0, others_cpu=others)
    e2e = Round(n * max_tokens, t2 - t0, prefill_seconds=t1 - t0, others_cpu=others)
    return decode, e2e


def bench_ceiling(
    backend: LlamaCppBackend, concurrency: list[int], max_tokens: int, rounds: int
) -> dict[int, Point]:
    tokenized = [backend.tokenize(p, add_special=True, parse_special=True) for p in PROMPTS]
    ceiling_round(backend, tokenized[:1], 8)  # warm-up
    out: dict[int, Point] = {}
    for c in concurrency:
        point = Point()
        prompts = [tokenized[i % len(tokenized)] for i in range(c)]
        for _ in range(rounds):
            decode, e2e = ceiling_round(backend, prompts, max_tokens)
            point.rounds.append(decode)
            point.e2e_rounds.append(e2e)
        out[c] = point
    return out


# ---- HTTP targets ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(cmd: list[str], ready_url: str, timeout: float = 180.0) -> Iterator[int]:
    """Run `cmd` until the block ends; wait until GET ready_url answers 200. Yields its pid."""
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"{cmd[:3]} exited with {proc.returncode}:\n{log.read()}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(ready_url, timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{ready_url} not ready after {timeout:.0f}s")
                time.sleep(0.2)
            yield proc.pid
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


async def stream_one(
    client: httpx.AsyncClient, url: str, payload: dict[str, Any]
) -> tuple[int, float]:
    """One streaming completion: (completion tokens, seconds to the first text).

    Tokens come from the usage chunk when the server sends one, else from the number of
    text chunks (both servers stream one chunk per token for plain ASCII text)."""
    t0 = time.perf_counter()
    ttft: float | None = None
    chunks = 0
    usage: int | None = None
    async with client.stream("POST", url, json=payload) as resp:
        if resp.status_code != 200:
            await resp.aread()
            raise RuntimeError(f"HTTP {resp.status_code}: {resp.text[:200]}")
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            obj = json.loads(data)
            if "error" in obj:
                raise RuntimeError(f"stream error: {obj['error']}")
            if obj.get("usage"):
                usage = int(obj["usage"]["completion_tokens"])
            for choice in obj.get("choices", []):
                if choice.get("text"):
                    chunks += 1
                    if ttft is None:
                        ttft = time.perf_counter() - t0
    return (usage if usage is not None else chunks), (ttft or 0.0)


async def http_round(
    base: str, payloads: list[dict[str, Any]], limit_s: float, pids: list[int]
) -> Round:
    watch = CpuWatch(pids)
    limits = httpx.Limits(max_connections=len(payloads) + 2)
    async with httpx.AsyncClient(base_url=base, timeout=limit_s, limits=limits) as client:
        t0 = time.perf_counter()
        async with asyncio.timeout(limit_s):
            results = await asyncio.gather(
                *(stream_one(client, "/v1/completions", p) for p in payloads)
            )
        seconds = time.perf_counter() - t0
    return Round(
        tokens=sum(r[0] for r in results),
        seconds=seconds,
        ttft=sum(r[1] for r in results) / len(results),
        others_cpu=watch.others(),
    )


def check_tokens(base: str, payload: dict[str, Any], max_tokens: int, console: Console) -> None:
    """Warm-up, non-streaming: also checks that the workload really yields max_tokens."""
    body = {k: v for k, v in payload.items() if k not in ("stream", "stream_options")}
    resp = httpx.post(f"{base}/v1/completions", json=body, timeout=300)
    resp.raise_for_status()
    got = resp.json()["usage"]["completion_tokens"]
    if got != max_tokens:
        console.print(f"[yellow]warning:[/yellow] {base} generated {got} of {max_tokens} tokens")


def bench_http(
    base: str,
    server_pid: int,
    make_payload: Callable[[int], dict[str, Any]],
    concurrency: list[int],
    max_tokens: int,
    rounds: int,
    timeout: float,
    console: Console,
) -> dict[int, Point]:
    check_tokens(base, make_payload(0), max_tokens, console)
    pids = [os.getpid(), server_pid]
    out: dict[int, Point] = {}
    for c in concurrency:
        point = Point()
        payloads = [make_payload(i) for i in range(c)]
        for _ in range(rounds):
            try:
                point.rounds.append(asyncio.run(http_round(base, payloads, timeout, pids)))
            except (TimeoutError, RuntimeError, httpx.HTTPError) as exc:
                point.error = f"{type(exc).__name__}: {exc}"[:200]
                break
        out[c] = point
    return out


# ---- the report --------------------------------------------------------------------------------


def fmt(x: float | None, spec: str = ".1f") -> str:
    return "—" if x is None else format(x, spec)


def ratio(a: Round | None, b: Round | None) -> float | None:
    return a.tok_s / b.tok_s if a and b and b.tok_s else None


def table(results: Results, concurrency: list[int]) -> Table:
    t = Table(title="completion tokens/s, aggregate over concurrent requests (best round)")
    for col in (
        "C",
        "ceiling",
        "ceiling+prefill",
        "inferd",
        "TTFT ms",
        "llama_cpp.server",
        "TTFT ms",
        "inferd/ceiling",
        "inferd/ceil+pf",
        "inferd/l.c.s.",
        "others' CPU",
    ):
        t.add_column(col, justify="right")
    for c in concurrency:
        ceil = results.get("ceiling", {}).get(c, Point())
        inf = results.get("inferd", {}).get(c, Point())
        lcs = results.get("llama_cpp.server", {}).get(c, Point())

        kept = [p.best for p in (ceil, inf, lcs) if p.best]
        noise = [r.others_cpu for r in kept if r.others_cpu is not None]

        def tok(p: Point) -> str:
            return (
                p.error[:30] if p.error and not p.rounds else fmt(p.best.tok_s if p.best else None)
            )

        def ttft(p: Point) -> str:
            return fmt(p.best.ttft * 1000 if p.best and p.best.ttft is not None else None, ".0f")

        t.add_row(
            str(c),
            tok(ceil),
            fmt(ceil.best_e2e.tok_s if ceil.best_e2e else None),
            tok(inf),
            ttft(inf),
            tok(lcs),
            ttft(lcs),
            fmt(ratio(inf.best, ceil.best), ".2f"),
            fmt(ratio(inf.best, ceil.best_e2e), ".2f"),
            fmt(ratio(inf.best, lcs.best), ".2f"),
            fmt(max(noise) * 100 if noise else None, ".0f") + ("%" if noise else ""),
        )
    return t


def to_json(results: Results, meta: dict[str, Any]) -> str:
    data: dict[str, Any] = {"meta": meta, "results": {}}
    for target, points in results.items():
        data["results"][target] = {
            str(c): {
                "best_tok_s": p.best.tok_s if p.best else None,
                "best_e2e_tok_s": p.best_e2e.tok_s if p.best_e2e else None,
                "rounds": [{**asdict(r), "tok_s": r.tok_s} for r in p.rounds],
                "e2e_rounds": [{**asdict(r), "tok_s": r.tok_s} for r in p.e2e_rounds],
                "error": p.error,
            }
            for c, p in points.items()
        }
    return json.dumps(data, indent=2)


# ---- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--concurrency", default="1,8,16", help="comma-separated (default 1,8,16)")
    ap.add_argument("--max-tokens", type=int, default=128, help="tokens per request (128)")
    ap.add_argument("--n-ctx", type=int, default=4096, help="context per sequence (4096)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds per point; best kept (2)")
    ap.add_argument("--server-rounds", type=int, default=1, help="rounds for llama_cpp.server (1)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per round (300)")
    ap.add_argument("--model", type=Path, default=None, help="GGUF file (default: bundled)")
    ap.add_argument("--skip-ceiling", action="store_true")
    ap.add_argument("--skip-inferd", action="store_true")
    ap.add_argument("--skip-llama-cpp-server", action="store_true")
    ap.add_argument(
        "--json", action="store_true", help="also print JSON (the table goes to stderr)"
    )
    args = ap.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=True)
    model: Path = args.model or bundled_model_path()
    max_seqs = max(16, *args.concurrency)
    results: Results = {}
    meta: dict[str, Any] = {
        "model": model.name,
        "max_tokens": args.max_tokens,
        "n_ctx": args.n_ctx,
        "concurrency": args.concurrency,
        "cpus": os.cpu_count(),
        "loadavg_1m_at_start": os.getloadavg()[0],
    }
    if os.getloadavg()[0] > 0.5:
        console.print(
            f"[yellow]warning:[/yellow] load average {os.getloadavg()[0]:.2f}: other work on "
            "this machine skews the figures (llama.cpp threads spin when cores are shared)"
        )

    backend = LlamaCppBackend(model, LlamaCppOptions(max_seqs=max_seqs, n_ctx=args.n_ctx))
    try:
        eog = [t for t in range(backend.info.n_vocab) if backend.is_eog(t)]
        if not args.skip_ceiling:
            console.print("ceiling: in-process LlamaCppBackend loop ...")
            results["ceiling"] = bench_ceiling(
                backend, args.concurrency, args.max_tokens, args.rounds
            )
    finally:
        backend.close()

    def payload(i: int, **extra: Any) -> dict[str, Any]:
        return {
            "model": BUNDLED_NAME,
            "prompt": PROMPTS[i % len(PROMPTS)],
            "max_tokens": args.max_tokens,
            "temperature": 0,
            "stream": True,
            **extra,
        }

    if not args.skip_inferd:
        console.print("inferd: python -m inferd serve ...")
        port = free_port()
        cmd = [sys.executable, "-m", "inferd", "serve", "--port", str(port)]
        cmd += ["--log-level", "warning", "--n-ctx", str(args.n_ctx), "--max-seqs", str(max_seqs)]
        if args.model:
            cmd += ["--model", str(model)]
        base = f"http://127.0.0.1:{port}"
        with server(cmd, f"{base}/health/ready") as pid:
            results["inferd"] = bench_http(
                base,
                pid,
                lambda i: payload(i, ignore_eos=True, stream_options={"include_usage": True}),
                args.concurrency,
                args.max_tokens,
                args.rounds,
                args.timeout,
                console,
            )

    if not args.skip_llama_cpp_server:
        console.print("llama_cpp.server (one request at a time) ...")
        port = free_port()
        threads = str(os.cpu_count() or 1)
        cmd = [sys.executable, "-c", LLAMA_SERVER_LAUNCHER, "--model", str(model)]
        cmd += ["--model_alias", BUNDLED_NAME, "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--n_ctx", str(args.n_ctx), "--n_threads", threads, "--n_threads_batch", threads]
        cmd += ["--flash_attn", "true", "--interrupt_requests", "false"]
        base = f"http://127.0.0.1:{port}"
        # It has no ignore_eos: a -100 logit bias on every end-of-generation token instead.
        bias = {str(t): -100.0 for t in eog}
        with server(cmd, f"{base}/v1/models") as pid:
            results["llama_cpp.server"] = bench_http(
                base,
                pid,
                lambda i: payload(i, logit_bias=bias),
                args.concurrency,
                args.max_tokens,
                args.server_rounds,
                args.timeout,
                console,
            )

    # The table goes to stdout, or to stderr when stdout carries the JSON.
    out = Console(stderr=args.json, width=None if sys.stdout.isatty() else 160)
    out.print(table(results, args.concurrency))
    out.print(
        f"model {model.name}, {args.max_tokens} tokens/request, greedy, EOS suppressed, "
        f"n_ctx {args.n_ctx}, {os.cpu_count()} CPUs, best of {args.rounds} round(s) "
        f"({args.server_rounds} for llama_cpp.server); ceiling = decode steps only; "
        "others' CPU = most of the machine's CPU that other processes took in a kept round"
    )
    if args.json:
        print(to_json(results, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
