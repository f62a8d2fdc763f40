"""Stored conversations: read the last messages of a session, delete a session."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel

from inferd.api.access import require_admin
from inferd.api.deps import StoreDep
from inferd.api.sessions import SESSION_PATTERN, scoped_session

router = APIRouter(prefix="/v1", tags=["store"])

SessionPath = Annotated[str, Path(pattern=SESSION_PATTERN)]
# whose session: the id of the API key that used it (`inferd keys list`); none: the sessions
# of requests made without a key
KeyIdQuery = Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]


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


@router.get(
    "/conversations/{session_id}",
    response_model=Conversation,
    dependencies=[Depends(require_admin)],
)
async def get_conversation(
    session_id: SessionPath,
    store: StoreDep,
    limit: Annotated[int | None, Query(ge=1, le=10000)] = None,
    key_id: KeyIdQuery = None,
) -> Conversation:
    """The session's last `limit` messages (all by default), oldest first; `key_id`: the
    session of that API key (sessions belong to the key that used them)."""
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


@router.delete(
    "/conversations/{session_id}",
    response_model=ConversationDeleted,
    dependencies=[Depends(require_admin)],
)
async def delete_conversation(
    session_id: SessionPath, store: StoreDep, key_id: KeyIdQuery = None
) -> ConversationDeleted:
    """Forget a session (of API key `key_id`, if given) and its messages."""
    gone = await store.delete_conversation(scoped_session(key_id, session_id))
    return ConversationDeleted(session_id=session_id, deleted=gone > 0, messages=gone)
