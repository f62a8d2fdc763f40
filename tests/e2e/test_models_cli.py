"""`inferd models pull|list|show|rm` as a user runs them; pull downloads from an HTTP server
on 127.0.0.1 (and copies local paths), checks sha256 and GGUF, and renames atomically."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer
from tests.unit.test_hf_cache import FILE, REPO, make_cache


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[str]:
    """A local HTTP server with the bundled model, a garbage .gguf and nothing else."""
    root = tmp_path_factory.mktemp("www")
    (root / "SmolLM2.Q4_1.gguf").symlink_to(model_path)
    (root / "garbage.gguf").write_bytes(b"not a model\n" * 100)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))

    class Quiet(http.server.ThreadingHTTPServer):
        def handle_error(self, request: object, client_address: object) -> None:
            pass

    with Quiet(("127.0.0.1", 0), handler) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{httpd.server_address[1]}"
        finally:
            httpd.shutdown()


@pytest.fixture(scope="module")
def digest(model_path: Path) -> str:
    return hashlib.sha256(model_path.read_bytes()).hexdigest()


def inferd(models_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "inferd", "models", *args, "--models-dir", str(models_dir)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_pull_from_http_then_list_show_rm(served: str, digest: str, tmp_path: Path) -> None:
    d = tmp_path / "models"
    url = f"{served}/SmolLM2.Q4_1.gguf"
    r = inferd(d, "pull", url, "--sha256", digest.upper())
    assert r.returncode == 0, r.stderr
    assert f"pulled SmolLM2.Q4_1: {d / 'SmolLM2.Q4_1.gguf'}" in r.stdout
    assert digest in r.stdout
    assert hashlib.sha256((d / "SmolLM2.Q4_1.gguf").read_bytes()).hexdigest() == digest
    assert leftovers(d) == ["SmolLM2.Q4_1.gguf"]

    again = inferd(d, "pull", url)
    assert again.returncode == 1 and "already in" in again.stderr and "--force" in again.stderr
    assert inferd(d, "pull", url, "--force", "--name", "tiny").returncode == 0

    listing = inferd(d, "list")
    assert listing.returncode == 0, listing.stderr
    for text in ["smollm2:135m (default)", "SmolLM2.Q4_1", "tiny", "directory", "Q4_1", "135M"]:
        assert text in listing.stdout

    show = inferd(d, "show", "tiny:latest")
    assert show.returncode == 0
    for text in ["family        llama", "134515008 (135M)", "vocabulary    49152"]:
        assert text in show.stdout
    assert "llama.context_length" in show.stdout and "8192" in show.stdout
    missing = inferd(d, "show", "nope")
    assert missing.returncode == 1 and "does not exist" in missing.stderr

    assert inferd(d, "rm", "tiny").returncode == 0
    assert leftovers(d) == ["SmolLM2.Q4_1.gguf"]
    bundled = inferd(d, "rm", "smollm2")
    assert bundled.returncode == 1 and "cannot be deleted" in bundled.stderr


def test_pull_rejects_bad_downloads(served: str, tmp_path: Path) -> None:
    d = tmp_path / "models"
    wrong = inferd(d, "pull", f"{served}/SmolLM2.Q4_1.gguf", "--sha256", "0" * 64)
    assert wrong.returncode == 1 and "sha256 mismatch" in wrong.stderr
    garbage = inferd(d, "pull", f"{served}/garbage.gguf")
    assert garbage.returncode == 1 and "not a valid GGUF file" in garbage.stderr
    missing = inferd(d, "pull", f"{served}/missing.gguf")
    assert missing.returncode == 1 and "HTTP 404" in missing.stderr
    bad_name = inferd(d, "pull", f"{served}/SmolLM2.Q4_1.gguf", "--name", "../escape")
    assert bad_name.returncode == 1 and "invalid model name" in bad_name.stderr
    assert leftovers(d) == []  # no partial files, nothing renamed into place
    assert not (tmp_path / "escape.gguf").exists()


def test_pull_copies_a_local_file(model_path: Path, tmp_path: Path) -> None:
    d = tmp_path / "models"
    r = inferd(d, "pull", str(model_path), "--name", "local")
    assert r.returncode == 0, r.stderr
    assert (d / "local.gguf").stat().st_size == model_path.stat().st_size
    nope = inferd(d, "pull", str(tmp_path / "nope.gguf"))
    assert nope.returncode == 1 and "no such file" in nope.stderr


def test_a_running_server_sees_pulled_models(model_path: Path, tmp_path: Path) -> None:
    d = tmp_path / "models"
    d.mkdir()
    server = LiveServer(env={"INFERD_MODELS_DIR": str(d)})
    try:
        server.wait_ready()
        body = {"model": "later", "prompt": "Hi", "max_tokens": 3}
        assert httpx.post(f"{server.url}/generate", json=body, timeout=60).status_code == 404
        assert inferd(d, "pull", str(model_path), "--name", "later").returncode == 0
        resp = httpx.post(f"{server.url}/generate", json=body, timeout=120)
        assert resp.status_code == 200, resp.text
        assert resp.json()["model"] == "later"
    finally:
        with contextlib.suppress(Exception):
            server.stop()


def test_serve_a_model_from_the_hugging_face_cache(model_path: Path, tmp_path: Path) -> None:
    make_cache(tmp_path, model_path)
    env = {"HF_HOME": str(tmp_path), "HF_HUB_CACHE": ""}
    server = LiveServer("--model", f"{REPO}:{FILE}", env=env)
    try:
        server.wait_ready()
        models = httpx.get(f"{server.url}/v1/models", timeout=10).json()["data"]
        assert [m["id"] for m in models] == ["smollm2-135m-instruct-q4_1"]
    finally:
        server.stop()
    missing = LiveServer("--model", f"{REPO}:other.gguf", env=env)
    assert missing.proc.wait(60) == 2
    out = " ".join(missing.output().split())  # rich wraps long lines
    assert "not in the Hugging Face cache" in out and "huggingface-cli download" in out
    assert "Traceback" not in out
    missing.stop()
