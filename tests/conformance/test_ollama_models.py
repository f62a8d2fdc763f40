"""The official `ollama` client's `copy` and `delete` against a live server with a models
directory, and the copies surviving a restart; Ollama tools asking for fixed names through
`model_map`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import ollama
import pytest

from tests.conftest import LiveServer

MODEL = "smollm2:135m"
USER = [{"role": "user", "content": "Say hello."}]
OPTIONS = {"num_predict": 4}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Path:
    d = tmp_path_factory.mktemp("models")
    (d / "tiny.gguf").symlink_to(model_path)
    return d


def start(models_dir: Path) -> LiveServer:
    env = {
        "INFERD_MODELS_DIR": str(models_dir),
        "INFERD_MODEL_MAP": json.dumps({"mistral:latest": MODEL}),
    }
    return LiveServer.started(env=env)


@pytest.fixture(scope="module")
def server(models_dir: Path) -> Iterator[LiveServer]:
    """One server for the tests that do not restart it."""
    s = start(models_dir)
    try:
        yield s
    finally:
        s.stop()


def names(client: ollama.Client) -> set[str]:
    return {m.model or "" for m in client.list().models}


def test_copy_survives_a_restart_and_delete_removes_it(models_dir: Path) -> None:
    server = start(models_dir)
    try:
        with ollama.Client(host=server.url, timeout=60) as client:
            assert client.copy("smollm2", "my-assistant:latest").status == "success"
            assert "my-assistant:latest" in names(client)
            reply = client.chat(model="my-assistant", messages=USER, options=OPTIONS)
            assert reply.model == MODEL and reply.message.content
    finally:
        server.stop()
    server = start(models_dir)  # a restart
    try:
        with ollama.Client(host=server.url, timeout=60) as client:
            assert "my-assistant:latest" in names(client)
            reply = client.generate(model="my-assistant:latest", prompt="Hi", options=OPTIONS)
            assert reply.model == MODEL
            assert client.delete("my-assistant").status == "success"
            assert "my-assistant:latest" not in names(client)
            with pytest.raises(ollama.ResponseError) as err:
                client.chat(model="my-assistant", messages=USER, options=OPTIONS)
            assert err.value.status_code == 404
    finally:
        server.stop()


def test_delete_rules(server: LiveServer, models_dir: Path) -> None:
    with ollama.Client(host=server.url, timeout=60) as client:
        for protected in [MODEL, "smollm2", "mistral"]:
            with pytest.raises(ollama.ResponseError) as err:
                client.delete(protected)
            assert err.value.status_code == 403
            assert "cannot be deleted" in err.value.error or "model_map" in err.value.error
        for unknown in ["nope", "../tiny", "../" * 8 + "etc/passwd", "x" * 10_000]:
            with pytest.raises(ollama.ResponseError) as err:
                client.delete(unknown)
            assert err.value.status_code == 404
        with pytest.raises(ollama.ResponseError) as err:
            client.copy("nope", "x")
        assert err.value.status_code == 404
        with pytest.raises(ollama.ResponseError) as err:
            client.copy("tiny", "../escape")
        assert err.value.status_code == 400
        # a file of the models directory can be deleted; the bundled file stays
        assert "tiny:latest" in names(client)
        assert client.delete("tiny:latest").status == "success"
        assert not (models_dir / "tiny.gguf").exists()
        assert "tiny:latest" not in names(client)
        assert client.chat(model=MODEL, messages=USER, options=OPTIONS).message.content


def test_model_map_answers_fixed_names(server: LiveServer) -> None:
    with ollama.Client(host=server.url, timeout=60) as client:
        assert "mistral:latest" in names(client)
        for name in ["mistral", "mistral:latest"]:
            reply = client.chat(model=name, messages=USER, options=OPTIONS)
            assert reply.model == MODEL and reply.message.content
        assert client.show("mistral").details.family == "llama"
