"""CLI flags derived from the Settings fields, so the two never drift apart."""

import functools
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from pydantic import ByteSize

from inferd.config import ModelConfig, Settings

# ModelConfig fields that make sense as flags for every served model.
_MODEL_FIELDS = (
    "n_ctx",
    "kv_cells",
    "max_seqs",
    "kv_split",
    "n_batch",
    "prefill_per_decode",
    "prefix_cache",
    "prefix_cache_mb",
    "speculative",
    "speculative_max_draft",
    "speculative_draft",
    "n_threads",
    "n_gpu_layers",
    "flash_attn",
    "cache_type_k",
    "cache_type_v",
)

_SCALARS = (str, int, float, bool, Path)


def _scalar_type(annotation: Any) -> type | None:
    """The flag type for a field, or None when it is not a plain scalar."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return str
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _scalar_type(args[0]) if len(args) == 1 else None
    if annotation is ByteSize:
        return str  # "8GB", "512MiB" or bytes; pydantic parses it
    if annotation in _SCALARS:
        return typing.cast(type, annotation)
    return None


def settings_flags(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give `command` one --flag per scalar Settings field and per model field in
    `_MODEL_FIELDS`; it receives the given ones as `flags` and `model_flags` dicts."""
    own = [
        p
        for p in inspect.signature(command).parameters.values()
        if p.name not in ("flags", "model_flags")
    ]
    taken = {p.name for p in own}
    derived: list[inspect.Parameter] = []
    fields = [*Settings.model_fields.items()]
    fields += [(n, ModelConfig.model_fields[n]) for n in _MODEL_FIELDS]
    for name, field in fields:
        typ = _scalar_type(field.annotation)
        if typ is None or name in taken:
            continue
        flag = "--" + name.replace("_", "-")
        decls = [f"{flag}/--no-{flag[2:]}"] if typ is bool else [flag]
        option = typer.Option(None, *decls, help=field.description, show_default=False)
        derived.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=option,
                annotation=typing.Optional[typ],  # noqa: UP045 - typer wants a real type object
            )
        )
    names = [p.name for p in derived]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        given = {n: kwargs.pop(n) for n in names if kwargs.get(n) is not None}
        for n in names:
            kwargs.pop(n, None)
        model_flags = {n: given.pop(n) for n in _MODEL_FIELDS if n in given}
        return command(flags=given, model_flags=model_flags, **kwargs)

    wrapper.__signature__ = inspect.Signature(own + derived)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {}
    return wrapper
