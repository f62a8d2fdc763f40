"""Aggregate decode throughput: inferd over HTTP vs the in-process llama.cpp ceiling vs
llama.cpp's own C++ server (`llama-server`, when --llama-server points at a build of it) vs
llama-cpp-python's server, on the same model and the same workload.

Workload: for each concurrency C, C concurrent streaming POST /v1/completions requests,
greedy, `max_tokens` tokens each with end-of-generation suppressed, so every request
generates exactly `max_tokens` tokens. Throughput = completion tokens / wall time of the batch.
The ceiling is a plain loop over inferd's LlamaCppBackend: same model, same context
settings, one llama_decode per step with one token per sequence, no server, no scheduler.

All targets are started first and measured in turn, round by round (ceiling, inferd,
llama-server, ceiling, ...), so a drift of the machine's speed over minutes touches each
alike; the best clean round of each is kept. The ceiling samples with llama.cpp's own
greedy sampler chain.

llama.cpp's CPU threads spin-wait on each other, so on a machine whose cores are shared
with other work a round can be many times slower. Each round records how much of the
machine's CPU other processes took; rounds above --max-others are discarded and retried
once the machine is idle (bounded by --retries and --budget).

    .venv/bin/python benchmarks/throughput.py --concurrency 1,8,16 --max-tokens 128
    make bench ARGS="--skip-llama-cpp-server --json"
    .venv/bin/python benchmarks/throughput.py --llama-server /path/to/llama-server

With --llama-server, llama.cpp's server is measured twice by default, both with inferd's KV
cells and slots: in inferd's KV layout and kernels ("llama-server": a KV stream per slot or
one unified cache, and flash attention, as inferd has them: measured at its load, or as
--flash-attn sets it) and with its own defaults ("llama-server defaults": one KV stream per
slot, flash attention auto). The ceiling gets inferd's kernels too: inferd is started first,
and its pick (GET /models) is in the JSON's meta (`inferd_flash_attn`: mode, source, reason,
the weighted on/off aggregate and the table) and under the text table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import re
import shlex
import signal
import socket
import statistics
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

from inferd.engine.backends.llamacpp import LlamaCppBackend, LlamaCppOptions, default_kv_cells
from inferd.engine.types import SamplingParams
from inferd.models.spec import BUNDLED_NAME, bundled_model_path

# Tokens of the untimed warm-up request before each round.
WARM_TOKENS = 8

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
    """One measured batch. For the ceiling, `seconds` covers the decode steps only and
    `prefill_seconds` / `prefill_tokens` the prompt pass that produced each first token."""

    tokens: int
    seconds: float
    ttft: float | None = None  # mean time to first token (HTTP targets)
    prefill_seconds: float = 0.0
    prefill_tokens: int = 0
    # HTTP targets: text events that arrived once every stream had its first one, and the
    # time from then to the last (the steady decode phase, comparable to the ceiling's steps)
    decode_tokens: int = 0
    decode_seconds: float = 0.0
    others_cpu: float | None = None  # share of the machine's CPU other processes took
    noisy: bool = False  # others_cpu above the limit: not used for the figures

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        """The ceiling's decode steps; an HTTP target's steady decode phase."""
        return self.decode_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0

    @property
    def e2e_tok_s(self) -> float:
        total = self.seconds + self.prefill_seconds
        return (self.tokens + self.prefill_tokens) / total if total > 0 else 0.0


@dataclass
class Point:
    """One target at one concurrency: every round tried, and the best clean one."""

    rounds: list[Round] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def clean(self) -> list[Round]:
        return [r for r in self.rounds if not r.noisy]

    @property
    def best(self) -> Round | None:
        """The fastest clean round, else the fastest round (then flagged noisy)."""
        pool = self.clean or self.rounds
        return max(pool, key=lambda r: r.tok_s) if pool else None


Results = dict[str, dict[int, Point]]  # target -> concurrency -> point


# ---- noise: how much CPU other processes take (Linux /proc; None elsewhere) ------------------


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


@dataclass
class Hygiene:
    max_others: float  # discard a round when other processes took more of the CPU than this
    retries: int  # extra rounds allowed per point to replace discarded ones
    deadline: float  # time.monotonic() after which nothing is retried or waited for
    console: Console

    def wait_idle(self, pids: list[int]) -> None:
        """Wait until other processes use at most max_others of the CPU over 2 s, or until
        the budget is spent (then measure anyway: the round will say how noisy it was)."""
        busy = False
        while time.monotonic() < self.deadline:
            watch = CpuWatch(pids)
            time.sleep(2.0)
            others = watch.others()
            if others is None or others <= self.max_others:
                return
            busy = True
        if busy:
            self.console.print("  [yellow]budget spent, machine still busy: measuring anyway")

    def collect(self, targets: list[Target], concurrency: int, rounds: int) -> dict[str, Point]:
        """Rounds of every target in turn (ceiling, inferd, llama-server, ceiling, ...) until
        each has `rounds` clean ones, retrying noisy or failed rounds. Interleaved, so a
        drift of the machine's speed over minutes touches every target alike."""
        points = {t.label: Point() for t in targets}
        for attempt in range(rounds + self.retries):
            todo = [t for t in targets if len(points[t.label].clean) < t.rounds(rounds)]
            if not todo or (attempt >= rounds and time.monotonic() > self.deadline):
                break
            for t in todo:
                point, label = points[t.label], f"{t.label} C={concurrency}"
                self.wait_idle(t.pids)
                try:
                    t.warm()
                    r = t.run(concurrency)
                except (OSError, ValueError, RuntimeError, httpx.HTTPError) as exc:
                    point.errors.append(f"{type(exc).__name__}: {exc}"[:200])
                    self.console.print(f"  {label}: round failed: {point.errors[-1]}")
                    continue
                r.noisy = r.others_cpu is not None and r.others_cpu > self.max_others
                point.rounds.append(r)
                note = f" (discarded: other processes took {r.others_cpu:.0%})" if r.noisy else ""
                self.console.print(f"  {label}: {r.tok_s:.1f} tok/s{note}")
        return points


