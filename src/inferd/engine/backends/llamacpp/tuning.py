"""Flash attention on or off for this CPU and model, by measurement (issue 22).

llama.cpp's CPU flash-attention kernel is faster on some CPUs and much slower on others
(docs/benchmarks.md: on an AMD EPYC 16 short streams ran 13-20 % faster with it, on an Intel
Xeon long-context decode ran 2x and mixed steps 2.8x slower). When a CPU model's
`flash_attn` is not set, the load times the step shapes inferd runs, with flash attention
off and on, in two small probe contexts over the loaded weights:

- decode of 1 and of B streams (B = max_seqs - 1, at most 15) at a short context;
- decode of 1 stream at a long context (1,024 tokens, fewer for a model whose prefill would
  take more than PREFILL_BUDGET_S or whose probe caches more than PROBE_MEMORY_BYTES);
- a mixed step: up to 8 decode tokens and a 16-token chunk of a prompt at the long context;
- a prompt chunk of n_batch tokens at the long context.

Every step runs at a fixed context (its cells are trimmed after it), the two settings
alternate round by round (three; two once MEASURE_BUDGET_S has passed), and a shape's time per
setting is its best round's median: a busy moment only ever slows a step, so the best round is
the measurement and the gap to the second best its noise. On the bundled model this takes
seconds; a large model's long shapes shrink to what its prefill does in PREFILL_BUDGET_S, and a
measurement still running after MEASURE_LIMIT_S is given up (off, not stored: the next load
measures again).

The rule (`decide`) weighs the shapes by what a server spends its step time on (`W_*`) and
picks on the weighted geometric mean of their on/off ratios, against its noise (the weighted
mean of the shapes' noise, each at least NOISE_FLOOR): "on" when it is faster beyond that
noise, "off" otherwise, and "off" whatever the aggregate when a shape is over GUARD_RATIO
slower and over GUARD_SURE even less its noise (the Intel Xeon's long-context decode and mixed
steps: 2-2.8x), so one noisy shape cannot decide
either way and a wrong pick costs no more than the measurement's noise. A shape that goes
against the aggregate (slower while it is faster, or the reverse), and every noisy shape while
the aggregate is within the noise, gets up to RECHECK_ROUNDS more rounds before the pick, while
MEASURE_BUDGET_S lasts. Only a decision that stands beyond the noise (or a tie measured on a
quiet machine) is stored: one the noise leaves open takes the aggregate's side for this load
(a wrong side costs no more than the noise; "off" there cost 25 % at 16 streams on the AMD
EPYC, where the aggregate said 0.85) and it is measured again while the engine is idle
(`measure_when_idle`: the same measurement, `measure_steps`, one probe step per resumption,
cut short by any request; up to `idle_tunes` times) and, failing that, at the next load.
Stored decisions are keyed by the CPU (model name and flags), the model file (name, size,
mtime), llama.cpp's version, the threads, the step layout and RULE_VERSION (`tuning_key`); a
later load with the same key reuses one without measuring.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import math
import os
import statistics
import time
from array import array
from collections.abc import Callable, Generator
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import llama_cpp

from inferd.engine.backends.llamacpp.loading import (
    LlamaModel,
    context_params,
    free_context,
    kv_cell_bytes,
)
from inferd.engine.backends.llamacpp.options import (
    FLASH_ATTN,
    KV_TYPES,
    LlamaCppOptions,
    StepLayout,
    step_layout,
)
from inferd.errors import BackendError

log = logging.getLogger(__name__)
T = TypeVar("T")

NOISE_FLOOR = 0.05  # relative: differences below 5 % are never taken as real
# A shape this much slower with flash attention keeps it off whatever the aggregate says: the
# Intel Xeon's decode at 2,000 tokens of context was 2x, its mixed steps 2.8x slower.
GUARD_RATIO = 1.3
GUARD_SURE = 1.15  # ... and a vetoing shape at least this much slower less its noise
# The aggregate's weights, by what a server spends its step time on: decode most, batched decode
# (every stream of a loaded server) most of all, a prompt chunk least (once per n_batch tokens
# of a prompt; the mixed steps admit prompts beside running streams).
W_DECODE_ONE = 2.0
W_DECODE_MANY = 3.0
W_DECODE_LONG = 2.0
W_MIXED = 2.0
W_PROMPT = 1.0
RULE_VERSION = 3  # of the measurement and `decide`: a stored decision of another is measured again
LONG_MAX = 1024  # tokens of the long-context shapes
LONG_MIN = 128
SHORT = 64  # tokens of context of the short streams
MIXED_DECODES = 8
MIXED_CHUNK = 16
PREFILL_BUDGET_S = 2.0  # per setting, for the long sequence's prompt
PROBE_MEMORY_BYTES = 512 << 20  # KV cache of one probe context
ROUNDS = 3  # at most; 2 at least, and no third once MEASURE_BUDGET_S has passed
RECHECK_ROUNDS = 4  # more rounds, at most, of the shapes `decide` doubts (within MEASURE_BUDGET_S)
MEASURE_BUDGET_S = 10.0
# A hard limit: a measurement still running then (a busy machine: llama.cpp's threads spin
# at barriers, and a step can take 10-100x its time) is given up: off, not cached.
MEASURE_LIMIT_S = 60.0
STEPS = 5  # timed steps per shape and round (the prompt chunk: 1)


@dataclass(frozen=True)
class ShapeTiming:
    """One step shape: best-round median seconds with flash attention off and on, the noise
    of that (the second-best round's relative distance from the best, the larger of the two
    settings') and the shape's weight in the aggregate."""

    shape: str
    off_s: float
    on_s: float
    spread: float
    weight: float = 1.0

    @property
    def ratio(self) -> float:
        return self.on_s / self.off_s

    @property
    def noise(self) -> float:
        return max(NOISE_FLOOR, self.spread)


@dataclass(frozen=True)
class FlashAttnChoice:
    """The flash attention a context gets, where the choice came from and why.

    source: "forced" (settings, or a quantized V cache that needs it), "default" (GPU
    offload, tuning switched off, or a measurement that failed), "measured" (at this load),
    "cached" (measured earlier on this machine for this model) or "idle" (measured again
    while the engine was idle, for the next load). `settled`: the measurement told the
    settings apart (or found them level on a quiet machine); only a settled decision is
    stored, and an unsettled one at a load is measured again while the engine is idle."""

    mode: str  # "on", "off" or "auto"
    source: str
    reason: str
    table: tuple[ShapeTiming, ...] = ()
    settled: bool = True

    @property
    def llama_type(self) -> int:
        return FLASH_ATTN[self.mode]

    def facts(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode, "source": self.source, "reason": self.reason}
        if self.table:
            ratio, noise = aggregate(self.table)
            out.update(aggregate=round(ratio, 3), noise=round(noise, 3), settled=self.settled)
            out["table"] = [
                {
                    "shape": t.shape,
                    "off_ms": round(t.off_s * 1000, 3),
                    "on_ms": round(t.on_s * 1000, 3),
                    "ratio": round(t.ratio, 3),
                    "spread": round(t.spread, 3),
                    "weight": t.weight,
                }
                for t in self.table
            ]
        return out


def static_choice(options: LlamaCppOptions, *, fresh: bool = False) -> FlashAttnChoice | None:
    """The choice that needs no measurement, or None when this model is to be measured.
    `fresh` (`inferd bench --tune`) measures despite the settings, where measuring can
    tell anything: not with a quantized V (it needs flash attention) or GPU offload."""
    quantized_v = KV_TYPES[options.cache_type_v].quantized
    if options.flash_attn and (quantized_v or not fresh):
        return FlashAttnChoice(options.flash_attn, "forced", "flash_attn is set")
    if quantized_v:
        reason = f"cache_type_v {options.cache_type_v} needs flash attention"
        return FlashAttnChoice("on", "forced", reason)
    if options.n_gpu_layers:
        return FlashAttnChoice("auto", "default", "GPU offload: llama.cpp decides")
    if options.tune_dir is None and not fresh:
        return FlashAttnChoice("off", "default", "tuning is off (tune_kernels)")
    return None


@dataclass(frozen=True)
class Verdict:
    """`decide`'s answer: the mode and why, whether it stands beyond the measurement's noise
    (`settled`: only such a decision is stored), and the shapes worth more rounds."""

    mode: str
    reason: str
    settled: bool
    recheck: tuple[str, ...] = ()


def aggregate(table: tuple[ShapeTiming, ...]) -> tuple[float, float]:
    """The weighted geometric mean of the shapes' on/off ratios, and its noise: the weighted
    mean of theirs."""
    total = sum(t.weight for t in table)
    ratio = math.exp(sum(t.weight * math.log(t.ratio) for t in table) / total)
    return ratio, sum(t.weight * t.noise for t in table) / total


def decide(table: tuple[ShapeTiming, ...]) -> Verdict:
    """On or off by the weighted aggregate of the shapes' on/off ratios, beyond its noise;
    off when a shape is over GUARD_RATIO slower (the module's docstring)."""
    if not table:
        return Verdict("off", "nothing measured", settled=False)
    ratio, noise = aggregate(table)
    against = tuple(  # the shapes that go against the aggregate
        t.shape
        for t in table
        if (t.ratio > 1 + NOISE_FLOOR if ratio < 1 else t.ratio < 1 - NOISE_FLOOR)
    )
    noisy = tuple(t.shape for t in table if t.spread > NOISE_FLOOR)
    doubtful = _union(against, noisy)
    overall = f"on/off {ratio:.2f} weighted over {len(table)} shapes, noise {noise:.0%}"
    worst = max(table, key=lambda t: t.ratio)
    slow = f"{worst.shape} {worst.ratio:.2f}x slower"
    if worst.ratio > GUARD_RATIO and worst.ratio / (1 + worst.noise) > GUARD_SURE:
        # the guard: over GUARD_RATIO slower, and over GUARD_SURE even less its noise; that
        # shape is measured again where it goes against the rest
        again = (worst.shape,) if worst.shape in against else ()
        return Verdict("off", f"{slow}, over {GUARD_RATIO}x ({overall})", True, again)
    if worst.ratio > GUARD_RATIO:
        # over the guard only within its noise: neither a veto nor to be trusted; the
        # aggregate's side for this load, as any open pick (a 1.32x with 22 % noise on a
        # one-stream shape vetoed a 16 % faster 16-stream step once, and was stored)
        mode = "on" if ratio < 1 else "off"
        why = f"{slow}, within its noise ({overall}): not stored"
        return Verdict(mode, why, False, doubtful)
    if ratio < 1 - noise:
        why = f"faster: {overall}" + (f"; {slow}" if worst.ratio > 1 else "")
        return Verdict("on", why, True, against)
    if ratio > 1 + noise:
        return Verdict("off", f"slower: {overall}", True, against)
    if not noisy:  # a quiet measurement: the two are level, and off costs nothing
        return Verdict("off", f"level: {overall}", True, against)
    # undecided: the aggregate's side, which a wrong pick costs at most the noise on, and
    # measured again at the next load (off here cost 25 % at 16 streams, run 21)
    mode = "on" if ratio < 1 else "off"
    return Verdict(mode, f"within the noise: {overall}: not stored", False, doubtful)


def _union(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
    return a + tuple(x for x in b if x not in a)


# ---- the key and the cache ------------------------------------------------------------------


def cpu_identity(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name and flags (the first processor's), or the platform's name."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        import platform

        return platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        name, _, value = line.partition(":")
        fields[name.strip()] = value.strip()
    keys = ("model name", "flags", "Features", "CPU implementer", "CPU part")
    return "; ".join(f"{k}: {fields[k]}" for k in keys if k in fields)


def tuning_key(path: Path, layout: StepLayout, options: LlamaCppOptions) -> dict[str, Any]:
    """What the decision depends on: the CPU, the model file, llama.cpp's build, the
    threads and the step layout."""
    stat = path.stat()
    return {
        "cpu": cpu_identity(),
        "model": {"name": path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns},
        "llama_cpp": llama_cpp.__version__,
        "n_threads": layout.n_threads,
        "split": layout.kv.split,
        "n_batch": layout.n_batch,
        "max_seqs": layout.kv.max_seqs,
        "cache_types": [options.cache_type_k, options.cache_type_v],
        "rule": RULE_VERSION,
    }


class DecisionCache:
    """Decisions on disk, one JSON file per key (its hash) under `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _file(self, key: dict[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        return self.directory / f"flash-attn-{digest[:32]}.json"

    def get(self, key: dict[str, Any]) -> FlashAttnChoice | None:
        try:
            doc = json.loads(self._file(key).read_text())
            if doc["key"] != key:
                return None
            table = tuple(ShapeTiming(**row) for row in doc["table"])
            return FlashAttnChoice(doc["mode"], "cached", doc["reason"], table)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, key: dict[str, Any], choice: FlashAttnChoice) -> Path:
        file = self._file(key)
        doc = {
            "key": key,
            "mode": choice.mode,
            "reason": choice.reason,
            "table": [asdict(t) for t in choice.table],
            "measured_at": time.time(),
        }
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc, indent=2))
        tmp.replace(file)
        return file


def choose_flash_attn(
    model: Any,
    path: Path,
    options: LlamaCppOptions,
    layout: StepLayout,
    *,
    fresh: bool = False,
    measure: Callable[[Any, StepLayout, LlamaCppOptions], tuple[ShapeTiming, ...]] | None = None,
) -> FlashAttnChoice:
    """The flash attention for this model's context: a static choice where one applies,
    else the cached decision for its key, else a measurement (stored for the next load when
    it is settled).
    `fresh` measures even when a decision is cached (`inferd bench --tune`)."""
    static = static_choice(options, fresh=fresh)
    if static is not None:
        return static
    key = tuning_key(path, layout, options)
    cache = DecisionCache(options.tune_dir) if options.tune_dir is not None else None
    if cache is not None and not fresh:
        cached = cache.get(key)
        if cached is not None:
            return cached
    log.info("measuring flash attention off and on for %s", path.name)
    try:
        table = (measure or measure_shapes)(model, layout, options)
    except BackendError as exc:  # no memory for the probes, over time: off, not cached
        log.warning("flash attention not measured for %s: %s", path.name, exc)
        return FlashAttnChoice("off", "default", f"measurement failed: {exc}", settled=False)
    verdict = decide(table)
    choice = FlashAttnChoice(verdict.mode, "measured", verdict.reason, table, verdict.settled)
    log.info("flash attention %s for %s: %s", verdict.mode, path.name, verdict.reason)
    if cache is not None and verdict.settled:
        cache.put(key, choice)
    return choice


def measure_when_idle(
    model: Any, key: dict[str, Any], layout: StepLayout, options: LlamaCppOptions
) -> Generator[None, None, FlashAttnChoice]:
    """One more measurement of a pick the load left open, made one step at a time while the
    engine is idle (`LlamaCppBackend.idle_work`); its decision is stored under the load's
    `key` when it settles, for the next load: the running context keeps its kernel."""
    try:
        table = yield from measure_steps(model, layout, options)
    except BackendError as exc:
        log.warning("flash attention not measured while idle: %s", exc)
        return FlashAttnChoice("off", "idle", f"measurement failed: {exc}", settled=False)
    verdict = decide(table)
    choice = FlashAttnChoice(
        verdict.mode, "idle", f"measured while idle: {verdict.reason}", table, verdict.settled
    )
    log.info("flash attention %s: %s", verdict.mode, choice.reason)
    if options.tune_dir is not None and verdict.settled:
        DecisionCache(options.tune_dir).put(key, choice)
    return choice


# ---- the measurement ------------------------------------------------------------------------


class _Probe:
    """A small llama.cpp context over loaded weights, for timing steps."""

    def __init__(self, model: Any, cparams: Any, n_batch: int) -> None:
        self.ctx = llama_cpp.llama_init_from_model(model, cparams)
        if not self.ctx:
            raise BackendError("failed to create a llama.cpp context for tuning")
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self.ones = array("i", [1]) * n_batch

    def decode(self, tokens: list[tuple[int, int, bool]], token: int = 1) -> None:
        """One step of (seq, position, logits) entries."""
        n = len(tokens)
        b = self.batch
        ctypes.memmove(b.token, array("i", [token] * n).tobytes(), 4 * n)
        ctypes.memmove(b.pos, array("i", [p for _, p, _ in tokens]).tobytes(), 4 * n)
        ctypes.memmove(b.n_seq_id, self.ones.tobytes()[: 4 * n], 4 * n)
        ctypes.memmove(b.logits, bytes(lg for _, _, lg in tokens), n)
        for i, (s, _, _) in enumerate(tokens):
            b.seq_id[i][0] = s
        b.n_tokens = n
        rc = llama_cpp.llama_decode(self.ctx, b)
        if rc != 0:
            raise BackendError(f"llama_decode failed with status {rc} while tuning")

    def step(self, tokens: list[tuple[int, int, bool]]) -> float:
        """Seconds of one step, its cells removed after it (the context stays as it was)."""
        t = time.perf_counter()
        self.decode(tokens)
        elapsed = time.perf_counter() - t
        for s in {s for s, _, _ in tokens}:
            first = min(p for q, p, _ in tokens if q == s)
            llama_cpp.llama_memory_seq_rm(self.mem, s, first, -1)
        return elapsed

    def close(self) -> None:
        free_context(self.ctx, self.batch)


def _probes(
    model: Any,
    layout: StepLayout,
    options: LlamaCppOptions,
    long: int,
    stack: ExitStack,
    clock: ActiveClock,
) -> Generator[None, None, tuple[_Probe, _Probe, int]]:
    """Two probe contexts, flash attention off and on, in the model's layout, made one at a
    time (a pause after each) and closed with `stack`; and the streams they hold (the long
    sequence is 0, the short ones 1 ... streams - 1)."""
    streams = max(2, min(layout.kv.max_seqs, 16))
    room = -(-(long + layout.n_batch + 8) // 256) * 256  # llama.cpp pads a stream to 256
    cells = streams * room if layout.kv.split else room + streams * (SHORT + 8)
    probes = []
    for fa in (0, 1):
        cparams = context_params(
            split=layout.kv.split,
            cells=cells,
            batch=layout.n_batch,
            seqs=streams,
            threads=layout.n_threads,
            flash_attn=fa,
            type_k=options.cache_type_k,
            type_v=options.cache_type_v,
        )
        probe = _Probe(model, cparams, layout.n_batch)
        stack.callback(probe.close)
        probes.append(probe)
        yield from clock.pause()
    return probes[0], probes[1], streams


def long_context(layout: StepLayout, cell_bytes: int) -> int:
    """The long shapes' context before the time bound: LONG_MAX, less where the window or
    PROBE_MEMORY_BYTES of probe cache is smaller."""
    streams = max(2, min(layout.kv.max_seqs, 16))
    per_stream = PROBE_MEMORY_BYTES // max(1, cell_bytes) // (streams if layout.kv.split else 1)
    fits = min(LONG_MAX, layout.kv.n_ctx - layout.n_batch - 8, per_stream - layout.n_batch - 8)
    return max(LONG_MIN, fits)


def to_end(work: Generator[None, None, T]) -> T:
    """Run `work` through at once (a load's measurement) and return its result."""
    while True:
        try:
            next(work)
        except StopIteration as done:
            return cast(T, done.value)


class ActiveClock:
    """Seconds a measurement has run, not counting the pauses at its yields (requests
    served between the steps of a measurement made while the engine is idle)."""

    def __init__(self) -> None:
        self._spent = 0.0
        self._since: float | None = time.perf_counter()  # None: paused

    def __call__(self) -> float:
        running = 0.0 if self._since is None else time.perf_counter() - self._since
        return self._spent + running

    def pause(self) -> Generator[None, None, None]:
        """A yield, off the clock."""
        self._spent, self._since = self(), None
        yield
        self._since = time.perf_counter()


def measure_shapes(
    model: Any,
    layout: StepLayout,
    options: LlamaCppOptions,
    *,
    long: int | None = None,
    steps: int = STEPS,
) -> tuple[ShapeTiming, ...]:
    """Time every shape with flash attention off and on (the module's docstring), at once;
    `long` and `steps` bound it further (tests)."""
    return to_end(measure_steps(model, layout, options, long=long, steps=steps))


def measure_steps(
    model: Any,
    layout: StepLayout,
    options: LlamaCppOptions,
    *,
    long: int | None = None,
    steps: int = STEPS,
) -> Generator[None, None, tuple[ShapeTiming, ...]]:
    """`measure_shapes` one llama.cpp step at a time: it yields after making each probe and
    after every decode, and returns the table. Time limits count only its own time, not
    its pauses; closing it frees the probes."""
    clock = ActiveClock()

    def in_time() -> None:
        if clock() > MEASURE_LIMIT_S:
            raise BackendError(f"the measurement took over {MEASURE_LIMIT_S:.0f} s")

    long = long or long_context(layout, layout.cell_bytes)
    n_batch = layout.n_batch
    with ExitStack() as stack:
        off, on, streams = yield from _probes(model, layout, options, long, stack, clock)
        # the long sequence's prompt, in n_batch chunks; its first chunk bounds its length
        filled = 0
        while filled < long:
            part = min(n_batch, long - filled)
            spent = 0.0
            for probe in (off, on):
                t = time.perf_counter()
                probe.decode([(0, filled + i, False) for i in range(part)])
                spent += time.perf_counter() - t
                in_time()
                yield from clock.pause()
            filled += part
            per_token = spent / (2 * part)
            long = min(long, max(LONG_MIN, int(PREFILL_BUDGET_S / per_token)))
        prompts = [(s, i, False) for s in range(1, streams) for i in range(SHORT)]
        for probe in (off, on):  # the short streams' prompts, n_batch tokens a decode
            for start in range(0, len(prompts), n_batch):
                probe.decode(prompts[start : start + n_batch])
                in_time()
                yield from clock.pause()
        short = list(range(1, streams))
        mixed = short[:MIXED_DECODES]
        chunk = min(MIXED_CHUNK, n_batch - len(mixed))
        shapes: dict[str, tuple[list[tuple[int, int, bool]], int, float]] = {
            "decode 1 @short": ([(1, SHORT, True)], steps, W_DECODE_ONE),
            f"decode {len(short)} @short": (
                [(s, SHORT, True) for s in short],
                steps,
                W_DECODE_MANY,
            ),
            f"decode 1 @{filled}": ([(0, filled, True)], steps, W_DECODE_LONG),
            f"mixed {len(mixed)}+{chunk} @{filled}": (
                [(s, SHORT, True) for s in mixed] + [(0, filled + i, False) for i in range(chunk)],
                steps,
                W_MIXED,
            ),
            f"prompt {n_batch} @{filled}": (
                [(0, filled + i, False) for i in range(n_batch)],
                max(1, steps // 3),
                W_PROMPT,
            ),
        }
        for probe in (off, on):  # warm-up: every shape's graph once
            for tokens, _, _ in shapes.values():
                probe.step(tokens)
                in_time()
                yield from clock.pause()

        def time_round(name: str, setting: int) -> Generator[None, None, float]:
            tokens, n, _ = shapes[name]
            probe = (off, on)[setting]
            times = []
            for _ in range(n):
                times.append(probe.step(tokens))
                in_time()
                yield from clock.pause()
            return statistics.median(times)

        weights = {name: weight for name, (_, _, weight) in shapes.items()}
        table = yield from time_rounds(weights, time_round, clock)
    return table


def time_rounds(
    weights: dict[str, float],
    time_round: Callable[[str, int], Generator[None, None, float]],
    clock: Callable[[], float],
) -> Generator[None, None, tuple[ShapeTiming, ...]]:
    """Rounds of every shape (`weights`' keys), the settings (0 off, 1 on) alternating which
    goes first: ROUNDS, two once the measurement's `clock` has passed MEASURE_BUDGET_S; then
    up to RECHECK_ROUNDS more of the shapes `decide` doubts, while the budget lasts.
    `time_round` gives one round's step time of a shape in a setting (yielding between
    steps, as this does)."""
    rounds: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in weights}

    def run(r: int, names: tuple[str, ...]) -> Generator[None, None, None]:
        for setting in (0, 1) if r % 2 == 0 else (1, 0):
            for name in names:
                rounds[name][setting].append((yield from time_round(name, setting)))

    def table() -> tuple[ShapeTiming, ...]:
        return tuple(_timing(name, w, *rounds[name]) for name, w in weights.items())

    for r in range(ROUNDS):
        if r >= 2 and clock() > MEASURE_BUDGET_S:
            break
        yield from run(r, tuple(weights))
    for r in range(ROUNDS, ROUNDS + RECHECK_ROUNDS):
        recheck = decide(table()).recheck
        if not recheck or clock() > MEASURE_BUDGET_S:
            break
        log.info("flash attention: measuring %s again", ", ".join(recheck))
        yield from run(r, recheck)
    return table()


def _timing(shape: str, weight: float, off: list[float], on: list[float]) -> ShapeTiming:
    """The best round of each setting, and how far the second best is from it."""

    def gap(times: list[float]) -> float:
        best, second = sorted(times)[:2]
        return (second - best) / best

    return ShapeTiming(shape, min(off), min(on), max(gap(off), gap(on)), weight)


def tune(path: Path, options: LlamaCppOptions) -> tuple[FlashAttnChoice, FlashAttnChoice | None]:
    """Measure afresh for this model file and options (its cached decision, if any, is
    replaced when options.tune_dir is set): `inferd bench --tune`. Also the decision that
    was stored before (at a load, or by a server while idle), if any."""
    loaded = LlamaModel(path, options)
    try:
        n_ctx_train = int(llama_cpp.llama_model_n_ctx_train(loaded.model))
        cell_bytes = kv_cell_bytes(loaded.model, options)
        layout = step_layout(options, n_ctx_train=n_ctx_train, cell_bytes=cell_bytes)
        key = tuning_key(path, layout, options)
        before = DecisionCache(options.tune_dir).get(key) if options.tune_dir else None
        return choose_flash_attn(loaded.model, path, options, layout, fresh=True), before
    finally:
        loaded.close()
