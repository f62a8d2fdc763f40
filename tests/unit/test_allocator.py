"""`inferd serve`'s malloc settings (cli/allocator.py): on glibc a freed large block goes back
to the system; a block freed earlier no longer moves the threshold."""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

import pytest

from inferd.cli import allocator

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")

# bytes glibc holds in blocks mapped on their own, around a 2 MiB allocation made after a
# 16 MiB block was freed (by default that raises the mmap threshold to 16 MiB)
SCRIPT = """
import ctypes, sys
fields = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
          "uordblks", "fordblks", "keepcost")
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in fields]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "configured":
    from inferd.cli.allocator import configure_malloc
    assert configure_malloc()
freed = bytearray(16 << 20)
del freed
before = libc.mallinfo2().hblkhd
block = bytearray(2 << 20)
print(libc.mallinfo2().hblkhd - before)
"""


def _mapped(mode: str) -> int:
    src = Path(allocator.__file__).parents[2]
    env = {"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], env=env, capture_output=True, text=True, check=True
    )
    return int(out.stdout)


def _glibc() -> bool:
    try:
        return hasattr(ctypes.CDLL(None), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not _glibc(), reason="glibc 2.33 or later")
def test_a_large_block_is_mapped_on_its_own_once_configured() -> None:
    assert _mapped("default") == 0  # carved from the heap: stays resident once freed
    assert _mapped("configured") >= 2 << 20  # its own mapping: unmapped when freed


def test_settings_in_the_environment_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert allocator.configure_malloc() is False
