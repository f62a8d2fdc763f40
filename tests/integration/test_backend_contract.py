"""The step-level Backend seam's contracts (`engine/backends/base.py`), held against every
backend that implements it: llama.cpp on the bundled model with a unified KV cache and with a
split one, transformers on the same model as a safetensors checkpoint (a paged KV cache), and
the fake backend. Each test drives a backend and its KV pool directly, as the
core loop and the scheduler do: acquire a place, execute steps, commit, release, settle.

Greedy answers are compared token for token: on llama.cpp a prompt's last token is always fed
alone (the pool's `chunk` rule), so its logits do not depend on how the KV before it got there;
transformers runs in float32, where they differ by rounding only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from inferd.engine.backends.base import Backend, SequenceFailed
from inferd.engine.backends.fake import FakeBackend
from inferd.engine.backends.llamacpp import LlamaCppBackend, LlamaCppOptions
from inferd.engine.detokenizer import Detokenizer
from inferd.engine.prefix_cache import SavedPrefix
from inferd.engine.sequence import Chunk, Sequence
from inferd.engine.types import GenerateRequest, SamplingParams
from tests import checkpoints

checkpoint_root, smollm2_dir = checkpoints.checkpoint_root, checkpoints.smollm2_dir

PROMPT = (
    "<|im_start|>user\nWrite a short poem about the sea, the wind and a small boat that "
    "sails home at night.<|im_end|>\n<|im_start|>assistant\n"
)
LAYOUTS = ["fake", "llamacpp-unified", "llamacpp-split", "torch-paged"]


def torch_backend(folder: Path, **options: object) -> Backend:
    from inferd.engine.backends.torch import TorchBackend, TorchOptions

    return TorchBackend(folder, TorchOptions(n_threads=1, **options))  # type: ignore[arg-type]


@pytest.fixture(scope="module", params=LAYOUTS)
def backend(request: pytest.FixtureRequest, model_path: Path) -> Iterator[Backend]:
    b: Backend
    if request.param == "fake":
        b = FakeBackend(reply="a fixed reply", n_ctx=512, kv_cells=4 * 512)
    elif request.param == "torch-paged":
        b = torch_backend(request.getfixturevalue("smollm2_dir"), n_ctx=512, max_seqs=4)
        assert b.facts()["kv_layout"] == "paged"
    else:
        split = request.param == "llamacpp-split"
        b = LlamaCppBackend(model_path, LlamaCppOptions(n_ctx=512, max_seqs=4, kv_split=split))
        assert b.facts()["kv_layout"] == ("split" if split else "unified")
    yield b
    b.close()


@pytest.fixture
def pool_empty(backend: Backend) -> Iterator[None]:
    """Every test leaves the (module-wide) backend as it found it."""
    yield
    assert backend.pool.settle() == [] and backend.pool.used == 0


def make_seq(rid: str, tokens: list[int], **sampling: object) -> Sequence:
    params = SamplingParams(temperature=0.0, ignore_eos=True, **sampling)  # type: ignore[arg-type]
    req = GenerateRequest(rid, tuple(tokens), params)
    return Sequence(
        req, Detokenizer(lambda t: b""), len(tokens) + 64, list(tokens), n_prompt=len(tokens)
    )


def step(backend: Backend, chunks: list[Chunk]) -> list[int]:
    """Execute and commit one step (as the scheduler does); the sampled tokens."""
    sampled = backend.execute(chunks)
    assert sampled is not None
    for c in chunks:
        c.seq.n_computed = c.end
    backend.pool.commit(chunks)
    for c, token in zip([c for c in chunks if c.samples], sampled, strict=True):
        c.seq.tokens.append(token)
    return sampled


def prefill(backend: Backend, seq: Sequence) -> int:
    """Feed what `seq` has pending, chunk by chunk as the pool says, alone; the first token."""
    while True:
        n = backend.pool.chunk(seq, backend.info.max_batch_tokens)
        chunk = Chunk(seq, seq.n_computed, seq.n_computed + n)
        samples = chunk.samples  # before the step appends the sampled token
        sampled = step(backend, [chunk])
        if samples:
            return sampled[0]


def finish(backend: Backend, *seqs: Sequence) -> None:
    for s in seqs:
        backend.pool.release(s)
        backend.drop(s)


def tokens_of(backend: Backend) -> list[int]:
    return backend.tokenize(PROMPT, add_special=True, parse_special=True)


def test_a_step_samples_one_token_per_sampling_chunk_in_order(
    backend: Backend, pool_empty: None
) -> None:
    prompt = tokens_of(backend)
    cold = make_seq("cold", prompt)
    assert backend.pool.acquire(cold)
    prefill(backend, cold)
    assert cold.sampler is not None  # made on first use, kept on the sequence
    a, b = make_seq("a", prompt), make_seq("b", prompt[:20])
    assert backend.pool.acquire(a) and backend.pool.acquire(b)
    # a prefill chunk that does not sample beside one that does: one token comes back
    assert b.sampler is None
    sampled = step(backend, [Chunk(a, 0, 10), Chunk(b, 0, 19)])
    assert sampled == [] and b.sampler is None
    sampled = step(backend, [Chunk(b, 19, 20), Chunk(cold, len(prompt), len(prompt) + 1)])
    assert len(sampled) == 2 and b.sampler is not None
    positions = len(prompt) + 1 + 10 + 20
    assert backend.pool.used == positions
    finish(backend, a, b, cold)
    assert a.sampler is None and b.sampler is None and cold.sampler is None


def test_a_shared_running_prefix_continues_exactly_like_the_original(
    backend: Backend, pool_empty: None
) -> None:
    pool = backend.pool
    prompt = tokens_of(backend)
    cold = make_seq("cold", prompt)
    assert pool.acquire(cold)
    expected = prefill(backend, cold)
    finish(backend, cold)
    holder = make_seq("holder", prompt)
    assert pool.acquire(holder)
    prefill(backend, holder)
    used = pool.used
    n = len(prompt) - 1
    seq = make_seq("shared", prompt)
    assert pool.acquire(seq)
    assert pool.share(holder, seq, n)
    seq.n_computed = n
    # unified: the cells are shared (counted once); split: a copy in the sequence's stream;
    # paged: full blocks shared, the partly filled one copied
    layout = backend.facts()["kv_layout"]
    copied = {"split": n, "paged": n % backend.facts().get("kv_block_size", 1)}.get(layout, 0)
    assert pool.used == used + copied
    assert prefill(backend, seq) == expected
    finish(backend, holder, seq)


def test_a_kept_prefix_is_saved_on_settle_and_restores_exactly(
    backend: Backend, pool_empty: None
) -> None:
    pool = backend.pool
    prompt = tokens_of(backend)
    first = make_seq("first", prompt)
    assert pool.acquire(first)
    expected = prefill(backend, first)
    keep = SavedPrefix(first.tokens[: pool.keepable(first) - 1])
    pool.release(first, keep)
    backend.drop(first)
    assert pool.used == 0  # the accounting drops it at once
    assert keep.state == b""  # the copy waits for settle
    assert pool.settle() == [keep] and len(keep.state) > 0
    again = make_seq("again", prompt)
    assert pool.acquire(again)
    assert pool.restore(again, keep, keep.n - 3)
    again.n_computed = keep.n - 3
    assert prefill(backend, again) == expected
    finish(backend, again)


def test_a_sequence_that_cannot_be_stepped_fails_alone_and_changes_nothing(
    backend: Backend, pool_empty: None
) -> None:
    if isinstance(backend, FakeBackend):
        backend.reject_grammar = True
    pool = backend.pool
    prompt = tokens_of(backend)
    good = make_seq("good", prompt)
    # a schema whose reference goes nowhere: no grammar can be made from it
    bad = make_seq("bad", prompt[:8], json_schema='{"$ref": "#/$defs/missing"}')
    assert pool.acquire(good) and pool.acquire(bad)
    prefill(backend, good)
    step(backend, [Chunk(bad, 0, 7)])
    used = pool.used
    with pytest.raises(SequenceFailed) as failed:
        backend.execute([Chunk(good, good.n_computed, good.n_computed + 1), Chunk(bad, 7, 8)])
    assert failed.value.seq is bad and failed.value.message
    assert pool.used == used
    finish(backend, bad)
    # the same step without it runs as if nothing had happened
    assert len(step(backend, [Chunk(good, good.n_computed, good.n_computed + 1)])) == 1
    finish(backend, good)
    if isinstance(backend, FakeBackend):
        backend.reject_grammar = False


def test_a_step_without_room_changes_nothing(model_path: Path, smollm2_dir: Path) -> None:
    """None from execute: no KV room (a unified cache that is full, no free block), and
    nothing moved."""
    for backend in (
        FakeBackend(kv_cells=64, max_batch_tokens=64),
        LlamaCppBackend(model_path, LlamaCppOptions(n_ctx=256, kv_cells=256, max_seqs=2)),
        torch_backend(smollm2_dir, n_ctx=256, kv_cells=256, max_seqs=2),
    ):
        try:
            pool = backend.pool
            big = make_seq("big", [7 + i % 50 for i in range(pool.capacity - 8)])
            other = make_seq("other", [9] * 40)
            assert pool.acquire(big)
            if backend.facts()["kv_layout"] == "paged":
                # blocks are counted at admission: no place without the blocks for the prompt
                assert not pool.acquire(other)
                prefill(backend, big)
                used = pool.used
            else:
                assert pool.acquire(other)
                prefill(backend, big)
                used = pool.used
                assert backend.execute([Chunk(other, 0, 39)]) is None
            assert pool.used == used
            # the cache is as it was: the big sequence steps on
            assert len(step(backend, [Chunk(big, big.n_computed, big.n_computed + 1)])) == 1
            finish(backend, big, other)
            assert pool.used == 0
        finally:
            backend.close()


def test_a_failed_share_leaves_the_accounting_exact() -> None:
    """A unified cache's prefix share can fail only before the ledger moves: the cells the
    pool counts are the cells the (fake) cache holds, whatever happens."""
    backend = FakeBackend(reply="r", kv_cells=512, max_seqs=4)
    pool = backend.pool
    prompt = list(range(1, 60))
    holder = make_seq("holder", prompt)
    assert pool.acquire(holder)
    prefill(backend, holder)
    seq = make_seq("seq", prompt)
    assert pool.acquire(seq)
    backend.copy_fails = True
    assert not pool.share(holder, seq, len(prompt) - 1)
    assert seq.parent is None and seq.borrowed == 0 and holder.children == []
    assert pool.used == backend.cells_used == len(prompt)
    prefill(backend, seq)  # computes its prompt itself
    assert pool.used == backend.cells_used == 2 * len(prompt)
    backend.copy_fails = False
    third = make_seq("third", prompt)
    assert pool.acquire(third) and pool.share(seq, third, 30)
    third.n_computed = 30
    assert pool.used == backend.cells_used == 2 * len(prompt)  # shared: counted once
    finish(backend, seq)  # third inherits the cells it borrowed
    assert pool.used == backend.cells_used
    finish(backend, holder, third)
    assert pool.used == backend.cells_used == 0


def test_the_layout_keeps_running_slots_low_and_in_order(
    backend: Backend, pool_empty: None
) -> None:
    """Split: a sequence in the highest slot moves into a freed lower one and continues
    exactly; chunks run in slot order. Unified: nothing moves."""
    pool = backend.pool
    prompt = tokens_of(backend)
    cold = make_seq("cold", prompt)
    assert pool.acquire(cold)
    prefill(backend, cold)
    expected = step(backend, [Chunk(cold, len(prompt), len(prompt) + 1)])
    finish(backend, cold)
    a, b, c = (make_seq(r, prompt) for r in "abc")
    for s in (a, b, c):
        assert pool.acquire(s)
    assert [a.slot, b.slot, c.slot] == [0, 1, 2]
    prefill(backend, c)
    finish(backend, b)
    moves = pool.moves
    pool.arrange()
    split = backend.facts()["kv_layout"] == "split"
    assert c.slot == (1 if split else 2) and pool.moves == moves + split
    chunks = [Chunk(c, len(prompt), len(prompt) + 1), Chunk(a, 0, 5)]
    pool.order(chunks)
    assert [ch.seq for ch in chunks] == ([a, c] if split else [c, a])
    assert step(backend, chunks) == expected
    finish(backend, a, c)


def test_the_last_prompt_token_is_fed_alone(backend: Backend) -> None:
    """llama.cpp (and the fake backend, under its pool): the last prompt token in a step of
    its own. transformers in float32 has no such rule: a prompt goes whole."""
    seq = make_seq("s", list(range(1, 11)))
    if backend.facts()["kv_layout"] == "paged":
        assert backend.pool.chunk(seq, 100) == 10
        assert backend.pool.chunk(seq, 4) == 4
        return
    assert backend.pool.chunk(seq, 100) == 9
    assert backend.pool.chunk(seq, 4) == 4
    seq.n_computed = 9
    assert backend.pool.chunk(seq, 100) == 1


def test_log_probabilities_only_for_the_sequences_that_ask(
    backend: Backend, pool_empty: None
) -> None:
    """A sequence with `prompt_logprobs` gets one score per prompt token after the first,
    whatever the chunks (several sequences in a step, a chunk that does not sample); one
    with `logprobs` gets its sampled token's; the others get nothing."""
    prompt = tokens_of(backend)
    scored = make_seq("scored", prompt, logprobs=2, prompt_logprobs=1)
    scored.prompt_logprobs = [None]
    plain = make_seq("plain", prompt)
    alone = make_seq("alone", prompt, logprobs=2, prompt_logprobs=1)
    alone.prompt_logprobs = [None]
    for s in (scored, plain, alone):
        assert backend.pool.acquire(s)
    half = len(prompt) // 2
    step(backend, [Chunk(plain, 0, half), Chunk(scored, 0, 7)])
    assert plain.prompt_logprobs is None and plain.sampled_logprob is None
    step(backend, [Chunk(scored, 7, half), Chunk(plain, half, len(prompt) - 1)])
    step(backend, [Chunk(scored, half, len(prompt) - 1)])
    sampled = step(backend, [Chunk(plain, len(prompt) - 1, len(prompt))])
    assert plain.sampled_logprob is None
    [token] = step(backend, [Chunk(scored, len(prompt) - 1, len(prompt))])
    assert scored.prompt_logprobs is not None and len(scored.prompt_logprobs) == len(prompt)
    assert [lp.token for lp in scored.prompt_logprobs[1:] if lp] == prompt[1:]
    assert all(lp is not None and len(lp.top) == 1 for lp in scored.prompt_logprobs[1:])
    lp = scored.sampled_logprob
    assert lp is not None and lp.token == token and len(lp.top) == 2
    assert lp.logprob <= lp.top[0][1] + 1e-6  # the best alternative is the most likely
    if isinstance(backend, LlamaCppBackend):  # greedy: the sampled token is the best one
        assert lp.top[0][0] == token and lp.top[0][1] == pytest.approx(lp.logprob)
    assert len(sampled) == 1
    finish(backend, scored, plain)
    # alone, fed whole or in other chunks, a prompt scores the same (beside other sequences
    # llama.cpp's unified cache changes logits by float noise: they are not compared)
    again = make_seq("again", prompt, prompt_logprobs=0)
    again.prompt_logprobs = [None]
    assert backend.pool.acquire(again)
    for start, end in [(0, 7), (7, half), (half, len(prompt))]:
        step(backend, [Chunk(again, start, end)])
    while alone.n_computed < len(prompt):
        n = backend.pool.chunk(alone, backend.info.max_batch_tokens)
        step(backend, [Chunk(alone, alone.n_computed, alone.n_computed + n)])
    assert alone.prompt_logprobs is not None and again.prompt_logprobs is not None
    for x, y in zip(alone.prompt_logprobs[1:], again.prompt_logprobs[1:], strict=True):
        assert x is not None and y is not None and x.token == y.token
        assert x.logprob == pytest.approx(y.logprob, abs=1e-3)
        assert len(x.top) == 1 and y.top == ()
    finish(backend, alone, again)


