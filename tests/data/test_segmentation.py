"""Half volumes for segmentation training (padded to multiples of 16, stitch back exactly) and
whole validation volumes."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from kidneyssl.data.segmentation import HalfVolumeDataset, half_to_full, iter_validation_cases
from kidneyssl.errors import KidneySSLError
from kidneyssl.io.geometry import Side




def test_half_items_are_padded_halves_with_stitch_info(make_cache, tmp_path):
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
        assert all(n % 16 == 0 for n in item["image"].shape[1:])
        assert (item["split_x"], item["width"], item["overlap"], item["pad"]) == (32, 64, 0, (0, 0, 0))
        cols = slice(0, 32) if side is Side.RIGHT else slice(32, 64)
        np.testing.assert_array_equal(item["image"][0].numpy(), case.image[:, :, cols])
        np.testing.assert_array_equal(item["label"][0].numpy(), (case.label[:, :, cols] > 0).astype(np.float32))
    assert set(np.unique(ds[1]["label"].numpy())) == {0.0, 1.0}
    assert not ds[2]["label"].any()  # case_00001 has only a left kidney: its right half is empty


def test_odd_split_pads_and_stitches_back(make_cache, tmp_path):
    cache = make_cache(tmp_path, n_cases=1)
    ds = HalfVolumeDataset(cache, cache.case_ids, overlap=3)
    case = cache.load("case_00000")
    right, left = ds[0], ds[1]
    assert right["image"].shape[-1] % 16 == 0 and left["image"].shape[-1] % 16 == 0
    assert right["pad"] == (0, 0, 48 - 35) and left["pad"] == (0, 0, 48 - 35)  # 35 = 32 + 3 columns
    assert right["image"][0, :, :, 35:].abs().sum() == 0  # zero padding after the data
    halves = {it["side"]: it["label"][0].numpy() for it in (right, left)}
    pads = {it["side"]: it["pad"] for it in (right, left)}
    full = half_to_full(halves, right["split_x"], right["width"], right["overlap"], pads)
    np.testing.assert_array_equal(full, (case.label > 0).astype(np.float32))
    images = {it["side"]: it["image"].numpy() for it in (right, left)}  # with the channel axis
    np.testing.assert_array_equal(half_to_full(images, 32, 64, 3, pads)[0], case.image)


def test_include_sides_and_batches(make_cache, tmp_path):
    cache = make_cache(tmp_path, n_cases=2)
    ds = HalfVolumeDataset(cache, cache.case_ids, include_sides=("left",))
    assert [(it["case_id"], it["side"]) for it in (ds[0], ds[1])] == [
        ("case_00000", "left"), ("case_00001", "left")]
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=1)))
    assert batch["image"].shape == (1, 1, 16, 32, 32) and batch["side"] == ["left"]
    with pytest.raises(ValueError):
        HalfVolumeDataset(cache, cache.case_ids, include_sides=("middle",))


def test_unlabelled_case_is_refused_and_validation_volumes(make_cache, tmp_path):
    cache = make_cache(tmp_path, n_cases=3, unlabelled={2})
    cases = list(iter_validation_cases(cache, cache.case_ids[:2]))
    assert [c.case_id for c in cases] == ["case_00000", "case_00001"]
    raw = cache.load("case_00000")
    np.testing.assert_array_equal(cases[0].image, raw.image)
    np.testing.assert_array_equal(cases[0].label, (raw.label > 0).astype(np.uint8))
    assert cases[0].label.max() == 1 and raw.label.max() == 2  # tumour merged into kidney
    assert cases[0].split_x == raw.meta["split_x"]
    assert cache.load("case_00002").label is None  # imaging only: prepared, but not for training
    with pytest.raises(KidneySSLError, match="case_00002: no label"):
        HalfVolumeDataset(cache, cache.case_ids)
    with pytest.raises(KidneySSLError, match="case_00002: no label"):
        list(iter_validation_cases(cache, cache.case_ids))
