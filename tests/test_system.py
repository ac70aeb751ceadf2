"""``kidneyssl.system``: machine facts and process settings every stage shares."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

_WHERE_A_MID_SIZE_BLOCK_GOES = r"""
import ctypes, sys
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "fixed":
    from kidneyssl.system import fix_mmap_threshold
    assert fix_mmap_threshold()
libc.free(libc.malloc(16 << 20))  # a freed mapped block: glibc raises its threshold to 16 MiB
block = libc.malloc(1 << 20)
heaps = [line.split()[0] for line in open("/proc/self/maps") if line.rstrip().endswith("[heap]")]
in_heap = any(int(lo, 16) <= block < int(hi, 16) for lo, hi in (h.split("-") for h in heaps))
print("heap" if in_heap else "mapped")
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc")
def test_a_fixed_mmap_threshold_keeps_mid_size_blocks_out_of_the_heap():
    def where(mode: str) -> str:
        out = subprocess.run([sys.executable, "-c", _WHERE_A_MID_SIZE_BLOCK_GOES, mode], capture_output=True,
                             text=True, check=True)
        return out.stdout.strip()

    assert where("dynamic") == "heap"  # glibc's default: freed, it would stay in the heap
    assert where("fixed") == "mapped"  # its own map, returned to the system when freed


def test_predict_and_locate_fix_the_mmap_threshold(monkeypatch, tmp_path):
    import kidneyssl.system
    from kidneyssl.cli.main import main

    calls = []
    monkeypatch.setattr(kidneyssl.system, "fix_mmap_threshold", lambda *a: calls.append(a) or True)
    missing = tmp_path / "missing.pt"
    for command in ("predict", "locate"):
        main([command, "--model", str(missing), "--input", str(tmp_path), "--out", str(tmp_path / command)])
    assert len(calls) == 2
