"""Write phantom datasets in KiTS19 layout: ``case_XXXXX/imaging.nii.gz`` + ``segmentation.nii.gz``.

Case ``i`` of a dataset with seed ``S`` is generated from :func:`case_seed` ``(S, i)``, so it does
not depend on how many cases are requested or on the number of worker processes. A manifest,
``phantoms.json``, records the settings; re-running with the same settings fills in missing
cases, while a folder holding any other dataset is refused unless ``force=True``.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from kidneyssl.errors import RunFolderError
from kidneyssl.io.atomic import atomic_path, atomic_write_json
from kidneyssl.io.geometry import Volume
from kidneyssl.phantoms.anatomy import sample_anatomy
from kidneyssl.phantoms.generate import RESOLUTIONS, generate_case
from kidneyssl.progress import progress

__all__ = ["MANIFEST", "FORMAT_VERSION", "case_seed", "case_id", "write_nifti", "write_dataset"]

log = logging.getLogger(__name__)

MANIFEST = "phantoms.json"
#: Bump when the generator's output for a given seed changes.
FORMAT_VERSION = 1
_CASE_DIR = re.compile(r"^case_(\d{5})$")


def case_seed(seed: int, index: int) -> int:
    """The generator seed of case ``index`` in a dataset with seed ``seed`` (a 63-bit int)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)[0] >> 1)


def case_id(index: int) -> str:
    """KiTS19 case folder name, e.g. ``case_00007``."""
    return f"case_{index:05d}"


def write_nifti(volume: Volume, path: Path) -> None:
    """Write ``volume`` to ``path`` (.nii.gz) atomically with nibabel, header as KiTS19's
    (sform code 2 'aligned', qform code 0, the array's own dtype)."""
    import nibabel as nib

    image = nib.Nifti1Image(volume.array, volume.geometry.affine)
    image.header.set_sform(volume.geometry.affine, code=2)
    image.header.set_qform(None, code=0)
    with atomic_path(path, suffix=".nii.gz") as tmp:
        nib.save(image, str(tmp))


def _write_case(out_dir: str, index: int, seed: int, resolution: str) -> dict[str, Any]:
    image, label = generate_case(case_seed(seed, index), resolution)
    folder = Path(out_dir) / case_id(index)
    folder.mkdir(parents=True, exist_ok=True)
    write_nifti(label, folder / "segmentation.nii.gz")
    write_nifti(image, folder / "imaging.nii.gz")  # written last: its presence marks a finished case
    return {"index": index, "shape": list(image.array.shape), "spacing_mm": [round(s, 4) for s in image.spacing]}


def _manifest(seed: int, resolution: str, cases: int) -> dict[str, Any]:
    from kidneyssl import __version__

    info = []
    for i in range(cases):
        anat = sample_anatomy(case_seed(seed, i))
        info.append({
            "case_id": case_id(i),
            "seed": case_seed(seed, i),
            "kidneys": sorted(side.value for side in anat.kidneys),
            "tumours": sum(len(k.tumours) for k in anat.kidneys.values()),
        })
    return {"generator": "kidneyssl.phantoms", "format_version": FORMAT_VERSION, "kidneyssl_version": __version__,
            "seed": int(seed), "resolution": resolution, "cases": cases, "case_info": info}


def _existing_cases(out_dir: Path) -> dict[int, Path]:
    if not out_dir.is_dir():
        return {}
    return {int(m.group(1)): p for p in out_dir.iterdir() if p.is_dir() and (m := _CASE_DIR.match(p.name))}


def _same_settings(out_dir: Path, seed: int, resolution: str) -> bool:
    path = out_dir / MANIFEST
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return bool(old.get("generator") == "kidneyssl.phantoms" and old.get("format_version") == FORMAT_VERSION
                and old.get("seed") == int(seed) and old.get("resolution") == resolution)


def write_dataset(out_dir: str | Path, cases: int, seed: int, resolution: str = "demo", workers: int = 1,
                  force: bool = False) -> list[Path]:
    """Write ``cases`` phantom cases to ``out_dir`` in KiTS19 layout; return the case folders in order.

    Args:
        out_dir: target folder (created if needed).
        cases: number of cases (``case_00000`` ...).
        seed: dataset seed; case ``i`` uses :func:`case_seed` ``(seed, i)``.
        resolution: ``"demo"`` or ``"full"`` (see :func:`kidneyssl.phantoms.generate_case`).
        workers: worker processes (1 = in this process). The output does not depend on it.
        force: replace a different dataset already in ``out_dir`` (its surplus case folders are removed).

    Raises:
        RunFolderError: ``out_dir`` holds case folders of another dataset (other seed, resolution,
            generator version, more cases, or no manifest) and ``force`` is False.
        ValueError: ``cases < 1``, ``workers < 1`` or an unknown resolution.
    """
    if cases < 1 or workers < 1:
        raise ValueError(f"cases and workers must be >= 1, got cases={cases}, workers={workers}")
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
    out = Path(out_dir)
    existing = _existing_cases(out)
    same = _same_settings(out, seed, resolution)
    compatible = same and max(existing, default=-1) < cases
    if existing and not compatible:
        if not force:
            raise RunFolderError(
                f"{out}: holds {len(existing)} case folders of another dataset "
                f"(not seed={seed}, resolution={resolution}, <= {cases} cases of this generator); "
                "choose an empty folder or replace it", remedy=("out", "force"))
        for index, folder in sorted(existing.items()):
            if index >= cases:
                log.info("removing surplus case folder %s", folder)
                shutil.rmtree(folder)
        existing = {i: p for i, p in existing.items() if i < cases}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / MANIFEST, _manifest(seed, resolution, cases))
    todo = [i for i in range(cases)
            if force and not compatible
            or not ((out / case_id(i) / "imaging.nii.gz").is_file() and (out / case_id(i) / "segmentation.nii.gz").is_file())]
    if len(todo) < cases:
        log.info("%d of %d cases already present in %s", cases - len(todo), cases, out)
    if workers == 1 or len(todo) <= 1:
        for i in progress(todo, desc="synth", unit="case"):
            _write_case(str(out), i, seed, resolution)
    else:
        # spawn, not fork: the parent may hold torch/OpenMP threads, which fork does not survive safely.
        with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_write_case, str(out), i, seed, resolution) for i in todo]
            for future in progress(as_completed(futures), desc="synth", total=len(futures), unit="case"):
                future.result()
    return [out / case_id(i) for i in range(cases)]
