"""Where `inferd run`/`ps`/`stop`/`cp` find the server (INFERD_HOST, INFERD_API_KEY), and
those commands against a server (the app on the fake backend, over real HTTP)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from inferd.cli.app import app
from inferd.cli.client import Client, ServerError, Unreachable, is_local, server_url
from inferd.cli.local import LocalServer
from inferd.cli.remote import until
from inferd.config import ModelConfig, Settings
from inferd.engine.backends.fake import FakeBackend
from inferd.models.engines import BackendEngineFactory
from inferd.models.registry import ModelRegistry
from inferd.models.spec import ModelSpec
from inferd.models.store import ModelStore
from inferd.security.keys import KeyRing
from tests.conftest import AppHandle, FakeFactory, free_port


@pytest.mark.parametrize(
    ("host", "port", "url"),
    [
        ("127.0.0.1", 8000, "http://127.0.0.1:8000"),
        ("0.0.0.0", 9000, "http://127.0.0.1:9000"),  # a wildcard is reached on loopback
        ("::", 8000, "http://[::1]:8000"),
        ("::1", 8000, "http://[::1]:8000"),
        ("[::1]:9001", 8000, "http://[::1]:9001"),
        ("gpu-box", 8000, "http://gpu-box:8000"),
        ("gpu-box:9002", 8000, "http://gpu-box:9002"),
        ("https://gpu-box", 8000, "https://gpu-box:8000"),
        ("http://gpu-box:11434", 8000, "http://gpu-box:11434"),
    ],
)
def test_inferd_host_is_a_host_a_host_and_port_or_a_url(host: str, port: int, url: str) -> None:
    assert server_url(Settings(host=host, port=port)) == url


def test_the_environment_names_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERD_HOST", "example.org:1234")
    assert server_url(Settings()) == "http://example.org:1234"
    monkeypatch.delenv("INFERD_HOST")
    monkeypatch.setenv("INFERD_PORT", "8123")
    assert server_url(Settings()) == "http://127.0.0.1:8123"


def test_only_this_machine_is_local() -> None:
    assert is_local("http://127.0.0.1:8000") and is_local("http://[::1]:1")
    assert is_local("http://localhost:8000")
    assert not is_local("http://gpu-box:8000") and not is_local("http://10.0.0.2:8000")


def test_no_server_is_unreachable() -> None:
    with Client(f"http://127.0.0.1:{free_port()}") as client:
        assert not client.alive()
        with pytest.raises(Unreachable, match="cannot reach an inferd server"):
            client.call("GET", "/api/ps")


@pytest.fixture
def server(fake_app: FakeFactory) -> Iterator[tuple[AppHandle, str]]:
    handle = fake_app()
    with LocalServer(handle.app) as local:
        yield handle, local.url


def inferd(url: str, *args: str, **env: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env={"INFERD_HOST": url, "COLUMNS": "200", **env})
    return result.exit_code, result.output


def test_ps_and_stop(server: tuple[AppHandle, str]) -> None:
    handle, url = server
    code, text = inferd(url, "ps")
    assert code == 0, text
    assert "NAME" in text and "fake" in text and "Forever" in text  # no keep_alive: loaded
    code, text = inferd(url, "stop", "default")  # an alias names the model
    assert (code, text.strip()) == (0, "stopped fake")
    assert handle.registry.entry("fake").model is None
    code, text = inferd(url, "ps")
    assert code == 0 and "fake" not in text
    code, text = inferd(url, "stop", "fake")
    assert code == 1 and "model 'fake' is not loaded (unloaded)" in text
    code, text = inferd(url, "stop", "nope")
    assert code == 1 and "nope" in text


def test_ps_without_a_server(tmp_path: Path) -> None:
    code, text = inferd(f"http://127.0.0.1:{free_port()}", "ps")
    assert code == 1 and "cannot reach an inferd server" in text


def test_cp_through_the_server_then_without_one(tmp_path: Path) -> None:
    spec = ModelSpec("fake", Path("fake.gguf"), ModelConfig(path=Path("fake.gguf")), ())
    store = ModelStore(tmp_path / "served")
    registry = ModelRegistry([spec], BackendEngineFactory(lambda _spec: FakeBackend()), store=store)
    handle = AppHandle(Settings(), registry)
    with LocalServer(handle.app) as local:
        code, text = inferd(local.url, "cp", "fake", "mine")
        assert code == 0, text
        assert registry.entry("mine:latest").spec.name == "fake"
        assert store.aliases() == {"mine": "fake"}
    # no server: the name is saved in the models directory a server would read
    models = tmp_path / "models"
    code, text = inferd(
        f"http://127.0.0.1:{free_port()}",
        "cp",
        "smollm2",
        "small",
        INFERD_MODELS_DIR=str(models),
    )
    assert code == 0, text
    listing = CliRunner().invoke(
        app, ["list"], env={"INFERD_MODELS_DIR": str(models), "COLUMNS": "200"}
    )
    assert "small" in listing.output
    code, text = inferd(f"http://127.0.0.1:{free_port()}", "cp", "nope", "x")
    assert code == 1 and "nope" in text


def test_a_remote_server_that_is_down_is_not_replaced_by_a_local_copy() -> None:
    code, text = inferd("http://192.0.2.1:9", "cp", "smollm2", "small")  # TEST-NET-1
    assert code == 1 and "cannot reach an inferd server at http://192.0.2.1:9" in text


def test_keys_are_sent_as_bearer_tokens(fake_app: FakeFactory) -> None:
    handle = fake_app(settings=Settings(require_auth=True))
    keys: KeyRing = handle.app.state.keys
    secret = asyncio.run(keys.create("ops", admin=True)).secret
    with LocalServer(handle.app) as local:
        code, text = inferd(local.url, "ps", INFERD_API_KEY="")
        assert code == 1 and "set INFERD_API_KEY" in text
        code, text = inferd(local.url, "ps", INFERD_API_KEY=secret)
        assert code == 0, text
        with Client(local.url, api_key="wrong") as client, pytest.raises(ServerError) as info:
            client.call("GET", "/api/ps")
        assert info.value.status == 401


def test_until_reads_like_ollama_ps() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)

    def at(delta: timedelta) -> str:
        return (now + delta).isoformat().replace("+00:00", "Z")

    assert until(at(timedelta(minutes=4, seconds=59)), now) == "4 minutes from now"
    assert until(at(timedelta(seconds=1)), now) == "1 second from now"
    assert until(at(timedelta(hours=2)), now) == "2 hours from now"
    assert until(at(timedelta(days=36500)), now) == "Forever"
    assert until(at(timedelta(seconds=-3)), now) == "Stopping..."
