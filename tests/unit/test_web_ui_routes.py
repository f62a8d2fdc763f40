"""The web chat page's routes: /ui and its two assets (public, with a strict CSP), and `/`
sending a browser there while tools that probe it still read "Ollama is running"."""

from __future__ import annotations

from inferd.api.ui import FILES
from inferd.config import Settings
from tests.conftest import FakeFactory

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


async def test_the_page_and_its_assets_are_served(fake_app: FakeFactory) -> None:
    async with fake_app() as h:
        for path in ("/ui", "/ui/"):
            r = await h.client.get(path)
            assert r.status_code == 200
            assert r.headers["content-type"] == "text/html; charset=utf-8"
            assert r.text == (FILES / "index.html").read_text()
            csp = r.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "default-src 'none'" in csp
            assert "unsafe-inline" not in csp
        for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
            r = await h.client.get(f"/ui/{name}")
            assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
            assert r.content == (FILES / name).read_bytes()
            assert r.headers["x-content-type-options"] == "nosniff"
            # revalidated with the ETag, so an upgraded server serves its own files
            again = await h.client.get(f"/ui/{name}", headers={"If-None-Match": r.headers["etag"]})
            assert again.status_code == 304
        for path in ("/ui/__init__.py", "/ui/nothing.js", "/ui/..%2Fapi%2Fapp.py", "/ui/a/b"):
            r = await h.client.get(path)
            assert r.status_code == 404, path
            assert "error" in r.json()


async def test_the_page_references_only_its_own_files() -> None:
    html = (FILES / "index.html").read_text()
    assert 'src="/ui/app.js"' in html and 'href="/ui/app.css"' in html
    assert "http://" not in html and "https://" not in html  # no CDN: works offline


async def test_a_browser_opening_root_is_sent_to_the_page(fake_app: FakeFactory) -> None:
    async with fake_app() as h:
        r = await h.client.get("/", headers={"Accept": BROWSER_ACCEPT})
        assert r.status_code == 307 and r.headers["location"] == "/ui"
        assert r.headers["vary"] == "Accept"
        for accept in (None, "*/*", "application/json"):
            headers = {"Accept": accept} if accept else {}
            r = await h.client.get("/", headers=headers)
            assert r.status_code == 200 and r.text == "Ollama is running", accept
        assert (await h.client.head("/")).status_code == 200


async def test_with_keys_on_the_page_is_public_and_the_api_is_not(fake_app: FakeFactory) -> None:
    async with fake_app(Settings(require_auth=True)) as h:
        for path in ("/ui", "/ui/", "/ui/app.js", "/ui/app.css"):
            assert (await h.client.get(path)).status_code == 200, path
        r = await h.client.get("/", headers={"Accept": BROWSER_ACCEPT})
        assert r.status_code == 307
        assert (await h.client.get("/ui/other.js")).status_code == 401  # not a page path
        assert (await h.client.get("/v1/models")).status_code == 401
        assert (await h.client.get("/v1/conversations")).status_code == 401
