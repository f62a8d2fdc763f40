"""The committed web page (src/inferd/ui/) is what its sources build: `npm ci` from the
committed lock file, then ui/build.mjs into a temporary folder, equal byte for byte. (CI has
Node.js and npm; `make ui` rebuilds the committed files.)"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from inferd.api.ui import FILES

UI = Path(__file__).resolve().parents[2] / "ui"
NPM, NODE = shutil.which("npm"), shutil.which("node")
# npm's words for a registry it cannot reach (the test then skips: nothing to build with)
_OFFLINE = ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "ENETUNREACH")


@pytest.mark.skipif(
    NPM is None or NODE is None,
    reason="Node.js and npm are not installed: they build the web page (`make ui`)",
)
@pytest.mark.timeout(300)
def test_the_committed_page_is_the_build_of_its_sources(tmp_path: Path) -> None:
    assert NPM is not None and NODE is not None
    work = tmp_path / "ui"  # a copy without node_modules: only the lock file says what to install
    shutil.copytree(UI, work, ignore=shutil.ignore_patterns("node_modules"))
    installed = subprocess.run(
        [NPM, "ci", "--no-audit", "--no-fund"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=240,
    )
    if installed.returncode != 0 and any(code in installed.stderr for code in _OFFLINE):
        pytest.skip(f"npm cannot reach its registry: {installed.stderr.strip()[-300:]}")
    assert installed.returncode == 0, installed.stderr
    out = tmp_path / "built"
    subprocess.run([NODE, "build.mjs", str(out)], cwd=work, check=True, timeout=120)
    for name in ("index.html", "app.js", "app.css"):
        assert (out / name).read_bytes() == (FILES / name).read_bytes(), (
            f"src/inferd/ui/{name} is not the build of ui/src: run `make ui` and commit it"
        )
