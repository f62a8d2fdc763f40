"""instructor's TOOLS mode (its default) against a live `inferd serve` with a tool-capable
template (the session's tool server, tests/conformance/conftest.py): a pydantic model
extracted through a named `tool_choice`, and a round with a validation retry (the call and
the error sent back).

instructor cannot live in the shared virtualenv: every release pins `jiter<0.15` (1.17.0,
the newest, too), and every openai the pinned pydantic-ai accepts needs `jiter>=0.16`. So
the test builds instructor its own virtualenv from PyPI with uv, once, in pytest's cache
directory under a name made from its pins (`pytest --cache-clear` or a new pin builds it again),
and runs `instructor_tools.py` there as a subprocess. It is skipped, saying so, only when
PyPI cannot be reached.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from inferd.models.spec import BUNDLED_NAME
from tests.conftest import LiveServer
from tests.locks import build_lock

# the newest instructor, and the newest openai whose jiter floor (0.10) meets its `<0.15`
PINS = ("instructor==1.17.0", "openai==3.3.0")
SCRIPT = Path(__file__).with_name("instructor_tools.py")
INDEX = "https://pypi.org/simple/instructor/"
BUILD_SECONDS = 600


@pytest.fixture(scope="module")
def instructor_python(request: pytest.FixtureRequest) -> Path:
    """The Python of a virtualenv with PINS installed: built on first use, then reused."""
    key = hashlib.sha256(" ".join([sys.version, *PINS]).encode()).hexdigest()[:12]
    home = Path(request.config.cache.mkdir("instructor-venv")) / key
    python = home / "bin" / "python"
    if python.exists():
        return python
    with build_lock(home.with_name(f"{key}.lock")):  # one xdist worker builds it
        if python.exists():
            return python
        try:
            urllib.request.urlopen(INDEX, timeout=15).close()
        except OSError as exc:
            pytest.skip(f"PyPI cannot be reached to install {' '.join(PINS)}: {exc}")
        # built aside, then renamed into place: a half-built one is never taken for done
        building = home.with_name(f"{key}.building")
        shutil.rmtree(building, ignore_errors=True)
        # uv (dev extra): seconds where venv + pip took most of a minute; the system's
        # certificates, as pip is told to use here (pip.conf)
        uv = [sys.executable, "-m", "uv", "--quiet", "--native-tls"]
        try:
            for args in (
                ["venv", "--python", sys.executable, str(building)],
                ["pip", "install", "--python", str(building / "bin" / "python"), *PINS],
            ):
                done = subprocess.run(
                    [*uv, *args], capture_output=True, text=True, timeout=BUILD_SECONDS
                )
                assert done.returncode == 0, done.stdout + done.stderr
            building.rename(home)
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return python


@pytest.mark.timeout(2 * BUILD_SECONDS)  # the build (minutes, once), then the client
def test_instructor_tools_mode(instructor_python: Path, tool_server: LiveServer) -> None:
    done = subprocess.run(
        [str(instructor_python), str(SCRIPT), tool_server.url, BUNDLED_NAME],
        capture_output=True,
        text=True,
        timeout=BUILD_SECONDS,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout)
    assert out["versions"][:2] == [p.split("==")[1] for p in PINS]
    # the extraction: one call of the model's function, its arguments a valid City
    assert out["finish_reason"] == "tool_calls" and out["called"] == ["City"]
    assert out["city"]["name"] and out["city"]["country"]
    # the retry: refused once, asked again with the error, then taken
    assert len(out["seen"]) == 2 and out["retried"]["name"] == out["seen"][1]
