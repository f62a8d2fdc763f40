"""Flash attention measured on the real bundled model: every shape gets sane numbers and a
pick, a load stores it and the next load reuses it, /models and `inferd bench --tune` show it.
The measurement is bounded here (the shortest long context, one step a round) and no test
asserts which setting wins: this machine is shared and noisy."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from inferd.config import Settings
from inferd.engine.backends.llamacpp import LlamaCppBackend, LlamaCppOptions, tuning
from inferd.engine.backends.llamacpp.loading import LlamaModel, kv_cell_bytes
from inferd.engine.backends.llamacpp.options import step_layout
from inferd.models.loading import llamacpp_factory
from inferd.models.registry import ModelRegistry
from tests.conftest import AppHandle, bundled_spec

# small and single-threaded: quick, and no spinning threads fighting a loaded machine
SMALL = {"n_ctx": 512, "max_seqs": 4, "n_batch": 32, "n_threads": 1}


@pytest.fixture
def bounded(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Measurements at the shortest long context, two rounds of one step; counts them. Their
    spreads are taken as quiet, so every decision stands and is stored (what is stored when
    the rounds disagree: tests/unit/test_llamacpp_tuning.py)."""
    real = tuning.measure_shapes
    monkeypatch.setattr(tuning, "ROUNDS", 2)
    calls: list[int] = []

    def measure(model: Any, layout: Any, options: Any) -> Any:
        calls.append(1)
        table = real(model, layout, options, long=tuning.LONG_MIN, steps=1)
        return tuple(dataclasses.replace(t, spread=0.0) for t in table)

    monkeypatch.setattr(tuning, "measure_shapes", measure)
    return calls


def test_a_measurement_times_every_shape_and_picks(model_path: Path) -> None:
    options = LlamaCppOptions(**SMALL)  # type: ignore[arg-type]
    loaded = LlamaModel(model_path, options)
    try:
        layout = step_layout(
            options, n_ctx_train=8192, cell_bytes=kv_cell_bytes(loaded.model, options)
        )
        table = tuning.measure_shapes(loaded.model, layout, options, long=128, steps=1)
    finally:
        loaded.close()
    assert [t.shape for t in table] == [
        "decode 1 @short",
        "decode 3 @short",
        "decode 1 @128",
        "mixed 3+16 @128",
        "prompt 32 @128",
    ]
    for t in table:
        for seconds in (t.off_s, t.on_s):
            assert 0 < seconds < 30 and math.isfinite(seconds), t
        assert t.spread >= 0
    # a 32-token prompt chunk costs more than one decode token, with either kernel
    assert table[4].off_s > table[0].off_s and table[4].on_s > table[0].on_s
    verdict = tuning.decide(table)
    assert verdict.mode in ("on", "off") and verdict.reason


def _stored(directory: Path) -> list[Path]:
    return list(directory.glob("flash-attn-*.json"))


async def test_a_load_measures_stores_and_the_next_reuses(
    model_path: Path, tmp_path: Path, bounded: list[int]
) -> None:
    spec = bundled_spec(model_path, **{k: v for k, v in SMALL.items() if k != "n_ctx"})
    registry = ModelRegistry([spec], llamacpp_factory(tune_dir=tmp_path))
    async with AppHandle(Settings(), registry) as handle:
        shown = (await handle.client.get("/models")).json()["models"][0]["config"]["flash_attn"]
    assert shown["source"] == "measured" and shown["mode"] in ("on", "off")
    assert shown["settled"] and shown["aggregate"] > 0 and shown["table"][1]["weight"] > 0
    assert shown["table"][0]["shape"] == "decode 1 @short"
    assert all(row["off_ms"] > 0 and row["on_ms"] > 0 for row in shown["table"])
    assert len(bounded) == 1 and len(_stored(tmp_path)) == 1

    again = _next_load(model_path, tmp_path)
    assert len(bounded) == 1  # not measured again
    assert again["source"] == "cached"
    assert (again["mode"], again["table"]) == (shown["mode"], shown["table"])

    forced = LlamaCppBackend(model_path, LlamaCppOptions(flash_attn="on", **SMALL))  # type: ignore[arg-type]
    try:
        assert forced.facts()["flash_attn"] == {
            "mode": "on",
            "source": "forced",
            "reason": "flash_attn is set",
        }
    finally:
        forced.close()
    assert len(bounded) == 1


