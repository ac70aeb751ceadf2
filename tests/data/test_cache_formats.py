"""prepare_dataset on every dataset format: the label policy makes the target and is recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kidneyssl.config import PreprocessConfig
from kidneyssl.data.cache import open_cache
from kidneyssl.data.prepare import prepare_dataset
from kidneyssl.errors import KidneySSLError
from kidneyssl.io.geometry import Geometry, Volume
from kidneyssl.io.labels import KITS19_POLICY, KITS23_POLICY
from kidneyssl.phantoms import kits_affine
from kidneyssl.phantoms.formats import write_case_as, write_format_metadata

SPACING = (3.0, 2.0, 2.0)
CFG = PreprocessConfig(spacing_mm=SPACING, pad_multiple=8)
SHAPE = (8, 16, 24)


def _write(root, data_format, n=2):
    geom = Geometry(kits_affine(SPACING), SHAPE)
    for i in range(n):
        image = np.random.default_rng(i).normal(0, 10, SHAPE).astype(np.int16)
        label = np.zeros(SHAPE, np.uint8)
        label[2:6, 4:10, 2:8] = 1
        label[2:6, 4:10, 15:21] = 1
        label[3, 6, 4] = 2
        image[label > 0] = 200
        name = f"phantom_{i:03d}" if data_format == "pairs" else f"case_{i:05d}"
        write_case_as(Volume(image, geom), Volume(label, geom), root, data_format, name)
    write_format_metadata(root, data_format, n)
    return root, label > 0


@pytest.mark.parametrize("data_format", ["kits19", "kits23", "nnunet", "pairs"])
def test_prepare_any_format_gives_the_kidney_target(tmp_path, data_format):
    data, kidney = _write(tmp_path / "data", data_format)
    summary = prepare_dataset(data, tmp_path / "cache", CFG, workers=1)
    assert not summary.failed and len(summary.ok) == 2
    cache = open_cache(tmp_path / "cache", expected=CFG)
    assert cache.info["data_format"] == data_format
    case = cache.load(cache.case_ids[-1])
    assert case.meta["labels"] == cache.labels.to_dict()
    # same grid (spacing unchanged): the target is exactly the kidney (incl. tumour, cyst), padded
    assert int(case.label.sum()) == int(kidney.sum())


def test_kits23_cyst_counts_and_policy_is_recorded(tmp_path):
    data, kidney = _write(tmp_path / "data", "kits23", n=1)
    prepare_dataset(data, tmp_path / "cache", CFG, workers=1)
    assert open_cache(tmp_path / "cache").labels == KITS23_POLICY
    with pytest.raises(KidneySSLError, match="another label policy"):
        open_cache(tmp_path / "cache", labels=KITS19_POLICY)
    # another policy on the same cache folder is refused like another config ...
    with pytest.raises(KidneySSLError, match="labels.kidney"):
        prepare_dataset(data, tmp_path / "cache", CFG, workers=1, kidney_labels=(1,))
    # ... and with force the cases are redone (not skipped) with the new target
    summary = prepare_dataset(data, tmp_path / "cache", CFG, workers=1, kidney_labels=(1,), force=True)
    assert summary.ok == ["case_00000"]
    cache = open_cache(tmp_path / "cache")
    assert cache.labels.kidney == (1,)
    assert int(cache.load("case_00000").label.sum()) < int(kidney.sum())  # tumour and cyst left out


def test_kits23_rejected_as_kits19_and_old_caches_read_as_kits19(tmp_path):
    data, _ = _write(tmp_path / "data", "kits23", n=1)
    summary = prepare_dataset(data, tmp_path / "cache", CFG, workers=1, data_format="kits19")
    assert "read it as KiTS23" in summary.failed["case_00000"][0]
    assert summary.remedy == {"data_format=kits23"}  # kidneyssl prepare prints --format kits23
    info_path = tmp_path / "cache" / "cache.json"
    info = json.loads(info_path.read_text())
    del info["labels"]
    info_path.write_text(json.dumps(info))
    assert open_cache(tmp_path / "cache").labels == KITS19_POLICY
