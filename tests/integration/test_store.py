"""The usage and conversation store through the app, on the real engine, on SQLite and on a
real PostgreSQL server (every test runs on both)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from inferd.config import ModelConfig, Settings
from inferd.models.engines import BackendEngineFactory
from inferd.models.registry import ModelRegistry
from inferd.storage.records import MessageRecord, UsageRecord, UsageStatus
from inferd.storage.spool import encode
from inferd.storage.store import Store
from tests.conftest import AppHandle, FakeFactory, open_store

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def sse_json(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(json.loads(line[len("data: ") :]))
    return out


async def test_stats_match_the_requests_made(store_app: AppHandle, store: Store) -> None:
    c = store_app.client
    # per dialect: prompt, cached, completion tokens as the responses report them
    seen: dict[str, list[int]] = {"openai": [0, 0, 0], "native": [0, 0, 0]}

    def add(dialect: str, prompt: int, cached: int, completion: int) -> None:
        for i, v in enumerate((prompt, cached, completion)):
            seen[dialect][i] += v

    r = await c.post(CHAT, json={"messages": user("Name a colour."), "max_tokens": 8})
    assert r.status_code == 200
    u = r.json()["usage"]
    add(
        "openai",
        u["prompt_tokens"],
        u["prompt_tokens_details"]["cached_tokens"],
        u["completion_tokens"],
    )
    # streamed with usage, two choices
    r = await c.post(
        COMPLETIONS,
        json={
            "prompt": "Once upon a time",
            "max_tokens": 5,
            "n": 2,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    u = sse_json(r.text)[-1]["usage"]
    add(
        "openai",
        u["prompt_tokens"],
        u["prompt_tokens_details"]["cached_tokens"],
        u["completion_tokens"],
    )
    r = await c.post("/generate", json={"prompt": "The sky is", "max_tokens": 4})
    assert r.status_code == 200
    b = r.json()
    add("native", b["prompt_tokens"], b["cached_tokens"], b["tokens_generated"])
    # Ollama reports the prompt tokens it evaluated (not those found in the cache)
    r = await c.post(
        "/api/chat",
        json={
            "model": "smollm2:135m",
            "messages": user("Hi"),
            "stream": False,
            "options": {"num_predict": 4},
        },
    )
    assert r.status_code == 200, r.text
    ollama = r.json()

    r = await c.get("/v1/stats", params={"hours": 1})
    assert r.status_code == 200
    stats = r.json()
    total = stats["total"]
    assert total["requests"] == 4
    for dialect, (prompt, cached, completion) in seen.items():
        got = stats["by_dialect"][dialect]
        assert (got["prompt_tokens"], got["cached_tokens"], got["completion_tokens"]) == (
            prompt,
            cached,
            completion,
        ), dialect
    got = stats["by_dialect"]["ollama"]
    assert got["prompt_tokens"] == ollama["prompt_eval_count"]  # the whole prompt, as Ollama
    assert got["completion_tokens"] == ollama["eval_count"]
    completion = sum(v[2] for v in seen.values()) + ollama["eval_count"]
    assert total["completion_tokens"] == completion
    assert total["errors"] == total["cancelled"] == total["rejected"] == 0
    assert 0 < total["ttft_avg"] <= total["duration_avg"]
    assert total["ttft_p95"] <= total["duration_p95"]
    assert {k: v["requests"] for k, v in stats["by_dialect"].items()} == {
        "native": 1,
        "ollama": 1,
        "openai": 2,
    }
    assert stats["by_model"]["smollm2:135m"]["requests"] == 4
    assert stats["by_key"]["(none)"]["completion_tokens"] == completion

    records = await store.usage_records()
    assert len(records) == 4 and len({r.request_id for r in records}) == 4
    assert {r.route for r in records} == {CHAT, COMPLETIONS, "/generate", "/api/chat"}
    assert all(r.client == "127.0.0.1" for r in records)
    assert all(r.status in (UsageStatus.OK, UsageStatus.LENGTH) for r in records)
    # usage records never hold prompt text
    assert not any("colour" in str(r) for r in records)


async def test_length_and_rejections_are_recorded(store_app: AppHandle, store: Store) -> None:
    c = store_app.client
    ok = await c.post(COMPLETIONS, json={"prompt": "One two three", "max_tokens": 2})
    assert ok.json()["choices"][0]["finish_reason"] == "length"
    bad = await c.post(CHAT, json={"messages": [], "max_tokens": 2})
    assert bad.status_code == 400
    unknown = await c.post(CHAT, json={"model": "nope", "messages": user("x")})
    assert unknown.status_code == 404
    ollama_bad = await c.post(
        "/api/generate", json={"model": "smollm2:135m", "prompt": "x", "options": {"top_k": -1}}
    )
    assert ollama_bad.status_code == 400
    records = {r.route + str(r.http_status): r for r in await store.usage_records()}
    assert len(records) == 4
    length = records[COMPLETIONS + "200"]
    assert length.status is UsageStatus.LENGTH and length.finish_reason == "length"
    assert length.completion_tokens == 2
    for key in (CHAT + "400", CHAT + "404", "/api/generate400"):
        assert records[key].status is UsageStatus.REJECTED, records[key]
        assert records[key].completion_tokens == 0
    stats = (await c.get("/v1/stats")).json()["total"]
    assert stats["rejected"] == 3 and stats["requests"] == 4


@pytest.mark.parametrize("stream", [False, True])
async def test_a_backend_error_is_recorded(
    fake_app: FakeFactory, store: Store, stream: bool
) -> None:
    async with fake_app(store=store, fail_after_steps=3) as h:
        r = await h.client.post(CHAT, json={"messages": user("hi"), "stream": stream})
        assert r.status_code == (200 if stream else 500)
    (record,) = await store.usage_records()
    assert record.status is UsageStatus.ERROR
    assert record.finish_reason == "error"
    assert record.model == "fake"


async def test_non_generation_routes_get_no_record(store_app: AppHandle, store: Store) -> None:
    c = store_app.client
    assert (await c.get("/v1/models")).status_code == 200
    assert (await c.get("/health")).status_code == 200
    assert (await c.post("/v1/nothing", json={})).status_code == 404
    assert await store.usage_records() == []


async def test_conversation_history_order_limit_and_delete(
    store_app: AppHandle, store: Store
) -> None:
    c = store_app.client
    first = await c.post(
        CHAT,
        json={"messages": user("My name is Ada."), "max_tokens": 6, "session_id": "s-1"},
    )
    assert first.status_code == 200
    answer = first.json()["choices"][0]["message"]["content"]
    # streamed, the session from the header, only the new message sent with the history
    r = await c.post(
        CHAT,
        json={
            "messages": user("What is my name?"),
            "max_tokens": 6,
            "stream": True,
            "session_history": True,
        },
        headers={"X-Session-ID": "s-1"},
    )
    assert r.status_code == 200
    second = "".join(
        e["choices"][0]["delta"].get("content") or "" for e in sse_json(r.text) if e["choices"]
    )
    # the history went into the prompt: more prompt tokens than the message alone needs
    conv = (await c.get("/v1/conversations/s-1")).json()
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant", "user", "assistant"]
    assert [m["content"] for m in conv["messages"]] == [
        "My name is Ada.",
        answer,
        "What is my name?",
        second,
    ]
    assert all(m["model"] == "smollm2:135m" for m in conv["messages"])
    times = [m["created_at"] for m in conv["messages"]]
    assert times == sorted(times)
    last = (await c.get("/v1/conversations/s-1", params={"limit": 1})).json()["messages"]
    assert [m["content"] for m in last] == [second]
    # native chat, same session
    r = await c.post(
        "/chat",
        json={"messages": user("Bye."), "max_tokens": 3, "session_id": "s-1"},
    )
    assert r.status_code == 200
    conv = (await c.get("/v1/conversations/s-1", params={"limit": 10})).json()["messages"]
    assert len(conv) == 6 and conv[-2]["content"] == "Bye."
    # other sessions are untouched by a delete
    await c.post(CHAT, json={"messages": user("Other."), "max_tokens": 2, "session_id": "s-2"})
    gone = await c.delete("/v1/conversations/s-1")
    assert gone.status_code == 200 and gone.json()["messages"] == 6
    assert (await c.get("/v1/conversations/s-1")).json()["messages"] == []
    assert len((await c.get("/v1/conversations/s-2")).json()["messages"]) == 2
    # no session: nothing stored
    records = await store.usage_records()
    assert len(records) == 4


async def test_session_history_is_prepended_to_the_prompt(store_app: AppHandle) -> None:
    c = store_app.client
    alone = await c.post(CHAT, json={"messages": user("And then?"), "max_tokens": 1})
    await c.post(
        CHAT, json={"messages": user("Tell me a story."), "max_tokens": 4, "session_id": "h"}
    )
    with_history = await c.post(
        CHAT,
        json={
            "messages": user("And then?"),
            "max_tokens": 1,
            "session_id": "h",
            "session_history": True,
        },
    )
    without = with_history.json()["usage"]["prompt_tokens"]
    assert without > alone.json()["usage"]["prompt_tokens"] + 5


@pytest.mark.parametrize(
    ("body", "headers", "param"),
    [
        ({"session_id": ""}, {}, "session_id"),
        ({"session_id": "a b"}, {}, "session_id"),
        ({"session_id": "x" * 129}, {}, "session_id"),
        ({"session_id": 5}, {}, "session_id"),
        ({"session_history": "yes", "session_id": "s"}, {}, "session_history"),
        ({"session_history": True}, {}, "session_history"),
        ({}, {"X-Session-ID": "a/b"}, "X-Session-ID"),
    ],
)
async def test_bad_session_fields_are_400(
    store_app: AppHandle, body: dict[str, Any], headers: dict[str, str], param: str
) -> None:
    r = await store_app.client.post(
        CHAT, json={"messages": user("hi"), "max_tokens": 1, **body}, headers=headers
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


async def test_bad_store_queries_are_400(store_app: AppHandle) -> None:
    c = store_app.client
    for path, params, param in [
        ("/v1/stats", {"hours": "x"}, "hours"),
        ("/v1/stats", {"hours": "0"}, "hours"),
        ("/v1/stats", {"hours": "nan"}, "hours"),
        ("/v1/conversations/s", {"limit": "0"}, "limit"),
        ("/v1/conversations/s", {"limit": "a"}, "limit"),
        ("/v1/conversations/s", {"key_id": "a/b"}, "key_id"),
        ("/v1/conversations/s", {"key_id": "k" * 65}, "key_id"),
    ]:
        r = await c.get(path, params=params)
        assert r.status_code == 400, (path, params, r.text)
        assert r.json()["error"]["param"] == param
    assert (await c.get("/v1/conversations/a%20b")).status_code == 400


async def test_without_a_store_the_routes_say_503(real: AppHandle) -> None:
    r = await real.client.get("/v1/stats")
    assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable"
    r = await real.client.post(
        CHAT, json={"messages": user("hi"), "max_tokens": 1, "session_id": "s"}
    )
    assert r.status_code == 200  # sessions are simply not stored


async def test_database_down_or_locked_mid_load_loses_nothing(
    store_app: AppHandle, store: Store, database_url: str, request: pytest.FixtureRequest
) -> None:
    """Stop the PostgreSQL server / lock the SQLite file while requests run: clients are
    served; once the database is back the records equal the requests, none twice."""
    c = store_app.client

    async def burst(n: int) -> None:
        for i in range(n):
            r = await c.post(COMPLETIONS, json={"prompt": f"Count {i}:", "max_tokens": 3})
            assert r.status_code == 200, r.text

    async def store_metrics() -> dict[str, float]:
        text = (await c.get("/metrics")).text
        return {
            sample.name: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name.startswith("inferd_store_")
        }

    await burst(2)
    assert len(await store.usage_records()) == 2
    m = await store_metrics()
    assert m["inferd_store_healthy"] == 1 and m["inferd_store_spool_bytes"] == 0
    if database_url.startswith("sqlite"):
        path = database_url.removeprefix("sqlite:///")
        lock = sqlite3.connect(path, timeout=5)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            await burst(6)
            await asyncio.sleep(1.0)  # the writer tries, finds the file locked, keeps them
            assert not store.writer.healthy
            m = await store_metrics()
            assert m["inferd_store_healthy"] == 0 and m["inferd_store_spool_bytes"] > 0
            assert m["inferd_store_write_errors_total"] >= 1
        finally:
            lock.rollback()
            lock.close()
    else:
        server = request.getfixturevalue("postgres")
        server.stop()
        try:
            await burst(6)
            await asyncio.sleep(1.0)
            assert not store.writer.healthy
            assert store.writer.spool_path.stat().st_size > 0  # spooled on disk
            r = await c.get("/v1/stats")
            assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable"
        finally:
            server.start()
    assert await store.writer.flush(30)
    assert store.writer.healthy
    m = await store_metrics()
    assert m["inferd_store_healthy"] == 1 and m["inferd_store_spool_bytes"] == 0
    assert m["inferd_store_records_written_total"] == m["inferd_store_records_submitted_total"]
    records = await store.usage_records()
    assert len(records) == 8
    assert len({r.request_id for r in records}) == 8
    assert all(r.status is UsageStatus.LENGTH for r in records)


async def test_the_spool_is_replayed_at_start_without_duplicates(
    database_url: str, tmp_path: Path
) -> None:
    spool = tmp_path / "left-behind.jsonl"
    now = datetime.now(UTC)
    records = [
        UsageRecord(f"r{i}", "openai", "/v1/completions", UsageStatus.OK, now, 0.1)
        for i in range(5)
    ]
    first = open_store(database_url, spool)
    await first.start()
    for r in records[:3]:
        first.record(r)
    assert await first.writer.flush(10)
    await first.close()
    # a crashed process left all five in its spool, three of them already written,
    # and a torn last line
    left = b"".join(encode(r) for r in records) + b'{"kind":"usage","request_id":"torn"'
    spool.write_bytes(spool.read_bytes() + left)
    second = open_store(database_url, spool)
    await second.start()
    try:
        second.record(records[0])  # and one handed over again
        got = await second.usage_records()
        assert sorted(r.request_id for r in got) == [f"r{i}" for i in range(5)]
        assert got[0].created_at == now
        assert spool.stat().st_size == 0
    finally:
        await second.close()


async def test_a_database_at_0001_upgrades_and_keeps_its_sessions(database_url: str) -> None:
    """Revision 0002 widens session ids for `key_id/session_id`: an existing conversation
    stays readable (the namespace without a key), and a key's longest session id fits."""
    import dataclasses

    import sqlalchemy as sa
    from alembic import command

    from inferd.storage import db
    from inferd.storage.repository import Repository
    from inferd.storage.tables import messages

    engine = db.create_engine(database_url)
    try:

        def to_0001(connection: Any) -> None:
            cfg = db.alembic_config()
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "0001")

        async with engine.begin() as conn:
            await conn.run_sync(to_0001)
        assert await db.current_revision(engine) == "0001"
        repo = Repository(engine)
        now = datetime.now(UTC)

        def message(session: str, rid: str) -> MessageRecord:
            return MessageRecord(session, rid, 0, "user", "hello", now, "m")

        old = message("old", "r0")
        async with engine.begin() as conn:  # as 0001 has it: no later column (response)
            await repo._touch_sessions(conn, [old])
            row = {k: v for k, v in dataclasses.asdict(old).items() if k != "response"}
            await conn.execute(sa.insert(messages), [row])
        await db.upgrade(engine)
        assert await db.current_revision(engine) == db.head_revision()
        longest = "key_0123456789ab/" + "s" * 128
        await repo.write_batch([], [message(longest, "r1")])
        assert [m.content for m in await repo.conversation("old")] == ["hello"]
        assert [m.session_id for m in await repo.conversation(longest)] == [longest]
    finally:
        await engine.dispose()


