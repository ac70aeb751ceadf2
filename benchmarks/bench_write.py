"""Writing a KiTS-size mask: ``write_mask`` (Fortran-order tiles, then nibabel) against nibabel
saving the same C-ordered array itself (what ``write_mask`` did before), best of 3 each,
interleaved; the mask is the phantom's kidney label of ``bench_predict.py``'s case, C-ordered as
``PreprocessRecord.restore`` returns it.

    python benchmarks/bench_write.py [--workdir DIR_WITH_case_00000] [--threads 2]

JSON to stdout and ``benchmarks/results/write_mask.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=None, help="a folder with case_00000 (default: make one)")
    args = ap.parse_args()

    import nibabel as nib

    from bench_predict import cpu_description, make_case
    from kidneyssl.io.volumes import fortran_order, read_volume, write_mask

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_write_"))
    label_path = work / "case_00000" / "segmentation.nii.gz"
    if not label_path.is_file():
        make_case(work)
    label = read_volume(label_path)
    mask = np.ascontiguousarray(label.array > 0).astype(np.uint8)
    out = Path(tempfile.mkdtemp(prefix="bench_write_out_"))
    load = os.getloadavg()

    def nibabel_c_order() -> None:
        image = nib.Nifti1Image(mask, label.geometry.affine)
        nib.save(image, out / "nibabel.nii.gz")

    runs = {"nibabel_c_order": nibabel_c_order,
            "write_mask": lambda: write_mask(mask, out / "write_mask.nii.gz", like=label.geometry),
            "fortran_order_only": lambda: fortran_order(mask)}
    best = {name: float("inf") for name in runs}
    for _ in range(3):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - t0)
    same = np.array_equal(read_volume(out / "write_mask.nii.gz").array, mask)
    result = {"benchmark": "write_mask", "shape": list(mask.shape), "mask_voxels": int(mask.sum()),
              "best_of_3_s": {k: round(v, 3) for k, v in best.items()}, "read_back_equal": bool(same),
              "speedup": round(best["nibabel_c_order"] / best["write_mask"], 2), "cpu": cpu_description(),
              "cpu_count": len(os.sched_getaffinity(0)), "load_average_start": load,
              "load_average_end": os.getloadavg()}
    (HERE / "results" / "write_mask.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
