"""The web chat page at /ui in headless Chromium (Debian's /usr/bin/chromium, driven by
playwright-python, which never downloads a browser of its own) against `inferd serve` on the
bundled model: an answer growing while it streams, Stop, reload and find the conversation,
rename and delete it, switch model, keyboard-only use, the themes, sanitized markdown with a
copy button, and keys on. Each test saves a screenshot under its pytest tmp directory.

INFERD_UI_SCREENSHOT=docs/img/web-ui.png makes the README's screenshot again."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer

CHROMIUM = Path("/usr/bin/chromium")
# no connections out of this machine, no first-run work (see .ci/ensure-chromium)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TWIN = "twin"  # the bundled model's file again, under a second name
WAIT_MS = 180_000  # the longest wait for an answer, on a 2-core machine busy with other suites

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright-python is not installed (pip install '.[dev]')"
)
Page = sync_api.Page
expect = sync_api.expect

pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian's Chromium is not installed: .ci/ensure-chromium installs it "
        "(apt-get install chromium chromium-driver, as root)",
    ),
    pytest.mark.timeout(600),
]


# ---- servers and the browser ------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[LiveServer]:
    """The bundled model and a second name for its file: two models to pick from."""
    models = tmp_path_factory.mktemp("models")
    (models / f"{TWIN}.gguf").symlink_to(model_path)
    s = LiveServer.started(env={"INFERD_MODELS_DIR": str(models)})
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    # every expectation waits up to 30 s (not 5): a page's first API calls can take seconds
    # on a busy 2-core machine
    expect.set_options(timeout=30_000)
    with sync_api.sync_playwright() as p:
        yield p


@pytest.fixture
def page(playwright: Any, tmp_path: Path) -> Iterator[Page]:
    """A fresh browser profile (its own --user-data-dir) and its page. What the page logs as
    an error fails the test; a screenshot of the end state is left in tmp_path."""
    context = playwright.chromium.launch_persistent_context(
        str(tmp_path / "profile"),
        executable_path=str(CHROMIUM),
        headless=True,
        args=FLAGS,
        viewport={"width": 1280, "height": 820},
    )
    context.set_default_timeout(30_000)
    p = context.pages[0] if context.pages else context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    try:
        yield p
        p.screenshot(path=str(tmp_path / "web-ui.png"))
    finally:
        context.close()
    assert not errors, errors


def stored(server: LiveServer, path: str, key: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = httpx.get(f"{server.url}{path}", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def set_max_tokens(page: Page, n: int) -> None:
    if page.locator("#settings").is_hidden():
        page.click("#settings-toggle")
    page.fill("#max-tokens", str(n))
    page.dispatch_event("#max-tokens", "change")


def without_eos(page: Page, max_tokens: int) -> None:
    """Make the page's next chat requests run to max_tokens (ignore_eos): an answer that is
    surely still streaming when the test stops it."""

    def longer(route: Any) -> None:
        body = json.loads(route.request.post_data)
        body.update(ignore_eos=True, max_tokens=max_tokens)
        route.continue_(post_data=json.dumps(body))

    page.route("**/v1/chat/completions", longer)


def record_growth(page: Page) -> None:
    """Note the length of the last answer's text at every change of the conversation."""
    page.evaluate(
        """() => {
        window.growth = [];
        new MutationObserver(() => {
            const answers = document.querySelectorAll('.message.assistant');
            const last = answers[answers.length - 1];
            if (last) window.growth.push({
                length: last.querySelector('.content').textContent.length,
                streaming: last.classList.contains('streaming'),
                stop: !document.getElementById('stop').hidden,
                send: !document.getElementById('send').hidden,
            });
        }).observe(document.getElementById('log'),
                   {childList: true, subtree: true, characterData: true});
    }"""
    )


def wait_answered(page: Page) -> None:
    expect(page.locator(".message.assistant").last).not_to_have_class(
        re.compile(r"\bstreaming\b"), timeout=WAIT_MS
    )


def answer_length(page: Page) -> int:
    return len(page.locator(".message.assistant .content").last.text_content() or "")


