"""A recursive JSON schema whose root is a `$ref`, as pydantic writes one (issue 23 item 9),
is served: the bundled model's answer is JSON that the schema and the model accept."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel

from inferd.api.structured import inline_root_ref, schema_format
from tests.conftest import AppHandle


class Node(BaseModel):
    name: str
    children: list[Node] = []


SCHEMA = Node.model_json_schema()
ASK = "Describe a family tree as JSON: Ann, whose children are Bob and Cy. Keep it short."


def test_pydantic_writes_a_root_ref_and_it_is_inlined() -> None:
    assert SCHEMA["$ref"] == "#/$defs/Node"
    inlined = inline_root_ref(SCHEMA)
    assert "$ref" not in inlined and inlined["properties"] == SCHEMA["$defs"]["Node"]["properties"]
    assert inlined["$defs"] == SCHEMA["$defs"]  # the recursion still resolves
    # what cannot be followed is left for the converter to refuse
    assert inline_root_ref({"$ref": "#/$defs/Nope"}) == {"$ref": "#/$defs/Nope"}
    loop = {"$ref": "#/$defs/A", "$defs": {"A": {"$ref": "#/$defs/A"}}}
    assert inline_root_ref(loop)["$ref"] == "#/$defs/A"
    assert json.loads(schema_format(SCHEMA, param="format").json_schema or "")["type"] == "object"


@pytest.mark.parametrize("dialect", ["openai", "ollama"])
async def test_a_recursive_pydantic_schema_is_served(real: AppHandle, dialect: str) -> None:
    messages = [{"role": "user", "content": ASK}]
    if dialect == "openai":
        fmt = {"type": "json_schema", "json_schema": {"name": "node", "schema": SCHEMA}}
        body: dict[str, Any] = {"messages": messages, "response_format": fmt}
        r = await real.client.post(
            "/v1/chat/completions", json={**body, "temperature": 0, "max_tokens": 300}
        )
        assert r.status_code == 200, r.text
        text = r.json()["choices"][0]["message"]["content"]
    else:
        body = {"model": "smollm2", "messages": messages, "format": SCHEMA, "stream": False}
        r = await real.client.post(
            "/api/chat", json={**body, "options": {"temperature": 0, "num_predict": 300}}
        )
        assert r.status_code == 200, r.text
        text = r.json()["message"]["content"]
    value = json.loads(text)
    jsonschema.validate(value, SCHEMA)
    Node.model_validate(value)
