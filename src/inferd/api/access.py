"""What a request may do once the guard let it in: its model (403 outside the key's list),
admin routes (403 without an admin key), and its admission to the engine (capacity slot,
tokens-per-minute reservation, settled to actual usage when the response ends)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import Request

from inferd.api.record import RequestRecord
from inferd.engine.types import GenerateRequest
from inferd.errors import PermissionDenied
from inferd.models.registry import LoadedModel, ModelRegistry
from inferd.security.capacity import CapacityGate
from inferd.security.limits import RateLimits, Window
from inferd.security.principal import Principal


@dataclass
class Ticket:
    """One request's share of the server: made by the guard, closed when the response ends."""

    principal: Principal | None
    limits: RateLimits
    gate: CapacityGate
    auth: bool = False  # whether authentication is on for this request
    requests: Window | None = None
    tokens: Window | None = None
    running: bool = False  # counted against the key's parallel requests
    in_gate: bool = False
    reserved: dict[str, int] = field(default_factory=dict)  # each sequence's share
    record: RequestRecord | None = None  # what the sequences used, read when settling

    async def admit(self, requests: list[GenerateRequest], record: RequestRecord) -> None:
        """Before anything is generated: a capacity slot (or 503), then the key's tokens
        per minute (or 429): each sequence reserves its prompt plus max_tokens."""
        if self.in_gate:
            return
        await self.gate.enter()
        self.in_gate = True
        if self.principal is None or self.principal.tpm is None:
            return
        shares = {r.request_id: len(r.prompt_tokens) + r.sampling.max_tokens for r in requests}
        self.tokens = await self.limits.reserve(self.principal, sum(shares.values()))
        self.reserved, self.record = shares, record

    def used(self) -> int:
        """Each sequence's usage as its record says, or its reservation when it has none
        (it never reported: cancelled before it started, failed)."""
        finals = self.record.finals if self.record is not None else {}
        used = 0
        for rid, share in self.reserved.items():
            out = finals.get(rid)
            used += share if out is None else out.usage.total_tokens
        return used

    async def close(self) -> None:
        if self.in_gate:
            self.in_gate = False
            self.gate.leave()
        if self.principal is None:
            return
        if self.reserved:
            used, reserved = self.used(), sum(self.reserved.values())
            self.reserved = {}
            await self.limits.settle(self.principal, reserved, used)
        if self.running:
            self.running = False
            await self.limits.leave(self.principal)


def ticket_of(request: Request) -> Ticket | None:
    ticket: Ticket | None = getattr(request.state, "ticket", None)
    return ticket


def principal_of(request: Request) -> Principal | None:
    ticket = ticket_of(request)
    return ticket.principal if ticket is not None else None


async def admit(request: Request, requests: list[GenerateRequest], record: RequestRecord) -> None:
    """Admit a request's sequences to the engine (see Ticket.admit). Call it before the
    response starts, so a 429 or 503 is a status, not an error event in a stream."""
    ticket = ticket_of(request)
    if ticket is not None:
        await ticket.admit(requests, record)


def check_model(request: Request, registry: ModelRegistry, name: str | None) -> None:
    """403 when the request's key may not use the model `name` (404 when there is none)."""
    principal = principal_of(request)
    if principal is None or principal.models is None:
        return
    spec = registry.entry(name).spec
    if not principal.may_use(spec.names):
        raise PermissionDenied(f"This API key may not use the model '{spec.name}'", param="model")


async def acquire_model(request: Request, registry: ModelRegistry, name: str | None) -> LoadedModel:
    """The model for a generation, checked against the key before anything is loaded."""
    check_model(request, registry, name)
    return await registry.acquire(name)


@contextlib.asynccontextmanager
async def use_model(
    request: Request, registry: ModelRegistry, name: str | None
) -> AsyncIterator[LoadedModel]:
    """The model for work beside its engine (embeddings, tokenizer, show), checked against
    the key before anything is loaded, and kept loaded while the block runs."""
    check_model(request, registry, name)
    async with registry.using(name) as model:
        yield model


def session_owner(request: Request, key_id: str | None) -> str | None:
    """Whose stored sessions a request may read or delete: a caller without authentication
    or with an admin key names the key (`key_id`; none: requests made without a key); any
    other key has only its own, and naming another key is a 403."""
    ticket = ticket_of(request)
    if ticket is None or not ticket.auth:
        return key_id
    principal = ticket.principal
    if principal is None:
        raise PermissionDenied("This route needs an API key")
    if principal.admin:
        return key_id
    if key_id is not None and key_id != principal.key_id:
        raise PermissionDenied(
            "An API key that is not an admin reads only its own sessions", param="key_id"
        )
    return principal.key_id


def require_admin(request: Request) -> None:
    """Dependency of management routes: with authentication on, only admin keys pass."""
    ticket = ticket_of(request)
    if ticket is None or not ticket.auth:
        return
    if ticket.principal is None or not ticket.principal.admin:
        raise PermissionDenied("This route needs an admin API key")