@dataclass
class Target:
    """Something measured: `run(concurrency)` does one round, `warm()` a short untimed one
    just before it (the targets take turns, and each round should find its own process's
    memory in the CPU caches, not the previous target's). `pids` are its processes (the CPU
    they use is not noise); `max_rounds` caps its rounds (a slow server)."""

    label: str
    pids: list[int]
    run: Callable[[int], Round]
    warm: Callable[[], None]
    max_rounds: int | None = None

    def rounds(self, wanted: int) -> int:
        return min(wanted, self.max_rounds) if self.max_rounds else wanted


# ---- the in-process ceiling ------------------------------------------------------------------


def ceiling_round(backend: LlamaCppBackend, prompts: list[list[int]], max_tokens: int) -> Round:
    """Prefill the prompts (packed into batches of at most n_batch tokens), then decode one
    token per sequence per step until each has `max_tokens`: the first token comes from the
    prefill, the rest from max_tokens - 1 decode steps."""
    n = len(prompts)
    budget = backend.info.max_batch_tokens
    greedy = SamplingParams(temperature=0.0, ignore_eos=True)
    samplers = [backend.new_sampler(greedy, llama_chain=True) for _ in range(n)]
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
    return Round(
        tokens=n * (max_tokens - 1),
        seconds=t2 - t1,
        decode_tokens=n * (max_tokens - 1),
        decode_seconds=t2 - t1,
        prefill_seconds=t1 - t0,
        prefill_tokens=n,
        others_cpu=watch.others(),
    )


def ceiling_target(backend: LlamaCppBackend, max_tokens: int) -> Target:
    tokenized = [backend.tokenize(p, add_special=True, parse_special=True) for p in PROMPTS]

    def warm() -> None:
        ceiling_round(backend, tokenized[:1], WARM_TOKENS)

    def run(c: int) -> Round:
        prompts = [tokenized[i % len(tokenized)] for i in range(c)]
        return ceiling_round(backend, prompts, max_tokens)

    return Target("ceiling", [os.getpid()], run, warm)


# ---- HTTP targets ------------------------------------------------------------------------------


LLAMA_SERVER_LAYOUTS = ("same", "default")
KV_FLAGS = {"auto": [], "split": ["--kv-split"], "unified": ["--no-kv-split"]}


