"""Ollama's Modelfile as /api/create reads it, and a created model's profile."""

from __future__ import annotations

import pytest

from inferd.errors import InvalidRequest
from inferd.models.profile import Modelfile, ModelProfile

TEXT = '''
# a comment
FROM smollm2:135m
TEMPLATE """{{ if .System }}<|system|>{{ .System }}
{{ end }}<|user|>{{ .Prompt }}"""
SYSTEM You are a pirate.
PARAMETER temperature 0.2
PARAMETER num_ctx 1024
PARAMETER stop "<|user|>"
PARAMETER stop </s>
parameter mirostat false
MESSAGE user Ahoy?
MESSAGE assistant """Arr,
matey."""
LICENSE """MIT"""
LICENSE Apache-2.0
'''


def test_every_instruction() -> None:
    mf = Modelfile.parse(TEXT)
    assert mf.from_ == "smollm2:135m"
    assert mf.template == "{{ if .System }}<|system|>{{ .System }}\n{{ end }}<|user|>{{ .Prompt }}"
    assert mf.system == "You are a pirate."
    assert mf.parameters == {
        "temperature": 0.2,
        "num_ctx": 1024,
        "stop": ["<|user|>", "</s>"],
        "mirostat": False,
    }
    assert mf.messages == [
        {"role": "user", "content": "Ahoy?"},
        {"role": "assistant", "content": "Arr,\nmatey."},
    ]
    assert mf.license == ["MIT", "Apache-2.0"]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("FROM x\nADAPTER ./lora.gguf", "ADAPTER is not supported"),
        ('SYSTEM """never closed', 'unterminated """'),
        ("PARAMETER temperature", "PARAMETER needs a name and a value"),
        ("MESSAGE wizard hello", "MESSAGE needs a role of system, user, assistant, tool"),
    ],
)
def test_bad_modelfiles_are_400s_naming_the_modelfile(text: str, why: str) -> None:
    with pytest.raises(InvalidRequest, match=why) as err:
        Modelfile.parse(text)
    assert err.value.param == "modelfile"


def test_a_profile_over_its_base_keeps_what_it_does_not_set() -> None:
    base = ModelProfile(
        template="T", system="S", parameters={"temperature": 0.1, "top_k": 5}, license="MIT"
    )
    mine = ModelProfile(system="Mine", parameters={"temperature": 0.7})
    merged = mine.over(base)
    assert merged == ModelProfile(
        template="T", system="Mine", parameters={"temperature": 0.7, "top_k": 5}, license="MIT"
    )
    assert ModelProfile.from_json(merged.to_json()) == merged
    assert ModelProfile().to_json() == {}