def test_bench_tune_prints_the_table_and_stores_the_pick(
    model_path: Path, tmp_path: Path, bounded: list[int]
) -> None:
    from inferd.cli.app import app

    env = {
        "INFERD_DATA_DIR": str(tmp_path),
        "INFERD_MODELS": json.dumps([{"path": str(model_path), **SMALL}]),
        "COLUMNS": "200",
    }
    result = CliRunner().invoke(app, ["bench", "--tune"], env=env)
    assert result.exit_code == 0, result.output
    out = result.output
    for shape in ("decode 1 @short", "decode 3 @short", "mixed 3+16 @128", "prompt 32 @128"):
        assert shape in out
    assert "weighted" in out  # the aggregate the pick rests on
    assert "pick: flash attention o" in out and str(tmp_path / "tuning") in out
    stored = [json.loads(f.read_text()) for f in (tmp_path / "tuning").glob("*.json")]
    assert len(stored) == 1 and stored[0]["mode"] in out.split("pick: flash attention ")[1]
    assert stored[0]["key"]["n_threads"] == 1 and stored[0]["key"]["model"]["name"]

    # fresh every time, ignoring what is stored; --json for scripts
    result = CliRunner().invoke(app, ["bench", "--tune", "--json"], env=env)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout.strip().splitlines()[-1])
    assert doc["source"] == "measured" and doc["mode"] in ("on", "off")
    assert doc["stored_before"]["mode"] == stored[0]["mode"]  # what loads used until now
    assert len(doc["table"]) == 5 and len(bounded) == 2


def test_a_measurement_over_its_time_limit_keeps_off_and_stores_nothing(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tuning, "MEASURE_LIMIT_S", 0.0)
    backend = LlamaCppBackend(model_path, LlamaCppOptions(tune_dir=tmp_path, **SMALL))  # type: ignore[arg-type]
    try:
        shown = backend.facts()["flash_attn"]
        assert backend.decode([1], [0], [0], [True])  # the model serves all the same
    finally:
        backend.close()
    assert (shown["mode"], shown["source"]) == ("off", "default")
    assert "took over 0 s" in shown["reason"]
    assert not _stored(tmp_path)


async def test_an_open_pick_is_measured_again_while_idle_and_stored_for_the_next_load(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The load's measurement is left open (its rounds 30 % apart: a busy machine); the
    engine, idle, measures again on the real model (bounded, and taken as quiet) and stores
    the pick; the running context keeps its kernel, the next load reuses the stored one."""
    import asyncio

    from inferd.engine import core

    noisy = (tuning.ShapeTiming("decode 1 @short", 0.010, 0.0095, spread=0.3),)
    monkeypatch.setattr(tuning, "measure_shapes", lambda *_args: noisy)
    monkeypatch.setattr(tuning, "ROUNDS", 2)
    real_steps = tuning.measure_steps

    def bounded_steps(model: Any, layout: Any, options: Any) -> Any:
        table = yield from real_steps(model, layout, options, long=tuning.LONG_MIN, steps=1)
        return tuple(dataclasses.replace(t, spread=0.0) for t in table)

    monkeypatch.setattr(tuning, "measure_steps", bounded_steps)
    monkeypatch.setattr(core, "IDLE_AFTER_S", 0.2)
    monkeypatch.setattr(tuning, "MEASURE_LIMIT_S", 300.0)  # a loaded machine: slow, not failed
    spec = bundled_spec(model_path, **{k: v for k, v in SMALL.items() if k != "n_ctx"})
    registry = ModelRegistry([spec], llamacpp_factory(tune_dir=tmp_path))

    async def flash_attn(handle: AppHandle) -> dict[str, Any]:
        models = (await handle.client.get("/models")).json()["models"]
        return dict(models[0]["config"]["flash_attn"])

    async with AppHandle(Settings(), registry) as handle:
        at_load = await flash_attn(handle)
        assert (at_load["source"], at_load["settled"]) == ("measured", False)
        assert at_load["idle"]["of"] == 3 and not _stored(tmp_path)
        deadline = time.monotonic() + 300  # the bundled model: seconds on a quiet machine
        while not (shown := await flash_attn(handle))["idle"].get("settled"):
            assert time.monotonic() < deadline and shown["idle"]["tries"] <= 1, shown["idle"]
            await asyncio.sleep(0.1)
        idle = shown["idle"]
        assert idle["settled"] and idle["source"] == "idle" and idle["tries"] == 1
        assert idle["reason"].startswith("measured while idle")
        assert [row["shape"] for row in idle["table"]][:2] == ["decode 1 @short", "decode 3 @short"]
        assert all(row["off_ms"] > 0 and row["on_ms"] > 0 for row in idle["table"])
        assert shown["mode"] == at_load["mode"]  # the running context keeps its kernel
        # and serves as before
        body = {"model": spec.name, "prompt": "Hello", "max_tokens": 4}
        assert (await handle.client.post("/v1/completions", json=body)).status_code == 200
    assert len(_stored(tmp_path)) == 1

    later = _next_load(model_path, tmp_path)
    assert (later["source"], later["mode"]) == ("cached", idle["mode"])
    assert later["reason"] == idle["reason"] and "idle" not in later


def _next_load(model_path: Path, tune_dir: Path) -> dict[str, Any]:
    """The flash-attention facts of a fresh load with the same tuning cache."""
    options = LlamaCppOptions(tune_dir=tune_dir, **SMALL)  # type: ignore[arg-type]
    backend = LlamaCppBackend(model_path, options)
    try:
        return backend.facts()["flash_attn"]  # type: ignore[no-any-return]
    finally:
        backend.close()
