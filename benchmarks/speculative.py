"""Speculative decoding (prompt lookup) on workloads where it matters and where it does not.

Workloads, each a chat prompt to the bundled model, greedy:
- quote: repeat a given ~250-word text exactly;
- code: rename a function and its uses in a given ~40-line Python module;
- extract: copy the sentences of a given text that mention a word;
- story: free writing (nothing to copy: drafting must pause itself, within 0.95x).

Targets, each a fresh server on 127.0.0.1 started by the script, all up together and measured
in interleaved rounds (the order reversed every other round): inferd without speculation,
inferd with `--speculative ngram`, and with --llama-server, llama-server without and with its
own speculation (`--llama-spec-args`; read `llama-server --help` of your build for what it
offers: the build of llama-cpp-python 0.3.36 has `--spec-type ngram-simple`, whose lookup and
draft lengths are `--spec-ngram-simple-size-n` (12) and `-size-m` (48); `--draft-max` is gone).

A request's speed is its decode phase: (completion tokens - 1) / (last text - first text),
from a streamed /v1/completions. At concurrency C, C copies of the request run together and
their speeds are averaged. The table gives tokens/s per target and workload (median over the
rounds), the ratio to inferd without speculation, and whether the greedy texts were the same.

    .venv/bin/python benchmarks/speculative.py --rounds 5
    .venv/bin/python benchmarks/speculative.py --concurrency 1 4 --llama-server /path/llama-server
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shlex
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table
from throughput import count_tokens, free_port, llama_server_cmd, server, stream_one

from inferd.models.spec import BUNDLED_NAME, bundled_model_path

PASSAGE = (
    "The harbor town woke before the sun. Fishermen carried nets down the stone steps while "
    "the baker opened his shutters and set the first loaves on the sill to cool. A gray cat "
    "watched the gulls from the roof of the customs house. At the end of the pier, the old "
    "lighthouse keeper wrote the morning's weather in his notebook: wind from the west, a "
    "light swell, clear skies over the harbor. The ferry to the island left at seven, "
    "carrying mail, two crates of oranges and a schoolteacher who had missed the last boat "
    "the night before. By noon the market square was full. Traders sold copper pots, wool "
    "blankets and honey from the hills, and children ran between the stalls with paper "
    "kites. In the afternoon a storm gathered over the sea, and the harbor master ordered "
    "every boat back to its mooring. The rain came at four, heavy and warm, and it drummed "
    "on the tin roofs until the evening. When it stopped, the streets shone under the lamps, "
    "and the smell of bread and wet stone drifted up from the harbor to the hills."
)

CODE = '''import json
from pathlib import Path


def load_orders(path):
    """Read the orders file and return a list of dicts."""
    with open(path) as f:
        data = json.load(f)
    orders = []
    for item in data["orders"]:
        if item.get("cancelled"):
            continue
        orders.append(item)
    return orders


def total(orders):
    result = 0
    for order in orders:
        for line in order["lines"]:
            result += line["price"] * line["quantity"]
    return result


def summary(path):
    orders = load_orders(path)
    amount = total(orders)
    count = len(orders)
    average = amount / count if count else 0
    return {"orders": count, "total": amount, "average": average}


if __name__ == "__main__":
    print(summary(Path("orders.json")))
'''

WORKLOADS = {
    "quote": f"Repeat the following text exactly, word for word:\n\n{PASSAGE}",
    "code": "Rename the function `total` to `order_total` everywhere in this module. Reply "
    f"with the whole module.\n\n```python\n{CODE}```",
    "extract": "Copy, word for word, every sentence of this text that mentions the harbor, "
    f"one per line:\n\n{PASSAGE}",
    "story": "Write a long story about a dragon who is afraid of the dark.",
}


def chat(user: str) -> str:
    """SmolLM2's chat template around one user message (as /v1/chat/completions renders)."""
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


@dataclass
class Cell:
    """One target's results on one workload at one concurrency."""

    speeds: list[float] = field(default_factory=list)  # tokens/s per round (mean of requests)
    tokens: list[int] = field(default_factory=list)  # completion tokens per request
    texts: set[str] = field(default_factory=set)

    @property
    def median(self) -> float | None:
        return statistics.median(self.speeds) if self.speeds else None


def speed(raw: bytes, first: float, last: float) -> tuple[float, int, str]:
    """(decode tokens/s, completion tokens, text) of one streamed response."""
    n = count_tokens(raw)
    text = ""
    for line in raw.split(b"\n"):
        if line.startswith(b"data: {"):
            obj = json.loads(line[6:])
            text += "".join(c.get("text") or "" for c in obj.get("choices", []))
    return ((n - 1) / (last - first) if n > 1 and last > first else 0.0), n, text


