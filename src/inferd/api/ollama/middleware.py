"""Ollama reads every request body as JSON whatever its Content-Type (its own docs use
`curl -d` without one): do the same on the Ollama routes."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


class JsonBodyForOllama:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/api/"):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            headers.append((b"content-type", b"application/json"))
            scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)
