"""How far the work before a model serves has got: converting a checkpoint to GGUF,
quantizing it, reading a transformers model's weights. The registry shows it (the model's
status and `progress` in the listings), the CLI draws it as bars, and the log says it at each
quarter."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

# phases that make a GGUF file out of a checkpoint (the model's status is `converting`)
CONVERTING_PHASES = ("converting", "quantizing")
_LOG_EVERY = 0.25  # the log says a phase's progress at each quarter


@dataclass(frozen=True)
class LoadProgress:
    """One step of the work before a model serves: `phase` is converting, quantizing,
    loading (a transformers model's weights, counted as they are read) or done; `fraction`
    (0..1) is how far that phase is; `message` says what was last done."""

    phase: str
    fraction: float
    message: str = ""

    @property
    def converting(self) -> bool:
        return self.phase in CONVERTING_PHASES

    def __str__(self) -> str:
        return f"{self.phase} {self.fraction:.0%}"


ProgressCallback = Callable[[LoadProgress], None]


def from_thread(on_progress: ProgressCallback | None) -> ProgressCallback:
    """A callback for a worker thread that hands each step to `on_progress` on the running
    event loop (call it on the loop, before starting the thread)."""
    loop = asyncio.get_running_loop()

    def report(p: LoadProgress) -> None:
        if on_progress is not None:
            loop.call_soon_threadsafe(on_progress, p)

    return report


def logging_progress(
    log: logging.Logger, name: str, report: ProgressCallback | None = None
) -> ProgressCallback:
    """A callback that logs model `name`'s progress about each quarter of each phase (its
    start, a step at least a quarter past the last one logged, its end), then hands every
    step on to `report`."""
    logged: dict[str, float] = {}

    def progress(p: LoadProgress) -> None:
        last = logged.get(p.phase, -1.0)
        if p.phase != "done" and (p.fraction >= last + _LOG_EVERY or p.fraction >= 1.0 > last):
            logged[p.phase] = p.fraction
            log.info("model %s: %s %d%%", name, p.phase, round(p.fraction * 100))
        if report is not None:
            report(p)

    return progress
