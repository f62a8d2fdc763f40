import os

from inferd.bench.load import RequestResult, percentile, summarize
from inferd.bench.workload import Workload


def test_percentile_interpolates() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([float(x) for x in range(101)], 95) == 95.0


def test_summary_counts_only_successful_requests() -> None:
    ok = RequestResult(
        ok=True,
        latency=2.0,
        ttft=0.5,
        itls=[0.1, 0.3],
        completion_tokens=4,
        prompt_tokens=10,
        cached_tokens=6,
    )
    bad = RequestResult(ok=False, error="HTTP 500")
    level = summarize(2, None, [ok, ok, bad], duration=4.0)
    assert level.requests == 3 and level.errors == 1
    assert level.completion_tokens == 8
    assert level.output_tokens_per_s == 2.0
    assert level.ttft["p50"] == 0.5
    assert level.tpot["p50"] == 0.5  # (2.0 - 0.5) / (4 - 1)
    assert level.itl["p99"] is not None and abs(level.itl["p99"] - 0.3) < 1e-9
    assert level.cached_tokens == 12


def test_shared_prefix_workload_interleaves_prefixes() -> None:
    prompts = Workload(shared_prefixes=2, prefix_words=50).prompts(4)
    assert prompts[0].startswith("Document 0:") and prompts[2].startswith("Document 0:")
    assert prompts[1].startswith("Document 1:")
    assert prompts[0].split("\n\n")[0] == prompts[2].split("\n\n")[0]
    assert len(set(prompts)) == 4
    assert Workload().prompts(3) == Workload().prompts(3)  # deterministic


def _render(width: int, **kwargs: object) -> str:
    from rich.console import Console

    from inferd.bench.ceiling import CeilingResult
    from inferd.bench.report import table

    results = [RequestResult(True, 1.5, 1.2345, [0.0123, 0.0456, 0.1789], 128, 40, 20)] * 4
    level = summarize(16, None, results, 2.0)
    console = Console(width=width, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(table([level], {16: CeilingResult(16, 2000, 5.0)}, "inferd bench: url"))
    return console.export_text()


def test_the_report_table_shows_every_figure_whole() -> None:
    wide = _render(120)
    for figure in ("1234/1234/1234", "46/179/179", "80/160", "256.0", "400.0", "0.64x"):
        assert figure in wide, figure
    assert "rate" not in wide  # closed loop: no rate column
    narrow = _render(60)
    assert "…" not in narrow  # too narrow: columns fold, nothing is cut off
