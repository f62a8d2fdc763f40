"""The OpenAPI document tells the truth (issue 23 item 11): schemathesis generates requests
for every operation of `/openapi.json` (valid and invalid bodies, parameters and headers)
against a server on 127.0.0.1 (uvicorn, the fake backend), and every response must be no
5xx, a status the document declares for the operation, with its declared media type, and a
body that conforms to the declared schema. Bounded: a few examples an operation, no
shrinking, a time limit an operation."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from inferd.api.app import create_app
from inferd.cli.local import LocalServer
from inferd.config import ModelConfig, Settings
from inferd.engine.backends.fake import FakeBackend
from inferd.models.engines import BackendEngineFactory
from inferd.models.registry import ModelRegistry
from inferd.models.spec import ModelSpec

EXAMPLES = 12  # per operation
SECONDS = 60  # per operation, at most


def fake_app(data_dir: Path) -> FastAPI:
    """The fake model, and a store (SQLite in `data_dir`): its routes answer."""
    spec = ModelSpec("fake", Path("fake.gguf"), ModelConfig(path=Path("fake.gguf")), ("default",))
    factory = BackendEngineFactory(lambda _spec: FakeBackend())
    settings = Settings(data_dir=data_dir)
    return create_app(settings, ModelRegistry([spec], factory), open_store=True)


schema = schemathesis.openapi.from_dict(fake_app(Path("unused")).openapi())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    with LocalServer(fake_app(tmp_path_factory.mktemp("store"))) as live:
        for _ in range(500):  # the model loads in the background
            if httpx.get(f"{live.url}/health/ready").status_code == 200:
                break
            time.sleep(0.01)
        yield live


@pytest.mark.timeout(SECONDS)
@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_every_operation_answers_as_documented(
    case: schemathesis.Case, server: LocalServer
) -> None:
    # a route that declares 501 (Ollama's /api/push: inferd never pushes) may answer it
    declared = case.operation.definition.raw.get("responses", {})
    server_errors = [] if "501" in declared else [not_a_server_error]
    case.call_and_validate(
        base_url=server.url,
        checks=[
            *server_errors,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
        timeout=30,
    )


NATIVE_UNDER_API = {"/api/generate/stream", "/api/chat/stream", "/api/llms"}


def test_the_document_declares_errors_and_streams() -> None:
    """What schemathesis may not reach: no operation declares 422 (never sent); each error
    is in its dialect's schema; streamed answers have their media types."""
    doc = fake_app(Path("unused")).openapi()
    paths = doc["paths"]
    for path, operations in paths.items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "422" not in responses, (method, path)
            assert {"400", "431"} <= set(responses), (method, path)
            ollama = path == "/" or (path.startswith("/api/") and path not in NATIVE_UNDER_API)
            error = "OllamaError" if ollama else "Error"
            for status, response in responses.items():
                if int(status) >= 400 and path != "/health/ready":
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": f"#/components/schemas/{error}"}, (path, status)
    assert {"401", "403", "429", "404", "413", "503"} <= set(
        paths["/v1/chat/completions"]["post"]["responses"]
    )
    assert "401" not in paths["/health/live"]["get"]["responses"]
    streamed = {
        "/v1/chat/completions": "text/event-stream",
        "/v1/completions": "text/event-stream",
        "/generate/stream": "text/event-stream",
        "/api/generate": "application/x-ndjson",
        "/api/chat": "application/x-ndjson",
    }
    for path, media_type in streamed.items():
        assert media_type in paths[path]["post"]["responses"]["200"]["content"], path
    assert "HTTPValidationError" not in doc["components"]["schemas"]


def test_whole_floats_are_integers_as_the_document_says(server: LocalServer) -> None:
    """JSON Schema counts 1.0 as an integer, so every dialect takes it; 1.5, "1" and true
    stay 400s naming the parameter."""
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    served = [
        ("/v1/chat/completions", {**chat, "n": 1.0, "max_tokens": 3.0, "seed": 7.0}),
        ("/v1/completions", {"prompt": "hi", "max_tokens": 3.0}),
        ("/generate", {"prompt": "hi", "max_tokens": 3.0, "top_k": 2.0}),
        ("/api/generate", {"prompt": "hi", "stream": False, "options": {"num_predict": 3.0}}),
        ("/v1/responses", {"input": "hi", "max_output_tokens": 3.0}),
    ]
    for path, body in served:
        response = httpx.post(f"{server.url}{path}", json={"model": "fake", **body}, timeout=30)
        assert response.status_code == 200, (path, response.text)
    for bad in (1.5, "1", True):
        response = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={"model": "fake", **chat, "n": bad},
            timeout=30,
        )
        assert response.status_code == 400, (bad, response.text)
        assert response.json()["error"]["param"] == "n"


def test_the_document_allows_only_the_content_parts_served() -> None:
    """A content part the document allows is served; the others (an image) are 400s that
    the document does not allow."""
    defs = fake_app(Path("unused")).openapi()["components"]["schemas"]
    assert defs["ContentPart"]["properties"]["type"]["enum"] == ["text"]
    assert defs["ContentPart"]["required"] == ["type", "text"]
    assert set(defs["InputContent"]["properties"]["type"]["enum"]) == {
        "input_text",
        "output_text",
        "text",
    }


def test_content_parts_outside_the_document_are_refused_by_name(server: LocalServer) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": "fake", "messages": [{"role": "user", "content": [image]}]},
        timeout=30,
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages[0].content[0]"
    text = {"type": "text", "text": "hi"}
    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": "fake", "messages": [{"role": "user", "content": [text]}], "max_tokens": 2},
        timeout=30,
    )
    assert response.status_code == 200, response.text