async def test_retention_deletes_old_usage_and_content(database_url: str, tmp_path: Path) -> None:
    store = open_store(
        database_url, tmp_path / "s.jsonl", usage_retention_days=7, content_retention_days=1
    )
    await store.start()
    try:
        now = datetime.now(UTC)
        for i, age in enumerate((0, 3, 10)):
            at = now - timedelta(days=age)
            store.record(
                UsageRecord(f"u{i}", "openai", "/v1/chat/completions", UsageStatus.OK, at, 0.1)
            )
            store.remember([MessageRecord(f"s{i}", f"u{i}", 0, "user", "hello", at)])
        assert await store.writer.flush(10)
        assert await store.apply_retention(now) == (1, 2)
        assert [r.request_id for r in await store.usage_records()] == ["u1", "u0"]
        assert len(await store.conversation("s0")) == 1
        assert await store.conversation("s1") == await store.conversation("s2") == []
    finally:
        await store.close()


async def test_the_callers_key_is_recorded(fake_app: FakeFactory, store: Store) -> None:
    """The guard marks the caller with `request.state.key_id`; its records carry it, and the
    stats (an admin route) break usage down by key."""
    async with fake_app(store=store) as h:
        ring = h.app.state.keys
        user_key = await ring.create("user")
        admin_key = await ring.create("ops", admin=True)
        r = await h.client.post(
            CHAT,
            json={"messages": user("hi"), "max_tokens": 2},
            headers={"Authorization": f"Bearer {user_key.secret}"},
        )
        assert r.status_code == 200
        stats = await h.client.get(
            "/v1/stats", headers={"Authorization": f"Bearer {user_key.secret}"}
        )
        assert stats.status_code == 403  # stats are for admins
        stats = await h.client.get(
            "/v1/stats", headers={"Authorization": f"Bearer {admin_key.secret}"}
        )
        by_key = stats.json()["by_key"]
    assert list(by_key) == [user_key.record.id]
    (record,) = await store.usage_records()
    assert record.key_id == user_key.record.id


