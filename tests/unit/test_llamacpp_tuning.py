"""Flash attention chosen by measurement: the rule, the decision cache and its key, the
settings that skip measuring. The measurement itself is in tests/integration/test_tuning_real.py;
no test asserts which setting wins on this machine."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from inferd.config import Settings
from inferd.engine.backends.llamacpp import tuning
from inferd.engine.backends.llamacpp.options import KvPlan, LlamaCppOptions, StepLayout
from inferd.engine.backends.llamacpp.tuning import (
    DecisionCache,
    ShapeTiming,
    choose_flash_attn,
    cpu_identity,
    decide,
)
from inferd.errors import BackendError

LAYOUT = StepLayout(kv=KvPlan(4096, 16, True, 65536), n_batch=128, n_threads=2, cell_bytes=1)


def _t(shape: str, off: float, on: float, spread: float = 0.0) -> ShapeTiming:
    return ShapeTiming(shape, off, on, spread)


def test_on_only_when_nothing_is_slower_and_something_faster() -> None:
    assert decide((_t("a", 10, 8), _t("b", 10, 10.2)))[0] == "on"
    mode, why = decide((_t("a", 10, 8), _t("b", 10, 12)))
    assert (mode, "b") == ("off", why.split(" on ")[1].split(" ")[0])
    mode, why = decide((_t("a", 10, 9.8), _t("b", 10, 10.3)))
    assert mode == "off" and "noise" in why
    assert decide(())[0] == "off"


def test_a_shape_s_own_spread_widens_its_noise() -> None:
    # 20 % faster is not taken when that shape's rounds spread by 30 %
    assert decide((_t("a", 10, 8, spread=0.3),))[0] == "off"
    # 20 % slower is forgiven when the rounds spread by 30 %: a pick costs no more than that
    assert decide((_t("a", 10, 12, spread=0.3), _t("b", 10, 7)))[0] == "on"


def test_cpu_identity_is_the_model_name_and_flags(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse avx2\n\n"
        "processor\t: 1\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse avx2\n"
    )
    assert cpu_identity(info) == "model name: AMD EPYC 7B13; flags: fpu sse avx2"
    assert cpu_identity(tmp_path / "missing")  # the platform's name where there is no file


class Counting:
    """A stand-in measurement that counts its calls."""

    def __init__(self, table: tuple[ShapeTiming, ...] = (_t("decode", 10, 8),)) -> None:
        self.calls = 0
        self.table = table

    def __call__(self, _model: Any, _layout: StepLayout, _options: LlamaCppOptions) -> Any:
        self.calls += 1
        return self.table


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + bytes(60))
    return path


def _choose(path: Path, tune_dir: Path, measure: Counting, **kw: Any) -> tuning.FlashAttnChoice:
    layout = kw.pop("layout", LAYOUT)
    options = LlamaCppOptions(tune_dir=tune_dir, **kw)
    return choose_flash_attn(None, path, options, layout, measure=measure)


def test_a_decision_is_measured_once_then_reused(tmp_path: Path, model_file: Path) -> None:
    measure = Counting()
    first = _choose(model_file, tmp_path / "tuning", measure)
    assert (first.mode, first.source, measure.calls) == ("on", "measured", 1)
    again = _choose(model_file, tmp_path / "tuning", measure)
    assert (again.mode, again.source, measure.calls) == ("on", "cached", 1)
    assert again.table == first.table and again.reason == first.reason
    assert again.facts()["table"][0] == {"shape": "decode", "off_ms": 10000.0, "on_ms": 8000.0,
                                         "ratio": 0.8}  # fmt: skip


def test_a_changed_key_measures_again(
    tmp_path: Path, model_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "tuning"
    measure = Counting()
    _choose(model_file, cache, measure)
    calls = 1

    def changed(what: str, **kw: Any) -> None:
        nonlocal calls
        _choose(model_file, cache, measure, **kw)
        calls += 1
        assert measure.calls == calls, what
        _choose(model_file, cache, measure, **kw)  # and that key is reused in turn
        assert measure.calls == calls, what

    stat = model_file.stat()
    os.utime(model_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    changed("the model file's mtime")
    model_file.write_bytes(b"GGUF" + bytes(61))
    changed("the model file's size")
    changed("the threads", layout=StepLayout(LAYOUT.kv, 128, 1, 1))
    changed("the layout", layout=StepLayout(KvPlan(4096, 16, False, 16384), 128, 2, 1))
    changed("the KV cache types", cache_type_k="q8_0")
    monkeypatch.setattr(tuning, "cpu_identity", lambda: "model name: another CPU")
    changed("the CPU")
    monkeypatch.setattr(tuning.llama_cpp, "__version__", "0.0.0-other")
    changed("llama.cpp's version")
    assert len(list(cache.glob("flash-attn-*.json"))) == 8


def test_bench_tune_measures_afresh(tmp_path: Path, model_file: Path) -> None:
    measure = Counting()
    options = LlamaCppOptions(tune_dir=tmp_path)
    choose_flash_attn(None, model_file, options, LAYOUT, measure=measure)
    measure.table = (_t("decode", 10, 13),)
    fresh = choose_flash_attn(None, model_file, options, LAYOUT, fresh=True, measure=measure)
    assert (fresh.mode, fresh.source, measure.calls) == ("off", "measured", 2)
    assert _choose(model_file, tmp_path, measure).mode == "off"  # stored over the old one


def test_an_unreadable_cache_entry_is_measured_again(tmp_path: Path, model_file: Path) -> None:
    measure = Counting()
    _choose(model_file, tmp_path, measure)
    for file in tmp_path.glob("*.json"):
        file.write_text("{not json")
    assert _choose(model_file, tmp_path, measure).source == "measured"
    assert measure.calls == 2
    assert DecisionCache(tmp_path).get({"some": "key"}) is None


class Refuse(Counting):
    def __call__(self, *_args: Any) -> Any:
        raise AssertionError("measured although the settings decide")


@pytest.mark.parametrize(
    ("options", "mode", "source"),
    [
        ({"flash_attn": "on"}, "on", "forced"),
        ({"flash_attn": "off"}, "off", "forced"),
        ({"flash_attn": "auto"}, "auto", "forced"),
        ({"cache_type_v": "q8_0"}, "on", "forced"),
        ({"n_gpu_layers": -1}, "auto", "default"),
    ],
)
def test_settings_that_decide_skip_measuring(
    tmp_path: Path, model_file: Path, options: dict[str, Any], mode: str, source: str
) -> None:
    choice = _choose(model_file, tmp_path / "tuning", Refuse(), **options)
    assert (choice.mode, choice.source) == (mode, source)
    assert choice.facts() == {"mode": mode, "source": source, "reason": choice.reason}
    assert not (tmp_path / "tuning").exists()


def test_without_a_tuning_directory_flash_attention_stays_off(model_file: Path) -> None:
    options = LlamaCppOptions()
    choice = choose_flash_attn(None, model_file, options, LAYOUT, measure=Refuse())
    assert (choice.mode, choice.source, choice.llama_type) == ("off", "default", 0)


def test_a_failed_measurement_keeps_the_safe_default_uncached(
    tmp_path: Path, model_file: Path
) -> None:
    def fail(*_args: Any) -> Any:
        raise BackendError("no memory for the probes")

    options = LlamaCppOptions(tune_dir=tmp_path / "tuning")
    choice = choose_flash_attn(None, model_file, options, LAYOUT, measure=fail)
    assert (choice.mode, choice.source) == ("off", "default")
    assert "no memory" in choice.reason
    assert not (tmp_path / "tuning").exists()


def test_tuning_is_on_for_serve_by_default_and_a_setting_turns_it_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inferd.cli.launch import tune_dir

    monkeypatch.delenv("INFERD_TUNE_KERNELS", raising=False)  # tests/conftest.py sets it

    assert tune_dir(Settings(data_dir=tmp_path)) == tmp_path / "tuning"
    assert tune_dir(Settings(data_dir=tmp_path, tune_kernels=False)) is None


def test_bench_tune_measures_despite_a_setting_where_measuring_can_tell(
    tmp_path: Path, model_file: Path
) -> None:
    def fresh(**kw: Any) -> tuning.FlashAttnChoice:
        options = LlamaCppOptions(**kw)
        return choose_flash_attn(None, model_file, options, LAYOUT, fresh=True, measure=Counting())

    assert fresh(flash_attn="off").source == "measured"
    assert fresh().source == "measured"  # tune_kernels off: nothing stored, but measured
    assert (fresh(cache_type_v="q4_0").mode, fresh(cache_type_v="q4_0").source) == ("on", "forced")
    assert fresh(cache_type_v="q4_0", flash_attn="auto").mode == "auto"
    assert fresh(n_gpu_layers=-1).source == "default"
