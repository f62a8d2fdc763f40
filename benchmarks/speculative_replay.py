"""Prompt lookup's decode-phase speed-up predicted without the machine's noise.

Drafting is deterministic given the answer: a draft's accepted tokens are its common prefix
with the greedy answer. `record` writes the greedy answers of benchmarks/speculative.py's
workloads (the bundled model, in process, no drafting) and the decode cost by tokens in a
step; `replay` runs the engine's drafting rule (`NgramDrafter`, `DraftState`, `StepCosts`
learned from nothing as the engine learns them) over each answer and prints the ratio of
the plain decode time to the drafted one by that cost table, the steps and the drafts,
beside an oracle that drafts exactly what will be accepted (the bound for the table).

    PYTHONPATH=src .venv/bin/python benchmarks/speculative_replay.py record answers.json
    PYTHONPATH=src .venv/bin/python benchmarks/speculative_replay.py replay answers.json \\
        --costs 1:1 2:1.58 3:2.09 4:2.18 5:2.69 7:3.57 9:4.05 13:6.17 17:7.51
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, cast

from speculative import WORKLOADS, chat

from inferd.engine.detokenizer import Detokenizer
from inferd.engine.sequence import Sequence
from inferd.engine.speculative import DraftStep, NgramDrafter, StepCosts, room_for
from inferd.engine.types import GenerateRequest, SamplingParams

if TYPE_CHECKING:
    from inferd.engine.backends.llamacpp import LlamaCppBackend

COST_SIZES = (1, 2, 3, 4, 5, 7, 9, 13, 17)


async def record(max_tokens: int, threads: int) -> dict[str, object]:
    """The step cost table and the greedy answers, as `replay` reads them."""
    from inferd.config import ModelConfig
    from inferd.engine.client import AsyncEngine
    from inferd.models.loading import llamacpp_loader
    from inferd.models.spec import BUNDLED_NAME, ModelSpec, bundled_model_path

    model = bundled_model_path()
    config = ModelConfig(path=model, n_ctx=4096, max_seqs=1, flash_attn="off", n_threads=threads)
    engine = AsyncEngine(llamacpp_loader()(ModelSpec(BUNDLED_NAME, model, config, ())))
    backend = cast("LlamaCppBackend", engine.backend)
    answers: dict[str, dict[str, list[int]]] = {}
    prompt = backend.tokenize(chat(WORKLOADS["quote"]), add_special=False, parse_special=True)
    costs = step_costs(backend, prompt)  # before the engine's thread runs the backend
    engine.start()
    try:
        for name, text in WORKLOADS.items():
            tokens = await engine.tokenize(chat(text))
            sampling = SamplingParams(temperature=0.0, max_tokens=max_tokens)
            req = GenerateRequest(name, tuple(tokens), sampling)
            answer = [t async for out in engine.generate(req) for t in out.token_ids]
            answers[name] = {"prompt": tokens, "answer": answer}
            print(f"{name}: {len(tokens)} prompt tokens, {len(answer)} answer tokens")
    finally:
        await engine.stop()
    print("decode cost by tokens in a step:", " ".join(f"{n}:{c:.2f}" for n, c in costs.items()))
    return {"costs": costs, "answers": answers}


def step_costs(backend: LlamaCppBackend, prompt: list[int]) -> dict[int, float]:
    """A decode step's median time by its tokens after `prompt`, in one-token steps."""
    decode, trim = backend.decode, backend.trim_seq
    n0 = len(prompt)
    for lo in range(0, n0, 64):
        part = prompt[lo : lo + 64]
        decode(part, range(lo, lo + len(part)), [0] * len(part), [False] * len(part))
    times: dict[int, list[float]] = {n: [] for n in COST_SIZES}
    for _ in range(5):
        for n in COST_SIZES:
            started = time.perf_counter()
            decode(prompt[:n], range(n0, n0 + n), [0] * n, [True] * n)
            times[n].append(time.perf_counter() - started)
            trim(0, n0)
    backend.free_seq(0)
    one = statistics.median(times[1])
    return {n: round(statistics.median(t) / one, 3) for n, t in times.items()}


