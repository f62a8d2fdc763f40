"""Making models in the models directory, as Ollama's `/api/pull` and `/api/create` do: pull a
GGUF (a local path, an http(s) URL, `org/repo:file.gguf` in the HF cache) or a checkpoint
(converted), and create a model from another one or from uploaded blobs, with a profile
(template, system, parameters, messages, license) and an optional quantization.

Progress goes to `report` as Ollama's status objects (`{"status", "total", "completed"}`),
from worker threads; the blocking work (copies, downloads, conversions, the quantizer) runs
there too, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferd.config import quant_type
from inferd.errors import InvalidModelFile, InvalidRequest, ModelNotFound, ProtectedModel
from inferd.models import checkpoint, hf_cache
from inferd.models.convert_cache import ConvertCache, Quantizer
from inferd.models.converting import DEFAULT_QUANT
from inferd.models.gguf_header import read_header
from inferd.models.profile import ModelProfile
from inferd.models.progress import LoadProgress
from inferd.models.pull import Pulled, is_url, pull, pull_checkpoint, requantize
from inferd.models.registry import ModelEntry, ModelRegistry
from inferd.models.spec import Source, base_name
from inferd.models.store import ModelStore, check_name

log = logging.getLogger(__name__)

Report = Callable[[dict[str, Any]], None]

_FILE_NAME = re.compile(r"^[A-Za-z0-9][\w.-]{0,127}$")
# what an uploaded model may consist of: weights, configs, tokenizers (no code, no pickles)
_UPLOADABLE = (".gguf", ".safetensors", ".json", ".model", ".txt", ".jinja")
_PERCENT = 1000  # conversions report progress as completed/total per mille


def registry_hint(source: str) -> str:
    return (
        f"inferd cannot pull '{source[:80]}' from the Ollama registry: it never downloads from "
        "model registries. Pull a GGUF by URL (an http(s) link to a .gguf file), a local path "
        "(a .gguf file or a Hugging Face checkpoint folder), or a Hugging Face repo already in "
        "the local cache (org/repo, or org/repo:file.gguf; fetch it first with "
        "`huggingface-cli download org/repo`)"
    )


@dataclass(frozen=True)
class CreateSpec:
    """What /api/create asks for, its Modelfile already merged in."""

    name: str
    from_: str | None
    files: Mapping[str, str]  # file name -> blob digest
    quantize: str | None
    profile: ModelProfile


class Workshop:
    def __init__(
        self,
        registry: ModelRegistry,
        cache: ConvertCache,
        quantize: Quantizer,
        *,
        default_quant: str | None = None,
    ) -> None:
        self._registry = registry
        self._cache = cache
        self._quantize = quantize
        self._default_quant = default_quant or DEFAULT_QUANT

    @property
    def store(self) -> ModelStore:
        store = self._registry.store
        if store is None:
            raise InvalidRequest("this server has no models directory (models_dir)")
        return store

    # ---- pull -------------------------------------------------------------------------

    async def pull(self, source: str, report: Report) -> str:
        """Put `source` into the models directory; the name clients use for it."""
        text = source.strip()
        pulled = await asyncio.to_thread(self._pull, text, report)
        name = self._name(text, pulled)
        report({"status": "success"})
        return name

    def _pull(self, text: str, report: Report) -> Pulled:
        store = self.store
        path = _server_path(text)
        if is_url(text) or (path is not None and path.is_file()):
            return self._fetch(text, store, report)
        if path is not None and checkpoint.is_checkpoint_dir(path):
            return self._convert(path, path.name, None, report)
        if hf_cache.is_hf_spec(text):
            return self._fetch(str(hf_cache.resolve(text)), store, report)
        folder = checkpoint.find(text)
        if folder is None:
            raise ModelNotFound(registry_hint(text), param="model")
        return self._convert(folder, Path(text).name, None, report)

    def _fetch(self, source: str, store: ModelStore, report: Report) -> Pulled:
        label = f"pulling {Path(source).name[:64]}"

        def progress(done: int, total: int | None) -> None:
            report({"status": label, "completed": done, **({"total": total} if total else {})})

        pulled = pull(source, store, force=True, progress=progress)
        report({"status": "verifying sha256 digest", "digest": f"sha256:{pulled.sha256}"})
        return pulled

    def _convert(self, folder: Path, name: str, quant: str | None, report: Report) -> Pulled:
        quant = quant or self._default_quant

        def progress(p: LoadProgress) -> None:
            if p.phase != "done":
                status = f"{p.phase} {folder.name[:64]} to {quant}"
                report(
                    {"status": status, "total": _PERCENT, "completed": int(p.fraction * _PERCENT)}
                )

        stem = _stem(name)
        return pull_checkpoint(
            folder,
            self.store,
            self._cache,
            quant=quant,
            name=stem,
            force=True,
            on_progress=progress,
        )

    def _name(self, source: str, pulled: Pulled) -> str:
        """The pulled file is served under its stem; a source that is itself a model name
        (org/repo) also names it."""
        self._registry.entries()  # picks up the new file
        name = base_name(source)
        if is_url(source) or name == pulled.name or not _valid_name(name):
            return pulled.name
        self._registry.copy(pulled.name, name)
        return name

    # ---- create -----------------------------------------------------------------------

    async def create(self, spec: CreateSpec, report: Report) -> None:
        registry, store = self._registry, self.store
        name = base_name(check_name(spec.name, param="model"))
        self._check_replaceable(name)
        qtype = None if spec.quantize is None else _quant(spec.quantize)
        base_profile: ModelProfile | None = None
        if spec.files:
            made = await asyncio.to_thread(self._from_blobs, name, spec.files, qtype, report)
            target = made.name
        elif spec.from_:
            entry = await self._base(spec.from_, report)
            base_profile = registry.profile(entry.spec.name)
            target = entry.spec.name
            report({"status": f"using existing model {target}"})
            if qtype is not None:
                made = await asyncio.to_thread(
                    self._quantized, entry.spec.path, name, qtype, report
                )
                target = made.name
        else:
            raise InvalidRequest(
                "from or files is required (or a Modelfile with FROM)", param="from"
            )
        registry.entries()  # picks up new files
        if target != name:
            registry.copy(target, name)
        profile = spec.profile.over(base_profile)
        report({"status": "writing manifest"})
        if profile.to_json():
            store.set_profile(name, profile)
        else:
            store.remove_profile(name)
        registry.entries()
        report({"status": "success"})

    async def _base(self, source: str, report: Report) -> ModelEntry:
        """The model to create from: a served one, else a GGUF file or checkpoint folder on
        the server (an absolute path), pulled first."""
        try:
            return self._registry.entry(source)
        except ModelNotFound:
            path = await asyncio.to_thread(_server_path, source)
        if path is None or not await asyncio.to_thread(path.exists):
            raise ModelNotFound(
                f"the model '{source[:80]}' to create from does not exist (name a served "
                "model, or upload GGUF blobs with /api/blobs and list them in files)",
                param="from",
            )
        return self._registry.entry(await self.pull(str(path), report))

    def _check_replaceable(self, name: str) -> None:
        """A created (or pulled) model may be created again; a configured one may not."""
        try:
            entry = self._registry.entry(name)
        except ModelNotFound:
            return
        store = self.store
        if name in store.aliases():
            return
        base = entry.base or entry.spec
        if base.source != Source.DIRECTORY or base.name != name:
            raise ProtectedModel(f"'{name}' is the name of a configured model; choose another")

    def _quantized(self, source: Path, name: str, qtype: str, report: Report) -> Pulled:
        if source.is_dir():  # a checkpoint: converted at that type
            return self._convert(source, name, qtype, report)
        meta = read_header(source).metadata
        status = f"quantizing {source.name[:64]} to {qtype}"

        def progress(fraction: float, _line: str) -> None:
            report({"status": status, **_per_mille(fraction)})

        log.info("quantizing %s (file type %s) to %s", source, meta.get("general.file_type"), qtype)
        return requantize(
            source, self.store, self._quantize, qtype, name=_stem(name), force=True,
            on_progress=progress,
        )  # fmt: skip

    def _from_blobs(
        self, name: str, files: Mapping[str, str], qtype: str | None, report: Report
    ) -> Pulled:
        store = self.store
        blobs: dict[str, Path] = {}
        for file_name, digest in files.items():
            if not _FILE_NAME.match(file_name) or ".." in file_name:
                raise InvalidRequest(f"invalid file name {file_name[:80]!r}", param="files")
            if not file_name.endswith(_UPLOADABLE):
                # never code: the converter loads tokenizers with trust_remote_code
                raise InvalidRequest(
                    f"{file_name[:80]}: files may be GGUF, safetensors and tokenizer files "
                    f"({', '.join(_UPLOADABLE)}), nothing else",
                    param="files",
                )
            blob = store.blob_path(digest)
            if not blob.is_file():
                raise InvalidRequest(
                    f"blob {digest} ({file_name}) was not uploaded: POST it to /api/blobs/{digest}",
                    param="files",
                )
            blobs[file_name] = blob
        if "config.json" in blobs:  # a Hugging Face checkpoint, uploaded file by file
            with _linked_folder(store.root / ".create", blobs) as folder:
                checkpoint.inspect(folder)  # garbage fails here, before any status
                _using(files, report)
                return self._convert(folder, name, qtype, report)
        ggufs = [p for f, p in blobs.items() if f.endswith(".gguf")] or list(blobs.values())
        if len(ggufs) != 1:
            raise InvalidRequest(
                "files must hold one GGUF file, or a Hugging Face checkpoint "
                "(config.json, *.safetensors and tokenizer files)",
                param="files",
            )
        try:
            read_header(ggufs[0])
        except InvalidModelFile as exc:
            raise InvalidModelFile(exc.message, param="files") from None
        _using(files, report)
        if qtype is not None:
            return self._quantized(ggufs[0], name, qtype, report)
        report({"status": "creating new layer"})
        return _link(ggufs[0], store, _stem(name))


def _using(files: Mapping[str, str], report: Report) -> None:
    for digest in files.values():
        report({"status": f"using existing layer {digest}"})


def _per_mille(fraction: float) -> dict[str, int]:
    return {"total": _PERCENT, "completed": int(fraction * _PERCENT)}


def _server_path(text: str) -> Path | None:
    """`text` as an absolute path on this machine (None for anything else)."""
    path = Path(text).expanduser()
    return path if path.is_absolute() else None


def _quant(text: str) -> str:
    try:
        return quant_type(text)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="quantize") from None


def _stem(name: str) -> str:
    """The file stem a model called `name` gets (`user/model:tag` -> `user-model-tag`)."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", base_name(name)).strip(".-")[:128] or "model"


def _valid_name(name: str) -> bool:
    try:
        check_name(name, param="model")
    except InvalidRequest:
        return False
    return True


def _link(blob: Path, store: ModelStore, stem: str) -> Pulled:
    """The blob as `<stem>.gguf` (a hard link: no second copy on disk)."""
    dest = store.path_for(stem)
    tmp = dest.with_name(f".{dest.name}.partial")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(blob, tmp)
        except OSError:
            shutil.copyfile(blob, tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return Pulled(stem, dest, dest.stat().st_size, blob.name.removeprefix("sha256-"))


@contextlib.contextmanager
def _linked_folder(parent: Path, files: Mapping[str, Path]) -> Any:
    """A temporary folder holding `files` (hard links to the blobs) under their names."""
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=parent))
    try:
        for file_name, blob in files.items():
            try:
                os.link(blob, folder / file_name)
            except OSError:
                shutil.copyfile(blob, folder / file_name)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
