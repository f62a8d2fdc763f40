"""The store in a real `inferd serve` process: crashes, disconnects, the CLI. (A stream in
flight at SIGTERM keeps its record: tests/e2e/test_server.py.)"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

import inferd.storage
from tests.conftest import LiveServer

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"


def cli(*args: str, data_dir: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "INFERD_DATA_DIR": data_dir, "INFERD_DATABASE_URL": "", "DATABASE_URL": ""}
    return subprocess.run(
        [sys.executable, "-m", "inferd", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def usage_rows(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM usage ORDER BY id")]


def wait_rows(db: Path, n: int, timeout: float = 20) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        if db.exists():
            try:
                rows = usage_rows(db)
            except sqlite3.OperationalError:
                rows = []
            if len(rows) >= n:
                return rows
        time.sleep(0.1)
    return rows


def test_kill_9_keeps_the_completed_responses_records_and_a_closed_stream_is_recorded() -> None:
    """Killed (-9) right after five responses, a server restarted on the same data directory
    replays their records from the spool. On it, a stream the client closes is recorded
    cancelled with its tokens so far; SIGTERM writes the records and exits 0; `inferd stats`
    shows them."""
    server = LiveServer.started()
    try:
        usages = []
        for i in range(5):
            r = httpx.post(
                f"{server.url}{COMPLETIONS}",
                json={"prompt": f"Item {i}:", "max_tokens": 4},
                timeout=60,
            )
            assert r.status_code == 200
            usages.append(r.json()["usage"])
        os.kill(server.proc.pid, signal.SIGKILL)  # right after the last response
        server.proc.wait(10)
    finally:
        server.stop()
    db = Path(server.data_dir) / "inferd.db"
    # restart on the same data directory: the spool is replayed
    again = LiveServer.started(env={"INFERD_DATA_DIR": server.data_dir})
    try:
        rows = wait_rows(db, 5)
        close_a_stream_early(again.url)
    finally:
        assert again.stop() == 0  # SIGTERM: the records are written before it exits
    assert len(rows) == 5, rows
    assert len({r["request_id"] for r in rows}) == 5
    assert sorted(r["completion_tokens"] for r in rows) == sorted(
        u["completion_tokens"] for u in usages
    )
    assert sum(r["prompt_tokens"] for r in rows) == sum(u["prompt_tokens"] for u in usages)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    rows = usage_rows(db)
    assert [r["route"] for r in rows] == [COMPLETIONS] * 5 + [CHAT, COMPLETIONS]
    cancelled = rows[5]
    assert cancelled["status"] == "cancelled"
    assert cancelled["finish_reason"] == "abort"
    assert 5 <= cancelled["completion_tokens"] < 400
    assert cancelled["time_to_first_token"] is not None
    assert rows[6]["status"] == "length"
    # and the terminal shows the same
    out = cli("stats", "--json", data_dir=server.data_dir)
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout)
    assert stats["total"]["requests"] == 7 and stats["total"]["cancelled"] == 1
    assert stats["by_dialect"]["openai"]["completion_tokens"] == sum(
        r["completion_tokens"] for r in rows
    )
    table = cli("stats", data_dir=server.data_dir)
    assert table.returncode == 0 and "by model" in table.stdout


def close_a_stream_early(url: str) -> None:
    """A long stream closed by the client after a few chunks, then a short request."""
    body = {
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": 400,
        "ignore_eos": True,
        "stream": True,
    }
    seen = 0
    with (
        httpx.Client(timeout=60) as client,
        client.stream("POST", f"{url}{CHAT}", json=body) as resp,
    ):
        assert resp.status_code == 200
        lines = resp.iter_lines()  # kept referenced: dropping it closes the connection
        for line in lines:
            seen += line.startswith("data: ")
            if seen >= 6:
                break
    # the server has seen the client go once the sequence is gone
    deadline = time.monotonic() + 30
    while httpx.get(f"{url}/health", timeout=5).json()["models"][0]["running"]:
        assert time.monotonic() < deadline, "the closed stream's sequence is still running"
        time.sleep(0.05)
    ok = httpx.post(f"{url}{COMPLETIONS}", json={"prompt": "Hi", "max_tokens": 2}, timeout=60)
    assert ok.status_code == 200


def test_db_upgrade_creates_the_schema(tmp_path: Path) -> None:
    out = cli("db", "upgrade", data_dir=str(tmp_path))
    assert out.returncode == 0, out.stderr
    head = max(
        f.name[:4]
        for f in (Path(inferd.storage.__file__).parent / "migrations" / "versions").glob("0*.py")
    )
    assert f"revision {head}" in out.stdout
    with sqlite3.connect(tmp_path / "inferd.db") as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert {"usage", "sessions", "messages", "api_keys"} <= tables
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again = cli("db", "upgrade", data_dir=str(tmp_path))
    assert again.returncode == 0
    bad = cli("db", "upgrade", "--database-url", "mysql://h/db", data_dir=str(tmp_path))
    assert bad.returncode == 2 and "unsupported database" in bad.stderr
    assert "Traceback" not in bad.stderr
