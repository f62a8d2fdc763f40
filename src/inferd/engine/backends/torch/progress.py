"""How far a transformers load is: its weights counted as transformers materialises them.

transformers 5 opens every shard of a checkpoint lazily (safetensors memory-mapped), then
materialises the model's parameters one after another, in whatever shard each lives, under a
progress bar ("Loading weights"); its public `transformers.utils.logging.set_tqdm_hook` lets
`WeightsProgress` count that bar's steps. The hook is process-wide, so it counts only the bar
made by the thread that loads, hands every other bar on unchanged, and is taken out when the
load ends (or, when another hook was set on top of it meanwhile, stays as a pass-through).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sized
from typing import Any

from transformers.utils.logging import set_tqdm_hook

# how far (0..1), and what was last done
Report = Callable[[float, str], None]
WEIGHTS_BAR = "Loading weights"  # the bar transformers materialises parameters under


class WeightsProgress:
    """While entered (by the thread that loads), reports each parameter transformers has
    materialised and put in place: `report(i / n, "weights: i of n tensors<where>")`."""

    def __init__(self, report: Report, where: str = "") -> None:
        self._report = report
        self._where = where
        self._thread = threading.get_ident()
        self._active = False
        self._previous: Callable[..., Any] | None = None

    def __enter__(self) -> WeightsProgress:
        self._active = True
        self._previous = set_tqdm_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self._active = False
        on_top = set_tqdm_hook(self._previous)
        if on_top != self._hook:  # set after ours: keep it (ours now passes bars on)
            set_tqdm_hook(on_top)

    def _hook(
        self, factory: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if self._previous is not None:
            bar = self._previous(factory, args, kwargs)
        else:
            bar = factory(*args, **kwargs)
        mine = self._active and threading.get_ident() == self._thread
        if not mine or kwargs.get("desc") != WEIGHTS_BAR:
            return bar
        total = kwargs.get("total")
        if total is None and args and isinstance(args[0], Sized):
            total = len(args[0])
        return _Counted(bar, int(total or 0), self._step)

    def _step(self, done: int, total: int) -> None:
        what = f"weights: {done} of {total} tensors{self._where}"
        self._report(done / total if total else 0.0, what)


class _Counted:
    """A progress bar that reports each item of its iteration once the loop body is done
    with it (the parameter is in place)."""

    def __init__(self, bar: Any, total: int, step: Callable[[int, int], None]) -> None:
        self._bar = bar
        self._total = total
        self._step = step

    def __iter__(self) -> Iterator[Any]:
        self._step(0, self._total)
        for done, item in enumerate(self._bar, start=1):
            yield item  # the loop's body puts the parameter in place
            self._step(done, max(self._total, done))

    def __enter__(self) -> _Counted:
        self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> Any:
        return self._bar.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bar, name)
