"""A server for one `inferd run` session, in this process: the app `inferd serve` would run,
under uvicorn in a background thread, on a free loopback port that only this session uses."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable

import uvicorn
from fastapi import FastAPI

from inferd.errors import InferdError


class LocalServer:
    """`cleanup` runs in the server's event loop once it has stopped (disposing the
    database engine the app's store and keys share, as `inferd serve` does)."""

    def __init__(self, app: FastAPI, cleanup: Callable[[], Awaitable[None]] | None = None) -> None:
        self._cleanup = cleanup
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))  # bound now: no other process can take the port
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        config = uvicorn.Config(
            app, log_level="warning", log_config=None, access_log=False, lifespan="on"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="inferd-local-server", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            try:
                await self._server.serve(sockets=[self._socket])
            finally:
                if self._cleanup is not None:
                    await self._cleanup()

        # signals stay with the main thread (uvicorn installs none off it): Ctrl-C is the chat's
        with asyncio.Runner(loop_factory=self._server.config.get_loop_factory()) as runner:
            runner.run(main())

    def start(self, timeout: float = 60.0) -> None:
        """Serve from now on (models load in the background); raises InferdError when the
        server fails to start."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise InferdError("the in-process server failed to start (see the log above)")
            time.sleep(0.02)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop serving (open streams end), unload the models and close the store."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._socket.close()

    def __enter__(self) -> LocalServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
