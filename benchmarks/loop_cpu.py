"""Event-loop CPU per streamed token: the HTTP path's own cost, without a model.

Starts inferd's app over the fake backend (a fixed step time, no computation) from each given
source tree, in turn, runs C concurrent streaming /v1/completions (greedy, ignore_eos) against
each, interleaved round by round, and reads the server's per-thread CPU time from /proc before
and after. Prints, per round and server, the main (event-loop) thread's CPU per streamed token
(user and system) and the whole process's.

    python benchmarks/loop_cpu.py SRC [SRC ...] [--c 16] [--tokens 128] [--rounds 3]

SRC is a directory holding the `inferd` package (e.g. `src` of a checkout or a worktree); the
venv running this script runs the servers too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

TICK = os.sysconf("SC_CLK_TCK")
STEP_SECONDS = 0.004  # the fake backend's step: about a small model's decode step on a CPU


def serve_fake(port: int, max_seqs: int) -> None:
    """inferd's app over the fake backend, under uvicorn (imported from PYTHONPATH)."""
    import uvicorn

    from inferd.api.app import create_app
    from inferd.config import ModelConfig, Settings
    from inferd.engine.backends.fake import FakeBackend
    from inferd.models.engines import BackendEngineFactory
    from inferd.models.registry import ModelRegistry
    from inferd.models.spec import ModelSpec

    reply = "The quick brown fox jumps over the lazy dog. " * 20
    path = Path("fake.gguf")
    spec = ModelSpec("fake", path, ModelConfig(path=path), ("default",))
    backend = FakeBackend(
        reply=reply, max_seqs=max_seqs, n_ctx=2048, kv_cells=8192, step_delay=STEP_SECONDS
    )
    registry = ModelRegistry([spec], BackendEngineFactory(lambda _spec: backend))
    uvicorn.run(create_app(Settings(), registry), host="127.0.0.1", port=port, log_level="warning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def thread_cpu(pid: int) -> dict[int, tuple[float, float]]:
    """CPU seconds (user, system) of each thread of `pid`."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except FileNotFoundError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(tid)] = (int(fields[11]) / TICK, int(fields[12]) / TICK)
    return out


async def load(base: str, c: int, tokens: int) -> int:
    """C concurrent streams of `tokens` tokens; the events received."""
    async with httpx.AsyncClient(timeout=300) as client:

        async def one(i: int) -> int:
            body = {
                "model": "fake",
                "prompt": f"Story {i}: once upon a time,",
                "max_tokens": tokens,
                "temperature": 0,
                "stream": True,
                "ignore_eos": True,
            }
            n = 0
            async with client.stream("POST", f"{base}/v1/completions", json=body) as r:
                r.raise_for_status()
                async for line in r.aiter_lines():
                    n += line.startswith("data: {")
            return n

        return sum(await asyncio.gather(*(one(i) for i in range(c))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("srcs", nargs="*")
    ap.add_argument("--c", type=int, default=16, help="concurrent streams")
    ap.add_argument("--tokens", type=int, default=128, help="tokens per stream")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--serve-fake", type=int, metavar="PORT", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve_fake is not None:
        serve_fake(a.serve_fake, max(a.c, 1))
        return
    servers = []
    for src in a.srcs:
        port, data = free_port(), tempfile.mkdtemp()
        env = dict(os.environ, PYTHONPATH=str(Path(src).resolve()), INFERD_DATA_DIR=data)
        cmd = [sys.executable, __file__, "--serve-fake", str(port), "--c", str(a.c)]
        log = open(Path(data) / "log", "w")  # noqa: SIM115 (open while the server runs)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
        servers.append((src, proc, f"http://127.0.0.1:{port}"))
    try:
        for _, _, base in servers:
            for _ in range(300):
                try:
                    if httpx.get(base + "/health/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.3)
            asyncio.run(load(base, 2, 8))  # warm up
        for r in range(a.rounds):
            for src, proc, base in servers:
                before, started = thread_cpu(proc.pid), time.monotonic()
                n = asyncio.run(load(base, a.c, a.tokens))
                wall, after = time.monotonic() - started, thread_cpu(proc.pid)
                user, system = (after[proc.pid][k] - before[proc.pid][k] for k in (0, 1))
                total = sum(map(sum, after.values())) - sum(map(sum, before.values()))
                print(
                    f"round {r} {src:32s} tokens {n} tok/s {n / wall:7.1f} loop "
                    f"{1000 * (user + system) / n:.3f} ms/tok (user {1000 * user / n:.3f}, "
                    f"system {1000 * system / n:.3f}) process {1000 * total / n:.3f} ms/tok",
                    flush=True,
                )
    finally:
        for _, proc, _ in servers:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
