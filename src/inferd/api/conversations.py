"""Stored conversations: read the last messages of a session, delete a session. Every key
reaches its own sessions; an admin key (or any caller without authentication) names the key
whose session it means."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, Request
from pydantic import BaseModel

from inferd.api.access import session_owner
from inferd.api.deps import StoreDep
from inferd.api.routing import Dialect, dialect_router
from inferd.api.sessions import SESSION_PATTERN, scoped_session

router = dialect_router(Dialect.OPENAI, prefix="/v1", tags=["store"])

SessionPath = Annotated[str, Path(pattern=SESSION_PATTERN)]
# whose session: the id of the API key that used it (`inferd keys list`); none: the caller's
# own (the sessions of requests made without a key, for an admin or without authentication)
KeyIdQuery = Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]


def owner(request: Request, key_id: KeyIdQuery = None) -> str | None:
    return session_owner(request, key_id)


OwnerDep = Annotated[str | None, Depends(owner)]


class ConversationMessage(BaseModel):
    role: str
    content: str
    model: str | None
    request_id: str
    created_at: int  # unix seconds
    created: str  # ISO 8601, UTC


class Conversation(BaseModel):
    object: str = "conversation"
    session_id: str
    messages: list[ConversationMessage]


class ConversationDeleted(BaseModel):
    object: str = "conversation.deleted"
    session_id: str
    deleted: bool
    messages: int


@router.get("/conversations/{session_id}", response_model=Conversation)
async def get_conversation(
    session_id: SessionPath,
    store: StoreDep,
    key_id: OwnerDep,
    limit: Annotated[int | None, Query(ge=1, le=10000)] = None,
) -> Conversation:
    """The session's last `limit` messages (all by default), oldest first. Sessions belong
    to the key that used them: a key reads its own; an admin key names the key (`key_id`)."""
    records = await store.conversation(scoped_session(key_id, session_id), limit)
    return Conversation(
        session_id=session_id,
        messages=[
            ConversationMessage(
                role=m.role,
                content=m.content,
                model=m.model,
                request_id=m.request_id,
                created_at=int(m.created_at.timestamp()),
                created=m.created_at.isoformat(),
            )
            for m in records
        ],
    )


@router.delete("/conversations/{session_id}", response_model=ConversationDeleted)
async def delete_conversation(
    session_id: SessionPath, store: StoreDep, key_id: OwnerDep
) -> ConversationDeleted:
    """Forget a session and its messages: the caller's own, or (an admin key) that of API
    key `key_id`."""
    gone = await store.delete_conversation(scoped_session(key_id, session_id))
    return ConversationDeleted(session_id=session_id, deleted=gone > 0, messages=gone)
