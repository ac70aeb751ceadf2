"""Half volumes for segmentation training (padded to multiples of 16, stitch back exactly) and
whole validation volumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kidneyssl.config import PreprocessConfig, config_to_dict
from kidneyssl.data.segmentation import HalfVolumeDataset, half_to_full, iter_validation_cases
from kidneyssl.errors import KidneySSLError
from kidneyssl.io.geometry import Side
from kidneyssl.preprocessing.sides import find_split_x, locate_kidneys


def make_cache(root, n_cases: int, single: dict[int, Side] | None = None):
    """A tiny prepared cache: box kidneys in noise, split and located with kidneyssl's own rules."""
    return _build_cache(root, n_cases, single or {})


def test_half_items_are_padded_halves_with_stitch_info(tmp_path):
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


def test_odd_split_pads_and_stitches_back(tmp_path):
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


def test_include_sides_and_batches(tmp_path):
    cache = make_cache(tmp_path, n_cases=2)
    ds = HalfVolumeDataset(cache, cache.case_ids, include_sides=("left",))
    assert [(it["case_id"], it["side"]) for it in (ds[0], ds[1])] == [
        ("case_00000", "left"), ("case_00001", "left")]
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=1)))
    assert batch["image"].shape == (1, 1, 16, 32, 32) and batch["side"] == ["left"]
    with pytest.raises(ValueError):
        HalfVolumeDataset(cache, cache.case_ids, include_sides=("middle",))


def test_unlabelled_case_is_refused_and_validation_volumes(tmp_path):
    cache = make_cache(tmp_path, n_cases=2)
    cases = list(iter_validation_cases(cache, cache.case_ids))
    assert [c.case_id for c in cases] == cache.case_ids
    raw = cache.load("case_00000")
    np.testing.assert_array_equal(cases[0].image, raw.image)
    np.testing.assert_array_equal(cases[0].label, (raw.label > 0).astype(np.uint8))
    assert cases[0].label.max() == 1 and raw.label.max() == 2  # tumour merged into kidney
    assert cases[0].split_x == raw.meta["split_x"]
    (tmp_path / "case_00001" / "label.npy").unlink()
    with pytest.raises(KidneySSLError, match="case_00001: no label"):
        HalfVolumeDataset(cache, cache.case_ids)
    with pytest.raises(KidneySSLError, match="case_00001: no label"):
        list(iter_validation_cases(cache, cache.case_ids))


# --- a tiny on-disk cache (layout of kidneyssl.data.cache) ------------------------------------------


class _Case:
    def __init__(self, case_id, image, label, meta):
        self.case_id, self.image, self.label, self.meta = case_id, image, label, meta


class _Cache:
    def __init__(self, root):
        self.root = root
        self.case_ids = json.loads((root / "cache.json").read_text())["cases"]

    def load(self, case_id, mmap=True):
        d = self.root / case_id
        mode = "r" if mmap else None
        label = np.load(d / "label.npy", mmap_mode=mode) if (d / "label.npy").exists() else None
        return _Case(case_id, np.load(d / "image.npy", mmap_mode=mode), label,
                     json.loads((d / "meta.json").read_text()))


def _build_cache(root, n_cases: int, single: dict[int, Side]):
    ids = []
    for i in range(n_cases):
        rng = np.random.default_rng(i)
        image = rng.normal(size=(16, 32, 64)).astype(np.float32)
        label = np.zeros(image.shape, np.uint8)
        if single.get(i, Side.RIGHT) is Side.RIGHT:
            label[4:12, 8:20, 8 + i % 3:20] = 1
            label[6:8, 10:12, 12:14] = 2  # a tumour inside the kidney
        if single.get(i, Side.LEFT) is Side.LEFT:
            label[3:10, 10:22, 40:50 + i % 4] = 1
        split_x = find_split_x(label, image)
        case_id = f"case_{i:05d}"
        d = root / case_id
        d.mkdir(parents=True)
        np.save(d / "image.npy", image)
        np.save(d / "label.npy", label)
        kidneys = {side.value: loc.to_dict() for side, loc in locate_kidneys(label, split_x).items()}
        (d / "meta.json").write_text(json.dumps(
            {"case_id": case_id, "record": {}, "split_x": split_x, "kidneys": kidneys}))
        ids.append(case_id)
    (root / "cache.json").write_text(json.dumps(
        {"format_version": 1, "kidneyssl_version": "test",
         "preprocess": config_to_dict(PreprocessConfig()), "cases": ids}))
    return _Cache(root)