def llama_server_cmd(
    binary: Path,
    model: Path,
    port: int,
    cells: int,
    slots: int,
    *,
    split: bool,
    layout: str = "same",
    flash_attn: str = "off",
) -> list[str]:
    """llama.cpp's server with inferd's KV cells, slots and threads, in one of two layouts:
    "same" is inferd's (a KV stream per slot when `split`, else one unified cache; flash
    attention `flash_attn`, as inferd picked it), "default" is llama-server's own (a
    KV stream per slot, flash attention auto). Later `--llama-server-args` override these.
    `--no-repack` is the same AMX workaround as inferd's extra_buffers=False: without it the
    server dies in warm-up."""
    cmd = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["-c", str(cells), "-np", str(slots), "-t", str(os.cpu_count() or 1)]
    if layout == "same":
        cmd += ["-fa", flash_attn] + ([] if split else ["--kv-unified"])
    return [*cmd, "--no-webui", "--no-repack", "-a", BUNDLED_NAME]


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
            if proc.poll() is not None:  # it died while being measured: say how
                log.seek(0)
                tail = "".join(log.readlines()[-8:])
                print(
                    f"{cmd[0]} exited with {proc.returncode}; its last lines:\n{tail}",
                    file=sys.stderr,
                )
            else:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


# A text chunk whose text is not empty (the compact and the spaced JSON of the servers).
_TEXT = re.compile(rb'"text":\s?"[^"]')


def dechunk(body: bytes) -> bytes:
    """The payload of an HTTP/1.1 chunked body."""
    out, i = bytearray(), 0
    while True:
        eol = body.index(b"\r\n", i)
        size = int(body[i:eol].split(b";", 1)[0], 16)
        if size == 0:
            return bytes(out)
        out += body[eol + 2 : eol + 2 + size]
        i = eol + 4 + size


