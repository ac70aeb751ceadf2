"""Reading nnU-Net's preprocessed data as a case source: which array axis is the patient's
left-right (from the geometry nnU-Net records), and the lazy views. The end-to-end run on data
nnU-Net itself preprocessed is ``tests/cli/test_nnunet_pipeline.py``."""

from __future__ import annotations

import numpy as np
import pytest

from kidneyssl.data.nnunet_preprocessed import LazyVolume, is_nnunet_preprocessed, lateral_axis
from kidneyssl.errors import DataError

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@pytest.mark.parametrize("properties, transpose, expected", [
    # ITK identity direction (LPS): ITK x (array axis 2) runs towards the patient's left
    ({"sitk_stuff": {"direction": IDENTITY}}, (0, 1, 2), (2, True)),
    # ITK x towards the patient's right (a flipped scan)
    ({"sitk_stuff": {"direction": (-1.0, 0, 0, 0, 1, 0, 0, 0, 1)}}, (0, 1, 2), (2, False)),
    # KiTS19's (I, P, L) NIfTI as SimpleITK reads it, after nnU-Net's transpose_forward [2, 0, 1]
    ({"sitk_stuff": {"direction": (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0)}}, (2, 0, 1), (1, True)),
    # nibabel reader: RAS affine (+x = patient's right), array = nibabel voxels transposed (2, 1, 0)
    ({"nibabel_stuff": {"original_affine": np.diag([2.0, 2.0, 3.0, 1.0])}}, (0, 1, 2), (2, False)),
    ({"nibabel_stuff": {"original_affine": np.diag([2.0, 2.0, 3.0, 1.0]),
                        "reoriented_affine": np.diag([-2.0, 2.0, 3.0, 1.0])}}, (0, 1, 2), (2, True)),
])
def test_lateral_axis_follows_the_recorded_geometry(properties, transpose, expected):
    assert lateral_axis(properties, transpose) == expected


def test_lateral_axis_refuses_what_it_cannot_tell():
    with pytest.raises(DataError, match="sitk_stuff or nibabel_stuff"):
        lateral_axis({"spacing": [1, 1, 1]}, (0, 1, 2))
    oblique = (0.6, 0.0, -0.6, 0.0, 1.0, 0.0, 0.8, 0.0, 0.8)  # no index axis within 45 degrees of x
    with pytest.raises(DataError, match="45 degrees"):
        lateral_axis({"sitk_stuff": {"direction": oblique}}, (0, 1, 2))


def test_lazy_volume_reads_boxes_of_one_channel():
    data = np.arange(2 * 4 * 5 * 6, dtype=np.float32).reshape(2, 4, 5, 6)
    view = LazyVolume(data, 0)
    assert view.shape == (4, 5, 6) and view.ndim == 3 and view.dtype == np.float32
    np.testing.assert_array_equal(view[1:3, :, 2:4], data[0, 1:3, :, 2:4])
    np.testing.assert_array_equal(view[..., 1:2, 0:5, 3:6], data[0, 1:2, 0:5, 3:6])
    np.testing.assert_array_equal(np.asarray(view), data[0])
    np.testing.assert_array_equal(view[0, 1], data[0, 0, 1])  # anything else: read whole, then index
    seg = np.array([[[[-1, 0, 2, 3]]]], dtype=np.int16)
    target = LazyVolume(seg, 0, transform=lambda s: np.isin(s, (2, 3)).astype(np.uint8), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(target), [[[0, 0, 1, 1]]])


def test_an_nnunet_folder_is_told_from_a_kidneyssl_cache(tmp_path):
    assert not is_nnunet_preprocessed(tmp_path) and not is_nnunet_preprocessed(None)
    (tmp_path / "dataset.json").write_text("{}")
    (tmp_path / "nnUNetPlans.json").write_text("{}")
    assert is_nnunet_preprocessed(tmp_path)
    (tmp_path / "cache.json").write_text("{}")
    assert not is_nnunet_preprocessed(tmp_path)
