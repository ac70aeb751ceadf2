"""Phantom generator: determinism, KiTS19 geometry, plausible left/right anatomy, dataset writing."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from kidneyssl.errors import RunFolderError
from kidneyssl.io.geometry import LATERAL_AXIS, Side, Volume, to_canonical
from kidneyssl.phantoms import (
    MANIFEST,
    case_seed,
    generate_case,
    kits_affine,
    sample_anatomy,
    write_dataset,
)
from kidneyssl.phantoms.generate import scan_grid

N_CASES = 10


@pytest.fixture(scope="module")
def cases() -> list[tuple[int, Volume, Volume]]:
    seeds = [case_seed(0, i) for i in range(N_CASES)]
    return [(s, *generate_case(s)) for s in seeds]


def _kidneys(label: Volume, image: Volume) -> dict[Side, np.ndarray]:
    """Voxel indices (n, 3) of each kidney (label > 0), keyed by patient side, the side decided in
    world coordinates (nibabel RAS+: patient left is towards -x) relative to the body's midline."""
    affine = label.geometry.affine
    body = np.argwhere(image.array[::2, ::2, ::2] > -500) * 2
    midline_x = (affine @ np.append(body.mean(0), 1.0))[0]
    comps, n = ndimage.label(label.array > 0)
    sizes = ndimage.sum_labels(np.ones_like(comps), comps, index=np.arange(1, n + 1))
    out = {}
    for c in np.argsort(sizes)[::-1][:2] + 1:
        idx = np.argwhere(comps == c)
        world_x = (affine @ np.append(idx.mean(0), 1.0))[0]
        out[Side.LEFT if world_x < midline_x else Side.RIGHT] = idx
    return out


def test_same_seed_same_case_and_other_seed_differs():
    image_a, label_a = generate_case(123)
    image_b, label_b = generate_case(123)
    assert np.array_equal(image_a.array, image_b.array)
    assert np.array_equal(label_a.array, label_b.array)
    assert np.array_equal(image_a.geometry.affine, image_b.geometry.affine)
    image_c, _ = generate_case(124)
    assert image_c.array.shape != image_a.array.shape or not np.array_equal(image_c.array, image_a.array)


