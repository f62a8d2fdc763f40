"""The JSON schemas and tools that the structured-output and tool-calling tests on the real
runtimes share (llama.cpp's grammars: test_structured_real.py, test_tools_real.py;
llguidance on torch: test_torch_structured.py), so both runtimes answer the same asks;
`function_tool` builds a tool as the dialects take it, for any test."""

from __future__ import annotations

from typing import Any

PERSON: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
ASK_PERSON = "Describe a person named Alice who is 30 years old, as JSON."

BOOKING: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
        # bounds are part of the grammar (bounds.py, llguidance), so a constrained call keeps them
        "nights": {"type": "integer", "minimum": 1, "maximum": 14},
        "breakfast": {"type": "boolean"},
    },
    "required": ["city", "nights"],
    "additionalProperties": False,
}


def function_tool(name: str, description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """A tool as the OpenAI dialect (and Ollama's) takes it: a function with a JSON schema."""
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


TOOLS: list[dict[str, Any]] = [
    function_tool("book_hotel", "Book a hotel", BOOKING),
    function_tool(
        "get_weather",
        "The weather in a city",
        {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}},
            "required": ["city"],
        },
    ),
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK_BOOKING = [{"role": "user", "content": "Book me a hotel in Rome for three nights."}]