def wait_until(page: Page, predicate: Callable[[], bool], timeout_ms: int = WAIT_MS) -> None:
    for _ in range(timeout_ms // 100):
        if predicate():
            return
        page.wait_for_timeout(100)
    raise AssertionError("timed out")


# ---- the tests ----------------------------------------------------------------------------------


def test_stream_stop_reload_rename_delete(server: LiveServer, page: Page, tmp_path: Path) -> None:
    page.goto(f"{server.url}/")  # a browser opening / lands on the page
    assert page.url == f"{server.url}/ui"
    expect(page.locator("#model")).to_have_value("smollm2:135m")
    expect(page.locator("#conversations-note")).to_have_text("No conversations yet.")
    set_max_tokens(page, 24)
    record_growth(page)

    # send: the answer grows while it streams, then shows its counts and speed
    page.fill("#prompt", "Write a Python function that reverses a string.")
    page.click("#send")
    wait_answered(page)
    expect(page.locator("#send")).to_be_visible()
    expect(page.locator("#stop")).to_be_hidden()
    growth = page.evaluate("window.growth")
    while_streaming = sorted({g["length"] for g in growth if g["streaming"] and g["length"]})
    assert len(while_streaming) >= 3, growth  # seen at three lengths or more before the end
    # Stop instead of Send all the while
    assert all(g["stop"] and not g["send"] for g in growth if g["streaming"]), growth
    assert while_streaming[-1] <= answer_length(page)
    stats = page.locator(".message.assistant .stats").last.text_content() or ""
    assert re.fullmatch(
        r"\d+ prompt tokens · \d+ tokens · [\d.]+ tokens/s · first token [\d.]+ s"
        r"( · cut at max tokens)?",
        stats,
    ), stats
    session = page.evaluate("new URLSearchParams(location.hash.slice(1)).get('c')")
    assert session and session.startswith("web-")
    kept = stored(server, f"/v1/conversations/{session}")["messages"]
    assert [m["role"] for m in kept] == ["user", "assistant"]
    assert kept[0]["content"] == "Write a Python function that reverses a string."
    assert kept[1]["content"] and kept[1]["model"] == "smollm2:135m"
    completion = int(stats.split(" · ")[1].split()[0])
    assert 0 < completion <= 24
    listed = page.locator("#conversations li")
    expect(listed).to_have_count(1)
    expect(listed.locator(".open")).to_have_text(kept[0]["content"])
    expect(listed.locator(".open")).to_have_attribute("aria-current", "true")
    shot = os.environ.get("INFERD_UI_SCREENSHOT")
    if shot:
        page.screenshot(path=shot)

    # stop one mid-way: it stops growing at once, and is not stored
    without_eos(page, 400)
    page.fill("#prompt", "Tell me a long story about a lighthouse.")
    page.click("#send")
    wait_until(page, lambda: answer_length(page) > 30)
    page.click("#stop")
    stopped = page.locator(".message.assistant").last
    expect(stopped).to_have_class(re.compile(r"\bstopped\b"), timeout=10_000)
    expect(stopped.locator(".stats")).to_contain_text("Stopped after")
    expect(page.locator("#send")).to_be_visible()
    length = answer_length(page)
    page.wait_for_timeout(1_500)
    assert answer_length(page) == length
    page.unroute("**/v1/chat/completions")
    assert len(stored(server, f"/v1/conversations/{session}")["messages"]) == 2
    # the server stopped generating too: its usage record of the request says cancelled
    wait_until(page, lambda: stored(server, "/v1/stats")["total"]["cancelled"] == 1, 30_000)

    # reload: the conversation is back (from the address), and listed
    page.reload()
    expect(page.locator(".message")).to_have_count(2)
    expect(page.locator(".message.user")).to_have_text(
        re.compile("Write a Python function that reverses a string.")
    )
    # a new page without the address: picked from the list
    page.goto(f"{server.url}/ui")
    expect(page.locator(".message")).to_have_count(0)
    page.locator("#conversations li .open").first.click()
    expect(page.locator(".message")).to_have_count(2)
    assert page.evaluate("location.hash") == f"#c={session}"

    # rename, from the keyboard
    page.get_by_role("button", name=re.compile("^Rename")).click()
    name = page.locator("#conversations li input.rename")
    expect(name).to_be_focused()
    name.fill("String reversal")
    name.press("Enter")
    expect(page.locator("#conversations li .open")).to_have_text("String reversal")
    assert stored(server, "/v1/conversations")["data"][0]["title"] == "String reversal"

    # delete (confirmed): gone from the list, the server and the page
    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name=re.compile("^Delete")).click()
    expect(page.locator("#conversations li")).to_have_count(0)
    expect(page.locator(".message")).to_have_count(0)
    assert stored(server, "/v1/conversations")["data"] == []