def count_tokens(raw: bytes) -> int:
    """Completion tokens in a finished SSE response: the usage chunk's count when the server
    sends one, else the number of chunks with text (llama_cpp.server streams one chunk per
    token for plain ASCII text)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if b" 200 " not in status + b" ":
        raise RuntimeError(f"{status.decode('latin-1')}: {body[:200].decode('latin-1')}")
    if b"transfer-encoding: chunked" in head.lower():
        body = dechunk(body)
    chunks, usage = 0, None
    for line in body.decode().splitlines():
        if not line.startswith("data:") or line[5:].strip() == "[DONE]":
            continue
        obj = json.loads(line[5:])
        if "error" in obj:
            raise RuntimeError(f"stream error: {obj['error']}")
        if obj.get("usage"):
            usage = int(obj["usage"]["completion_tokens"])
        chunks += sum(1 for c in obj.get("choices", []) if c.get("text"))
    return usage if usage is not None else chunks


@dataclass
class Stream:
    """One streaming response as received: its bytes, and when each read ended."""

    raw: bytes
    ttft: float  # seconds from connecting to the first text
    reads: list[tuple[float, int]]  # (perf_counter, bytes received so far) after each read

    def text_events(self) -> list[tuple[float, int]]:
        """(time, text events in it) for each read that brought any."""
        out, start = [], 0
        for t, end in self.reads:
            n = len(_TEXT.findall(self.raw, start, end))
            if n:
                out.append((t, n))
            start = end
        return out


def decode_phase(streams: list[Stream]) -> tuple[int, float]:
    """(text events, seconds) of a round's steady decode phase: from the moment every
    stream has its first text to the last text. Each event is one token for these servers'
    streams of plain ASCII text (one that carried two would be counted once: conservative)."""
    events = [s.text_events() for s in streams]
    if not all(events):
        return 0, 0.0
    start = max(e[0][0] for e in events)
    end = max(e[-1][0] for e in events)
    return sum(n for e in events for t, n in e if t > start), end - start


async def stream_one(host: str, port: int, payload: dict[str, Any]) -> Stream:
    """One streaming POST /v1/completions on its own connection.

    The load generator shares the machine's two cores with the server it measures, so
    while the round runs it only receives bytes and looks for the first text; the stream
    is parsed after the round (`count_tokens`). httpx parsing each chunk took 0.55 ms of
    CPU per token, enough to slow every server at concurrency 1 by several percent."""
    body = json.dumps(payload).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
        f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(head + body)
        parts: list[bytes] = []
        reads: list[tuple[float, int]] = []
        size = 0
        ttft: float | None = None
        while data := await reader.read(1 << 16):
            now = time.perf_counter()
            parts.append(data)
            size += len(data)
            reads.append((now, size))
            if ttft is None and _TEXT.search(data):
                ttft = now - t0
    finally:
        writer.close()
    return Stream(b"".join(parts), ttft or 0.0, reads)


async def http_round(
    base: str, payloads: list[dict[str, Any]], limit_s: float, pids: list[int]
) -> Round:
    url = httpx.URL(base)
    host, port = url.host, url.port or 80
    watch = CpuWatch(pids)
    t0 = time.perf_counter()
    async with asyncio.timeout(limit_s):
        results = await asyncio.gather(*(stream_one(host, port, p) for p in payloads))
    seconds = time.perf_counter() - t0
    others = watch.others()
    decode_tokens, decode_seconds = decode_phase(results)
    return Round(
        tokens=sum(count_tokens(r.raw) for r in results),
        seconds=seconds,
        ttft=sum(r.ttft for r in results) / len(results),
        decode_tokens=decode_tokens,
        decode_seconds=decode_seconds,
        others_cpu=others,
    )


def run_http_round(
    base: str, payloads: list[dict[str, Any]], limit_s: float, pids: list[int]
) -> Round:
    return asyncio.run(http_round(base, payloads, limit_s, pids))


def check_tokens(base: str, payload: dict[str, Any], max_tokens: int, console: Console) -> None:
    """Warm-up, non-streaming: also checks that the workload really yields max_tokens."""
    body = {k: v for k, v in payload.items() if k not in ("stream", "stream_options")}
    resp = httpx.post(f"{base}/v1/completions", json=body, timeout=300)
    resp.raise_for_status()
    got = resp.json()["usage"]["completion_tokens"]
    if got != max_tokens:
        console.print(f"[yellow]warning:[/yellow] {base} generated {got} of {max_tokens} tokens")


def http_target(
    label: str,
    base: str,
    server_pid: int,
    make_payload: Callable[[int], dict[str, Any]],
    max_tokens: int,
    limit_s: float,
    console: Console,
    max_rounds: int | None = None,
) -> Target:
    check_tokens(base, make_payload(0), max_tokens, console)
    pids = [os.getpid(), server_pid]

    def warm() -> None:
        body = {**make_payload(0), "max_tokens": WARM_TOKENS, "stream": False}
        body.pop("stream_options", None)
        httpx.post(f"{base}/v1/completions", json=body, timeout=limit_s).raise_for_status()

    def run(c: int) -> Round:
        return run_http_round(base, [make_payload(i) for i in range(c)], limit_s, pids)

    return Target(label, pids, run, warm, max_rounds)


# ---- the report --------------------------------------------------------------------------------


def served_flash_attn(base: str) -> dict[str, Any] | None:
    """The flash attention inferd picked for the model it serves (native GET /models:
    mode, source, reason and, where it measured, the weighted aggregate and the table)."""
    models = httpx.get(f"{base}/models", timeout=30).json()["models"]
    return next((m["config"].get("flash_attn") for m in models if m["loaded"]), None)


def describe_pick(pick: dict[str, Any] | None) -> str:
    if not pick:
        return "unknown (no loaded model in /models)"
    text = f"{pick['mode']} ({pick['source']}: {pick['reason']})"
    rows = pick.get("table", [])
    return text + "".join(f"; {r['shape']} {r['ratio']:.2f}" for r in rows)


def fmt(x: float | None, spec: str = ".1f") -> str:
    return "—" if x is None else format(x, spec)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _paired(ceil: Point | None, point: Point | None, key: Callable[[Round], float]) -> float | None:
    """Median over the rounds of `point` of each one against the ceiling round just before
    it (rounds alternate): less sensitive to one lucky round than the best-of."""
    if ceil is None or point is None:
        return None
    ratios = [
        key(r) / key(k)
        for k, r in zip(ceil.rounds, point.rounds, strict=False)
        if not (k.noisy or r.noisy) and key(k) and key(r)
    ]
    return statistics.median(ratios) if ratios else None


def table(results: Results, concurrency: list[int]) -> Table:
    """One row per target and concurrency. "decode" is the steady decode phase (an HTTP
    target's tokens once every stream has its first one; the ceiling's decode steps), the
    like-for-like comparison with the ceiling; "paired" ratios are medians over rounds."""
    t = Table(title="completion tokens/s, aggregate over concurrent requests (best clean round)")
    for col in (
        "C",
        "target",
        "tok/s",
        "TTFT ms",
        "decode tok/s",
        "/ ceiling",
        "paired",
        "/ ceiling+prefill",
        "decode / ceiling",
        "paired",
        "inferd / target",
        "others' CPU",
    ):
        t.add_column(col, justify="right")
    for c in concurrency:
        ceil = results.get("ceiling", {}).get(c)
        kc = ceil.best if ceil else None
        k_tok = kc.tok_s if kc else None
        k_e2e = kc.e2e_tok_s if kc else None
        k_dec = max((r.decode_tok_s for r in ceil.clean), default=None) if ceil else None
        inf = results.get("inferd", {}).get(c)
        inf_tok = inf.best.tok_s if inf and inf.best else None
        if kc is not None:
            t.add_row(str(c), "ceiling (decode steps)", fmt(k_tok), "", fmt(k_dec))
            t.add_row(str(c), "ceiling+prefill", fmt(k_e2e))
        for label, points in results.items():
            point = points.get(c)
            if label == "ceiling" or point is None:
                continue
            r = point.best
            if r is None:
                t.add_row(str(c), label, "failed" if point.errors else "—")
                continue
            dec = max((q.decode_tok_s for q in point.clean), default=None)
            t.add_row(
                str(c),
                label,
                fmt(r.tok_s) + ("*" if r.noisy else ""),
                fmt(r.ttft * 1000 if r.ttft is not None else None, ".0f"),
                fmt(dec),
                fmt(ratio(r.tok_s, k_tok), ".2f"),
                fmt(_paired(ceil, point, lambda q: q.tok_s), ".2f"),
                fmt(ratio(r.tok_s, k_e2e), ".2f"),
                fmt(ratio(dec, k_dec), ".2f"),
                fmt(_paired(ceil, point, lambda q: q.decode_tok_s), ".2f"),
                "" if label == "inferd" else fmt(ratio(inf_tok, r.tok_s), ".2f"),
                fmt(r.others_cpu, ".0%") if r.others_cpu is not None else "—",
            )
        t.add_section()
    return t


def to_json(results: Results, meta: dict[str, Any]) -> str:
    data: dict[str, Any] = {"meta": meta, "results": {}}
    for target, points in results.items():
        data["results"][target] = {
            str(c): {
                "best_tok_s": p.best.tok_s if p.best else None,
                "best_e2e_tok_s": p.best.e2e_tok_s if p.best and target == "ceiling" else None,
                "best_decode_tok_s": max((r.decode_tok_s for r in p.clean), default=None),
                "rounds": [
                    {
                        **asdict(r),
                        "tok_s": r.tok_s,
                        "e2e_tok_s": r.e2e_tok_s,
                        "decode_tok_s": r.decode_tok_s,
                    }
                    for r in p.rounds
                ],
                "errors": p.errors,
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
    ap.add_argument("--rounds", type=int, default=3, help="clean rounds per point; best kept (3)")
    ap.add_argument("--server-rounds", type=int, default=1, help="rounds for llama_cpp.server (1)")
    ap.add_argument("--timeout", type=float, default=180, help="seconds per round (180)")
    ap.add_argument(
        "--max-others",
        type=float,
        default=0.05,
        help="discard a round when other processes took more of the CPU (0.05)",
    )
    ap.add_argument("--retries", type=int, default=4, help="extra rounds per point (4)")
    ap.add_argument(
        "--budget",
        type=float,
        default=45,
        help="minutes to wait for an idle machine and retry noisy rounds; then go on (45)",
    )
    ap.add_argument("--model", type=Path, default=None, help="GGUF file (default: bundled)")
    ap.add_argument(
        "--inferd-args",
        default="",
        help="extra `inferd serve` flags, e.g. --inferd-args=--no-prefix-cache",
    )
    ap.add_argument("--llama-server-args", default="", help="extra llama-server flags")
    ap.add_argument("--skip-ceiling", action="store_true")
    ap.add_argument("--skip-inferd", action="store_true")
    ap.add_argument("--skip-llama-cpp-server", action="store_true")
    ap.add_argument(
        "--llama-server",
        type=Path,
        help="a llama-server binary (llama.cpp's C++ server) to measure too",
    )
    ap.add_argument(
        "--llama-server-layouts",
        default="same,default",
        help="llama-server configurations, comma-separated: 'same' (inferd's KV layout and "
        "flash attention in this run), 'default' (llama-server's own: a KV stream per slot, "
        "flash attention auto). Both get inferd's KV cells. Default: same,default",
    )
    ap.add_argument(
        "--kv-layout",
        choices=tuple(KV_FLAGS),
        default="auto",
        help="inferd's KV layout, the ceiling's too: 'auto' (inferd's default: a stream per "
        "slot where n_ctx x slots cells fit, see docs/configuration.md), 'split' (--kv-split) "
        "or 'unified' (--no-kv-split); 'split' and 'unified' use the unified default's cells",
    )
    ap.add_argument(
        "--flash-attn",
        choices=("on", "off", "auto"),
        help="flash attention for inferd, the ceiling and llama-server's 'same' layout "
        "(default: what inferd picks, measured on CPU; the others follow it)",
    )
    ap.add_argument("--json", action="store_true", help="print JSON (the table goes to stderr)")
    args = ap.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    args.llama_server_layouts = [x.strip() for x in args.llama_server_layouts.split(",")]
    if not set(args.llama_server_layouts) <= set(LLAMA_SERVER_LAYOUTS):
        ap.error(f"--llama-server-layouts takes {', '.join(LLAMA_SERVER_LAYOUTS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # On SIGTERM, unwind normally so the servers this script started are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    console = Console(stderr=True)
    h = Hygiene(args.max_others, args.retries, time.monotonic() + args.budget * 60, console)
    model: Path = args.model or bundled_model_path()
    max_seqs = max(16, *args.concurrency)
    results: Results = {}
    meta: dict[str, Any] = {
        "model": model.name,
        "max_tokens": args.max_tokens,
        "n_ctx": args.n_ctx,
        "concurrency": args.concurrency,
        "cpus": os.cpu_count(),
        "max_others": args.max_others,
        "inferd_args": args.inferd_args,
        "kv_layout": args.kv_layout,
        "flash_attn": args.flash_attn,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }

    def payload(i: int, **extra: Any) -> dict[str, Any]:
        # --model: inferd names the file's model after the file; the one model is the default
        named = {} if args.model else {"model": BUNDLED_NAME}
        return {
            **named,
            "prompt": PROMPTS[i % len(PROMPTS)],
            "max_tokens": args.max_tokens,
            "temperature": 0,
            "stream": True,
            **extra,
        }

    def with_usage(i: int) -> dict[str, Any]:
        return payload(i, ignore_eos=True, stream_options={"include_usage": True})

    # Every target is started first and measured in turn, round by round; a server waiting
    # for its turn is idle (blocked, no spinning threads).
    targets: list[Target] = []
    with contextlib.ExitStack() as stack:
        # every target gets the same KV cells and layout (a stream per slot: cells / slots
        # each); "auto" lets inferd pick them as `inferd serve` does, and the ceiling follows
        fixed = args.kv_layout != "auto"
        inferd: Target | None = None
        picked: dict[str, Any] | None = None
        if not args.skip_inferd:
            console.print("inferd: python -m inferd serve")
            port = free_port()
            cmd = [sys.executable, "-m", "inferd", "serve", "--port", str(port)]
            cmd += ["--log-level", "warning", "--n-ctx", str(args.n_ctx)]
            cmd += ["--max-seqs", str(max_seqs)]
            cmd += ["--flash-attn", args.flash_attn] if args.flash_attn else []
            if fixed:
                cells = default_kv_cells(args.n_ctx, max_seqs)
                cmd += ["--kv-cells", str(cells), *KV_FLAGS[args.kv_layout]]
            if args.model:
                cmd += ["--model", str(model)]
            cmd += shlex.split(args.inferd_args)
            base = f"http://127.0.0.1:{port}"
            pid = stack.enter_context(server(cmd, f"{base}/health/ready"))
            picked = served_flash_attn(base)
            meta["inferd_flash_attn"] = picked
            console.print(f"inferd's flash attention: {describe_pick(picked)}")
            inferd = http_target(
                "inferd", base, pid, with_usage, args.max_tokens, args.timeout, console
            )

        # the ceiling (and llama-server's "same" layout) get inferd's kernels
        flash_attn = args.flash_attn or (picked["mode"] if picked else None)
        options = LlamaCppOptions(max_seqs=max_seqs, n_ctx=args.n_ctx, flash_attn=flash_attn)
        if fixed:
            options = dataclasses.replace(
                options,
                kv_cells=default_kv_cells(args.n_ctx, max_seqs),
                kv_split=args.kv_layout == "split",
            )
        backend = LlamaCppBackend(model, options)
        stack.callback(backend.close)
        facts = backend.facts()
        cells, split = facts["kv_cells"], facts["kv_layout"] == "split"
        kernels = facts["flash_attn"]["mode"]
        meta.update(kv_cells=cells, kv_split=split, ceiling_flash_attn=kernels)
        console.print(f"KV cache: {cells} cells, {'a stream per slot' if split else 'unified'}")
        eog = [t for t in range(backend.info.n_vocab) if backend.is_eog(t)]
        if not args.skip_ceiling:
            console.print(f"ceiling: in-process LlamaCppBackend loop, flash attention {kernels}")
            targets.append(ceiling_target(backend, args.max_tokens))
        if inferd is not None:
            targets.append(inferd)

        for layout in args.llama_server_layouts if args.llama_server else []:
            label = "llama-server" if layout == "same" else "llama-server defaults"
            console.print(f"{label}: llama-server -np {max_seqs} (llama.cpp's C++ server)")
            port = free_port()
            cmd = llama_server_cmd(
                args.llama_server,
                model,
                port,
                cells,
                max_seqs,
                split=split,
                layout=layout,
                flash_attn=kernels,
            )
            cmd += shlex.split(args.llama_server_args)
            base = f"http://127.0.0.1:{port}"
            pid = stack.enter_context(server(cmd, f"{base}/health"))
            targets.append(
                http_target(label, base, pid, with_usage, args.max_tokens, args.timeout, console)
            )

        if not args.skip_llama_cpp_server:
            console.print("llama_cpp.server (serves one request at a time)")
            port = free_port()
            threads = str(os.cpu_count() or 1)
            cmd = [sys.executable, "-c", LLAMA_SERVER_LAUNCHER, "--model", str(model)]
            cmd += ["--model_alias", BUNDLED_NAME, "--host", "127.0.0.1", "--port", str(port)]
            cmd += ["--n_ctx", str(args.n_ctx), "--n_threads", threads]
            cmd += ["--n_threads_batch", threads]
            cmd += ["--flash_attn", "false", "--interrupt_requests", "false"]
            base = f"http://127.0.0.1:{port}"
            # It has no ignore_eos: a -100 logit bias on every end-of-generation token instead.
            bias = {str(t): -100.0 for t in eog}
            pid = stack.enter_context(server(cmd, f"{base}/v1/models"))
            targets.append(
                http_target(
                    "llama_cpp.server",
                    base,
                    pid,
                    lambda i: payload(i, logit_bias=bias),
                    args.max_tokens,
                    args.timeout,
                    console,
                    max_rounds=args.server_rounds,
                )
            )

        for c in args.concurrency:
            for label, point in h.collect(targets, c, args.rounds).items():
                results.setdefault(label, {})[c] = point

    # The table goes to stdout, or to stderr when stdout carries the JSON.
    out = Console(stderr=args.json, width=None if sys.stdout.isatty() else 160)
    out.print(table(results, args.concurrency))
    out.print(
        f"model {model.name}, {args.max_tokens} tokens/request, greedy, EOS suppressed, "
        f"n_ctx {args.n_ctx}, {os.cpu_count()} CPUs. Best of {args.rounds} clean round(s) "
        f"({args.server_rounds} for llama_cpp.server). ceiling: decode steps only; "
        "ceiling+prefill: incl. the prompt pass. others' CPU: what other processes took in the "
        f"kept round; * = no round under {args.max_others:.0%}."
    )
    if picked is not None:
        out.print(f"inferd's flash attention: {describe_pick(picked)}")
    out.print(f"the ceiling's and llama-server's (same layout) flash attention: {kernels}")
    if args.json:
        print(to_json(results, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
