from pathlib import Path

import pytest
from typer.testing import CliRunner

from inferd.cli import app
from inferd.config import load_settings
from inferd.errors import ConfigError
from inferd.models.spec import BUNDLED_NAME, specs_from_settings


def test_defaults() -> None:
    s = load_settings()
    assert (s.host, s.port) == ("127.0.0.1", 8000)
    assert s.models == []


def test_environment_toml_and_flags_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"")
    cfg = tmp_path / "inferd.toml"
    cfg.write_text(
        f'port = 9000\ntemperature = 0.3\n[[models]]\npath = "{model}"\nname = "mine"\n'
        'aliases = ["m"]\nn_ctx = 1024\n'
    )
    s = load_settings(cfg)
    assert s.port == 9000 and s.temperature == 0.3
    assert s.models[0].name == "mine" and s.models[0].n_ctx == 1024
    monkeypatch.setenv("INFERD_PORT", "9100")
    assert load_settings(cfg).port == 9100  # environment beats the file
    assert load_settings(cfg, port=9200).port == 9200  # flags beat both


def test_models_from_environment_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERD_MODELS", f'[{{"path": "{tmp_path}/a.gguf", "max_seqs": 4}}]')
    s = load_settings()
    assert s.models[0].max_seqs == 4
    specs = specs_from_settings(s, {"n_ctx": 512})
    assert specs[0].name == "a" and specs[0].config.n_ctx == 512


def test_bundled_model_is_the_default() -> None:
    specs = specs_from_settings(load_settings())
    assert specs[0].name == BUNDLED_NAME
    assert {"smollm2", "default"} <= set(specs[0].aliases)
    assert specs[0].path.is_file()


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.toml")


def test_duplicate_model_names_are_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "INFERD_MODELS",
        f'[{{"path": "{tmp_path}/a.gguf"}}, {{"path": "{tmp_path}/b.gguf", "aliases": ["a"]}}]',
    )
    with pytest.raises(ConfigError, match="used twice"):
        specs_from_settings(load_settings())


def test_cli_flags_are_derived_from_settings_fields() -> None:
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for flag in [
        "--host",
        "--port",
        "--temperature",
        "--max-tokens-limit",
        "--drain-timeout",
        "--n-ctx",
        "--max-seqs",
        "--config",
        "--model",
        "--models-dir",
        "--max-loaded-models",
        "--max-memory",
        "--keep-alive",
    ]:
        assert flag in result.output


def test_registry_settings_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERD_MODEL_MAP", '{"mistral:latest": "smollm2:135m"}')
    monkeypatch.setenv("INFERD_ALLOWED_MODELS", '["smollm2"]')
    s = load_settings(max_memory="1.5GB", keep_alive=300)
    assert s.model_map == {"mistral:latest": "smollm2:135m"}
    assert s.allowed_models == ["smollm2"]
    assert int(s.max_memory or 0) == 1_500_000_000
    assert s.keep_alive == 300


def test_cli_rejects_a_missing_model_file_without_traceback() -> None:
    result = CliRunner().invoke(app, ["serve", "--model", "/nonexistent/x.gguf"])
    assert result.exit_code == 2
    assert "no such file" in result.output
    assert "Traceback" not in result.output


def test_kv_overrides_from_toml(tmp_path: Path) -> None:
    cfg = tmp_path / "inferd.toml"
    cfg.write_text(
        '[[models]]\npath = "m.gguf"\n[models.kv_overrides]\n'
        '"tokenizer.ggml.fim_pre_token_id" = 6\n"a.bool" = true\n"a.float" = 0.5\n'
        '"general.name" = "renamed"\n'
    )
    overrides = load_settings(cfg).models[0].kv_overrides
    assert overrides == {
        "tokenizer.ggml.fim_pre_token_id": 6,
        "a.bool": True,
        "a.float": 0.5,
        "general.name": "renamed",
    }
    # types survive: a bool stays a bool, an int an int (llama.cpp's override tags differ)
    assert [type(v) for v in overrides.values()] == [int, bool, float, str]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[1, 2]", "must be a bool, an integer, a float or a string, not list"),
        ("{ x = 1 }", "not dict"),
        ('"' + "x" * 128 + '"', "longer than 127 bytes"),
        (str(2**63), "64-bit"),
    ],
)
def test_bad_kv_overrides_are_a_clear_config_error(
    tmp_path: Path, value: str, message: str
) -> None:
    cfg = tmp_path / "inferd.toml"
    cfg.write_text(f'[[models]]\npath = "m.gguf"\n[models.kv_overrides]\n"some.key" = {value}\n')
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert "models.0.kv_overrides" in info.value.message
    assert message in info.value.message


def test_kv_override_keys_must_fit_llama_cpp(tmp_path: Path) -> None:
    cfg = tmp_path / "inferd.toml"
    cfg.write_text(f'[[models]]\npath = "m.gguf"\n[models.kv_overrides]\n"{"k" * 128}" = 1\n')
    with pytest.raises(ConfigError, match="1 to 127 bytes"):
        load_settings(cfg)


def test_invalid_settings_are_a_config_error_not_a_traceback(tmp_path: Path) -> None:
    cfg = tmp_path / "inferd.toml"
    cfg.write_text('port = "many"\n[[models]]\npath = "m.gguf"\nn_ctx = "big"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert "port:" in info.value.message and "models.0.n_ctx:" in info.value.message
    result = CliRunner().invoke(app, ["serve", "--config", str(cfg)])
    assert result.exit_code == 2
    assert "invalid settings" in result.output and "Traceback" not in result.output


def test_quantize_per_model_and_server_wide_with_the_seeds_isq_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "inferd.toml"
    cfg.write_text(f'quantize = "Q8_0"\n[[models]]\npath = "{tmp_path}"\nquantize = "Q4K"\n')
    s = load_settings(cfg)
    assert s.quantize == "q8_0" and s.models[0].quantize == "q4_k_m"
    monkeypatch.setenv("LLM_ISQ_TYPE", "Q4_K")  # mistral.rs's setting, when none is set here
    assert load_settings().quantize == "q4_k_m"
    monkeypatch.setenv("INFERD_QUANTIZE", "q6_k")
    assert load_settings().quantize == "q6_k"
    monkeypatch.delenv("INFERD_QUANTIZE")
    monkeypatch.setenv("LLM_ENABLE_ISQ", "false")
    assert load_settings().quantize is None
    with pytest.raises(ConfigError, match=r"quantize.*unknown quantization type 'q3'.*q4_k_m"):
        load_settings(quantize="q3")
