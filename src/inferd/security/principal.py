"""Who a request runs as: the key's identity and its limits."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from inferd.storage.records import ApiKeyRecord


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    name: str
    admin: bool = False
    models: tuple[str, ...] | None = None  # None: every model
    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None

    @classmethod
    def of(cls, record: ApiKeyRecord) -> Principal:
        return cls(
            key_id=record.id,
            name=record.name,
            admin=record.admin,
            models=record.models,
            rpm=record.rpm,
            tpm=record.tpm,
            max_parallel=record.max_parallel,
        )

    def may_use(self, model_names: Iterable[str]) -> bool:
        """Whether the key may use a model known by `model_names` (its name and aliases)."""
        if self.models is None:
            return True
        return not set(self.models).isdisjoint(model_names)
