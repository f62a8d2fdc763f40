"""Loading a model reports its progress in the log (the CLI shows these lines)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from inferd.engine.backends.llamacpp import LlamaCppBackend, LlamaCppOptions


def test_loading_logs_progress_in_quarters(
    model_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="inferd.engine.backends.llamacpp")
    backend = LlamaCppBackend(model_path, LlamaCppOptions(n_ctx=256, max_seqs=1))
    backend.close()
    lines = [r.getMessage() for r in caplog.records if "loading" in r.getMessage()]
    assert lines[-1] == f"loading {model_path.name}: 100%"
    percents = [int(line.rsplit(" ", 1)[1].rstrip("%")) for line in lines]
    assert percents == sorted(set(percents)) and set(percents) <= {25, 50, 75, 100}