async def run_cell(base: str, prompt: str, c: int, max_tokens: int, cell: Cell) -> None:
    url = httpx.URL(base)
    payload = {
        "model": BUNDLED_NAME,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    streams = await asyncio.gather(
        *(stream_one(url.host, url.port or 80, payload) for _ in range(c))
    )
    speeds = []
    for s in streams:
        events = s.text_events()
        if not events:
            continue
        v, n, text = speed(s.raw, events[0][0], events[-1][0])
        speeds.append(v)
        cell.tokens.append(n)
        cell.texts.add(text)
    if speeds:
        cell.speeds.append(statistics.mean(speeds))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1])
    p.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    p.add_argument("--max-draft", type=int, default=8, help="inferd's speculative_max_draft")
    p.add_argument("--n-ctx", type=int, default=4096)
    p.add_argument("--inferd-args", default="", help="more `inferd serve` flags, both targets")
    p.add_argument("--llama-server", type=Path, help="llama-server binary: compare with it")
    p.add_argument(
        "--llama-spec-args",
        default="--spec-type ngram-simple",
        help="llama-server's speculation flags for its speculative target",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=True)
    model = bundled_model_path()
    slots = max(args.concurrency)
    targets: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        for label, extra in (
            ("inferd", []),
            ("inferd ngram", ["--speculative", "ngram", "--speculative-max-draft"]),
        ):
            port = free_port()
            cmd = [sys.executable, "-m", "inferd", "serve", "--port", str(port)]
            cmd += ["--log-level", "warning", "--n-ctx", str(args.n_ctx)]
            cmd += ["--max-seqs", str(slots), *extra]
            cmd += [str(args.max_draft)] if extra else []
            cmd += shlex.split(args.inferd_args)
            base = f"http://127.0.0.1:{port}"
            stack.enter_context(server(cmd, f"{base}/health/ready"))
            targets[label] = base
        if args.llama_server:
            for label, extra in (("llama-server", ""), ("llama-server spec", args.llama_spec_args)):
                port = free_port()
                cmd = llama_server_cmd(
                    args.llama_server, model, port, args.n_ctx * slots, slots, split=True
                )
                base = f"http://127.0.0.1:{port}"
                stack.enter_context(server([*cmd, *shlex.split(extra)], f"{base}/health"))
                targets[label] = base
        cells: dict[tuple[str, str, int], Cell] = {}
        order = list(targets)
        for rnd in range(args.rounds + 1):  # round 0 warms up every target and workload
            for name in args.workloads:
                prompt = chat(WORKLOADS[name])
                for c in args.concurrency:
                    for label in order if rnd % 2 else order[::-1]:
                        cell = Cell() if rnd == 0 else cells.setdefault((label, name, c), Cell())
                        asyncio.run(run_cell(targets[label], prompt, c, args.max_tokens, cell))
            if rnd:
                console.print(f"round {rnd}/{args.rounds} done")
    results = report(cells, args, list(targets), console)
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


def report(
    cells: dict[tuple[str, str, int], Cell],
    args: argparse.Namespace,
    labels: list[str],
    console: Console,
) -> list[dict[str, Any]]:
    table = Table(title=f"decode tokens/s (median of {args.rounds} rounds), ratio to inferd")
    for col in ("workload", "C", *labels, "same text"):
        table.add_column(col, justify="left" if col == "workload" else "right")
    rows = []
    for name in args.workloads:
        for c in args.concurrency:
            base = cells[("inferd", name, c)].median
            row: dict[str, Any] = {"workload": name, "concurrency": c}
            shown = [name, str(c)]
            for label in labels:
                cell = cells[(label, name, c)]
                v = cell.median
                ratio = v / base if v and base else None
                row[label] = {
                    "tokens_per_s": v,
                    "ratio": ratio,
                    "speeds": cell.speeds,
                    "completion_tokens": statistics.mean(cell.tokens) if cell.tokens else None,
                }
                shown.append("—" if v is None else f"{v:.1f} ({ratio or 0:.2f}x)")
            same = cells[("inferd", name, c)].texts == cells[("inferd ngram", name, c)].texts
            row["same_text_inferd"] = same
            shown.append("yes" if same else "NO")
            rows.append(row)
            table.add_row(*shown)
    console.print(table)
    return rows


if __name__ == "__main__":
    sys.exit(main())
