"""The name table: every served model's entry, and every name it answers to."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

from inferd.errors import ConfigError, InvalidRequest, ModelNotFound, ProtectedModel
from inferd.models.entry import ModelEntry, ModelStatus
from inferd.models.options import RegistryOptions
from inferd.models.profile import ModelProfile
from inferd.models.spec import ModelSpec, Source, base_name, directory_spec
from inferd.models.store import ModelStore, check_name

log = logging.getLogger(__name__)

_MAX_NAME = 1024


def _display(name: str) -> str:
    return name if len(name) <= 64 else name[:64] + "..."


class NameTable:
    """Models by canonical name; names, aliases, `name:latest`, model_map and saved copies
    resolve to them. Never falls back to another model: an unknown name is a 404.

    Models come from `specs` (the settings or the bundled model) and from the .gguf files of
    `store` (the models directory, rescanned when it changes); `options.allowed_models`
    hides the rest.
    """

    def __init__(
        self,
        specs: list[ModelSpec],
        options: RegistryOptions,
        *,
        default: str | None = None,
        store: ModelStore | None = None,
        model_overrides: Mapping[str, object] | None = None,
    ) -> None:
        self.options = options
        self.store = store
        self._overrides = dict(model_overrides or {})
        self._entries: dict[str, ModelEntry] = {}
        self._names: dict[str, str] = {}
        self._store_version: int | None = None
        self._profiles: dict[str, ModelProfile] = {}
        for spec in specs:
            if spec.name in self._entries:
                raise ConfigError(f"model name {spec.name!r} is used twice")
            if self._allowed(spec):
                self._entries[spec.name] = ModelEntry(spec, base=spec)
        self.rescan(force=True)
        if not self._entries:
            raise ConfigError("no model to serve: allowed_models excludes every model")
        if default:
            try:
                self.default_name = self.canonical(default)
            except ModelNotFound:
                raise ConfigError(f"default_model {default!r} is not a served model") from None
        else:
            self.default_name = next(iter(self._entries))

    # ---- lookup --------------------------------------------------------------------------

    def entry(self, name: str | None) -> ModelEntry:
        """The entry for `name` (or the default model). 404 when unknown."""
        return self._entries[self.default_name if name is None else self.canonical(name)]

    def get(self, canonical: str) -> ModelEntry | None:
        """The entry of a canonical name, without a rescan (None when gone)."""
        return self._entries.get(canonical)

    def entries(self, *, rescan: bool = True) -> list[ModelEntry]:
        """Every served model (after picking up changes to the models directory)."""
        if rescan:
            self.rescan()
        return list(self._entries.values())

    def canonical(self, name: str) -> str:
        if len(name) <= _MAX_NAME:
            for attempt in range(2):
                found = self._names.get(name) or self._names.get(base_name(name))
                if found is not None:
                    return found
                if attempt == 0 and not self.rescan():
                    break
        raise ModelNotFound(f"The model '{_display(name)}' does not exist", param="model")

    def profile(self, name: str | None) -> ModelProfile | None:
        """What /api/create gave the model called `name` (by that name, else by the name of
        the model it resolves to); None when nothing."""
        if name is not None and base_name(name) in self._profiles:
            return self._profiles[base_name(name)]
        try:
            return self._profiles.get(self.entry(name).spec.name)
        except ModelNotFound:  # the request that names it says so
            return None

    # ---- the models directory ------------------------------------------------------------

    def _allowed(self, spec: ModelSpec) -> bool:
        allowed = self.options.allowed_models
        return allowed is None or any(base_name(n) in allowed for n in spec.names)

    def rescan(self, *, force: bool = False) -> bool:
        """Pick up files added to or removed from the models directory, and its aliases.
        Only when the directory changed (cheap: one stat). True when it did."""
        store = self.store
        version = None if store is None else store.version()
        if not force and version == self._store_version:
            return False
        self._store_version = version
        self._profiles = {} if store is None else store.profiles()
        if store is not None:
            files = store.files()
            present = {p.absolute() for p in files}
            for name, entry in list(self._entries.items()):
                on_disk = entry.spec.path.absolute() in present
                gone = entry.spec.source == Source.DIRECTORY and not on_disk
                busy = entry.status in (ModelStatus.LOADING, ModelStatus.CONVERTING)
                if gone and entry.model is None and not busy:
                    del self._entries[name]
            # the same path twice (a configured model inside the directory) is one model;
            # a symlink to another model's file is a model of its own
            known = {e.spec.path.absolute() for e in self._entries.values()}
            taken = {n for e in self._entries.values() for n in (e.base or e.spec).names}
            for path in files:
                spec = directory_spec(path, self._overrides)
                if path.absolute() in known or spec.name in taken or not self._allowed(spec):
                    continue
                # directory models load on demand (the default one also at startup)
                self._entries[spec.name] = ModelEntry(spec, ModelStatus.UNLOADED, base=spec)
                taken.add(spec.name)
        self._rebuild_names()
        return True

    def _rebuild_names(self) -> None:
        """Every name → canonical name: specs' own names first, then model_map, then the
        aliases saved by copies. A name already taken keeps its first meaning."""
        names: dict[str, str] = {}
        for e in self._entries.values():
            for n in (e.base or e.spec).names:
                names.setdefault(base_name(n), e.base.name if e.base else e.spec.name)
        fixed = dict(names)
        extra: dict[str, list[str]] = {}
        saved = self.store.aliases() if self.store is not None else {}
        for source in (self.options.model_map, saved):
            for alias, target in source.items():
                alias = base_name(alias)
                canonical = fixed.get(base_name(target))
                if canonical is None:
                    log.warning("alias %r points at unknown model %r", alias, target)
                    continue
                if alias in names:
                    continue
                names[alias] = canonical
                extra.setdefault(canonical, []).append(alias)
        self._names = names
        for e in self._entries.values():
            base = e.base or e.spec
            more = tuple(a for a in extra.get(base.name, []) if a not in base.names)
            e.spec = dataclasses.replace(base, aliases=base.aliases + more) if more else base

    # ---- copies and deletes (Ollama's /api/copy and /api/delete) -------------------------

    def copy(self, source: str, destination: str) -> ModelEntry:
        """Give `source`'s model the extra name `destination`, saved in the models
        directory so that it survives restarts."""
        entry = self.entry(source)
        target = (entry.base or entry.spec).name
        dest = base_name(check_name(destination, param="destination"))
        fixed = {base_name(n) for e in self._entries.values() for n in (e.base or e.spec).names}
        if dest in fixed or dest in self.options.model_map:
            if self._names.get(dest) == target:
                return entry
            raise InvalidRequest(
                f"'{dest}' is already the name of another model", param="destination"
            )
        if self.store is None:
            raise InvalidRequest("copies need a models directory (models_dir)", param="source")
        self.store.set_alias(dest, target)
        self.rescan(force=True)
        return entry

    def remove_alias(self, name: str) -> bool:
        """Remove `name` when it is an alias made by `copy`. False when it is not one."""
        key = base_name(name)
        if self.store is None or key not in self.store.aliases():
            return False
        self.store.remove_aliases(alias=key)
        self.store.remove_profile(key)
        self.rescan(force=True)
        return True

    def deletable(self, name: str) -> ModelEntry:
        """The entry of a models-directory file that may be deleted; bundled and configured
        models, names from the settings and the default model are protected."""
        entry = self.entry(name)
        base = entry.base or entry.spec
        if base_name(name) in self.options.model_map:
            raise ProtectedModel(f"'{base_name(name)}' is a name set in the settings (model_map)")
        if base.source != Source.DIRECTORY or self.store is None:
            what = "bundled" if base.source == Source.BUNDLED else "configured in the settings"
            raise ProtectedModel(f"The model '{base.name}' is {what} and cannot be deleted")
        if base.name == self.default_name:
            raise ProtectedModel(f"The model '{base.name}' is the default model")
        return entry

    def remove(self, entry: ModelEntry) -> None:
        """Delete a `deletable` (and unloaded) model's file, with its aliases."""
        base = entry.base or entry.spec
        if self.store is not None:  # deletable() made sure
            self.store.remove_file(base.path)
            for alias in [n for n, t in self.store.aliases().items() if t == base.name]:
                self.store.remove_profile(alias)
            self.store.remove_aliases(target=base.name)
            self.store.remove_profile(base.name)
        self._entries.pop(base.name, None)
        self.rescan(force=True)
