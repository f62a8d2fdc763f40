"""The real thing for a test: the app in-process on the real engine (`AppHandle`,
`bundled_app`), and `inferd serve` in a subprocess (`LiveServer`, `LiveServer.started`)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path

import httpx

from inferd.api.app import create_app
from inferd.config import ModelConfig, Settings
from inferd.models.loading import llamacpp_factory
from inferd.models.registry import ModelRegistry
from inferd.models.spec import BUNDLED_ALIASES, BUNDLED_NAME, ModelSpec
from inferd.storage.store import Store

# Small enough to keep the tests quick, big enough for every test's prompts.
TEST_N_CTX = 2048
# For the tests that fill a whole context: a 2,048-token prefill takes seconds on a CPU.
SHORT_N_CTX = 256


def bundled_spec(path: Path, **config: object) -> ModelSpec:
    cfg = ModelConfig(path=path, **{"n_ctx": TEST_N_CTX, **config})  # type: ignore[arg-type]
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


def bundled_app(model_path: Path, **config: object) -> AppHandle:
    """The app on the real engine over the bundled model with `config` (a chat template, a
    cache layout...): `async with bundled_app(...) as handle`."""
    registry = ModelRegistry([bundled_spec(model_path, **config)], llamacpp_factory())
    return AppHandle(Settings(), registry)


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

    @classmethod
    def started(
        cls, *args: str, env: dict[str, str] | None = None, timeout: float = 60.0
    ) -> LiveServer:
        """A server ready to answer; one that fails to get there is stopped."""
        server = cls(*args, env=env)
        try:
            server.wait_ready(timeout)
        except BaseException:
            server.stop(5)
            raise
        return server

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