async def test_sessions_belong_to_the_key_that_uses_them(
    fake_app: FakeFactory, store: Store
) -> None:
    """The same session id under two keys is two conversations: neither key's history goes
    into the other's prompt, and neither adds to the other's session."""
    async with fake_app(store=store) as h:
        ring = h.app.state.keys
        alice, bob = await ring.create("alice"), await ring.create("bob")
        admin = await ring.create("ops", admin=True)

        async def chat(key: Any, text: str, *, history: bool = False) -> dict[str, Any]:
            body = {"messages": user(text), "max_tokens": 2, "session_history": history}
            r = await h.client.post(
                CHAT,
                json={**body, "session_id": "s"},
                headers={"Authorization": f"Bearer {key.secret}"},
            )
            assert r.status_code == 200, r.text
            return r.json()  # type: ignore[no-any-return]

        await chat(alice, "My secret is 42.")
        bare = (await chat(bob, "What is the secret?"))["usage"]["prompt_tokens"]
        again = await chat(bob, "What is the secret?", history=True)
        mine = await chat(alice, "What is the secret?", history=True)
        assert again["usage"]["prompt_tokens"] > bare  # bob's own first turn is in
        # each got exactly its own one earlier exchange (the fake model counts bytes, and
        # both earlier answers are the same 2 tokens): only the first messages differ
        diff = mine["usage"]["prompt_tokens"] - again["usage"]["prompt_tokens"]
        assert diff == len("My secret is 42.") - len("What is the secret?")

        async def conversation(key_id: str | None) -> list[str]:
            params = {"key_id": key_id} if key_id else {}
            r = await h.client.get(
                "/v1/conversations/s",
                params=params,
                headers={"Authorization": f"Bearer {admin.secret}"},
            )
            assert r.status_code == 200, r.text
            return [m["content"] for m in r.json()["messages"] if m["role"] == "user"]

        assert await conversation(alice.record.id) == ["My secret is 42.", "What is the secret?"]
        assert await conversation(bob.record.id) == ["What is the secret?"] * 2
        assert await conversation(None) == []
        # a key that is not an admin reads its own sessions only: naming another key is a 403
        # (naming itself is allowed), and without key_id it gets its own, not the key-less one
        for other in (alice.record.id, "key_unknown"):
            r = await h.client.get(
                "/v1/conversations/s",
                params={"key_id": other},
                headers={"Authorization": f"Bearer {bob.secret}"},
            )
            assert r.status_code == 403, r.text
            assert r.json()["error"]["param"] == "key_id"
            r = await h.client.delete(
                "/v1/conversations/s",
                params={"key_id": other},
                headers={"Authorization": f"Bearer {bob.secret}"},
            )
            assert r.status_code == 403, r.text
        for params in ({}, {"key_id": bob.record.id}):
            r = await h.client.get(
                "/v1/conversations/s",
                params=params,
                headers={"Authorization": f"Bearer {bob.secret}"},
            )
            assert r.status_code == 200, r.text
            assert [m["content"] for m in r.json()["messages"] if m["role"] == "user"] == [
                "What is the secret?"
            ] * 2
        gone = await h.client.delete(
            "/v1/conversations/s", headers={"Authorization": f"Bearer {bob.secret}"}
        )
        assert gone.status_code == 200 and gone.json()["messages"] == 4
        assert await conversation(bob.record.id) == []
        # alice's session of the same id is untouched
        assert await conversation(alice.record.id) == ["My secret is 42.", "What is the secret?"]
        # an admin deletes another key's session by naming it
        gone = await h.client.delete(
            "/v1/conversations/s",
            params={"key_id": alice.record.id},
            headers={"Authorization": f"Bearer {admin.secret}"},
        )
        assert gone.json()["messages"] == 4
        assert await conversation(alice.record.id) == []


