"""Flash attention on and off, step by step shape: the measurements behind inferd's CPU default.

In-process, on inferd's LlamaCppBackend (the bundled model unless --model), one context per
setting at a time, the settings alternating round by round. Each round times:

- prefill: one 1,900-token prompt in 128-token chunks (a long prompt's first token, alone);
- decode x16: a step of 16 streams at ~100 tokens of context (short chats at concurrency 16);
- decode x1 @1900: one stream at a 1,900-token context;
- decode x8: 8 streams at ~100 tokens beside a 1,900-token sequence that does not decode;
- mixed: those 8 decode tokens plus a 16-token chunk of that sequence's prompt at 1,900, the
  step inferd's chunked prefill runs while a long prompt is admitted.

Medians per round in ms; the table keeps each shape's best round per setting and the ratio.

    .venv/bin/python benchmarks/attention.py --rounds 3
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


def one_round(model: Path, flash_attn: str, split: bool) -> dict[str, float]:
    options = LlamaCppOptions(n_ctx=4096, max_seqs=16, kv_split=split, flash_attn=flash_attn)
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
        return out
    finally:
        b.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--unified", action="store_true", help="one KV stream (default: split)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    model = args.model or bundled_model_path()
    console = Console(stderr=True)
    rounds: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    for r in range(args.rounds):
        for fa in ("off", "on"):
            rounds[fa].append(one_round(model, fa, not args.unified))
            figures = ", ".join(f"{k} {v * 1000:.1f}" for k, v in rounds[fa][-1].items())
            console.print(f"round {r + 1} flash attention {fa}: {figures} ms")
    best = {fa: {k: min(x[k] for x in rs) for k in SHAPES} for fa, rs in rounds.items()}
    if args.json:
        print(json.dumps({"rounds": rounds, "best": best}, indent=2))
        return
    table = Table(title="flash attention on vs off (ms, best round)")
    for col in ("step", "off", "on", "on / off"):
        table.add_column(col, justify="right")
    for k in SHAPES:
        off, on = best["off"][k], best["on"][k]
        table.add_row(k, f"{off * 1000:.1f}", f"{on * 1000:.1f}", f"{on / off:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
