"""Running the app under uvicorn, on one port or two (the Ollama port beside the main one)."""

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from inferd.api.guard import is_loopback
from inferd.config import Settings
from inferd.errors import ConfigError
from inferd.observability.llama_log import LlamaLog


class _Server(uvicorn.Server):
    """A uvicorn server whose signals are handled by `serve` for all listeners at once."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bounded_protocol(header_timeout: float, max_connections: int) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools, else h11) with two bounds uvicorn lacks: a
    connection beyond `max_connections` is closed as it opens, and one whose request headers
    are not complete `header_timeout` seconds after it opened (or after its last response
    ended) is closed: half-sent requests and silent connections (slowloris) do not pile up.
    Headers are complete when uvicorn starts a request cycle; the body has its own deadline
    (the guard's 408) and a response may take as long as it takes."""

    class Bounded(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.close()
                return
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_timer = self.loop.call_later(header_timeout, self._headers_due)

        def _headers_due(self) -> None:
            if self.cycle is None or self.cycle.response_complete:  # no request under way
                self.transport.close()

    return Bounded


def check_exposure(settings: Settings, *, auth: bool) -> None:
    """Refuse to serve beyond loopback without authentication, unless told to."""
    if auth or settings.insecure or is_loopback(settings.host):
        return
    raise ConfigError(
        f"refusing to serve on {settings.host} without authentication: create a key "
        "(inferd keys create --name NAME), set INFERD_REQUIRE_AUTH=1, or pass --insecure"
    )


def tls_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's TLS options: both files or neither."""
    cert, key = settings.ssl_certfile, settings.ssl_keyfile
    if cert is None and key is None:
        return {}
    if cert is None or key is None:
        raise ConfigError("TLS needs both --ssl-certfile and --ssl-keyfile")
    for flag, path in (("--ssl-certfile", cert), ("--ssl-keyfile", key)):
        if not path.is_file():
            raise ConfigError(f"{flag} {path}: no such file")
    return {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}


def serve(
    app: FastAPI,
    settings: Settings,
    *,
    cleanup: tuple[Callable[[], Awaitable[None]], ...] = (),
) -> None:
    """Serve until SIGTERM/SIGINT, then drain: stop accepting, let requests finish (up to
    the drain timeout), shut the app down, run `cleanup` (in the server's event loop), and
    return (exit status 0)."""
    tls = tls_options(settings)
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
                h11_max_incomplete_event_size=settings.max_header_bytes,
                http=bounded_protocol(settings.header_timeout, settings.max_connections),
                **tls,
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
        try:
            await asyncio.gather(*(s.serve() for s in servers))
        finally:
            for done in cleanup:
                await done()

    # uvicorn's own choice of event loop (uvloop where installed, as uvicorn.run would): a
    # streamed token took a quarter less of the event loop's CPU than on asyncio's loop
    # (0.44 -> 0.33 ms at one stream on 2 cores), CPU the spinning llama.cpp threads need
    # llama.cpp's log through inferd's handler while serving (JSON logs stay JSON)
    with LlamaLog(), asyncio.Runner(loop_factory=servers[0].config.get_loop_factory()) as runner:
        runner.run(main())
