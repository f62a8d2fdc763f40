"""The residency policy alone, on a fake clock: LRU order, the memory budget with KV caches,
keep_alive expiry (huge values are forever), busy models, the acquire grace."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytest

from inferd.config import ModelConfig
from inferd.engine.types import EngineStats
from inferd.models.chat_template import CHATML, ChatTemplate
from inferd.models.entry import LoadedModel, ModelEntry, ModelStatus
from inferd.models.options import RegistryOptions
from inferd.models.residency import ACQUIRE_GRACE_SECONDS, FOREVER_SECONDS, ResidencyPolicy
from inferd.models.spec import ModelSpec


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class StubEngine:
    """The one thing the policy reads of an engine: its stats."""

    running: int = 0
    waiting: int = 0
    submitted: int = 0

    def stats(self) -> EngineStats:
        return EngineStats(
            running=self.running,
            waiting=self.waiting,
            kv_cells_used=0,
            kv_cells_total=0,
            steps=0,
            prompt_tokens_total=0,
            generated_tokens_total=0,
            preemptions=0,
            submitted=self.submitted,
        )


def make_entry(name: str, *, memory: int = 0, keep_alive: float | None = None) -> ModelEntry:
    path = Path(f"{name}.gguf")
    spec = ModelSpec(name, path, ModelConfig(path=path, keep_alive=keep_alive))
    return ModelEntry(spec, ModelStatus.UNLOADED)


def load(policy: ResidencyPolicy, entry: ModelEntry, memory: int = 0) -> StubEngine:
    engine = StubEngine()
    entry.model = LoadedModel(entry.spec, engine, ChatTemplate(CHATML), memory=memory)  # type: ignore[arg-type]
    entry.status = ModelStatus.READY
    policy.loaded(entry)
    return engine


def policy_with(clock: Clock, footprints: dict[str, int] | None = None, **options: object):  # type: ignore[no-untyped-def]
    sizes = footprints or {}

    def footprint(spec: ModelSpec) -> int:
        if spec.name not in sizes:
            raise OSError("no such file")
        return sizes[spec.name]

    return ResidencyPolicy(RegistryOptions(**options), footprint, clock=clock)  # type: ignore[arg-type]


def test_the_least_recently_used_idle_model_goes_first() -> None:
    clock = Clock()
    policy = policy_with(clock)
    a, b, c = (make_entry(n) for n in "abc")
    for e in (a, b, c):
        load(policy, e)
        clock.advance(1)
    assert policy.to_evict([a, b, c]) is a
    policy.used(a)  # a generation finished on a: now the most recent
    assert policy.to_evict([a, b, c]) is b
    clock.advance(1)
    policy.acquired(b)
    assert policy.to_evict([a, b, c]) is c


def test_a_busy_model_is_never_evicted() -> None:
    clock = Clock()
    policy = policy_with(clock)
    a, b = make_entry("a"), make_entry("b")
    engine_a = load(policy, a)
    clock.advance(1)
    engine_b = load(policy, b)
    clock.advance(ACQUIRE_GRACE_SECONDS)
    engine_a.running = 1
    assert policy.busy(a) and policy.to_evict([a, b]) is b
    engine_b.waiting = 1  # queued counts too
    assert policy.to_evict([a, b]) is None
    engine_a.running = engine_b.waiting = 0
    assert policy.to_evict([a, b]) is a


def test_the_acquire_grace() -> None:
    """Acquired but not yet in the engine (tokenizing): busy, for the grace at most."""
    clock = Clock()
    policy = policy_with(clock)
    a = make_entry("a")
    engine = load(policy, a)
    assert not policy.busy(a)
    policy.acquired(a)
    assert policy.busy(a)
    clock.advance(ACQUIRE_GRACE_SECONDS - 0.01)
    assert policy.busy(a)
    engine.submitted = 1  # it reached the engine (and finished): idle at once
    assert not policy.busy(a)
    policy.acquired(a)  # a second request that never gets there (say, a 400)
    assert policy.busy(a)
    clock.advance(ACQUIRE_GRACE_SECONDS)
    assert not policy.busy(a)
    policy.unloaded(a)
    assert a.acquired == 0


def test_in_use_beside_the_engine() -> None:
    """Embeddings or a tokenizer route running on the model: busy however long they take,
    idle as soon as they leave."""
    clock = Clock()
    policy = policy_with(clock)
    a = make_entry("a")
    load(policy, a)
    policy.entered(a)
    policy.entered(a)
    clock.advance(ACQUIRE_GRACE_SECONDS * 10)
    assert policy.busy(a)
    policy.left(a)
    assert policy.busy(a)
    policy.left(a)
    assert not policy.busy(a) and a.last_used == clock.now


def test_max_loaded_models() -> None:
    clock = Clock()
    policy = policy_with(clock, max_loaded_models=2)
    a, b = make_entry("a"), make_entry("b")
    load(policy, a)
    assert policy.limit_reached(0, [a]) is None
    load(policy, b)
    assert policy.limit_reached(0, [a, b]) == "max_loaded_models"


def test_the_memory_budget_counts_weights_and_kv() -> None:
    """A loaded model counts what its factory said it holds (weights and KV cache); one not
    loaded its footprint estimate, or 0 when its file cannot be read."""
    clock = Clock()
    policy = policy_with(clock, {"c": 150}, max_memory=250)
    a, c, gone = make_entry("a"), make_entry("c"), make_entry("gone")
    load(policy, a, memory=100 + 50)
    assert policy.memory(a) == 150 and policy.memory(c) == 150 and policy.memory(gone) == 0
    assert policy.limit_reached(100, [a]) is None
    assert policy.limit_reached(policy.memory(c), [a]) == "max_memory"
    assert policy.never_fits(250) is None
    why = policy.never_fits(251) or ""
    assert "weights and KV cache (251 bytes) exceed max_memory (250 bytes)" in why
    assert "n_ctx" in why
    assert policy_with(clock).never_fits(10**15) is None  # no budget


def test_keep_alive_expiry() -> None:
    clock = Clock()
    policy = policy_with(clock, keep_alive=10)
    a, forever = make_entry("a"), make_entry("forever", keep_alive=-1)
    load(policy, a)
    load(policy, forever)
    assert policy.expires_in(a) == 10 and policy.expires_in(forever) is None
    assert policy.next_check([a, forever]) == 0.25
    clock.advance(9.875)
    assert policy.expires_in(a) == 0.125
    assert policy.next_check([a, forever]) == 0.125
    assert policy.expired([a, forever]) == []
    clock.advance(0.125)
    assert policy.expired([a, forever]) == [a]
    policy.used(a)  # a generation finished: the countdown starts again
    assert policy.expired([a]) == [] and policy.expires_in(a) == 10
    # a request's keep_alive wins over the model's and the server's; None goes back
    policy.set_keep_alive(forever, 0.01)
    assert policy.next_check([forever]) == 0.05  # the watcher never spins faster
    clock.advance(0.02)
    assert policy.expired([forever]) == [forever]
    policy.set_keep_alive(forever, None)
    assert policy.expires_in(forever) is None
    # never a busy one, and never one that is not loaded
    clock.advance(10)
    a.model.engine.running = 1  # type: ignore[union-attr,attr-defined]
    assert policy.expired([a]) == []
    unloaded = make_entry("u")
    assert policy.expired([unloaded]) == [] and policy.next_check([unloaded]) == 0.25


@pytest.mark.parametrize(
    "keep",
    [FOREVER_SECONDS, 3.6e12, 1e18, 1e308, math.inf, -1.0, -1e308, -math.inf, math.nan],
)
def test_a_huge_negative_or_nan_keep_alive_is_forever(keep: float) -> None:
    clock = Clock()
    policy = policy_with(clock)
    a = make_entry("a")
    load(policy, a)
    policy.set_keep_alive(a, keep)
    assert policy.keep_alive_of(a) is None and policy.expires_in(a) is None
    clock.advance(1e12)
    assert policy.expired([a]) == []
    # the same for a configured keep_alive
    assert policy_with(clock, keep_alive=keep).keep_alive_of(make_entry("b")) is None


def test_just_below_forever_is_a_deadline() -> None:
    clock = Clock()
    policy = policy_with(clock)
    a = make_entry("a")
    load(policy, a)
    policy.set_keep_alive(a, FOREVER_SECONDS - 1)
    assert policy.expires_in(a) == FOREVER_SECONDS - 1
    policy.set_keep_alive(a, 0)
    assert policy.expires_in(a) == 0 and policy.expired([a]) == [a]
