"""Benchmark output: a rich table, JSON, and a plot."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from inferd.bench.ceiling import CeilingResult
from inferd.bench.load import LevelResult


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f}"


def table(levels: list[LevelResult], ceiling: dict[int, CeilingResult], title: str) -> Table:
    """One row per level. Columns fold instead of truncating, so no figure is ever cut."""
    t = Table(title=title)
    paced = any(lv.rate is not None for lv in levels)
    columns = ["conc", *(["rate"] if paced else []), "reqs", "err", "tok/s", "req/s"]
    columns += ["TTFT ms\np50/p95/p99", "TPOT ms\np50", "ITL ms\np50/p95/p99", "cached"]
    if ceiling:
        columns += ["ceiling\ntok/s", "vs\nceiling"]
    for col in columns:
        t.add_column(col, justify="right", overflow="fold")
    for lv in levels:
        row = [str(lv.concurrency)]
        if paced:
            row.append("-" if lv.rate is None else f"{lv.rate:g}/s")
        row += [
            str(lv.requests),
            str(lv.errors),
            f"{lv.output_tokens_per_s:.1f}",
            f"{lv.requests_per_s:.2f}",
            "/".join(_ms(lv.ttft[k]) for k in ("p50", "p95", "p99")),
            _ms(lv.tpot["p50"]),
            "/".join(_ms(lv.itl[k]) for k in ("p50", "p95", "p99")),
            f"{lv.cached_tokens}/{lv.prompt_tokens}",
        ]
        if ceiling:
            c = ceiling.get(lv.concurrency)
            row += (
                [f"{c.tokens_per_s:.1f}", f"{lv.output_tokens_per_s / c.tokens_per_s:.2f}x"]
                if c
                else ["-", "-"]
            )
        t.add_row(*row)
    return t


def plot(levels: list[LevelResult], ceiling: dict[int, CeilingResult], path: Path) -> None:
    """Throughput and TTFT against concurrency (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install matplotlib") from None
    xs = [lv.concurrency for lv in levels]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(xs, [lv.output_tokens_per_s for lv in levels], marker="o", label="server")
    if ceiling:
        cx = sorted(ceiling)
        ax1.plot(cx, [ceiling[c].tokens_per_s for c in cx], marker="s", ls="--", label="ceiling")
    ax1.set(xlabel="concurrency", ylabel="output tokens/s", title="Throughput")
    ax1.legend()
    ax1.grid(alpha=0.3)
    for key in ("p50", "p95"):
        ax2.plot(xs, [(lv.ttft[key] or 0) * 1000 for lv in levels], marker="o", label=f"TTFT {key}")
    ax2.set(xlabel="concurrency", ylabel="ms", title="Time to first token")
    ax2.legend()
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