def test_drafts_are_verified_in_order_and_the_rejected_ones_leave_no_kv(
    backend: Backend, pool_empty: None
) -> None:
    """A decode chunk with a draft samples its positions in order while they match: the
    accepted drafts keep their KV, the first mismatch's sample is the next token, and after
    the pool's commit the rejected drafts' KV is gone (llama.cpp then takes the next token at
    the next position, and the answer goes on as decoding one by one). A backend that cannot
    verify drafts says so and is never given one."""
    if not backend.info.drafts:
        assert not isinstance(backend, FakeBackend | LlamaCppBackend)  # transformers
        return
    prompt = tokens_of(backend)
    ref = make_seq("ref", prompt)
    assert backend.pool.acquire(ref)
    prefill(backend, ref)
    for _ in range(16):
        step(backend, [Chunk(ref, ref.n_computed, ref.n_computed + 1)])
    answer = ref.tokens[len(prompt) :]  # 17 greedy tokens
    finish(backend, ref)

    seq = make_seq("drafted", prompt)
    assert backend.pool.acquire(seq)
    prefill(backend, seq)
    start = seq.n_computed
    wrong = next(t for t in range(3, 99) if t != answer[4])
    # answer[1:4] right, then a wrong guess and more: 3 accepted, answer[4] sampled instead
    chunk = Chunk(seq, start, start + 1, draft=(*answer[1:4], wrong, *answer[5:8]))
    [token] = backend.execute([chunk])  # type: ignore[misc]
    assert (chunk.accepted, token) == (3, answer[4])
    seq.n_computed = chunk.end + chunk.accepted
    backend.pool.commit([chunk])
    seq.tokens += [*chunk.draft[:3], token]
    assert backend.pool.used == seq.n_computed == len(seq.tokens) - 1 == start + 4
    # all right: every draft accepted and one token more
    n = seq.n_computed
    chunk = Chunk(seq, n, n + 1, draft=tuple(answer[5:9]))
    [token] = backend.execute([chunk])  # type: ignore[misc]
    assert (chunk.accepted, token) == (4, answer[9])
    seq.n_computed = chunk.end + chunk.accepted
    backend.pool.commit([chunk])
    seq.tokens += [*chunk.draft, token]
    assert seq.tokens == ref.tokens[: len(seq.tokens)]
    # the answer goes on from there: each next token at the next position (llama.cpp
    # refuses a position its cache already holds). Not compared with the reference beyond:
    # a drafted step's logits differ from a one-token step's by float noise on llama.cpp's
    # CPU kernels, which a near-tie later on may show
    for _ in range(4):
        step(backend, [Chunk(seq, seq.n_computed, seq.n_computed + 1)])
        assert backend.pool.used == seq.n_computed == len(seq.tokens) - 1
    finish(backend, seq)
