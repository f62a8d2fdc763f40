"""The JSON schemas and tools that the structured-output and tool-calling tests on the real
runtimes share (llama.cpp's grammars: test_structured_real.py, test_tools_real.py;
llguidance on torch: test_torch_structured.py), so both runtimes answer the same asks."""

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
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {"name": "book_hotel", "description": "Book a hotel", "parameters": BOOKING},
    },
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 30}},
                "required": ["city"],
            },
        },
    },
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK_BOOKING = [{"role": "user", "content": "Book me a hotel in Rome for three nights."}]
