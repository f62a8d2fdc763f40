"""llama.cpp's log goes through Python logging while serving (issue 23 item 12c): the line it
writes when the embeddings context is created is a log record (at its real level, a warning),
never plain text on stderr, and it is filtered by the backend's llama_verbose setting."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from inferd.engine.backends.llamacpp import LlamaCppBackend, LlamaCppOptions
from inferd.observability.llama_log import LlamaLog

LINE = "pooling_type"  # "llama_init_from_model: model default pooling_type is [-1], but ..."


@pytest.mark.parametrize("verbose", [True, False])
def test_the_embeddings_context_line_is_a_log_record(
    model_path: Path, capfd: pytest.CaptureFixture[str], verbose: bool
) -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("llama-cpp-python")
    logger.addHandler(handler)
    try:
        with LlamaLog():
            backend = LlamaCppBackend(model_path, LlamaCppOptions(n_ctx=512, verbose=verbose))
            try:
                backend.embed([[1, 2, 3]])
            finally:
                backend.close()
    finally:
        logger.removeHandler(handler)
    out, err = capfd.readouterr()
    assert LINE not in out and LINE not in err
    lines = [r for r in records if LINE in r.getMessage()]
    if verbose:
        assert [r.levelno for r in lines] == [logging.WARNING]
        assert all("\n" not in r.getMessage() for r in records)  # whole lines, one record each
    else:
        assert lines == []  # a warning: below the backend's "errors only"
