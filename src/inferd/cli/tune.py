"""`inferd bench --tune`: measure llama.cpp's kernel choices here, show and store them."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from inferd.cli.launch import tune_dir
from inferd.config import ModelConfig, load_settings
from inferd.models.loading import llamacpp_options
from inferd.models.spec import ModelSpec, specs_from_settings


def tune_report(model_path: Path | None, console: Console, *, as_json: bool) -> None:
    """Measure flash attention off and on for `model_path` (default: the first model the
    settings serve, with its settings), print the table per shape and the pick, and store it
    where `inferd serve` finds it (data_dir/tuning, even when tune_kernels is off); also the
    pick stored before, if any (a load's, or one a server settled while idle)."""
    from inferd.engine.backends.llamacpp.tuning import aggregate, tune

    settings = load_settings()
    if model_path is None:
        spec = specs_from_settings(settings)[0]
    else:
        spec = ModelSpec(model_path.stem, model_path, ModelConfig(path=model_path), ())
    directory = tune_dir(settings.model_copy(update={"tune_kernels": True}))
    options = llamacpp_options(spec, tune_dir=directory)
    with console.status(f"measuring flash attention off and on for {spec.path.name}"):
        choice, before = tune(spec.path, options)
    stored = str(directory) if choice.source == "measured" and choice.settled else None
    if as_json:
        doc = {"model": str(spec.path), "stored_in": stored, **choice.facts()}
        doc["stored_before"] = before.facts() if before is not None else None
        print(json.dumps(doc))
        return
    if before is not None:  # what loads used until now: measured at a load, or while idle
        console.print(f"stored before: flash attention {before.mode} ({before.reason})")
    console.print(f"pick: flash attention {choice.mode} ({choice.reason})")
    if not choice.table:
        return
    ratio, noise = aggregate(choice.table)
    table = Table(title=f"flash attention off vs on: {spec.path.name} (ms, best round)")
    for col in ("step", "off", "on", "on / off", "noise", "weight"):
        table.add_column(col, justify="right")
    for t in choice.table:
        table.add_row(
            t.shape,
            f"{t.off_s * 1000:.2f}",
            f"{t.on_s * 1000:.2f}",
            f"{t.ratio:.2f}",
            f"{t.noise:.0%}",
            f"{t.weight:g}",
        )
    table.add_section()
    table.add_row("weighted", "", "", f"{ratio:.2f}", f"{noise:.0%}")
    console.print(table)
    console.print(f"stored in {stored}" if stored else "not stored: the next load measures again")
