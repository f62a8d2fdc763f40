"""The per-request record: usage counted once per prompt, and the status of each exit path."""

from __future__ import annotations

from inferd.api.record import CLIENT_CLOSED, RequestRecord
from inferd.engine.types import FinishReason, GenerationOutput, Usage
from inferd.storage.records import UsageStatus


def final(
    rid: str, prompt: int, cached: int, completion: int, reason: FinishReason
) -> GenerationOutput:
    return GenerationOutput(rid, "", (), Usage(prompt, completion, cached), reason)


def test_each_prompt_is_counted_once_and_every_completion() -> None:
    record = RequestRecord("r")
    # two prompts, two choices each
    record.admitted({"r-0": 0, "r-1": 0, "r-2": 1, "r-3": 1})
    record.finished(final("r-1", 10, 4, 3, FinishReason.STOP))
    record.finished(final("r-0", 10, 0, 5, FinishReason.LENGTH))
    record.finished(final("r-2", 7, 0, 2, FinishReason.STOP))
    # a prompt's counts are its first choice's (r-0: cold, while r-1 found it cached);
    # r-3 has not finished: its prompt is counted through r-2
    assert record.usage == Usage(prompt_tokens=17, completion_tokens=10, cached_tokens=0)
    record.finished(final("r-3", 7, 0, 1, FinishReason.STOP))
    record.finished(final("r-3", 7, 0, 99, FinishReason.ABORT))  # a second final is ignored
    assert record.usage == Usage(prompt_tokens=17, completion_tokens=11, cached_tokens=0)
    assert (
        record.finish_reasons == [FinishReason.STOP, FinishReason.LENGTH] + [FinishReason.STOP] * 2
    )
    assert record.status(200, ended=True) is UsageStatus.LENGTH


def test_status_of_each_exit_path() -> None:
    def status(reasons: list[FinishReason], http: int, ended: bool = True) -> UsageStatus:
        record = RequestRecord("r")
        record.admitted({f"r-{i}": 0 for i in range(len(reasons))})
        for i, reason in enumerate(reasons):
            record.finished(final(f"r-{i}", 3, 0, 1, reason))
        return record.status(http, ended=ended)

    assert status([FinishReason.STOP], 200) is UsageStatus.OK
    assert status([FinishReason.STOP, FinishReason.ERROR], 200) is UsageStatus.ERROR
    assert status([], 500) is UsageStatus.ERROR
    assert status([FinishReason.ABORT], 200) is UsageStatus.CANCELLED
    assert status([], CLIENT_CLOSED) is UsageStatus.CANCELLED
    assert status([FinishReason.STOP], 200, ended=False) is UsageStatus.CANCELLED
    assert status([], 400) is UsageStatus.REJECTED
    assert status([], 503) is UsageStatus.REJECTED
