"""build_loader: the dataset's items in the given order, with and without worker processes."""

from __future__ import annotations

import pytest
import torch

from kidneyssl.data.loader import build_loader
from kidneyssl.data.segmentation import HalfVolumeDataset


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_serves_items_in_order(make_cache, tmp_path, num_workers):
    cache = make_cache(tmp_path, n_cases=2)
    ds = HalfVolumeDataset(cache, cache.case_ids)
    order = [3, 0, 2, 1, 0]
    items = list(build_loader(ds, order, num_workers=num_workers, pin_memory=True))
    assert [(it["case_id"], it["side"]) for it in items] == [(ds[i]["case_id"], ds[i]["side"]) for i in order]
    for i, it in zip(order, items):
        ref = ds[i]
        assert it["image"].shape == ref["image"].shape  # no batch dimension added
        assert torch.equal(it["image"], ref["image"]) and torch.equal(it["label"], ref["label"])
        assert it["context"] == ref["context"] and it["split_x"] == ref["split_x"]


def test_loader_rejects_bad_arguments(make_cache, tmp_path):
    cache = make_cache(tmp_path, n_cases=1)
    ds = HalfVolumeDataset(cache, cache.case_ids)
    with pytest.raises(ValueError, match="outside"):
        build_loader(ds, [0, 5])
    with pytest.raises(ValueError, match="num_workers"):
        build_loader(ds, [0], num_workers=-1)


def test_worker_count_is_capped_at_the_cpus_available(make_cache, tmp_path, monkeypatch, caplog):
    import logging

    from kidneyssl import system
    from kidneyssl.data import loader

    cache = make_cache(tmp_path, n_cases=1)
    ds = HalfVolumeDataset(cache, cache.case_ids)
    monkeypatch.setattr(system.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert loader.available_cpus() == 2
    with caplog.at_level(logging.INFO, logger="kidneyssl.data.loader"):
        assert build_loader(ds, [0, 1], num_workers=4).num_workers == 2  # type: ignore[attr-defined]
        assert build_loader(ds, [0, 1], num_workers=4, announce=False).num_workers == 2  # type: ignore[attr-defined]
        assert build_loader(ds, [0, 1], num_workers=1).num_workers == 1  # type: ignore[attr-defined]
    assert [r.getMessage() for r in caplog.records if r.name == "kidneyssl.data.loader"] == [
        "data loader: 2 reader processes instead of the 4 asked for (2 CPUs available to this process)"]
    monkeypatch.delattr(system.os, "sched_getaffinity")  # not Linux: os.cpu_count()
    monkeypatch.setattr(system.os, "cpu_count", lambda: 3)
    assert loader.available_cpus() == 3


def test_readers_start_from_a_server_process_never_a_fork_of_the_trainer(make_cache, tmp_path):
    """Forking a process whose native libraries run threads (OpenVINO after an inference) crashed the
    readers with SIGSEGV, so readers come from a forkserver; items arrive in order all the same."""
    cache = make_cache(tmp_path, n_cases=1)
    ds = HalfVolumeDataset(cache, cache.case_ids)
    loader = build_loader(ds, [1, 0], num_workers=1)
    assert loader.multiprocessing_context.get_start_method() == "forkserver"  # type: ignore[attr-defined]
    assert [(it["case_id"], it["side"]) for it in loader] == [(ds[i]["case_id"], ds[i]["side"]) for i in (1, 0)]
    assert build_loader(ds, [0], num_workers=0).multiprocessing_context is None  # type: ignore[attr-defined]