def test_switch_model(server: LiveServer, page: Page) -> None:
    page.goto(f"{server.url}/ui")
    options = page.locator("#model option")
    expect(options).to_have_count(2)
    assert sorted(options.all_text_contents()) == ["smollm2:135m", TWIN]
    set_max_tokens(page, 8)
    page.select_option("#model", TWIN)
    page.fill("#prompt", "Say hello.")
    page.click("#send")
    wait_answered(page)
    expect(page.locator(".message.assistant .who")).to_have_text(TWIN)
    session = page.evaluate("new URLSearchParams(location.hash.slice(1)).get('c')")
    kept = stored(server, f"/v1/conversations/{session}")["messages"]
    assert [m["model"] for m in kept] == [TWIN, TWIN]
    # the choice is remembered; opening the conversation picks the model it used
    page.goto(f"{server.url}/ui")
    expect(page.locator("#model")).to_have_value(TWIN)
    page.select_option("#model", "smollm2:135m")
    page.goto(f"{server.url}/ui#c={session}")
    expect(page.locator(".message")).to_have_count(2)
    expect(page.locator("#model")).to_have_value(TWIN)


def test_keyboard_only_and_the_themes(server: LiveServer, page: Page) -> None:
    page.emulate_media(color_scheme="light")
    page.goto(f"{server.url}/ui")
    expect(page.locator("#prompt")).to_be_focused()  # ready to type at once
    # the focus order follows the page: skip link, sidebar, toolbar, message box
    conversations = page.locator("#conversations li").count()
    expected = ["skip", "new-chat"]
    expected += ["open", "Rename", "Delete"] * conversations
    expected += ["model", "settings-toggle", "theme-toggle", "prompt", "send"]
    page.focus("#skip")
    order = ["skip"]
    for _ in expected[1:]:
        page.keyboard.press("Tab")
        order.append(
            page.evaluate(
                "(e => e.id || (e.classList.contains('open') ? 'open'"
                " : e.getAttribute('aria-label').split(' ')[0]))"
                "(document.activeElement)"
            )
        )
    assert order == expected
    # the skip link leads to the message box
    page.focus("#skip")
    page.keyboard.press("Enter")
    expect(page.locator("#prompt")).to_be_focused()

    # Enter on the Settings button opens them; values typed there are used
    page.focus("#settings-toggle")
    page.keyboard.press("Enter")
    expect(page.locator("#settings")).to_be_visible()
    page.focus("#max-tokens")
    page.keyboard.type("300")
    page.keyboard.press("Tab")  # change
    # Shift+Enter is a new line, Enter sends, Esc stops
    without_eos(page, 300)
    page.focus("#prompt")
    page.keyboard.type("First line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    assert page.input_value("#prompt") == "First line\nsecond line"
    page.keyboard.press("Enter")
    expect(page.locator(".message.user .content")).to_have_text("First line\nsecond line")
    wait_until(page, lambda: answer_length(page) > 20)
    page.keyboard.press("Escape")
    expect(page.locator(".message.assistant")).to_have_class(re.compile(r"\bstopped\b"))
    expect(page.locator("#prompt")).to_be_focused()

    # themes: the system's, then the toggle's (remembered)
    def background() -> str:
        return str(page.evaluate("getComputedStyle(document.body).backgroundColor"))

    assert background() == "rgb(255, 255, 255)"
    page.emulate_media(color_scheme="dark")
    assert background() == "rgb(22, 24, 29)"
    expect(page.locator("#theme-toggle")).to_have_text("Light theme")
    page.focus("#theme-toggle")
    page.keyboard.press("Enter")
    assert background() == "rgb(255, 255, 255)"
    page.emulate_media(color_scheme="light")
    page.keyboard.press("Enter")
    assert background() == "rgb(22, 24, 29)"
    page.reload()
    assert background() == "rgb(22, 24, 29)"
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")


HOSTILE = (
    "Here you go:\n\n"
    '<img src=x onerror="window.pwned=1"> <script>window.pwned=2</script>\n\n'
    '[click](javascript:window.pwned=3) <a href="https://example.org" onclick="window.pwned=4">'
    "site</a>\n\n"
    "```python\ndef add(a, b):\n    return a + b  # <b>not bold</b>\n```\n"
)


def test_model_output_is_sanitized_and_code_can_be_copied(server: LiveServer, page: Page) -> None:
    """The answer's text is whatever the model says: here, a stream the test serves in its
    place, with markup that would run script if the page let it through."""
    chunks = [HOSTILE[i : i + 7] for i in range(0, len(HOSTILE), 7)]
    events = [
        {"choices": [{"index": 0, "delta": {"content": c}, "finish_reason": None}]} for c in chunks
    ]
    events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    events.append({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": len(chunks)}})
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    page.route(
        "**/v1/chat/completions",
        lambda route: route.fulfill(status=200, content_type="text/event-stream", body=body),
    )
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.goto(f"{server.url}/ui")
    expect(page.locator("#model")).to_have_value("smollm2:135m")  # the page is ready
    page.fill("#prompt", "Show me.")
    page.press("#prompt", "Enter")
    wait_answered(page)
    content = page.locator(".message.assistant .content")
    expect(content).to_contain_text("Here you go")
    assert page.evaluate("window.pwned") is None
    assert content.locator("img, script, [onerror], [onclick]").count() == 0
    links = content.locator("a")
    # the javascript: link keeps its text and loses its address; links open a new tab
    assert [links.nth(i).get_attribute("href") for i in range(links.count())] == [
        None,
        "https://example.org",
    ]
    expect(links.nth(1)).to_have_attribute("rel", "noopener noreferrer")
    code = content.locator("pre code")
    expect(code).to_have_class(re.compile(r"language-python"))
    assert code.locator(".hljs-keyword").count() >= 2  # highlighted
    expect(code).to_contain_text("# <b>not bold</b>")  # shown as text
    page.locator(".code-bar .copy").click()
    expect(page.locator(".code-bar .copy")).to_have_text("Copied")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == "def add(a, b):\n    return a + b  # <b>not bold</b>\n"
    stats = page.locator(".message.assistant .stats").text_content() or ""
    assert stats.startswith(f"9 prompt tokens · {len(chunks)} tokens")


def test_keys_on_the_page_says_so_and_takes_one(page: Page, tmp_path: Path) -> None:
    data = tmp_path / "data"
    create = ["keys", "create", "--name", "ui", "--json", "--data-dir", str(data)]
    created = subprocess.run(
        [sys.executable, "-m", "inferd", *create],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    key = json.loads(created.stdout)["key"]
    server = LiveServer.started(env={"INFERD_DATA_DIR": str(data), "INFERD_REQUIRE_AUTH": "1"})
    try:
        page.goto(f"{server.url}/")
        assert page.url == f"{server.url}/ui"  # the page itself needs no key
        notice = page.locator("#notice")
        expect(notice).to_have_text("This server needs an API key: enter yours in Settings.")
        expect(page.locator("#settings")).to_be_visible()
        expect(page.locator("#api-key")).to_be_focused()
        page.keyboard.type("inferd-wrong")
        page.keyboard.press("Enter")
        expect(notice).to_contain_text("The server refused this API key")
        expect(notice).to_contain_text("Check the key in Settings")
        page.fill("#api-key", key)
        page.keyboard.press("Enter")
        expect(notice).to_have_text("API key accepted.")
        expect(page.locator("#model")).to_have_value("smollm2:135m")
        set_max_tokens(page, 6)
        page.fill("#prompt", "Hi")
        page.press("#prompt", "Enter")
        wait_answered(page)
        expect(page.locator("#conversations li")).to_have_count(1)
        # the conversation is the key's: listed for it, not for requests without a key
        assert len(stored(server, "/v1/conversations", key)["data"]) == 1
        page.reload()  # the key is kept for the tab
        expect(page.locator("#conversations li")).to_have_count(1)
    finally:
        server.stop()