def table(costs: dict[int, float]) -> StepCosts:
    measured = StepCosts()
    for n, c in costs.items():
        measured.observe(n, c)
    return measured


def replay(
    prompt: list[int], answer: list[int], costs: StepCosts, max_draft: int
) -> tuple[float, int, int, int]:
    """(plain time / drafted time, steps, draft tokens accepted, fed) of the drafted decode
    phase (from the answer's second token: the first is the prompt step's)."""
    drafter = NgramDrafter(max_draft=max_draft)
    learned = StepCosts()
    state = drafter.start()
    seq = Sequence(
        GenerateRequest("r", tuple(prompt)),
        Detokenizer(lambda _: b""),
        max_len=len(prompt) + len(answer),
        tokens=[*prompt, answer[0]],
        n_prompt=len(prompt),
        drafting=state,
    )
    i, steps, seconds = 1, 0, 0.0
    while i < len(answer):
        draft = drafter.propose(seq, room_for(seq, 1 << 16), DraftStep(learned, 1, 1))
        accepted = _common(draft, answer[i:])
        if draft:
            state.record(len(draft), accepted)
        cost = costs.cost(1 + len(draft))
        learned.observe(1 + len(draft), cost)
        seq.tokens += answer[i : i + accepted + 1]
        i += accepted + 1
        steps += 1
        seconds += cost
    return (len(answer) - 1) * costs.cost(1) / seconds, steps, state.accepted, state.proposed


def oracle(prompt: list[int], answer: list[int], costs: StepCosts, max_draft: int) -> float:
    """The ratio when each step drafts the best number of the tokens that will be accepted."""
    drafter = NgramDrafter(max_draft=max_draft)
    state = drafter.start()
    tokens, i, seconds = [*prompt, answer[0]], 1, 0.0
    while i < len(answer):
        found, _ = drafter.lookup(state, tokens, max_draft)
        good = _common(found, answer[i:])
        k = max(range(good + 1), key=lambda k: (k + 1) / costs.cost(k + 1) if k != 1 else 0)
        tokens += answer[i : i + k + 1]
        i += k + 1
        seconds += costs.cost(k + 1)
    return (len(answer) - 1) * costs.cost(1) / seconds


def _common(draft: tuple[int, ...], answer: list[int]) -> int:
    n = 0
    while n < len(draft) and n < len(answer) and draft[n] == answer[n]:
        n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="greedy answers and the step cost table")
    rec.add_argument("path", type=Path)
    rec.add_argument("--max-tokens", type=int, default=128)
    rec.add_argument("--threads", type=int, default=2)
    rep = sub.add_parser("replay", help="the drafting rule over recorded answers")
    rep.add_argument("path", type=Path)
    rep.add_argument("--max-draft", type=int, default=8)
    rep.add_argument("--costs", nargs="*", help="tokens:cost pairs instead of the recorded")
    args = parser.parse_args()
    if args.command == "record":
        args.path.write_text(json.dumps(asyncio.run(record(args.max_tokens, args.threads))))
        return
    data = json.loads(args.path.read_text())
    pairs = [p.split(":") for p in args.costs] if args.costs else data["costs"].items()
    costs = table({int(n): float(c) for n, c in pairs})
    for name, run in data["answers"].items():
        prompt, answer = run["prompt"], run["answer"]
        ratio, steps, accepted, fed = replay(prompt, answer, costs, args.max_draft)
        bound = oracle(prompt, answer, costs, args.max_draft)
        print(
            f"{name:8s} {ratio:.2f}x  {steps} steps for {len(answer) - 1} tokens, "
            f"drafts {accepted}/{fed} accepted; oracle {bound:.2f}x"
        )


if __name__ == "__main__":
    main()
