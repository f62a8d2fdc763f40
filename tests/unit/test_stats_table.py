"""`inferd stats` fits an 80-column terminal without cutting a number (issue 23 item 12d)."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from inferd.cli.db import print_stats


def group(n: int) -> dict[str, Any]:
    return {
        "requests": 1_234_567 + n,
        "prompt_tokens": 987_654_321 + n,
        "cached_tokens": 123_456_789 + n,
        "completion_tokens": 111_111_111 + n,
        "errors": 22_222 + n,
        "cancelled": 33_333 + n,
        "rejected": 44_444 + n,
        "ttft_avg": 1.25,
        "ttft_p95": 12.5,
        "duration_avg": 123.456,
        "duration_p95": 9876.5,
    }


def test_every_number_is_printed_whole_at_80_columns() -> None:
    body = {
        "hours": 24,
        "since": "2026-12-06T02:00:00+00:00",
        "total": group(0),
        "by_model": {"smollm2:135m": group(1), "a-much-longer-model-name:7b-instruct-q4": group(2)},
        "by_dialect": {"openai": group(3)},
        "by_key": {"(none)": group(4)},
    }
    buf = io.StringIO()
    print_stats(Console(file=buf, width=80, color_system=None), body)
    text = buf.getvalue()
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    for n in range(5):
        for value in group(n).values():
            shown = f"{value:.3f}" if isinstance(value, float) else str(value)
            assert shown in text, (shown, text)
    for header in ("requests", "completion", "cancelled", "ttft p95", "duration avg"):
        assert header in text