async def test_log_content_stores_chats_without_a_session(
    store: Store, store_registry: ModelRegistry
) -> None:
    handle = AppHandle(Settings(log_content=True), store_registry, store)
    try:
        r = await handle.client.post(CHAT, json={"messages": user("Hello!"), "max_tokens": 3})
        assert r.status_code == 200
    finally:
        await handle.client.aclose()
    (record,) = await store.usage_records()
    # stored under the request's id, which is also the usage record's
    conv = await store.conversation(record.request_id)
    assert [(m.role, m.content) for m in conv] == [
        ("user", "Hello!"),
        ("assistant", r.json()["choices"][0]["message"]["content"]),
    ]


async def test_retention_runs_once_at_start(database_url: str, tmp_path: Path) -> None:
    old = datetime.now(UTC) - timedelta(days=30)
    first = open_store(database_url, tmp_path / "a.jsonl")
    await first.start()
    first.record(UsageRecord("old", "openai", "/v1/completions", UsageStatus.OK, old, 0.1))
    assert await first.writer.flush(10)
    await first.close()
    second = open_store(database_url, tmp_path / "b.jsonl", usage_retention_days=7)
    await second.start()  # the first pass ran before start returned
    try:
        second.record(UsageRecord("new", "openai", "/v1/completions", UsageStatus.OK, old, 0.1))
        assert [r.request_id for r in await second.usage_records()] == ["new"]
    finally:
        await second.close()


