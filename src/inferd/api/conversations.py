"""Stored conversations: list a key's sessions, read the last messages of one, name it,
delete it. Every key reaches its own sessions; an admin key (or any caller without
authentication) names the key whose sessions it means."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from inferd.api.access import session_owner
from inferd.api.deps import StoreDep
from inferd.api.openapi import STORE
from inferd.api.routing import Dialect, dialect_router
from inferd.api.sessions import SESSION_PATTERN, scoped_session
from inferd.storage.records import TITLE_LENGTH, SessionRecord

router = dialect_router(Dialect.OPENAI, prefix="/v1", tags=["store"], responses=STORE)

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


class ConversationSummary(BaseModel):
    object: str = "conversation.summary"
    session_id: str
    title: str | None  # the name its owner gave it; None: never named
    preview: str  # the start of its first user message
    messages: int
    created_at: int  # unix seconds
    updated_at: int  # unix seconds, its last message

    @classmethod
    def of(cls, record: SessionRecord) -> ConversationSummary:
        return cls(
            session_id=record.session_id,
            title=record.title,
            preview=record.preview,
            messages=record.messages,
            created_at=int(record.created_at.timestamp()),
            updated_at=int(record.updated_at.timestamp()),
        )


class ConversationList(BaseModel):
    object: str = "list"
    data: list[ConversationSummary]


class Rename(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # surrounding and repeated whitespace is dropped; empty or null clears the title
    title: StrictStr | None = Field(max_length=TITLE_LENGTH)


class ConversationDeleted(BaseModel):
    object: str = "conversation.deleted"
    session_id: str
    deleted: bool
    messages: int


def namespace(key_id: str | None) -> str:
    """Where the sessions of `key_id` are stored: the prefix of their stored ids."""
    return scoped_session(key_id, "")


@router.get("/conversations", response_model=ConversationList)
async def list_conversations(
    store: StoreDep,
    key_id: OwnerDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ConversationList:
    """The `limit` most recently active sessions, newest first: the caller's own, or (an
    admin key) those of API key `key_id`."""
    records = await store.sessions(namespace(key_id), limit)
    return ConversationList(data=[ConversationSummary.of(r) for r in records])


@router.patch("/conversations/{session_id}", response_model=ConversationSummary)
async def rename_conversation(
    session_id: SessionPath, body: Rename, store: StoreDep, key_id: OwnerDep
) -> ConversationSummary:
    """Name a session (`{"title": "..."}`; null or "" clears the name). 404 when the
    session does not exist."""
    title = " ".join(body.title.split()) if body.title is not None else None
    record = await store.rename_session(namespace(key_id), session_id, title or None)
    if record is None:
        raise HTTPException(404, f"No conversation '{session_id}'")
    return ConversationSummary.of(record)


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
