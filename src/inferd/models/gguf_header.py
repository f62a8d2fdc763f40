"""Reads a GGUF file's header (metadata and tensor shapes) without loading the model.

Every count and length is checked against the bytes that are left, so an empty, truncated
or garbage file, or one with absurd counts, fails fast with `InvalidModelFile`.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

from inferd.errors import InvalidModelFile

_MAGIC = b"GGUF"
_STRING = 8
_ARRAY = 9
# value type -> struct format (little-endian) for the fixed-size ones
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_MAX_DIMS = 8
_MAX_KEY = 65_535


@dataclass(frozen=True)
class GgufHeader:
    version: int
    # scalar metadata as strings (booleans as "true"/"false"), as llama.cpp reports them
    metadata: dict[str, str]
    # the number of items of each array-valued key (tokenizer vocabularies and merges)
    array_lengths: dict[str, int] = field(default_factory=dict)
    tensor_count: int = 0
    n_params: int = 0


class _Cursor:
    def __init__(self, buf: mmap.mmap | bytes, name: str) -> None:
        self.buf = buf
        self.pos = 0
        self.name = name

    def fail(self, why: str) -> InvalidModelFile:
        return InvalidModelFile(f"{self.name} is not a valid GGUF file: {why}")

    def take(self, fmt: str) -> int | float | bool:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise self.fail("it ends too early")
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def count(self, item_size: int, what: str) -> int:
        n = int(self.take("<Q"))
        if n * item_size > len(self.buf) - self.pos:
            raise self.fail(f"{what} count {n} does not fit in the file")
        return n

    def string(self, limit: int | None = None) -> str:
        n = self.count(1, "string length")
        if limit is not None and n > limit:
            raise self.fail(f"a key of {n} bytes")
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw.decode("utf-8", "replace")

    def skip_string(self) -> None:
        n = self.count(1, "string length")
        self.pos += n

    def value(self, kind: int) -> str:
        if kind == _STRING:
            return self.string()
        fmt = _SCALARS.get(kind)
        if fmt is None:
            raise self.fail(f"unknown value type {kind}")
        v = self.take(fmt)
        if kind == 7:
            return "true" if v else "false"
        return str(v)

    def skip_array(self, kind: int) -> int:
        if kind == _STRING:
            n = self.count(8, "array")
            for _ in range(n):
                self.skip_string()
            return n
        fmt = _SCALARS.get(kind)
        if fmt is None:
            raise self.fail(f"unknown array item type {kind}")
        size = struct.calcsize(fmt)
        n = self.count(size, "array")
        self.pos += n * size
        return n


def _parse(buf: mmap.mmap | bytes, name: str) -> GgufHeader:
    c = _Cursor(buf, name)
    if bytes(buf[:4]) != _MAGIC:
        raise c.fail("wrong magic number")
    c.pos = 4
    version = int(c.take("<I"))
    if version not in (2, 3):
        raise c.fail(f"unsupported version {version}")
    # a tensor info takes at least 8+4+8+4+8 bytes, a key/value at least 8+4+1
    n_tensors = c.count(32, "tensor")
    n_kv = c.count(13, "metadata")
    metadata: dict[str, str] = {}
    arrays: dict[str, int] = {}
    for _ in range(n_kv):
        key = c.string(_MAX_KEY)
        kind = int(c.take("<I"))
        if kind == _ARRAY:
            arrays[key] = c.skip_array(int(c.take("<I")))
        else:
            metadata[key] = c.value(kind)
    n_params = 0
    for _ in range(n_tensors):
        c.skip_string()
        n_dims = int(c.take("<I"))
        if n_dims > _MAX_DIMS:
            raise c.fail(f"a tensor with {n_dims} dimensions")
        elements = 1
        for _ in range(n_dims):
            elements *= int(c.take("<Q"))
        c.take("<I")  # type
        c.take("<Q")  # offset
        n_params += elements
    return GgufHeader(version, metadata, arrays, n_tensors, n_params)


def read_header(path: Path) -> GgufHeader:
    """The header of the GGUF file at `path`. Raises InvalidModelFile for anything else."""
    name = path.name
    try:
        with path.open("rb") as f:
            size = f.seek(0, 2)
            if size < 24:
                raise InvalidModelFile(f"{name} is not a valid GGUF file: it is too short")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse(buf, name)
    except FileNotFoundError:
        raise InvalidModelFile(f"model file not found: {name}") from None
    except OSError as exc:
        raise InvalidModelFile(f"cannot read {name}: {exc.strerror or 'I/O error'}") from None
