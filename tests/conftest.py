"""Shared fixtures: the real bundled model in-process, a fake-backend app, a live server."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from inferd.api.app import create_app
from inferd.config import ModelConfig, Settings
from inferd.engine.backends.fake import FakeBackend
from inferd.models.loading import llamacpp_loader
from inferd.models.registry import ModelRegistry
from inferd.models.spec import BUNDLED_ALIASES, BUNDLED_NAME, ModelSpec, bundled_model_path

# Small enough to keep the tests quick, big enough for every test's prompts.
TEST_N_CTX = 2048


@pytest.fixture(scope="session")
def model_path() -> Path:
    return bundled_model_path()


def bundled_spec(path: Path, **config: object) -> ModelSpec:
    cfg = ModelConfig(path=path, n_ctx=TEST_N_CTX, **config)  # type: ignore[arg-type]
    return ModelSpec(BUNDLED_NAME, path, cfg, BUNDLED_ALIASES)


class AppHandle:
    """An app with its registry loaded, and an in-process client to it."""

    def __init__(self, settings: Settings, registry: ModelRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self.app = create_app(settings, registry)
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://127.0.0.1", timeout=120
        )

    async def __aenter__(self) -> AppHandle:
        await self.registry.load_all()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()
        await self.registry.close()

    def engine(self, name: str | None = None):  # type: ignore[no-untyped-def]
        return self.registry.get(name).engine


@pytest.fixture(scope="session")
async def real(model_path: Path) -> AsyncIterator[AppHandle]:
    """The app on the real engine and the bundled model, shared by the integration tests."""
    registry = ModelRegistry([bundled_spec(model_path)], llamacpp_loader())
    async with AppHandle(Settings(), registry) as handle:
        yield handle


FakeFactory = Callable[..., AppHandle]


@pytest.fixture
def fake_app() -> FakeFactory:
    """Build an app over FakeBackend(**kwargs); use as `async with fake_app(...) as h`."""

    def make(settings: Settings | None = None, **backend: object) -> AppHandle:
        spec = ModelSpec(
            "fake", Path("fake.gguf"), ModelConfig(path=Path("fake.gguf")), ("default",)
        )
        registry = ModelRegistry([spec], lambda _spec: FakeBackend(**backend))  # type: ignore[arg-type]
        return AppHandle(settings or Settings(), registry)

    return make


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """`inferd serve` in a subprocess on a free 127.0.0.1 port."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        # an empty models directory of its own unless the test gives one: the user's
        # ~/.local/share/inferd/models must not change what the server serves
        self._models_dir = tempfile.mkdtemp(prefix="inferd-test-models-")
        env = {"INFERD_MODELS_DIR": self._models_dir, **(env or {})}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "inferd", "serve", "--port", str(self.port)]
        cmd += ["--n-ctx", str(TEST_N_CTX), "--log-level", "warning", *args]
        # its own data directory (database, keys), never the user's
        own = {"INFERD_DATA_DIR": tempfile.mkdtemp(prefix="inferd-test-")}
        self.proc = subprocess.Popen(
            cmd,
            env={**os.environ, **own, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read() if self.proc.stdout else ""
                raise RuntimeError(f"inferd serve exited with {self.proc.returncode}:\n{out}")
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError("inferd serve did not become ready")

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self._models_dir, ignore_errors=True)
        return self.proc.returncode

    def output(self) -> str:
        return self.proc.stdout.read() if self.proc.stdout else ""


@pytest.fixture(scope="session")
def live_server() -> Iterator[LiveServer]:
    """One server on the bundled model for conformance and e2e tests."""
    server = LiveServer()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


async def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()
