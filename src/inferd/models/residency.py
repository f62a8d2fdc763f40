"""Which models stay loaded: max_loaded_models, the max_memory budget (least recently used
idle models go first), keep_alive expiry, and what counts as busy. Time is an injected clock."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from inferd.errors import InferdError
from inferd.models.entry import ModelEntry
from inferd.models.options import RegistryOptions
from inferd.models.spec import ModelSpec

Clock = Callable[[], float]
# bytes a model will take once loaded (weights and KV cache), estimated before loading it
Footprint = Callable[[ModelSpec], int]

# A keep_alive this long or longer means forever: clients send huge values (Ollama's
# "1000000000h", 1e308) for it, and a deadline centuries away cannot even be dated.
FOREVER_SECONDS = 100 * 365 * 86400.0
# A request that acquired a model but has not reached its engine yet (it is being tokenized)
# protects the model from eviction for this long.
ACQUIRE_GRACE_SECONDS = 2.0
# The idle watcher looks at least this often (and at most 20 times a second).
_MAX_PAUSE, _MIN_PAUSE = 0.25, 0.05


class ResidencyPolicy:
    """Decides, never acts: the registry loads and unloads what this says."""

    def __init__(
        self,
        options: RegistryOptions,
        footprint: Footprint,
        *,
        clock: Clock = time.monotonic,
        acquire_grace: float = ACQUIRE_GRACE_SECONDS,
    ) -> None:
        self.options = options
        self._footprint = footprint
        self._clock = clock
        self._grace = acquire_grace

    # ---- what happens to a model ---------------------------------------------------------

    def loaded(self, entry: ModelEntry) -> None:
        entry.last_used = self._clock()
        entry.acquired = 0

    def unloaded(self, entry: ModelEntry) -> None:
        """A reload starts from the configured keep_alive."""
        entry.keep_alive = None
        entry.acquired = 0

    def used(self, entry: ModelEntry) -> None:
        """A generation finished on it."""
        entry.last_used = self._clock()

    def acquired(self, entry: ModelEntry) -> None:
        """A request took it (and will reach its engine moments later)."""
        entry.last_used = self._clock()
        entry.acquired += 1

    def entered(self, entry: ModelEntry) -> None:
        """A request started using it outside its engine's queue (embeddings, tokenizer)."""
        entry.last_used = self._clock()
        entry.in_use += 1

    def left(self, entry: ModelEntry) -> None:
        """That request is done: the idle time counts from now."""
        entry.last_used = self._clock()
        entry.in_use -= 1

    def set_keep_alive(self, entry: ModelEntry, seconds: float | None) -> None:
        """A request's keep_alive for the model (None: back to the configured default)."""
        entry.keep_alive = seconds
        entry.last_used = self._clock()

    # ---- keep_alive ----------------------------------------------------------------------

    def keep_alive_of(self, entry: ModelEntry) -> float | None:
        """Seconds idle before the model is unloaded; None: never (a negative keep_alive,
        or one of FOREVER_SECONDS or more)."""
        keep = entry.keep_alive
        if keep is None:
            configured = entry.spec.config.keep_alive
            keep = self.options.keep_alive if configured is None else configured
        return keep if 0 <= keep < FOREVER_SECONDS else None

    def expires_in(self, entry: ModelEntry) -> float | None:
        """Seconds until an idle unload, None for never."""
        keep = self.keep_alive_of(entry)
        if keep is None:
            return None
        return max(0.0, keep - (self._clock() - entry.last_used))

    def expired(self, entries: Iterable[ModelEntry]) -> list[ModelEntry]:
        """Loaded models idle for longer than their keep_alive (never a busy one)."""
        out = []
        for entry in entries:
            left = None if entry.model is None else self.expires_in(entry)
            if left is not None and left <= 0 and not self.busy(entry):
                out.append(entry)
        return out

    def next_check(self, entries: Iterable[ModelEntry]) -> float:
        """Seconds until the idle watcher should look again."""
        pause = _MAX_PAUSE
        for entry in entries:
            left = None if entry.model is None else self.expires_in(entry)
            if left is not None and left > 0:
                pause = min(pause, max(left, _MIN_PAUSE))
        return pause

    # ---- busy, memory and room -----------------------------------------------------------

    def busy(self, entry: ModelEntry) -> bool:
        """Requests in flight: in the engine, using it beside the engine (embeddings,
        tokenizer), or acquired moments ago and not in the engine yet."""
        model = entry.model
        if model is None:
            return False
        if entry.in_use:
            return True
        stats = model.engine.stats()
        if stats.running or stats.waiting:
            return True
        recent = self._clock() - entry.last_used < self._grace
        return recent and entry.acquired > stats.submitted

    def memory(self, entry: ModelEntry) -> int:
        """Bytes of a model's weights and KV cache: as loaded, else as estimated (0 for a
        missing or broken file: its load will say what is wrong). The estimate may read the
        file: call it off the event loop."""
        if entry.model is not None:
            return entry.model.memory
        try:
            return self._footprint(entry.spec)
        except (OSError, InferdError):
            return 0

    def never_fits(self, need: int) -> str | None:
        """Why a model of `need` bytes can never load under max_memory, or None."""
        budget = self.options.max_memory
        if budget is None or need <= budget:
            return None
        return (
            f"its weights and KV cache ({need} bytes) exceed max_memory ({budget} bytes); "
            "a smaller n_ctx, max_seqs or kv_cells shrinks the KV cache"
        )

    def limit_reached(self, need: int, others: list[ModelEntry]) -> str | None:
        """The limit (max_loaded_models, max_memory) that a model of `need` bytes would
        break beside the loaded `others`, or None when it fits."""
        most, budget = self.options.max_loaded_models, self.options.max_memory
        if most is not None and len(others) >= most:
            return "max_loaded_models"
        if budget is not None and sum(self.memory(e) for e in others) + need > budget:
            return "max_memory"
        return None

    def to_evict(self, others: list[ModelEntry]) -> ModelEntry | None:
        """The least recently used idle model, or None when every one is busy."""
        idle = [e for e in others if not self.busy(e)]
        return min(idle, key=lambda e: e.last_used, default=None)
