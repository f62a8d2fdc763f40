"""The web chat page at /ui: the files that ui/ builds (`make ui`), shipped in inferd.ui.
The page is public (it holds no data, and asks for an API key itself when the server wants
one); everything it shows comes from the public API, with the caller's key."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, Response

import inferd.ui

FILES = Path(inferd.ui.__file__).parent
_ASSETS = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}

# the guard lets these through without a key (GET and HEAD only)
PATHS = frozenset({"/ui", "/ui/", *(f"/ui/{name}" for name in _ASSETS)})

_HEADERS = {
    "Cache-Control": "no-cache",  # revalidated (ETag), so an upgraded server serves its own
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # the page's own script, style and API only: rendered model output can load and run
    # nothing, even were the sanitizer to let markup through
    "Content-Security-Policy": "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    ),
}

router = APIRouter(include_in_schema=False)


def _serve(request: Request, name: str, media_type: str) -> Response:
    """The file, or a 304 when the browser's copy (If-None-Match) is current."""
    path = FILES / name
    stat = path.stat()
    etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'
    headers = {**_HEADERS, "ETag": etag}
    if etag in (t.strip() for t in request.headers.get("if-none-match", "").split(",")):
        return Response(status_code=304, headers=headers)
    return FileResponse(path, media_type=media_type, headers=headers, stat_result=stat)


@router.get("/ui")
@router.get("/ui/")
async def page(request: Request) -> Response:
    return _serve(request, "index.html", "text/html; charset=utf-8")


@router.get("/ui/{name}")
async def asset(request: Request, name: str) -> Response:
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise HTTPException(404, f"No file /ui/{name[:100]}")
    return _serve(request, name, media_type)
