"""Running the app under uvicorn, on one port or two (the Ollama port beside the main one)."""

import asyncio
import contextlib
import signal
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from inferd.config import Settings


class _Server(uvicorn.Server):
    """A uvicorn server whose signals are handled by `serve` for all listeners at once."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def serve(app: FastAPI, settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT, then drain: stop accepting, let requests finish (up to
    the drain timeout), shut the app down, and return (exit status 0)."""
    ports = [settings.port]
    if settings.ollama_port is not None and settings.ollama_port != settings.port:
        ports.append(settings.ollama_port)
    servers = [
        _Server(
            uvicorn.Config(
                app,
                host=settings.host,
                port=port,
                log_level=settings.log_level,
                log_config=None,  # uvicorn logs through inferd's handler (JSON or pretty)
                access_log=False,  # the app writes its own access line, with the request id
                timeout_graceful_shutdown=int(settings.drain_timeout),
                # the app's lifespan (model loading) runs once, with the first listener
                lifespan="on" if i == 0 else "off",
            )
        )
        for i, port in enumerate(ports)
    ]

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def stop() -> None:
            for server in servers:
                server.should_exit = True

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        await asyncio.gather(*(s.serve() for s in servers))

    asyncio.run(main())
