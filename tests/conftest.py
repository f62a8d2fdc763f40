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
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from inferd.api.app import create_app
from inferd.config import ModelConfig, Settings
from inferd.engine.backends.fake import FakeBackend
from inferd.models.engines import BackendEngineFactory
from inferd.models.loading import llamacpp_factory
from inferd.models.registry import ModelRegistry
from inferd.models.spec import BUNDLED_ALIASES, BUNDLED_NAME, ModelSpec, bundled_model_path
from inferd.storage.store import Store
from tests.postgres import PostgresServer, postgres_bindir

# Small enough to keep the tests quick, big enough for every test's prompts.
TEST_N_CTX = 2048

# No flash-attention measurement at every server start (in-process or a subprocess, which
# inherits this): the tests that tune ask for it themselves.
os.environ.setdefault("INFERD_TUNE_KERNELS", "false")

# Fixtures that load the bundled model (in-process or in a server subprocess): a test using one,
# or living under tests/e2e or tests/conformance (servers on the real model), is marked `model`.
# `make test-fast` runs the rest (`-m "not model"`): unit tests and the fake backend.
_MODEL_FIXTURES = frozenset({"model_path", "real", "live_server", "store_registry", "store_app"})
_MODEL_DIRS = ("e2e", "conformance")
# and files named for a real runtime: *_real.py, the torch backend's and the converter's
_MODEL_FILES = ("test_torch_", "test_convert_")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        in_model_dir = any(part in _MODEL_DIRS for part in item.path.parts)
        stem = item.path.stem
        named = stem.endswith("_real") or stem.startswith(_MODEL_FILES)
        if in_model_dir or named or fixtures & _MODEL_FIXTURES:
            item.add_marker(pytest.mark.model)


@pytest.fixture(scope="session")
def model_path() -> Path:
    return bundled_model_path()


def bundled_spec(path: Path, **config: object) -> ModelSpec:
    cfg = ModelConfig(path=path, n_ctx=TEST_N_CTX, **config)  # type: ignore[arg-type]
    return ModelSpec(BUNDLED_NAME, path, cfg, BUNDLED_ALIASES)


class AppHandle:
    """An app with its registry loaded, and an in-process client to it."""

    def __init__(
        self, settings: Settings, registry: ModelRegistry, store: Store | None = None
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.store = store
        self.app = create_app(settings, registry, store=store)
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
    registry = ModelRegistry([bundled_spec(model_path)], llamacpp_factory())
    async with AppHandle(Settings(), registry) as handle:
        yield handle


FakeFactory = Callable[..., AppHandle]


@pytest.fixture
def fake_app() -> FakeFactory:
    """Build an app over FakeBackend(**kwargs); use as `async with fake_app(...) as h`."""

    def make(
        settings: Settings | None = None, store: Store | None = None, **backend: object
    ) -> AppHandle:
        spec = ModelSpec(
            "fake", Path("fake.gguf"), ModelConfig(path=Path("fake.gguf")), ("default",)
        )
        registry = ModelRegistry([spec], BackendEngineFactory(lambda _spec: FakeBackend(**backend)))
        return AppHandle(settings or Settings(), registry, store)

    return make


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _remove_dirs(*dirs: str) -> None:
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


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
        # the store's SQLite file and spool go to a temporary directory, not the user's
        self.data_dir = tempfile.mkdtemp(prefix="inferd-data-")
        # tests read the data directory after stop(); it goes with this object (or at exit)
        weakref.finalize(self, _remove_dirs, self._models_dir, self.data_dir)
        self.proc = subprocess.Popen(
            cmd,
            env={
                **os.environ,
                "INFERD_DATA_DIR": self.data_dir,
                # no per-machine kernel measurement at each start (tests/test_tuning*)
                "INFERD_TUNE_KERNELS": "false",
                "INFERD_DATABASE_URL": "",
                "DATABASE_URL": "",
                **env,
            },
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


# ---- the store: SQLite and a real PostgreSQL ---------------------------------------------


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session (skips when none is installed)."""
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip(
            "PostgreSQL is not installed (apt-get install postgresql; .ci/run does it): "
            "no /usr/lib/postgresql/*/bin/initdb"
        )
    server = PostgresServer(bindir, free_port())
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'inferd.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.url(server.create_database())


def open_store(url: str, spool: Path, **kwargs: object) -> Store:
    from inferd.storage import db

    return Store(
        db.create_engine(url, busy_timeout_ms=200),
        spool,
        flush_interval=0.05,
        retry_interval=0.2,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
async def store(database_url: str, tmp_path: Path) -> AsyncIterator[Store]:
    """A started store on each kind of database."""
    s = open_store(database_url, tmp_path / "spool.jsonl")
    await s.start()
    try:
        yield s
    finally:
        await asyncio.wait_for(s.close(), 30)


@pytest.fixture(scope="session")
async def store_registry(model_path: Path) -> AsyncIterator[ModelRegistry]:
    """A registry of its own for apps with a store (each app sets the registry's hooks)."""
    registry = ModelRegistry([bundled_spec(model_path)], llamacpp_factory())
    await registry.load_all()
    try:
        yield registry
    finally:
        await registry.close()


@pytest.fixture
async def store_app(store: Store, store_registry: ModelRegistry) -> AsyncIterator[AppHandle]:
    """The app on the real engine with a store, in-process."""
    handle = AppHandle(Settings(), store_registry, store)
    try:
        yield handle
    finally:
        await handle.client.aclose()
