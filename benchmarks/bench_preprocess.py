"""NIfTI read and preprocessing speed/memory on a KiTS-size case: ours vs SimpleITK vs MONAI.

Usage: python3 benchmarks/bench_preprocess.py [--repeats 3] [--keep DIR]

Writes a synthetic 300 x 512 x 512 int16 CT (1 x 0.8 x 0.8 mm, KiTS19's (I, P, L) storage) as
.nii.gz in a temporary folder, then runs every method in a fresh subprocess (so peak RSS, from
``resource.getrusage``, belongs to that method alone; psutil is not a dependency):

* read: nibabel (``np.asanyarray(img.dataobj)``), raw SimpleITK (``ReadImage``), ours
  (``read_volume``: SimpleITK + gzip CRC verification + nibabel-convention affine).
* resample to 3.22 x 1.62 x 1.62 mm, trilinear (the same interpolation order everywhere): ours
  (``resample_to_shape``), SimpleITK's ``ResampleImageFilter`` (sitkLinear), MONAI's ``Spacing``
  (mode bilinear, float32), and torch's ``interpolate`` on a float32 copy, for scale.
* full pipeline: ``read_volume`` + ``preprocess_image`` (reorient, resample, window, z-score, pad).

Time: best of ``--repeats``. Memory: peak RSS (VmHWM, reset after imports and, for resamplers,
after reading) minus the RSS at that point, i.e. the working memory of the step; for reads and
"total" it includes the input array itself.
Prints JSON and writes benchmarks/results/preprocess.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPE = (300, 512, 512)
SPACING = (1.0, 0.8, 0.8)
TARGET = (3.22, 1.62, 1.62)
RESULTS = Path(__file__).resolve().parent / "results" / "preprocess.json"


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")  # pragma: no cover


def _peak_mb() -> float:
    """Peak RSS of this process image (VmHWM; ru_maxrss would carry the parent's peak over exec)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # pragma: no cover


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:  # pragma: no cover - not permitted: peaks then include the imports
        pass


def write_case(path: Path) -> None:
    """A CT-like volume: body ellipse of soft tissue, fat, bone-bright spine, two kidneys, noise."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    plane = np.full(SHAPE[1:], -1000, np.int16)
    yy, xx = (y[0] - 256) / 190.0, (x[0] - 256) / 230.0
    plane[(yy ** 2 + xx ** 2) < 1] = -90
    plane[(yy ** 2 + xx ** 2) < 0.8] = 45
    plane[((y[0] - 330) / 30.0) ** 2 + ((x[0] - 256) / 30.0) ** 2 < 1] = 700
    array = np.broadcast_to(plane, SHAPE).copy()
    for cx in (170, 342):
        kidney = ((z - 150) / 60.0) ** 2 + ((y - 300) / 35.0) ** 2 + ((x - cx) / 28.0) ** 2 < 1
        array[kidney] = 180
    array += rng.normal(0, 12, SHAPE).astype(np.int16)
    affine = np.array([[0, 0, -SPACING[2], 200.0], [0, -SPACING[1], 0, 200.0],
                       [-SPACING[0], 0, 0, 0.0], [0, 0, 0, 1]])
    img = nib.Nifti1Image(array, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, path)


def _best(fn, repeats: int):
    best, value = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
        if value is not None and not isinstance(value, tuple):
            del value
            value = None
    return best, value


def worker(method: str, path: str, repeats: int) -> dict:
    """Run one method in this (fresh) process; returns seconds and memory figures."""
    import nibabel as nib
    import SimpleITK as sitk
    import torch

    from kidneyssl.config import PreprocessConfig
    from kidneyssl.io.volumes import read_volume
    from kidneyssl.preprocessing.pipeline import preprocess_image
    from kidneyssl.preprocessing.spatial import resample_to_shape, resampled_shape

    out_shape = resampled_shape(SHAPE, SPACING, TARGET)
    result: dict = {"method": method, "torch_threads": torch.get_num_threads()}
    if method.startswith("resample_"):  # read first, measure the resampler alone
        if method == "resample_simpleitk":
            image = sitk.ReadImage(path)
        else:
            vol = read_volume(path)
    import gc

    gc.collect()
    base_rss = _rss_mb()
    _reset_peak()

    if method == "read_nibabel":
        secs, _ = _best(lambda: np.asanyarray(nib.load(path).dataobj).sum(dtype=np.int64) * 0, repeats)
    elif method == "read_simpleitk":
        secs, _ = _best(lambda: sitk.GetArrayViewFromImage(sitk.ReadImage(path)).shape and None, repeats)
    elif method == "read_ours":
        secs, _ = _best(lambda: read_volume(path) and None, repeats)
    elif method == "resample_ours":
        secs, _ = _best(lambda: resample_to_shape(vol.array, out_shape, order="linear").shape and None,
                        repeats)
    elif method == "resample_torch":
        def run_torch():
            t = torch.from_numpy(np.asarray(vol.array, dtype=np.float32))
            torch.nn.functional.interpolate(t[None, None], size=out_shape, mode="trilinear",
                                            align_corners=False)
        secs, _ = _best(run_torch, repeats)
    elif method == "resample_simpleitk":
        def run_sitk():
            f = sitk.ResampleImageFilter()
            f.SetInterpolator(sitk.sitkLinear)
            f.SetOutputDirection(image.GetDirection())
            f.SetOutputOrigin(image.GetOrigin())
            # SimpleITK's (i, j, k) index is nibabel's array index: sizes/spacings in that order
            f.SetOutputSpacing(TARGET)
            f.SetSize([int(n) for n in out_shape])
            f.SetDefaultPixelValue(-1000)
            f.SetOutputPixelType(sitk.sitkFloat32)
            f.Execute(image)
        secs, _ = _best(run_sitk, repeats)
    elif method == "resample_monai":
        from monai.data import MetaTensor
        from monai.transforms import Spacing

        affine = torch.as_tensor(vol.geometry.affine)
        spacing = Spacing(pixdim=TARGET, mode="bilinear", padding_mode="border", dtype=np.float32)

        def run_monai():
            data = MetaTensor(torch.from_numpy(np.asarray(vol.array, dtype=np.float32))[None],
                              affine=affine)
            spacing(data)
        secs, _ = _best(run_monai, repeats)
    elif method == "total_ours":
        cfg = PreprocessConfig(spacing_mm=TARGET)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            vol = read_volume(path)
            t1 = time.perf_counter()
            array, record = preprocess_image(vol, cfg)
            t2 = time.perf_counter()
            times.append((t2 - t0, t1 - t0, t2 - t1))
            del vol, array
        best = min(times)
        secs = best[0]
        result.update(read_s=round(best[1], 3), preprocess_s=round(best[2], 3),
                      output_shape=list(record.shape), spacing_mm=[round(s, 4) for s in record.spacing_mm])
    else:
        raise SystemExit(f"unknown method {method}")
    result.update(seconds=round(secs, 3), base_rss_mb=round(base_rss, 1),
                  peak_rss_mb=round(_peak_mb(), 1),
                  peak_above_base_mb=round(_peak_mb() - base_rss, 1))
    return result


def _run_worker(method: str, path: Path, repeats: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", method, "--path", str(path),
                           "--repeats", str(repeats)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"method": method, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", default=None, help="folder to write/keep the synthetic case in")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--path", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.path, args.repeats)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "imaging.nii.gz"
        if not path.exists():
            write_case(path)
        methods = ["read_nibabel", "read_simpleitk", "read_ours", "resample_ours", "resample_torch",
                   "resample_simpleitk", "resample_monai", "total_ours"]
        runs = {m: _run_worker(m, path, args.repeats) for m in methods}
        input_f32_mb = float(np.prod(SHAPE)) * 4 / 2**20
        total = runs["total_ours"]
        report = {
            "benchmark": "preprocess",
            "machine": {"cpus": len(os.sched_getaffinity(0)), "python": platform.python_version(),
                        "load_avg_1min_at_end": round(os.getloadavg()[0], 2)},
            "case": {"shape": list(SHAPE), "spacing_mm": list(SPACING), "dtype": "int16",
                     "file_mb": round(path.stat().st_size / 2**20, 1),
                     "input_float32_mb": round(input_f32_mb, 1)},
            "target_spacing_mm": list(TARGET),
            "interpolation": "linear (trilinear) for every resampler",
            "repeats": args.repeats,
            "read_s": {k[5:]: runs[k].get("seconds") for k in methods if k.startswith("read_")},
            "resample_s": {k[9:]: runs[k].get("seconds") for k in methods if k.startswith("resample_")},
            "resample_peak_above_input_mb": {k[9:]: runs[k].get("peak_above_base_mb")
                                             for k in methods if k.startswith("resample_")},
            "total_ours": {"read_plus_preprocess_s": total.get("seconds"), "read_s": total.get("read_s"),
                           "preprocess_s": total.get("preprocess_s"),
                           "peak_above_imports_mb": total.get("peak_above_base_mb"),
                           "peak_over_input_float32": round(total.get("peak_above_base_mb", float("nan"))
                                                            / input_f32_mb, 2),
                           "output_shape": total.get("output_shape"), "spacing_mm": total.get("spacing_mm")},
            "targets": {"read_plus_preprocess_le_2s": (total.get("seconds") or 1e9) <= 2.0,
                        "peak_under_3x_input_float32": (total.get("peak_above_base_mb") or 1e9) < 3 * input_f32_mb},
            "runs": runs,
        }
    text = json.dumps(report, indent=2)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text + "\n")


if __name__ == "__main__":
    main()
