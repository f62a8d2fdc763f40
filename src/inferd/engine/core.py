"""The core loop, on its own thread: schedule -> execute -> update -> emit, step after step."""

from __future__ import annotations

import bisect
import logging
import queue
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass

from inferd.engine.backends.base import Backend, SequenceFailed
from inferd.engine.detokenizer import Detokenizer
from inferd.engine.scheduler import Scheduler
from inferd.engine.sequence import Sequence
from inferd.engine.speculative import Drafter
from inferd.engine.types import (
    STEP_SEQ_BUCKETS,
    EngineStats,
    FinishReason,
    GenerateRequest,
    GenerationOutput,
    TokenLogprob,
    Usage,
)
from inferd.errors import BackendError

log = logging.getLogger(__name__)

OutputSink = Callable[[list[GenerationOutput]], None]

# Host memory for finished sequences' saved KV state (the prefix cache), unless configured.
DEFAULT_PREFIX_CACHE_BYTES = 1 << 30
# Seconds without a request queued, running or arriving before the backend's idle work
# (Backend.idle_work) runs: a pause between a client's requests is not idleness.
IDLE_AFTER_S = 5.0


@dataclass(frozen=True, slots=True)
class _Add:
    request: GenerateRequest


@dataclass(frozen=True, slots=True)
class _Abort:
    request_id: str


@dataclass(frozen=True, slots=True)
class _Stop:
    pass


@dataclass(frozen=True, slots=True)
class _DropCache:
    pass


