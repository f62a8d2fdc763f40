"""The backend's idle work (Backend.idle_work; llama.cpp's use: an open flash-attention pick
measured again) on the fake backend: when the core runs it, and how a request cuts it short."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from inferd.engine.backends.fake import FakeBackend
from inferd.engine.core import EngineCore
from inferd.engine.types import GenerateRequest, GenerationOutput, SamplingParams

PROMPT = tuple(range(1, 11))


def wait_for(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class Run:
    """An EngineCore on a fake backend, its outputs stamped with their arrival time."""

    def __init__(self, backend: FakeBackend, idle_after: float) -> None:
        self.backend = backend
        self.outputs: list[tuple[float, GenerationOutput]] = []
        self.done = threading.Event()
        self.core = EngineCore(backend, self._sink, idle_after=idle_after)

    def _sink(self, outs: list[GenerationOutput]) -> None:
        now = time.monotonic()
        self.outputs += [(now, o) for o in outs]
        if any(o.finished for o in outs):
            self.done.set()

    def request(self, rid: str, max_tokens: int = 8) -> float:
        self.done.clear()
        sent = time.monotonic()
        self.core.submit(GenerateRequest(rid, PROMPT, SamplingParams(max_tokens=max_tokens)))
        return sent

    def first(self, rid: str) -> float:
        return next(t for t, o in self.outputs if o.request_id == rid)

    def last(self, rid: str) -> float:
        return next(t for t, o in self.outputs if o.request_id == rid and o.finished)


@pytest.fixture
def run() -> Iterator[type[Run]]:
    runs: list[Run] = []

    class Started(Run):
        def __init__(self, backend: FakeBackend, idle_after: float) -> None:
            super().__init__(backend, idle_after)
            runs.append(self)
            self.core.start()

    yield Started
    for r in runs:
        r.core.stop()


def test_idle_work_waits_for_a_quiet_spell_and_never_runs_beside_a_request(
    run: type[Run],
) -> None:
    backend = FakeBackend(step_delay=0.02, idle_units=3, idle_unit_delay=0.01)
    r = run(backend, idle_after=0.3)
    r.request("a", max_tokens=10)
    assert r.done.wait(10)
    wait_for(lambda: backend.idle_finished, timeout=10)
    assert len(backend.idle_log) == 3 and backend.idle_runs == 1
    finished = r.last("a")
    for start, _, cells in backend.idle_log:
        assert start >= finished + 0.3 - 0.05  # after the quiet spell
        assert cells == 0  # no sequence held KV
    time.sleep(0.5)
    assert backend.idle_runs == 1  # done: not asked to start again


def test_a_request_waits_at_most_one_unit_and_idle_work_starts_over_after(
    run: type[Run],
) -> None:
    unit = 0.3
    backend = FakeBackend(idle_units=6, idle_unit_delay=unit)
    r = run(backend, idle_after=0.05)
    wait_for(lambda: len(backend.idle_log) >= 1, timeout=10)  # a run under way
    sent = r.request("a", max_tokens=4)
    assert r.done.wait(10)
    assert r.first("a") - sent < unit + 0.25  # the unit in progress, then the request
    assert backend.idle_closed == 1  # cut short: its work is freed
    first_run = len(backend.idle_log)
    for start, end, _ in backend.idle_log:  # no unit overlapped the request
        assert end <= r.first("a") or start >= r.last("a")
    # quiet again: the work starts over (the fake loses a cut-short run's units)
    wait_for(lambda: backend.idle_finished, timeout=20)
    assert backend.idle_runs == 2
    assert len(backend.idle_log) == first_run + 6
    assert all(start >= r.last("a") + 0.05 - 0.02 for start, _, _ in backend.idle_log[first_run:])


def test_idle_work_is_bounded_asked_once_a_spell_and_closed_when_the_engine_stops(
    run: type[Run],
) -> None:
    backend = FakeBackend(idle_units=1000, idle_unit_delay=0.01, idle_max_runs=2)
    asked = []
    real = backend.idle_work
    backend.idle_work = lambda: asked.append(1) or real()  # type: ignore[method-assign]
    r = run(backend, idle_after=0.05)
    wait_for(lambda: backend.idle_runs == 1, timeout=10)
    r.request("a")
    assert r.done.wait(10)
    wait_for(lambda: backend.idle_runs == 2, timeout=10)
    r.request("b")
    assert r.done.wait(10)
    time.sleep(0.4)  # a third quiet spell: asked, nothing left to do (the bound)
    assert backend.idle_runs == 2 and backend.idle_closed == 2
    assert len(asked) == 3
    time.sleep(0.3)
    assert len(asked) == 3  # once per quiet spell, not per loop turn

    backend = FakeBackend(idle_units=1000, idle_unit_delay=0.01)
    r = run(backend, idle_after=0.05)
    wait_for(lambda: len(backend.idle_log) >= 2, timeout=10)
    r.core.stop()
    assert backend.idle_closed == 1 and not backend.idle_finished


def test_a_backend_with_nothing_to_do_while_idle_serves_as_before(run: type[Run]) -> None:
    backend = FakeBackend()
    r = run(backend, idle_after=0.0)
    time.sleep(0.1)
    r.request("a")
    assert r.done.wait(10)
    assert backend.idle_runs == 0 and not backend.idle_log
