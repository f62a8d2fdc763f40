"""Shared fixtures: the real bundled model in-process, a fake-backend app, a live server.
The helpers that start them are in tests/live.py."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from inferd.config import ModelConfig, Settings
from inferd.engine.backends.fake import FakeBackend
from inferd.models.engines import BackendEngineFactory
from inferd.models.loading import llamacpp_factory
from inferd.models.registry import ModelRegistry
from inferd.models.spec import ModelSpec, bundled_model_path
from inferd.storage.store import Store
from tests.live import (
    SHORT_N_CTX,
    TEST_N_CTX,
    AppHandle,
    LiveServer,
    bundled_app,
    bundled_spec,
    free_port,
)
from tests.postgres import PostgresServer, postgres_bindir

# the helpers many test modules import from here
__all__ = ["TEST_N_CTX", "AppHandle", "LiveServer", "bundled_spec", "free_port"]

# No flash-attention measurement at every server start (in-process or a subprocess, which
# inherits this): the tests that tune ask for it themselves.
os.environ.setdefault("INFERD_TUNE_KERNELS", "false")

# Fixtures that load the bundled model (in-process or in a server subprocess): a test using one,
# or living under tests/e2e or tests/conformance (servers on the real model), is marked `model`.
# `make test-fast` runs the rest (`-m "not model"`): unit tests and the fake backend.
_MODEL_FIXTURES = frozenset(
    {"model_path", "real", "short_ctx", "live_server", "store_registry", "store_app", "tool_server"}
    # the checkpoints tests/checkpoints.py builds from the bundled model (transformers)
    | {"smollm2_dir", "moe_dir", "mixtral_dir", "tiny_llama_dir"}
)
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


@pytest.fixture(scope="session")
async def real(model_path: Path) -> AsyncIterator[AppHandle]:
    """The app on the real engine and the bundled model, shared by the integration tests."""
    async with bundled_app(model_path) as handle:
        yield handle


@pytest.fixture(scope="session")
async def short_ctx(model_path: Path) -> AsyncIterator[AppHandle]:
    """The app on the real engine with a context of SHORT_N_CTX tokens, for the tests that
    fill one to its end."""
    async with bundled_app(model_path, n_ctx=SHORT_N_CTX) as handle:
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


@pytest.fixture(scope="session")
def live_server() -> Iterator[LiveServer]:
    """One server on the bundled model for conformance and e2e tests."""
    server = LiveServer.started()
    try:
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