class EngineCore:
    """Runs one backend. Thread-safe entry points: submit, abort, stop, stats."""

    def __init__(
        self,
        backend: Backend,
        sink: OutputSink,
        *,
        name: str = "model",
        prefix_cache: bool = True,
        prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES,
        drafter: Drafter | None = None,
        idle_after: float | None = None,
    ) -> None:
        info = backend.info
        if drafter is not None and not info.drafts:
            log.warning("model %s: this backend cannot verify drafts; speculation is off", name)
            drafter = None
        self._drafter = drafter
        self.backend = backend
        self.name = name
        self._sink = sink
        self._inbox: queue.SimpleQueue[_Add | _Abort | _Stop | _DropCache] = queue.SimpleQueue()
        self._sched = Scheduler(
            backend.pool,
            max_seqs=info.max_seqs,
            max_batch_tokens=info.max_batch_tokens,
            prefix_cache=prefix_cache,
            prefix_cache_bytes=prefix_cache_bytes,
            prefill_per_decode=info.prefill_per_decode,
            drafter=drafter,
        )
        self._seqs: dict[str, Sequence] = {}
        self._thread = threading.Thread(target=self._run, name=f"inferd-core-{name}", daemon=True)
        self._steps = 0
        self._step_tokens = 0
        self._step_seq_total = 0
        self._step_seqs = [0] * (len(STEP_SEQ_BUCKETS) + 1)
        self._prompt_tokens = 0
        self._generated_tokens = 0
        self._submitted = 0  # requests handed to submit (written by the submitting thread only)
        # the backend's idle work: after `_idle_after` s quiet (no message, no work) it is
        # asked for once (`_idle_asked`) and run one resumption per loop turn
        self._idle_after = IDLE_AFTER_S if idle_after is None else idle_after
        self._quiet_since = time.monotonic()
        self._idle_asked = False
        self._idle: Generator[None, None, None] | None = None

    # ---- thread-safe API -------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, request: GenerateRequest) -> None:
        self._submitted += 1
        self._inbox.put(_Add(request))

    def abort(self, request_id: str) -> None:
        self._inbox.put(_Abort(request_id))

    def drop_prefix_cache(self) -> None:
        """Free every cached prefix (running sequences keep theirs)."""
        self._inbox.put(_DropCache())

    def stop(self, timeout: float = 10.0) -> None:
        """Abort whatever is left and end the thread."""
        if self._thread.is_alive():
            self._inbox.put(_Stop())
            self._thread.join(timeout)

    def stats(self) -> EngineStats:
        sched = self._sched
        pool = sched.pool
        return EngineStats(
            running=len(sched.running),
            waiting=len(sched.waiting),
            kv_cells_used=pool.used,
            kv_cells_total=pool.capacity,
            steps=self._steps,
            step_tokens_total=self._step_tokens,
            step_seqs_total=self._step_seq_total,
            step_seqs_counts=tuple(self._step_seqs),
            prompt_tokens_total=self._prompt_tokens,
            generated_tokens_total=self._generated_tokens,
            preemptions=sched.preemptions,
            cached_prefixes=len(sched.saved),
            prefix_cache_bytes=sched.saved.nbytes,
            prefix_restore_failures=sched.restore_failures,
            prefix_queries=sched.prefix_queries,
            prefix_hits=sched.prefix_hits,
            reused_tokens_total=sched.reused_tokens,
            kv_moves=pool.moves,
            submitted=self._submitted,
            draft_tokens_total=sched.draft_tokens,
            draft_accepted_total=sched.draft_accepted,
        )

    # ---- the loop ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                if not self._drain_inbox(self._wait()):
                    break
                if self._sched.has_work():
                    self._step()
                    self._quiet_since = time.monotonic()
                elif self._wait() == 0:  # quiet for long enough
                    self._idle_step()
            except Exception:  # never let the thread die with requests hanging
                log.exception("engine step failed")
                self._fail_all("internal engine error")
        self._stop_idle_work()
        self._fail_all(None)

    def _wait(self) -> float:
        """How long the loop may block on its inbox: not at all while there is work, idle
        work running or due; until idle work is due; else half a second at a time."""
        if self._sched.has_work() or self._idle is not None:
            return 0.0
        if self._idle_asked:
            return 0.5
        return max(0.0, self._quiet_since + self._idle_after - time.monotonic())

    def _idle_step(self) -> None:
        """One resumption of the backend's idle work (asked for once per quiet spell)."""
        if self._idle is None:
            self._idle_asked = True
            self._idle = self.backend.idle_work()
            if self._idle is None:
                return
        try:
            next(self._idle)
        except StopIteration:
            self._idle = None
        except Exception:
            self._idle = None
            log.exception("idle work failed")

    def _stop_idle_work(self) -> None:
        """Something to do: the idle work is closed (it frees what it holds) and asked for
        again at the next quiet spell."""
        self._quiet_since = time.monotonic()
        self._idle_asked = False
        if self._idle is not None:
            idle, self._idle = self._idle, None
            idle.close()

    def _drain_inbox(self, wait: float) -> bool:
        """Apply pending submissions and aborts, waiting up to `wait` s for the first. False
        when asked to stop. Any message ends the engine's quiet spell."""
        outputs: list[GenerationOutput] = []
        try:
            msg = self._inbox.get(timeout=wait) if wait > 0 else self._inbox.get_nowait()
            self._stop_idle_work()
            while True:
                if isinstance(msg, _Stop):
                    return False
                if isinstance(msg, _Add):
                    self._add(msg.request, outputs)
                elif isinstance(msg, _DropCache):
                    self._sched.drop_cache()
                else:
                    seq = self._seqs.get(msg.request_id)
                    if seq is not None:
                        # a cancelled request keeps what it computed, as a finished one
                        # does: a regenerate or a retry after a client's timeout reuses it
                        outputs.append(self._finish(seq, FinishReason.ABORT, "", keep=True))
                msg = self._inbox.get_nowait()
        except queue.Empty:
            pass
        finally:
            self._emit(outputs)
        return True

    def _add(self, req: GenerateRequest, outputs: list[GenerationOutput]) -> None:
        info = self.backend.info
        prompt = req.prompt_tokens
        error = None
        if not prompt:
            error = "empty prompt"
        elif len(prompt) >= info.n_ctx:
            error = f"prompt of {len(prompt)} tokens does not fit the context of {info.n_ctx}"
        elif any(t < 0 or t >= info.n_vocab for t in prompt):
            error = "prompt contains token ids outside the vocabulary"
        if error is not None or req.request_id in self._seqs:
            outputs.append(
                GenerationOutput(
                    req.request_id,
                    "",
                    (),
                    Usage(prompt_tokens=len(prompt)),
                    FinishReason.ERROR,
                    error=error or "duplicate request id",
                )
            )
            return
        sp = req.sampling
        seq = Sequence(
            request=req,
            detokenizer=Detokenizer(self.backend.token_piece, sp.stop),
            max_len=min(len(prompt) + sp.max_tokens, info.n_ctx),
            tokens=list(prompt),
            n_prompt=len(prompt),
            prompt_logprobs=None if sp.prompt_logprobs is None else [None],
            # drafts are verified without log probabilities
            drafting=self._drafter.start() if self._drafter and sp.logprobs is None else None,
        )
        self._seqs[req.request_id] = seq
        self._sched.add(seq)

    def _step(self) -> None:
        started = time.perf_counter()
        plan = self._sched.schedule()
        for seq in plan.preempted:
            log.debug("preempted %s (KV cache full)", seq.request_id)
        chunks = plan.chunks
        if not chunks:
            if plan.preempted or not self._sched.running:
                return
            time.sleep(0.001)  # nothing fits right now; should not happen, but never spin hot
            return
        try:
            sampled = self.backend.execute(chunks)
            if sampled is None and any(c.draft for c in chunks):  # no KV room: drafts go first
                for c in chunks:
                    c.draft = ()
                sampled = self.backend.execute(chunks)
        except SequenceFailed as exc:  # nothing ran: fail that request, plan again
            log.error("request %s failed: %s", exc.seq.request_id, exc.message)
            self._emit([self._finish(exc.seq, FinishReason.ERROR, "", error=exc.message)])
            return
        except BackendError as exc:
            log.error("decode failed: %s", exc)
            self._fail_all(str(exc))
            return
        if sampled is None:
            self._relieve_kv_pressure()
            return
        self._steps += 1
        self._step_tokens += plan.n_tokens
        self._step_seq_total += len(chunks)
        self._step_seqs[bisect.bisect_left(STEP_SEQ_BUCKETS, len(chunks))] += 1
        self._sched.commit(plan)
        self._prompt_tokens += sum(max(0, min(c.end, c.seq.n_prompt) - c.start) for c in chunks)
        outputs = []
        for c, token in zip([c for c in chunks if c.samples], sampled, strict=True):
            for t in (*c.draft[: c.accepted], token):  # one output per token, in order
                out = self._accept(c.seq, t)
                outputs.append(out)
                if out.finished:  # a stop or max_tokens inside accepted drafts
                    break
        self._sched.timed(plan, time.perf_counter() - started)  # not a finished one's saving
        self._emit(outputs)

    def _emit(self, outputs: list[GenerationOutput]) -> None:
        """Send outputs, then let the KV pool finish the releases of the sequences that
        finished: saving a finished prefix takes milliseconds (~3 ms for 140 tokens here),
        and the answer's last token should not wait for it. The scheduler and the pool have
        already given back their places in the accounting; nothing reuses them before the
        next plan, and every path to it runs through here."""
        if outputs:
            self._sink(outputs)
        self._sched.settle()

    def _accept(self, seq: Sequence, token: int) -> GenerationOutput:
        """A token sampled for `seq`: append it, and finish the sequence when it ends."""
        sp = seq.request.sampling
        if sp.max_tokens == 0:  # the prompt's log probabilities were all it asked for
            return self._finish(seq, FinishReason.LENGTH, "", prompt_logprobs=True)
        now = time.monotonic()
        if seq.first_token is None:
            seq.first_token = now
        else:
            seq.token_gaps.append(now - seq.last_token)
        seq.last_token = now
        seq.tokens.append(token)
        self._generated_tokens += 1
        scored = seq.sampled_logprob
        logprobs = () if scored is None else (scored,)
        seq.sampled_logprob = None
        if self.backend.is_eog(token) and not sp.ignore_eos:
            return self._finish(seq, FinishReason.STOP, "", (token,), prompt_logprobs=True)
        text, stopped = seq.detokenizer.add(token)
        if stopped or len(seq.tokens) >= seq.max_len:
            reason = FinishReason.STOP if stopped else FinishReason.LENGTH
            return self._finish(
                seq,
                reason,
                text,
                (token,),
                flush=not stopped,
                logprobs=logprobs,
                prompt_logprobs=True,
            )
        return GenerationOutput(
            seq.request_id,
            text,
            (token,),
            self._usage(seq),
            logprobs=logprobs,
            prompt_logprobs=_take_prompt_logprobs(seq),
        )

    def _finish(
        self,
        seq: Sequence,
        reason: FinishReason,
        text: str,
        token_ids: tuple[int, ...] = (),
        *,
        flush: bool = True,
        error: str | None = None,
        keep: bool = False,
        logprobs: tuple[TokenLogprob, ...] = (),
        prompt_logprobs: bool = False,
    ) -> GenerationOutput:
        """End `seq`. A finished answer, or a request its client cancelled (`keep`), leaves
        its computed prefix cached; a failed one, or one cut off by the engine stopping,
        frees its cells. `prompt_logprobs`: its output carries the prompt's log
        probabilities if they are still to be sent (a sequence that ends as its first token
        is sampled)."""
        if flush and reason is not FinishReason.ABORT:
            text += seq.detokenizer.flush()
        # accepted drafts after a stop hold KV of tokens the answer does not have
        seq.n_computed = min(seq.n_computed, len(seq.tokens))
        keep = keep or reason in (FinishReason.STOP, FinishReason.LENGTH)
        self._sched.finish(seq, keep_prefix=keep)
        self.backend.drop(seq)
        if self._drafter is not None:
            self._drafter.drop(seq)
        self._seqs.pop(seq.request_id, None)
        seq.finish_reason = reason
        return GenerationOutput(
            seq.request_id,
            text,
            token_ids,
            self._usage(seq),
            reason,
            error=error,
            queue_time=(seq.first_scheduled or time.monotonic()) - seq.arrival,
            time_to_first_token=(seq.first_token - seq.arrival) if seq.first_token else None,
            inter_token_latencies=tuple(seq.token_gaps),
            logprobs=logprobs,
            prompt_logprobs=_take_prompt_logprobs(seq) if prompt_logprobs else None,
        )

    def _usage(self, seq: Sequence) -> Usage:
        return Usage(
            prompt_tokens=seq.n_prompt,
            completion_tokens=seq.n_generated,
            cached_tokens=seq.cached_tokens,
            draft_tokens=seq.drafting.proposed if seq.drafting else 0,
            draft_accepted=seq.drafting.accepted if seq.drafting else 0,
        )

    def _relieve_kv_pressure(self) -> None:
        """The backend found no KV room for the batch (the accounting says there was: a
        fragmented cache). Preempt the newest sequence; fail when only one is left."""
        if self._sched.relieve_pressure() is not None:
            return
        running = self._sched.running
        log.error("KV cache exhausted with %d running sequence(s)", len(running))
        self._emit(
            [self._finish(s, FinishReason.ERROR, "", error="KV cache exhausted") for s in running]
        )

    def _fail_all(self, error: str | None) -> None:
        """End every sequence: with an error, or as aborted when the engine stops."""
        reason = FinishReason.ERROR if error else FinishReason.ABORT
        self._emit([self._finish(s, reason, "", error=error) for s in list(self._seqs.values())])


def _take_prompt_logprobs(seq: Sequence) -> tuple[TokenLogprob | None, ...] | None:
    """The prompt's log probabilities, once (on the sequence's first output): after that
    the sequence holds none, and one preempted and fed again scores nothing."""
    scored = seq.prompt_logprobs
    if scored is None:
        return None
    seq.prompt_logprobs = None
    return tuple(scored)
