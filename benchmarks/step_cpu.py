"""CPU per streamed token on the real model, per thread: where a step's time goes.

Starts `inferd serve` (the bundled model, llama.cpp on ONE thread so that no thread spins
waiting for another, flash attention off, kernel tuning off) from each given source tree, runs
C concurrent streaming /v1/completions (greedy, ignore_eos) against each, interleaved round by
round, and reads the server's per-thread CPU time from /proc before and after. With one
llama.cpp thread a step's computation runs on the engine core thread, so that thread's CPU is
split into llama_decode (timed inside the server with the thread's CPU clock) and the rest:
the core's own Python (scheduling, sampling, detokenizing, handing outputs over). Prints, per
round and server, ms of CPU per streamed token of: the event loop (main thread), the core
thread, llama_decode within it, the core's Python, and any other thread; then the medians.
CPU time, not wall time, so a machine shared with other work still compares the trees.

    python benchmarks/step_cpu.py SRC [SRC ...] [--c 1] [--tokens 256] [--rounds 5]

SRC is a directory holding the `inferd` package (e.g. `src` of a checkout or a worktree); the
venv running this script runs the servers too. Giving one SRC twice measures the noise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from loop_cpu import free_port, thread_cpu

from inferd.models.spec import BUNDLED_NAME

COLUMNS = ("loop", "core", "decode", "core_py", "other")


def serve(argv: list[str], report: Path) -> None:
    """`inferd serve argv` with llama_decode's thread CPU summed; SIGUSR1 writes the sum
    (nanoseconds, calls) to `report`."""
    import llama_cpp

    total = [0, 0]
    decode = llama_cpp.llama_decode

    def timed(*args: object) -> int:
        t = time.thread_time_ns()
        try:
            return int(decode(*args))
        finally:
            total[0] += time.thread_time_ns() - t
            total[1] += 1

    llama_cpp.llama_decode = timed

    def write(*_: object) -> None:
        report.with_suffix(".tmp").write_text(json.dumps(total))
        report.with_suffix(".tmp").replace(report)

    signal.signal(signal.SIGUSR1, write)
    from inferd.cli import main

    sys.argv = ["inferd", "serve", *argv]
    main()


def decode_ns(pid: int, report: Path) -> int:
    """The server's llama_decode CPU so far."""
    report.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    for _ in range(500):
        if report.exists():
            ns: int = json.loads(report.read_text())[0]
            return ns
        time.sleep(0.01)
    raise RuntimeError(f"server {pid} did not report its decode time")


async def load(base: str, c: int, tokens: int) -> int:
    """C concurrent streams of `tokens` tokens; the tokens received (from usage)."""
    async with httpx.AsyncClient(timeout=600) as client:

        async def one(i: int) -> int:
            body = {
                "model": BUNDLED_NAME,
                "prompt": f"Story {i}: once upon a time,",
                "max_tokens": tokens,
                "temperature": 0,
                "stream": True,
                "ignore_eos": True,
                "stream_options": {"include_usage": True},
            }
            n = 0
            async with client.stream("POST", f"{base}/v1/completions", json=body) as r:
                r.raise_for_status()
                async for line in r.aiter_lines():
                    if line.startswith("data: {") and '"usage":{' in line:
                        n = json.loads(line[6:])["usage"]["completion_tokens"]
            return n

        return sum(await asyncio.gather(*(one(i) for i in range(c))))


def wait_ready(base: str) -> None:
    for _ in range(600):
        try:
            body = {"model": BUNDLED_NAME, "prompt": "hi", "max_tokens": 2}
            if httpx.post(base + "/v1/completions", json=body, timeout=60).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{base} never answered")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("srcs", nargs="*")
    ap.add_argument("--c", type=int, default=1, help="concurrent streams (1)")
    ap.add_argument("--tokens", type=int, default=256, help="tokens per stream (256)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-seqs", type=int, default=16, help="the server's slots (16)")
    ap.add_argument("--n-ctx", type=int, default=4096, help="context per sequence (4096)")
    ap.add_argument("--serve", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve is not None:
        serve(a.serve[1:], Path(a.serve[0]))
        return
    servers = []
    for src in a.srcs:
        port, data = free_port(), Path(tempfile.mkdtemp())
        env = dict(
            os.environ,
            PYTHONPATH=f"{Path(src).resolve()}{os.pathsep}{Path(__file__).parent}",
            INFERD_DATA_DIR=str(data),
            INFERD_TUNE_KERNELS="false",
        )
        flags = ["--port", str(port), "--log-level", "warning", "--n-threads", "1"]
        flags += ["--flash-attn", "off", "--max-seqs", str(max(a.max_seqs, a.c))]
        flags += ["--n-ctx", str(a.n_ctx)]
        report = data / "decode.json"
        cmd = [sys.executable, __file__, "--serve", str(report), *flags]
        log = open(data / "log", "w")  # noqa: SIM115 (open while the server runs)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
        servers.append((src, proc, f"http://127.0.0.1:{port}", report))
    rows: dict[str, list[dict[str, float]]] = {src: [] for src in a.srcs}
    try:
        for _, _, base, _ in servers:
            wait_ready(base)
            asyncio.run(load(base, 1, 16))  # warm up
        for r in range(a.rounds):
            for src, proc, base, report in servers:
                cpu0, dec0 = thread_cpu(proc.pid), decode_ns(proc.pid, report)
                n = asyncio.run(load(base, a.c, a.tokens))
                cpu1, dec1 = thread_cpu(proc.pid), decode_ns(proc.pid, report)
                used = {t: sum(cpu1[t]) - sum(cpu0.get(t, (0.0, 0.0))) for t in cpu1}
                loop = used.pop(proc.pid)
                core = used.pop(max(used, key=lambda t: used[t]))
                decode = (dec1 - dec0) / 1e9
                ms = {
                    "loop": loop,
                    "core": core,
                    "decode": decode,
                    "core_py": core - decode,
                    "other": sum(used.values()),
                }
                ms = {k: 1000 * v / n for k, v in ms.items()}
                rows[src].append(ms)
                cells = " ".join(f"{k} {v:7.3f}" for k, v in ms.items())
                print(f"round {r} {src:28s} tokens {n} {cells} ms/tok", flush=True)
    finally:
        for _, proc, _, _ in servers:
            proc.terminate()
            proc.wait()
    for src, got in rows.items():
        if got:
            cells = " ".join(f"{k} {statistics.median(x[k] for x in got):7.3f}" for k in COLUMNS)
            print(f"median  {src:28s} {cells} ms/tok")


if __name__ == "__main__":
    main()
