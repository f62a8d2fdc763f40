"""Flash attention on and off, and KV cache types, step by step shape: the measurements behind
inferd's CPU default.

In-process, on inferd's LlamaCppBackend (the bundled model unless --model), one context per
setting at a time, the settings alternating round by round. Each round times:

- prefill: one 1,900-token prompt in 128-token chunks (a long prompt's first token, alone);
- decode x16: a step of 16 streams at ~100 tokens of context (short chats at concurrency 16);
- decode x1 @1900: one stream at a 1,900-token context;
- decode x8: 8 streams at ~100 tokens beside a 1,900-token sequence that does not decode;
- mixed: those 8 decode tokens plus a 16-token chunk of that sequence's prompt at 1,900, the
  step inferd's chunked prefill runs while a long prompt is admitted.

Medians per round in ms; the table keeps each shape's best round per setting, its ratio to
the first setting, and the KV cache's bytes. A setting is `FLASH:TYPE` (flash attention
off/on, the K and V cache type): the default compares `off:f16` and `on:f16`.

    .venv/bin/python benchmarks/attention.py --rounds 3
    .venv/bin/python benchmarks/attention.py --settings off:f16,on:f16,on:q8_0,on:q4_0
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from inferd.engine.backends.llamacpp import LlamaCppBackend, LlamaCppOptions
from inferd.models.spec import bundled_model_path

LONG = 1900
SHORT = 100
CHUNK = 128
SHAPES = ("prefill", "decode x16", "decode x1 @1900", "decode x8", "mixed")


def _timed(fn: Callable[[], object], repeat: int) -> float:
    """Median seconds of `repeat` calls."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def one_round(model: Path, setting: str, split: bool) -> dict[str, float]:
    flash_attn, kv_type = setting.split(":")
    options = LlamaCppOptions(
        n_ctx=4096,
        max_seqs=16,
        kv_split=split,
        flash_attn=flash_attn,
        cache_type_k=kv_type,
        cache_type_v=kv_type,
    )
    b = LlamaCppBackend(model, options)
    try:
        words = ("the quick brown fox jumps over a lazy dog while " * 400).strip()
        toks = b.tokenize(words, add_special=True, parse_special=False)[: LONG + 16]

        def prefill(seq: int, tokens: list[int]) -> None:
            for s in range(0, len(tokens), CHUNK):
                part = tokens[s : s + CHUNK]
                b.decode(part, range(s, s + len(part)), [seq] * len(part), [False] * len(part))

        out: dict[str, float] = {}
        t = time.perf_counter()
        prefill(15, toks[:LONG])
        out["prefill"] = time.perf_counter() - t

        t = time.perf_counter()
        for i in range(10):
            b.decode([1], [LONG + i], [15], [True])
        out["decode x1 @1900"] = (time.perf_counter() - t) / 10
        b.trim_seq(15, LONG)

        for s in range(8):
            prefill(s, toks[:SHORT])
        pos = [SHORT]

        def decode8(extra: bool) -> None:
            tk, ps, sq = [1] * 8, [pos[0]] * 8, list(range(8))
            lg = [True] * 8
            if extra:
                tk += toks[LONG : LONG + 16]
                ps += list(range(LONG, LONG + 16))
                sq += [15] * 16
                lg += [False] * 16
            b.decode(tk, ps, sq, lg)
            pos[0] += 1
            if extra:
                b.trim_seq(15, LONG)

        out["decode x8"] = _timed(lambda: decode8(False), 15)
        out["mixed"] = _timed(lambda: decode8(True), 10)

        for s in (*range(8), 15):
            b.free_seq(s)
        for s in range(16):
            prefill(s, toks[:SHORT])
        step = [SHORT]

        def decode16() -> None:
            b.decode([1] * 16, [step[0]] * 16, list(range(16)), [True] * 16)
            step[0] += 1

        out["decode x16"] = _timed(decode16, 20)
        out["kv MiB"] = b.info.kv_bytes / 2**20
        return out
    finally:
        b.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--unified", action="store_true", help="one KV stream (default: split)")
    parser.add_argument(
        "--settings", default="off:f16,on:f16", help="FLASH:TYPE,... (first: the baseline)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    model = args.model or bundled_model_path()
    console = Console(stderr=True)
    settings = args.settings.split(",")
    rounds: dict[str, list[dict[str, float]]] = {s: [] for s in settings}
    for r in range(args.rounds):
        for setting in settings:
            rounds[setting].append(one_round(model, setting, not args.unified))
            got = rounds[setting][-1]
            figures = ", ".join(f"{k} {got[k] * 1000:.1f}" for k in SHAPES)
            console.print(f"round {r + 1} {setting}: {figures} ms; KV {got['kv MiB']:.0f} MiB")
    best = {s: {k: min(x[k] for x in rs) for k in (*SHAPES, "kv MiB")} for s, rs in rounds.items()}
    if args.json:
        print(json.dumps({"rounds": rounds, "best": best}, indent=2))
        return
    base = settings[0]
    table = Table(title=f"steps by setting (ms, best round; ratio to {base})")
    table.add_column("step", justify="right")
    for setting in settings:
        table.add_column(setting, justify="right")
    for k in SHAPES:
        cells = [f"{best[base][k] * 1000:.1f}"]
        cells += [
            f"{best[s][k] * 1000:.1f} ({best[s][k] / best[base][k]:.2f})" for s in settings[1:]
        ]
        table.add_row(k, *cells)
    table.add_row("KV MiB", *(f"{best[s]['kv MiB']:.0f}" for s in settings))
    Console().print(table)


if __name__ == "__main__":
    main()
