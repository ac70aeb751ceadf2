"""``kidneyssl.system``: machine facts and process settings every stage shares."""

from __future__ import annotations

import os
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


def test_predict_and_locate_settle_the_process_for_whole_scans(monkeypatch, tmp_path):
    import kidneyssl.system
    from kidneyssl.cli.main import main

    calls = []
    monkeypatch.setattr(kidneyssl.system, "settle_whole_scan_inference", lambda *a: calls.append(a) or {})
    missing = tmp_path / "missing.pt"
    for command in ("predict", "locate"):
        main([command, "--model", str(missing), "--input", str(tmp_path), "--out", str(tmp_path / command)])
    assert len(calls) == 2


def test_whole_scan_inference_turns_huge_pages_off_only_where_free_pages_go_to_the_hypervisor(monkeypatch):
    import kidneyssl.system as system

    monkeypatch.setattr(system, "fix_mmap_threshold", lambda *a: True)
    for user_chose, reporting, before, after in ((False, True, "1", "0"), (False, False, "1", "1"),
                                                 (True, True, "1", "1"), (True, False, "0", "0")):
        monkeypatch.setattr(system, "_user_chose_huge_pages", user_chose)
        monkeypatch.setattr(system, "free_pages_go_to_hypervisor", lambda *a, r=reporting: r)
        monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", before)
        assert system.settle_whole_scan_inference() == {"mmap_threshold_fixed": True, "huge_pages": after == "1"}
        assert os.environ["THP_MEM_ALLOC_ENABLE"] == after


def _virtio_device(root, name: str, device: str, features: str) -> None:
    folder = root / "bus" / "virtio" / "devices" / name
    folder.mkdir(parents=True)
    (folder / "device").write_text(device + "\n")
    (folder / "features").write_text(features + "\n")


def test_a_balloon_with_free_page_reporting_is_a_hypervisor_taking_free_pages(tmp_path):
    from kidneyssl.system import free_pages_go_to_hypervisor

    bits = "0110010100000000000000000000000010"  # as the kernel lists them: bit 0 first
    _virtio_device(tmp_path, "virtio0", "0x0002", "1" * 40)  # a block device: its bit 5 is not reporting
    assert not free_pages_go_to_hypervisor(tmp_path)
    _virtio_device(tmp_path, "virtio1", "0x0005", bits[:5] + "0" + bits[6:])  # a balloon without reporting
    assert not free_pages_go_to_hypervisor(tmp_path)
    _virtio_device(tmp_path, "virtio2", "0x0005", bits)  # bit 5 set: free page reporting
    assert free_pages_go_to_hypervisor(tmp_path)


def test_no_virtio_devices_or_unreadable_ones_mean_no_reporting(tmp_path):
    from kidneyssl.system import free_pages_go_to_hypervisor

    assert not free_pages_go_to_hypervisor(tmp_path / "absent")
    _virtio_device(tmp_path, "virtio0", "not-hex", "11111111")
    (tmp_path / "bus" / "virtio" / "devices" / "virtio1").mkdir()  # no device file
    _virtio_device(tmp_path, "virtio2", "0x0005", "11")  # features shorter than bit 5
    assert not free_pages_go_to_hypervisor(tmp_path)