def test_dtypes_labels_shapes_and_kits_geometry(cases):
    for _, image, label in cases:
        assert image.array.dtype == np.int16 and label.array.dtype == np.uint8
        assert set(np.unique(label.array)) <= {0, 1, 2}
        assert image.geometry.same_as(label.geometry)
        assert image.geometry.axcodes == ("I", "P", "L")
        sz, sy, sx = image.spacing
        assert 4.0 <= sz <= 6.0 and 1.7 <= sy == sx <= 3.0
        nz, ny, nx = image.array.shape
        assert 40 <= nz <= 75 and 160 <= ny == nx <= 200
        np.testing.assert_allclose(image.geometry.affine, kits_affine(image.spacing))
        assert image.array.min() >= -1024 and image.array[0, 0, 0] < -900  # air outside the body
        body = image.array[nz // 2, ny // 2 - 20:ny // 2 + 20, nx // 2 - 20:nx // 2 + 20]
        assert -200 < np.median(body) < 300


def test_both_kidneys_present_unless_single_kidney_case(cases):
    for seed, image, label in cases:
        anat = sample_anatomy(seed)
        found = _kidneys(label, image)
        expected = {s for s in Side if s is not anat.missing_side}
        assert set(found) == expected, seed
        for idx in found.values():
            assert len(idx) * np.prod(label.spacing) > 40_000  # > 40 ml each
    rates = [sample_anatomy(s).missing_side is not None for s in range(400)]
    assert 0.01 < np.mean(rates) < 0.1


def test_left_kidney_on_patient_left_in_canonical_orientation(cases):
    for seed, image, label in cases:
        canon, _ = to_canonical(label)
        found = _kidneys(canon, to_canonical(image)[0])
        if len(found) == 2:
            assert found[Side.LEFT][:, LATERAL_AXIS].mean() > found[Side.RIGHT][:, LATERAL_AXIS].mean()
        anat = sample_anatomy(seed)
        grid = scan_grid(anat, "demo")
        for side, idx in found.items():  # the kidney drawn as LEFT is the one found on the world's left
            centroid_mm = np.asarray(grid.origin) + idx.mean(0) * np.asarray(grid.spacing)
            assert np.linalg.norm(centroid_mm - anat.kidneys[side].center) < 15.0, (seed, side)


def test_right_kidney_lower_and_left_longer_on_average(cases):
    drops, longer = [], []
    for _, image, label in cases:
        found = _kidneys(label, image)
        if len(found) < 2:
            continue
        world = {s: (label.geometry.affine[:3, :3] @ idx.T).T for s, idx in found.items()}
        drops.append(world[Side.LEFT][:, 2].mean() - world[Side.RIGHT][:, 2].mean())  # RAS z: superior
        lengths = {}
        for side, pts in world.items():
            centred = pts - pts.mean(0)
            axis = np.linalg.svd(centred, full_matrices=False)[2][0]
            proj = centred @ axis
            lengths[side] = np.percentile(proj, 99.5) - np.percentile(proj, 0.5)
        longer.append(lengths[Side.LEFT] - lengths[Side.RIGHT])
    assert len(drops) >= 7
    assert 5.0 < np.mean(drops) < 30.0  # right kidney 0.5-3 cm lower on average
    assert np.mean(longer) > 0.0
    assert np.mean(np.array(drops) > 0) >= 0.7


def test_liver_side_is_patient_right_and_spleen_side_left(cases):
    for seed, image, label in cases:
        anat = sample_anatomy(seed)
        # Slices above both kidneys: the liver makes the patient-right half hold far more solid organ.
        top = min(np.argwhere(label.array > 0)[:, 0])
        upper = image.array[: max(top, 3)]
        solid = (upper > 40) & (upper < 140)
        half = upper.shape[2] // 2
        right, left = solid[:, :, :half].sum(), solid[:, :, half:].sum()  # x grows towards patient left
        assert right > 1.3 * left, (seed, right, left)
        assert anat.hu["liver"] < 140


def test_tumours_in_some_cases_and_hypoenhancing(cases):
    with_tumour = 0
    for _, image, label in cases:
        if (label.array == 2).any():
            with_tumour += 1
            assert np.median(image.array[label.array == 2]) < np.median(image.array[label.array == 1])
    assert 1 <= with_tumour <= N_CASES - 1
    rate = np.mean([any(k.tumours for k in sample_anatomy(s).kidneys.values()) for s in range(300)])
    assert 0.3 < rate < 0.5


def test_cortex_brighter_than_medulla(cases):
    _, image, label = cases[1]
    kidney = image.array[label.array == 1].astype(float)
    assert np.percentile(kidney, 90) > 140 and np.percentile(kidney, 90) - np.percentile(kidney, 25) > 40


def test_write_dataset_layout_readback_and_independence(tmp_path):
    a = write_dataset(tmp_path / "a", cases=2, seed=7)
    assert [p.name for p in a] == ["case_00000", "case_00001"]
    for i, folder in enumerate(a):
        img = nib.load(folder / "imaging.nii.gz")
        seg = nib.load(folder / "segmentation.nii.gz")
        assert nib.aff2axcodes(img.affine) == ("I", "P", "L")
        assert img.get_data_dtype() == np.int16 and seg.get_data_dtype() == np.uint8
        image, label = generate_case(case_seed(7, i))
        assert np.array_equal(np.asarray(img.dataobj), image.array)
        assert np.array_equal(np.asarray(seg.dataobj), label.array)
        np.testing.assert_allclose(seg.affine, label.geometry.affine, atol=1e-6)
    manifest = json.loads((tmp_path / "a" / MANIFEST).read_text())
    assert manifest["seed"] == 7 and manifest["cases"] == 2 and len(manifest["case_info"]) == 2
    # case 1 does not depend on the number of cases or workers
    b = write_dataset(tmp_path / "b", cases=3, seed=7, workers=2)
    for name in ("imaging.nii.gz", "segmentation.nii.gz"):
        assert np.array_equal(np.asarray(nib.load(a[1] / name).dataobj), np.asarray(nib.load(b[1] / name).dataobj))


def test_write_dataset_refuses_other_dataset_and_reuses_same(tmp_path):
    out = tmp_path / "ds"
    write_dataset(out, cases=1, seed=1)
    stamp = (out / "case_00000" / "imaging.nii.gz").stat().st_mtime_ns
    write_dataset(out, cases=1, seed=1)  # same settings: nothing regenerated
    assert (out / "case_00000" / "imaging.nii.gz").stat().st_mtime_ns == stamp
    with pytest.raises(RunFolderError, match="replace it") as info:
        write_dataset(out, cases=1, seed=2)
    assert "force" in info.value.remedy
    (tmp_path / "foreign" / "case_00003").mkdir(parents=True)
    with pytest.raises(RunFolderError):
        write_dataset(tmp_path / "foreign", cases=1, seed=1)
    write_dataset(tmp_path / "foreign", cases=1, seed=1, force=True)
    assert not (tmp_path / "foreign" / "case_00003").exists()
    assert (tmp_path / "foreign" / "case_00000" / "segmentation.nii.gz").is_file()
    with pytest.raises(ValueError):
        write_dataset(out, cases=0, seed=1)


def test_anatomy_independent_of_resolution():
    anat = sample_anatomy(11)
    again = sample_anatomy(11)
    for side, kidney in anat.kidneys.items():
        np.testing.assert_array_equal(kidney.center, again.kidneys[side].center)
    with pytest.raises(ValueError):
        generate_case(1, resolution="huge")