async def test_the_lifespan_runs_a_given_store_whose_engine_the_keys_share(
    database_url: str, tmp_path: Path
) -> None:
    """How `inferd serve` wires it: one database engine for the keys and the store; with
    open_store the app's lifespan starts the store (migrating it) and closes it at the end."""
    from inferd.api.app import create_app
    from inferd.engine.backends.fake import FakeBackend
    from inferd.models.spec import ModelSpec
    from inferd.security.keys import KeyRing
    from inferd.storage.repository import Repository

    store = open_store(database_url, tmp_path / "spool.jsonl")
    keys = KeyRing(Repository(store.engine), max_age=60)
    spec = ModelSpec("fake", Path("fake.gguf"), ModelConfig(path=Path("fake.gguf")), ("default",))
    registry = ModelRegistry([spec], BackendEngineFactory(lambda _spec: FakeBackend()))  # type: ignore[arg-type]
    app = create_app(Settings(), registry, keys=keys, store=store, open_store=True)
    async with app.router.lifespan_context(app):
        assert app.state.store is store and store.migrated
        key = await keys.create("user")  # written through the store's engine
        await registry.load_all()
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
        ) as client:
            r = await client.post(
                CHAT,
                json={"messages": user("hi"), "max_tokens": 2},
                headers={"Authorization": f"Bearer {key.secret}"},
            )
            assert r.status_code == 200
        assert await store.writer.flush(10)
        (record,) = await store.usage_records()
        assert record.key_id == key.record.id
    assert store.writer.closed  # the lifespan closed the store it was given
