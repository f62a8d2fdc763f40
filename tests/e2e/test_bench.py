"""`inferd bench` against a live server: JSON report and plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import LiveServer


def test_bench_reports_throughput_and_latency(live_server: LiveServer, tmp_path: Path) -> None:
    plot = tmp_path / "bench.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "inferd",
            "bench",
            "--url",
            live_server.url,
            "-c",
            "1,2",
            "--requests",
            "2",
            "--max-tokens",
            "8",
            "--shared-prefixes",
            "1",
            "--prefix-words",
            "40",
            "--json",
            "--plot",
            str(plot),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    levels = doc["levels"]
    assert [lv["concurrency"] for lv in levels] == [1, 2]
    for lv in levels:
        assert lv["errors"] == 0 and lv["requests"] == 2
        assert lv["completion_tokens"] == 16  # ignore_eos: exactly max_tokens each
        assert lv["output_tokens_per_s"] > 0
        assert lv["ttft_s"]["p50"] > 0 and lv["itl_s"]["p95"] > 0
    # the shared prefix is reused after the first request
    assert levels[1]["cached_tokens"] > 0
    assert plot.stat().st_size > 1000 and plot.read_bytes()[:4] == b"\x89PNG"


def test_bench_rejects_bad_concurrency() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "inferd", "bench", "-c", "x,0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


def test_the_ceiling_measures_both_kv_layouts(model_path: Path) -> None:
    from inferd.bench.ceiling import measure_ceiling

    for kv_split in (False, True):
        results = measure_ceiling(model_path, [1, 3], 4, n_ctx=256, kv_split=kv_split)
        assert [r.batch for r in results] == [1, 3]
        assert all(r.tokens == r.batch * 4 and r.tokens_per_s > 0 for r in results)
