"""A chat template cannot build huge values (issue 23 item 3): whatever filters, methods and
operators it combines, a rendering stays within a small multiple of MAX_VALUE_CHARS of memory
and ends in the usual 400 (InvalidRequest naming messages)."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from inferd.errors import InvalidRequest
from inferd.models.chat_template import CHATML, ChatTemplate
from inferd.models.jinja_sandbox import MAX_VALUE_CHARS, weight

BIG = "a" * 3_500_000  # within the bound on its own
MESSAGES = [{"role": "user", "content": BIG}]

ATTACKS = [
    # the case, with the message content and with a string the template makes
    "{{ ([messages[0].content] * 250) | join | length }}",
    "{% set x = 'a' * 4000000 %}{{ ([x] * 250) | join | length }}",
    "{{ [messages[0].content] * 250 }}",
    "{{ ','.join([messages[0].content] * 250) | length }}",
    "{{ (['a'] * 100000) | join(messages[0].content) | length }}",
    "{{ messages[0].content.replace('', messages[0].content) | length }}",
    "{{ messages[0].content | replace('a', 'bbbb') | length }}",
    "{{ (messages[0].content ~ messages[0].content) | length }}",
    "{{ (messages[0].content + messages[0].content) | length }}",
    "{{ ([messages[0].content] + [messages[0].content]) | join | length }}",
    "{{ '%s%s' % (messages[0].content, messages[0].content) }}",
    "{{ '{}{}'.format(messages[0].content, messages[0].content) }}",
    "{{ '{:>999999999}'.format('a') }}",
    "{{ messages[0].content | indent(messages[0].content) | length }}",
    "{{ messages | tojson(indent=1000000) }}",
    "{% set ns = namespace(s='') %}{% for i in range(300) %}"
    "{% set ns.s = ns.s ~ messages[0].content %}{% endfor %}{{ ns.s | length }}",
    "{% macro m() %}{% for i in range(300) %}{{ messages[0].content }}{% endfor %}"
    "{% endmacro %}{{ m() | length }}",
    "{% set b %}{% for i in range(300) %}{{ messages[0].content }}{% endfor %}{% endset %}"
    "{{ b | length }}",
    "{% filter upper %}{% for i in range(300) %}{{ messages[0].content }}{% endfor %}"
    "{% endfilter %}",
    "{% set ns = namespace(x=2) %}{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}"
    "{% endfor %}{{ ns.x > 1 }}",
    "{{ ((10 ** 64) ** 64) ** 64 }}",
    "{{ lipsum(3000000) | length }}",
]


@pytest.mark.parametrize("source", ATTACKS)
def test_templates_cannot_build_huge_values(source: str) -> None:
    template = ChatTemplate(source)
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(InvalidRequest) as exc:
            template.render(MESSAGES)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert exc.value.param == "messages"
    assert "the chat template" in exc.value.message
    # the content itself is 3.5 MB (14 MB of UCS-4 at worst); nothing near the 1 GB asked for
    assert peak < 64_000_000, peak
    assert time.monotonic() - started < 1.5


def test_values_within_the_bound_still_render() -> None:
    template = ChatTemplate(
        "{{ ([messages[0].content] * 1) | join | length }} {{ messages[0].content | length }}"
        "{{ (['x'] * 3) | join(', ') }}{{ '{:>5}'.format('a') }}{{ 'ab' * 3 }}"
        "{{ messages | tojson(indent=2) | length > 0 }}{{ 2 ** 10 }}"
    )
    assert template.render(MESSAGES) == "3500000 3500000x, x, x    aabababTrue1024"


def test_a_list_weighs_every_reference() -> None:
    assert weight(["abc"] * 1000) == 3 * 1000 + 1001
    assert weight(["a" * 10] * 10**6, limit=100) > 100  # stops early


def test_messages_longer_than_the_bound_are_refused_for_what_they_are() -> None:
    # issue 23 item 12a: not "the chat template writes too much"
    with pytest.raises(InvalidRequest) as exc:
        ChatTemplate(CHATML).render([{"role": "user", "content": "a" * (MAX_VALUE_CHARS + 1)}])
    assert exc.value.param == "messages"
    assert "the messages are too long" in exc.value.message
    assert "template" not in exc.value.message
