"""Serving a Hugging Face checkpoint on PyTorch: inferd's transformers backend against
transformers' own continuous-batching server (`transformers serve --continuous-batching`) and
a one-request-at-a-time `generate` server (the TinyGPT service's design), with inferd's
llama.cpp path on the same weights (the bundled GGUF) for contrast. Same checkpoint, same
dtype (float32), same threads.

Workload: for each concurrency C, C concurrent streaming POST /v1/completions requests, greedy,
`max_tokens` each, the same prompt set. Throughput = completion tokens (the streamed text of
every answer, counted with the model's tokenizer, so every target is counted alike) / wall time
of the batch; TTFT = time to the first streamed text, median over requests. Targets are
measured round by round in turn (a drift of the machine touches each alike); the best round of
each is kept.

    PYTHONPATH=src .venv/bin/python benchmarks/torch_serving.py --concurrency 1,16 --max-tokens 64
    # the checkpoint: --checkpoint DIR (default: SmolLM2 built from the bundled GGUF by
    # tests/checkpoints.py into the pytest cache, ~25 s the first time)

`--generate-server` runs the one-at-a-time server itself (the script starts it as a child).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

PROMPTS = [
    "Write a story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a refrigerator works, step by step.",
    "List ten facts about the ocean and explain each one.",
    "Describe a walk through a busy market in the morning.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Target:
    name: str
    cmd: list[str]
    model: str
    ready_path: str
    env: dict[str, str]
    port: int


def targets(args: argparse.Namespace, checkpoint: Path, tmp: Path) -> list[Target]:
    from inferd.models.spec import bundled_model_path

    threads = str(args.threads)
    env = {"OMP_NUM_THREADS": threads, "HF_HUB_OFFLINE": "1"}
    out: list[Target] = []
    for name in args.targets.split(","):
        port = free_port()
        if name in ("inferd-transformers", "inferd-llamacpp"):
            config = tmp / f"{name}.toml"
            path = checkpoint if name == "inferd-transformers" else bundled_model_path()
            backend = "transformers" if name == "inferd-transformers" else "llama.cpp"
            config.write_text(
                f'[[models]]\npath = {str(path)!r}\nname = "m"\nbackend = "{backend}"\n'
                f'max_seqs = 16\nn_threads = {threads}\nn_ctx = 1024\ndtype = "float32"\n'
                if backend == "transformers"
                else f'[[models]]\npath = {str(path)!r}\nname = "m"\nmax_seqs = 16\n'
                f"n_threads = {threads}\nn_ctx = 1024\n"
            )
            cmd = [sys.executable, "-m", "inferd", "serve", "--port", str(port), "--config",
                   str(config), "--log-level", "warning"]  # fmt: skip
            env_t = {
                **env,
                "INFERD_DATA_DIR": str(tmp / name),
                "INFERD_MODELS_DIR": str(tmp / name),
            }
            out.append(Target(name, cmd, "m", "/health/ready", env_t, port))
        elif name == "transformers-serve":
            exe = str(Path(sys.executable).with_name("transformers"))
            cmd = [exe, "serve", str(checkpoint), "--port", str(port), "--continuous-batching",
                   "--dtype", "float32", "--device", "cpu"]  # fmt: skip
            out.append(Target(name, cmd, str(checkpoint), "/health", env, port))
        elif name == "generate-server":
            cmd = [sys.executable, __file__, "--generate-server", "--port", str(port),
                   "--checkpoint", str(checkpoint), "--threads", threads]  # fmt: skip
            out.append(Target(name, cmd, "m", "/health", env, port))
        else:
            raise SystemExit(f"unknown target {name}")
    return out


@contextmanager
def started(target: Target, timeout: float = 300) -> Iterator[str]:
    proc = subprocess.Popen(
        target.cmd,
        env={**os.environ, **target.env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{target.port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{target.name} exited with {proc.returncode}")
            try:
                if httpx.get(url + target.ready_path, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{target.name} did not start")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


async def one(
    client: httpx.AsyncClient, url: str, model: str, prompt: str, n: int
) -> tuple[str, float]:
    body = {"model": model, "prompt": prompt, "max_tokens": n, "temperature": 0, "stream": True}
    start = time.perf_counter()
    first = 0.0
    text = []
    async with client.stream("POST", url + "/v1/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            piece = "".join(c.get("text") or "" for c in chunk.get("choices", []))
            if piece and not first:
                first = time.perf_counter() - start
            text.append(piece)
    return "".join(text), first


async def batch(url: str, model: str, c: int, n: int) -> tuple[list[str], list[float], float]:
    async with httpx.AsyncClient(timeout=600) as client:
        start = time.perf_counter()
        results = await asyncio.gather(
            *(one(client, url, model, PROMPTS[i % len(PROMPTS)], n) for i in range(c))
        )
        wall = time.perf_counter() - start
    return [r[0] for r in results], [r[1] for r in results], wall


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--concurrency", default="1,16")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument(
        "--targets",
        default="inferd-transformers,transformers-serve,generate-server,inferd-llamacpp",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--generate-server", action="store_true")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    if args.generate_server:
        generate_server(args.checkpoint, args.port, args.threads)
        return
    checkpoint = args.checkpoint or built_smollm2()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    levels = [int(x) for x in args.concurrency.split(",")]
    results: dict[str, dict[int, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="inferd-torch-bench-") as tmp:
        for target in targets(args, checkpoint, Path(tmp)):
            with started(target) as url:
                asyncio.run(batch(url, target.model, 2, 4))  # warm up
                for c in levels:
                    best: dict[str, float] = {}
                    for _ in range(args.rounds):
                        texts, ttfts, wall = asyncio.run(
                            batch(url, target.model, c, args.max_tokens)
                        )
                        tokens = sum(
                            len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts
                        )
                        rate = tokens / wall
                        if rate > best.get("tok_s", 0):
                            best = {
                                "tok_s": rate,
                                "ttft_ms": 1000 * statistics.median(ttfts),
                                "tokens": tokens,
                            }
                    results.setdefault(target.name, {})[c] = best
                    rate, ttft, n = best["tok_s"], best["ttft_ms"], best["tokens"]
                    line = f"{target.name:22} C={c:<3} {rate:7.1f} tok/s  TTFT {ttft:7.0f} ms"
                    print(f"{line}  ({n:.0f} tokens)", flush=True)
    if args.json:
        print(json.dumps(results))


def built_smollm2() -> Path:
    """The SmolLM2 checkpoint the tests build from the bundled GGUF (built here if absent)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.checkpoints import build_smollm2, cached

    from inferd.models.spec import bundled_model_path

    gguf = bundled_model_path()
    st = gguf.stat()
    root = Path(__file__).resolve().parent.parent / ".pytest_cache" / "d" / "inferd-checkpoints"
    key = f"{gguf}|{st.st_size}|{st.st_mtime_ns}"
    return cached(root, "smollm2", key, lambda out: build_smollm2(gguf, out))


def generate_server(checkpoint: Path, port: int, threads: int) -> None:
    """One request at a time: `model.generate` under a lock, streamed as OpenAI completions."""
    import torch
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    lock = threading.Lock()
    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/completions")
    def complete(body: dict[str, Any]) -> StreamingResponse:
        def events() -> Iterator[str]:
            with lock:
                ids = tokenizer(body["prompt"], return_tensors="pt")
                streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
                kwargs = {**ids, "max_new_tokens": int(body.get("max_tokens", 16)),
                          "do_sample": False, "streamer": streamer}  # fmt: skip
                worker = threading.Thread(target=lambda: model.generate(**kwargs))
                worker.start()
                for piece in streamer:
                    if piece:
                        yield "data: " + json.dumps({"choices": [{"text": piece}]}) + "\n\n"
                worker.join()
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
