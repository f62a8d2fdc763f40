"""The official `ollama` and `openai` clients against a live `inferd serve`: fill in the middle
(`suffix`) on a model given FIM tokens through `kv_overrides` in a TOML config file, and
request-level `template` on the plain bundled model."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import ollama
import openai
import pytest

from inferd.models.spec import bundled_model_path
from tests.conftest import LiveServer

FIM_MODEL = "smollm2-fim"
MODEL = "smollm2:135m"
TIMEOUT = 60.0
PREFIX = "def add(a, b):\n    "
SUFFIX = "\n    return result\n"
OPTIONS = {"num_predict": 6, "temperature": 0}
CHATML = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""


@pytest.fixture(scope="module")
def fim_server() -> Iterator[LiveServer]:
    """A server whose one model is the bundled file with three control tokens made its
    FIM tokens, configured the way a user would: a TOML file."""
    with tempfile.TemporaryDirectory(prefix="inferd-fim-") as tmp:
        config = Path(tmp) / "inferd.toml"
        config.write_text(
            "[[models]]\n"
            f"path = {str(bundled_model_path())!r}\n"
            f'name = "{FIM_MODEL}"\n'
            "prefix_cache = false\n"
            "[models.kv_overrides]\n"
            '"tokenizer.ggml.fim_pre_token_id" = 6\n'
            '"tokenizer.ggml.fim_suf_token_id" = 7\n'
            '"tokenizer.ggml.fim_mid_token_id" = 8\n'
        )
        server = LiveServer("--config", str(config))
        try:
            server.wait_ready()
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="module")
def fim_client(fim_server: LiveServer) -> Iterator[ollama.Client]:
    with ollama.Client(host=fim_server.url, timeout=TIMEOUT) as c:
        yield c


@pytest.fixture(scope="module")
def client(live_server: LiveServer) -> Iterator[ollama.Client]:
    with ollama.Client(host=live_server.url, timeout=TIMEOUT) as c:
        yield c


def fim_length(prefix: str, suffix: str, client: ollama.Client) -> int:
    """FIM_PRE prefix FIM_SUF suffix FIM_MID, counted with the server's own tokenizer (the
    prompt of a raw generate request is exactly the text's tokens)."""
    n = 3
    for text in (prefix, suffix):
        resp = client.generate(model=FIM_MODEL, prompt=text, raw=True, options={"num_predict": 1})
        n += resp.prompt_eval_count or 0
    return n


def test_show_lists_insert(fim_client: ollama.Client, client: ollama.Client) -> None:
    assert fim_client.show(FIM_MODEL).capabilities == ["completion", "tools", "insert"]
    assert client.show(MODEL).capabilities == ["completion", "tools"]


def test_generate_with_suffix(fim_client: ollama.Client) -> None:
    resp = fim_client.generate(model=FIM_MODEL, prompt=PREFIX, suffix=SUFFIX, options=OPTIONS)
    assert resp.done and resp.done_reason in ("stop", "length")
    assert resp.prompt_eval_count == fim_length(PREFIX, SUFFIX, fim_client)
    assert resp.eval_count and 1 <= resp.eval_count <= 6
    assert resp.context and resp.context[0] == 6  # FIM_PRE first: no chat template
    assert isinstance(resp.response, str)


def test_generate_with_suffix_streaming(fim_client: ollama.Client) -> None:
    whole = fim_client.generate(model=FIM_MODEL, prompt=PREFIX, suffix=SUFFIX, options=OPTIONS)
    parts = list(
        fim_client.generate(
            model=FIM_MODEL, prompt=PREFIX, suffix=SUFFIX, options=OPTIONS, stream=True
        )
    )
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.response for p in parts) == whole.response
    assert parts[-1].prompt_eval_count == whole.prompt_eval_count


def test_plain_model_does_not_support_insert(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.generate(model=MODEL, prompt=PREFIX, suffix=SUFFIX)
    assert info.value.status_code == 400
    assert info.value.error.startswith(f"{MODEL} does not support insert")


def test_openai_completions_with_suffix(fim_server: LiveServer, fim_client: ollama.Client) -> None:
    with openai.OpenAI(base_url=f"{fim_server.url}/v1", api_key="none") as oa:
        out = oa.completions.create(
            model=FIM_MODEL, prompt=PREFIX, suffix=SUFFIX, max_tokens=6, temperature=0
        )
        assert out.usage is not None
        assert out.usage.prompt_tokens == fim_length(PREFIX, SUFFIX, fim_client)
        assert out.choices[0].finish_reason in ("stop", "length")


def test_openai_plain_model_refuses_suffix(live_server: LiveServer) -> None:
    with (
        openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="none") as oa,
        pytest.raises(openai.BadRequestError) as info,
    ):
        oa.completions.create(model=MODEL, prompt=PREFIX, suffix=SUFFIX, max_tokens=2)
    assert info.value.param == "suffix"
    assert "does not support insert" in info.value.message


# ---- template ------------------------------------------------------------------------------


def test_generate_with_a_go_template(client: ollama.Client) -> None:
    kwargs = {"model": MODEL, "prompt": "Name a colour.", "system": "Be terse.", "options": OPTIONS}
    own = client.generate(**kwargs)  # type: ignore[arg-type]
    templated = client.generate(template=CHATML, **kwargs)  # type: ignore[arg-type]
    assert templated.response == own.response
    assert templated.context == own.context
    bare = client.generate(template="{{ .Prompt }}", **kwargs)  # type: ignore[arg-type]
    assert bare.prompt_eval_count and own.prompt_eval_count
    assert bare.context and bare.context[0] != own.context[0]  # no <|im_start|> first


def test_generate_with_a_go_template_streaming(client: ollama.Client) -> None:
    parts = list(
        client.generate(
            model=MODEL, prompt="Name a colour.", template=CHATML, options=OPTIONS, stream=True
        )
    )
    assert parts[-1].done and parts[-1].eval_count


@pytest.mark.parametrize(
    ("template", "text"),
    [
        ("{{ .Prompt", "unclosed action"),
        ("{{ range .Messages }}{{ .Nope }}{{ end }}", "can't evaluate field Nope"),
        ("{{ nope }}", 'function "nope" not defined'),
    ],
)
def test_bad_template(client: ollama.Client, template: str, text: str) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.generate(model=MODEL, prompt="Hi", template=template)
    assert info.value.status_code == 400
    assert text in info.value.error and "template" in info.value.error
