"""Listing and naming stored conversations (GET /v1/conversations, PATCH
/v1/conversations/{id}), scoped to the API key, on SQLite and on a real PostgreSQL (the fake
backend: what matters here is the store and the routes)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from inferd.config import Settings
from inferd.storage.records import MessageRecord
from inferd.storage.store import Store
from tests.conftest import AppHandle, FakeFactory

CHAT = "/v1/chat/completions"


def bearer(key: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {key.secret}"}


async def chat(
    h: AppHandle, session: str, text: str, headers: dict[str, str] | None = None
) -> None:
    r = await h.client.post(
        CHAT,
        json={
            "messages": [{"role": "user", "content": text}],
            "max_tokens": 2,
            "session_id": session,
        },
        headers=headers or {},
    )
    assert r.status_code == 200, r.text


async def listed(h: AppHandle, **kwargs: Any) -> list[dict[str, Any]]:
    r = await h.client.get("/v1/conversations", **kwargs)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list"
    return body["data"]  # type: ignore[no-any-return]


async def test_a_list_is_newest_first_with_counts_previews_and_titles(
    fake_app: FakeFactory, store: Store
) -> None:
    async with fake_app(store=store) as h:
        assert await listed(h) == []
        await chat(h, "first", "Tell me about the sea " + "wave " * 60)
        await chat(h, "second", "Hello there")
        await chat(h, "first", "And the mountains?")  # most recent now
        data = await listed(h)
        assert [c["session_id"] for c in data] == ["first", "second"]
        first, second = data
        assert first["object"] == "conversation.summary"
        assert first["messages"] == 4 and second["messages"] == 2
        # the start of the first user message, 100 characters
        assert first["preview"] == ("Tell me about the sea " + "wave " * 60)[:100]
        assert second["preview"] == "Hello there"
        assert first["title"] is None
        assert first["updated_at"] >= second["updated_at"] >= second["created_at"]
        assert [c["session_id"] for c in await listed(h, params={"limit": 1})] == ["first"]

        r = await h.client.patch(
            "/v1/conversations/second", json={"title": "  Greetings \n and   more "}
        )
        assert r.status_code == 200, r.text
        assert r.json()["title"] == "Greetings and more"
        assert r.json()["messages"] == 2 and r.json()["session_id"] == "second"
        assert {c["session_id"]: c["title"] for c in await listed(h)} == {
            "first": None,
            "second": "Greetings and more",
        }
        # a rename is not activity: the order stays; a new message keeps the title
        assert [c["session_id"] for c in await listed(h)] == ["first", "second"]
        await chat(h, "second", "Again")
        data = await listed(h)
        assert [(c["session_id"], c["title"]) for c in data] == [
            ("second", "Greetings and more"),
            ("first", None),
        ]
        # cleared by null or by an empty title
        for clear in (None, "   "):
            await h.client.patch("/v1/conversations/second", json={"title": "x"})
            r = await h.client.patch("/v1/conversations/second", json={"title": clear})
            assert r.status_code == 200 and r.json()["title"] is None
        # deleted: gone from the list
        assert (await h.client.delete("/v1/conversations/first")).status_code == 200
        assert [c["session_id"] for c in await listed(h)] == ["second"]


async def test_renaming_a_conversation_that_does_not_exist_is_404(
    fake_app: FakeFactory, store: Store
) -> None:
    async with fake_app(store=store) as h:
        r = await h.client.patch("/v1/conversations/nope", json={"title": "x"})
        assert r.status_code == 404
        assert "nope" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"title": "x" * 201}, "title"),
        ({"title": 5}, "title"),
        ({"title": ["a"]}, "title"),
        ({}, "title"),
        ({"title": "ok", "colour": "red"}, "colour"),
    ],
)
async def test_bad_renames_are_400_naming_the_parameter(
    fake_app: FakeFactory, store: Store, body: dict[str, Any], param: str
) -> None:
    async with fake_app(store=store) as h:
        await chat(h, "s", "hi")
        r = await h.client.patch("/v1/conversations/s", json=body)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param
        r = await h.client.get("/v1/conversations", params={"limit": "0"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "limit"
        r = await h.client.get("/v1/conversations", params={"limit": "1001"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "limit"


async def test_each_key_lists_and_names_only_its_own_conversations(
    fake_app: FakeFactory, store: Store
) -> None:
    """Session ids live in the namespace of the key that used them: a key lists and renames
    its own; an admin names the key; the key-less namespace is separate."""
    async with fake_app(Settings(require_auth=True), store=store) as h:
        ring = h.app.state.keys
        alice, bob = await ring.create("alice"), await ring.create("bob")
        admin = await ring.create("ops", admin=True)
        await chat(h, "shared", "alice's", bearer(alice))
        await chat(h, "a-only", "alice again", bearer(alice))
        await chat(h, "shared", "bob's", bearer(bob))
        await chat(h, "admin-own", "the admin's own", bearer(admin))

        mine = await listed(h, headers=bearer(alice))
        assert sorted(c["session_id"] for c in mine) == ["a-only", "shared"]
        assert {c["preview"] for c in mine} == {"alice's", "alice again"}
        theirs = await listed(h, headers=bearer(bob))
        assert [(c["session_id"], c["preview"]) for c in theirs] == [("shared", "bob's")]
        # an admin lists another key's by naming it, its own without key_id
        named = await listed(h, headers=bearer(admin), params={"key_id": bob.record.id})
        assert [c["preview"] for c in named] == ["bob's"]
        own = await listed(h, headers=bearer(admin), params={"key_id": admin.record.id})
        assert [c["session_id"] for c in own] == ["admin-own"]
        # no key's sessions are in the namespace of requests made without a key
        assert await listed(h, headers=bearer(admin)) == []
        # a key that is not an admin names no other key
        r = await h.client.get(
            "/v1/conversations", headers=bearer(bob), params={"key_id": alice.record.id}
        )
        assert r.status_code == 403 and r.json()["error"]["param"] == "key_id"
        r = await h.client.get("/v1/conversations")
        assert r.status_code == 401

        r = await h.client.patch(
            "/v1/conversations/shared", json={"title": "Bob's chat"}, headers=bearer(bob)
        )
        assert r.status_code == 200 and r.json()["preview"] == "bob's"
        titles = {c["session_id"]: c["title"] for c in await listed(h, headers=bearer(alice))}
        assert titles == {"shared": None, "a-only": None}
        r = await h.client.patch(
            "/v1/conversations/a-only", json={"title": "mine"}, headers=bearer(bob)
        )
        assert r.status_code == 404  # alice's session does not exist for bob
        r = await h.client.patch(
            "/v1/conversations/a-only",
            json={"title": "named by ops"},
            headers=bearer(admin),
            params={"key_id": alice.record.id},
        )
        assert r.status_code == 200
        titles = {c["session_id"]: c["title"] for c in await listed(h, headers=bearer(alice))}
        assert titles == {"shared": None, "a-only": "named by ops"}


async def test_a_namespace_matches_itself_only(store: Store) -> None:
    """Key ids hold `_` (a LIKE wildcard) and sessions of no key hold no `/`."""
    now = datetime.now(UTC)
    stored = ["key_a/one", "keyXa/two", "key_a2/three", "plain", "key_/four"]
    await store.repository.write_batch(
        [], [MessageRecord(s, f"r{i}", 0, "user", s, now) for i, s in enumerate(stored)]
    )
    assert [r.session_id for r in await store.sessions("key_a/", 10)] == ["one"]
    assert [r.session_id for r in await store.sessions("key_/", 10)] == ["four"]
    assert [r.session_id for r in await store.sessions("", 10)] == ["plain"]
    assert await store.rename_session("keyXa/", "one", "t") is None
