"""Half volumes for segmentation training: exactly inference's halves (one definition), stitching
back exactly, and the kidney fraction that sets the automatic BCE weight."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kidneyssl.data.segmentation import HalfVolumeDataset, foreground_fraction
from kidneyssl.errors import KidneySSLError
from kidneyssl.io.geometry import Side
from kidneyssl.preprocessing.halves import half_bounds, stitch_halves


def test_half_items_are_the_halves_with_context(make_cache, tmp_path):
    cache = make_cache(tmp_path, n_cases=3, single={1: Side.LEFT})
    ds = HalfVolumeDataset(cache, cache.case_ids)
    assert len(ds) == 6  # the empty half of the single-kidney case is a training item too
    assert [(it["case_id"], it["side"]) for it in (ds[0], ds[1])] == [
        ("case_00000", "right"), ("case_00000", "left")]
    case = cache.load("case_00000")
    split_x = case.meta["split_x"]
    assert split_x == 32
    for index, side in ((0, Side.RIGHT), (1, Side.LEFT)):
        item = ds[index]
        assert item["image"].dtype == torch.float32 and item["label"].dtype == torch.float32
        assert item["image"].shape == item["label"].shape == (1, 16, 32, 32)
        assert (item["split_x"], item["width"], item["context"]) == (32, 64, 0)
        cols = slice(0, 32) if side is Side.RIGHT else slice(32, 64)
        np.testing.assert_array_equal(item["image"][0].numpy(), case.image[:, :, cols])
        np.testing.assert_array_equal(item["label"][0].numpy(), (case.label[:, :, cols] > 0).astype(np.float32))
    assert set(np.unique(ds[1]["label"].numpy())) == {0.0, 1.0}
    assert not ds[2]["label"].any()  # case_00001 has only a left kidney: its right half is empty


def test_context_takes_real_image_to_a_multiple_of_16_and_stitches_back(make_cache, tmp_path):
    cache = make_cache(tmp_path, n_cases=1)
    ds = HalfVolumeDataset(cache, cache.case_ids, context=3)
    case = cache.load("case_00000")
    right, left = ds[0], ds[1]
    bounds = half_bounds(64, 32, 3, 16)  # the same function inference uses
    assert right["image"].shape[-1] == 48 == left["image"].shape[-1]  # 32 + 3 -> 48: real context, no zeros
    np.testing.assert_array_equal(right["image"][0].numpy(), case.image[:, :, bounds[Side.RIGHT]])
    np.testing.assert_array_equal(left["image"][0].numpy(), case.image[:, :, bounds[Side.LEFT]])
    full = stitch_halves({Side.RIGHT: right["label"][0].numpy(), Side.LEFT: left["label"][0].numpy()},
                         32, 64, 3, 16)
    np.testing.assert_array_equal(full, (case.label > 0).astype(np.float32))


def test_include_sides_and_batches(make_cache, tmp_path):
    cache = make_cache(tmp_path, n_cases=2)
    ds = HalfVolumeDataset(cache, cache.case_ids, include_sides=("left",))
    assert [(it["case_id"], it["side"]) for it in (ds[0], ds[1])] == [
        ("case_00000", "left"), ("case_00001", "left")]
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=1)))
    assert batch["image"].shape == (1, 1, 16, 32, 32) and batch["side"] == ["left"]
    with pytest.raises(ValueError):
        HalfVolumeDataset(cache, cache.case_ids, include_sides=("middle",))


def test_unlabelled_case_is_refused(make_cache, tmp_path):
    cache = make_cache(tmp_path, n_cases=3, unlabelled={2})
    assert cache.load("case_00002").label is None  # imaging only: prepared, but not for training
    with pytest.raises(KidneySSLError, match="case_00002: no label"):
        HalfVolumeDataset(cache, cache.case_ids)


def test_foreground_fraction_counts_kidney_voxels_of_the_halves(make_cache, tmp_path):
    cache = make_cache(tmp_path, n_cases=2)
    ds = HalfVolumeDataset(cache, cache.case_ids)
    expected = sum(int((cache.load(c).label > 0).sum()) for c in cache.case_ids) / sum(
        cache.load(c).label.size for c in cache.case_ids)
    assert foreground_fraction(ds) == pytest.approx(expected)
    assert 0 < expected < 0.5


def test_cropped_halves_are_seeded_by_seed_epoch_and_index(make_cache, tmp_path):
    from kidneyssl.data.segmentation import CroppedHalves

    cache = make_cache(tmp_path, n_cases=2)
    halves = HalfVolumeDataset(cache, cache.case_ids)
    crops = CroppedHalves(halves, (16, 16, 16), seed=3, foreground=0.0)
    assert len(crops) == len(halves)
    first = crops[1]
    assert first["image"].shape == first["label"].shape == (1, 16, 16, 16)
    again = CroppedHalves(halves, (16, 16, 16), seed=3, foreground=0.0)[1]  # another process, same draw
    assert first["crop_start"] == again["crop_start"]
    torch.testing.assert_close(first["image"], again["image"])
    z, y, x = first["crop_start"]
    np.testing.assert_array_equal(first["image"][0].numpy(), halves[1]["image"][0, z:z + 16, y:y + 16, x:x + 16].numpy())
    starts = set()
    for epoch in range(6):
        crops.set_epoch(epoch)
        starts.add(crops[1]["crop_start"])
    assert len(starts) > 1  # a new crop every epoch


def test_foreground_crops_hold_kidney_and_larger_crops_are_zero_padded(make_cache, tmp_path):
    from kidneyssl.data.segmentation import CroppedHalves

    cache = make_cache(tmp_path, n_cases=2)
    halves = HalfVolumeDataset(cache, cache.case_ids)
    fg = CroppedHalves(halves, (16, 16, 16), seed=0, foreground=1.0)
    for epoch in range(4):
        fg.set_epoch(epoch)
        assert all(fg[i]["label"].sum() > 0 for i in range(len(fg)) if halves[i]["label"].any())
    big = CroppedHalves(halves, (32, 32, 48), seed=0)[0]  # halves are 16 x 32 x 32
    assert big["crop_start"] == (0, 0, 0) and big["image"].shape == (1, 32, 32, 48)
    assert not big["image"][0, 16:].any() and not big["image"][0, :, :, 32:].any()


def test_items_are_writable_copies_of_the_memory_mapped_cache(make_cache, tmp_path):
    """An augmentation may write into an item in place: the item is its own memory, and the cache
    file is unchanged."""
    cache = make_cache(tmp_path, n_cases=1)
    ds = HalfVolumeDataset(cache, cache.case_ids, context=64)  # the half spans the whole width: one block
    item = ds[0]
    assert item["image"].numpy().flags.writeable
    before = cache.load("case_00000").image.copy()
    item["image"].add_(1.0)
    np.testing.assert_array_equal(cache.load("case_00000").image, before)
