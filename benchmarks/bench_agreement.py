"""Do faster inference variants give the same masks? Dice against the reference masks (torch,
float32, halves, no body crop: what ``predict`` computed at 94ae64e), on the ORIGINAL grid
(restored, as ``predict`` writes them), for a trained checkpoint over the cases of a prepared
cache; with the time each variant's inference took, interleaved case by case.

    python benchmarks/bench_agreement.py --checkpoint RUN/best.pt --cache CACHE [--cases 6]
        [--variants torch-fp32-crop,openvino-fp32,openvino-bf16-crop,...] [--out NAME.json]

A variant name is ``<backend>-<precision>[-crop|-kidneys<margin>][-ctx<mm>]`` (``auto-auto`` is what
``predict`` with no flags runs):

- ``crop``: the network runs on the body's bounding box only (air around the patient removed);
- ``kidneys16``: the fine pass of a two-pass scheme, run on each side's kidney box grown by 16
  voxels, where the boxes come from the reference mask itself (an oracle coarse pass: the best
  any real coarse pass could do);
- ``ctx16``: 16 mm of context across the split plane instead of the config's;
- ``torchgn``: OpenVINO with PyTorch's GroupNorm in the export instead of the per-channel form.

Every variant is post-processed and restored exactly as ``segment_image`` does. JSON to stdout
and ``benchmarks/results/<out>``; the target is Dice >= 0.995 for every case.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_VARIANTS = ("auto-auto,openvino-fp32,openvino-bf16,torch-bf16,torch-fp32-crop,torch-fp32-ctx16,"
                    "torch-fp32-ctx0,torch-fp32-kidneys16,torch-fp32-kidneys32")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def parse_variant(name: str) -> dict:
    parts = name.split("-")
    out = {"backend": parts[0], "precision": parts[1], "crop": "crop" in parts[2:], "context_mm": None,
           "kidney_margin": None, "torch_group_norm": "torchgn" in parts[2:]}
    for p in parts[2:]:
        if p.startswith("ctx"):
            out["context_mm"] = float(p[3:])
        elif p.startswith("kidneys"):
            out["kidney_margin"] = int(p[7:])
    return out


def _grow(box: slice, size: int, multiple: int = 16) -> slice:
    """``box`` grown about its centre to a multiple of ``multiple`` (or to ``size``), clamped."""
    length = box.stop - box.start
    target = min(size, -(-length // multiple) * multiple)
    start = max(0, min(box.start - (target - length) // 2, size - target))
    return slice(start, start + target)


def body_box(image: np.ndarray, margin: int = 4) -> tuple[slice, ...]:
    """The body's bounding box in a preprocessed image: voxels above the window's floor by 5 % of
    the intensity range (air and fat sit at the floor), padding (zeros) excluded, plus
    ``margin``, grown to multiples of 16."""
    from kidneyssl.preprocessing.spatial import bounding_box

    sub = image[::2, ::2, ::2]
    values = sub[sub != 0]
    lo, hi = float(values.min()), float(np.percentile(values, 99))
    box = bounding_box((image > lo + 0.05 * (hi - lo)) & (image != 0), margin=margin)
    assert box is not None
    return tuple(_grow(b, n) for b, n in zip(box, image.shape))


def segment_regions(engine, image: np.ndarray, cfg, record, regions: str, reference_mask=None,
                    margin: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """``segment_image``'s steps with the network run on ``regions`` only: ``body`` (halves of the
    body's box) or ``kidneys`` (each side's box of ``reference_mask`` grown by ``margin``, whole).
    Returns (preprocessed-grid mask, original-grid mask)."""
    from kidneyssl.inference.postprocess import keep_kidney_components
    from kidneyssl.inference.sliding_window import infer_volume
    from kidneyssl.preprocessing.spatial import bounding_box
    from kidneyssl.preprocessing.split_plane import find_split_x

    icfg = cfg.inference
    split_x = int(find_split_x(None, image))
    prob = np.zeros(image.shape, np.float32)
    if regions == "body":
        box = body_box(image)
        prob[box] = infer_volume(engine.logits, image[box], icfg, split_x=split_x - box[2].start,
                                 spacing_mm=record.spacing_mm, strategy="halves")
    else:
        for cols in (slice(0, split_x), slice(split_x, image.shape[2])):
            side = np.zeros(image.shape, bool)
            side[..., cols] = reference_mask[..., cols] > 0
            kb = bounding_box(side, margin=margin)
            if kb is None:
                continue
            kb = tuple(_grow(b, n) for b, n in zip(kb, image.shape))
            p = np.zeros(image.shape, np.float32)
            p[kb] = infer_volume(engine.logits, image[kb], icfg, strategy="whole")
            prob[..., cols] = p[..., cols]
    mask = keep_kidney_components(prob, split_x, icfg.threshold, icfg.largest_component)
    return mask, record.restore(prob, order="linear", threshold=icfg.threshold)


def main() -> None:
    import torch

    import kidneyssl  # noqa: F401  first: torch's allocator environment
    from kidneyssl.data.cache import open_cache
    from kidneyssl.inference.device import cpu_model_name
    from kidneyssl.inference.engine import InferenceModel
    from kidneyssl.inference.segment import segment_image
    from kidneyssl.models.transfer import load_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--cache", required=True)
    p.add_argument("--cases", type=int, default=6)
    p.add_argument("--variants", default=DEFAULT_VARIANTS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="agreement.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    module, cfg = load_model(args.checkpoint)
    cache = open_cache(args.cache)
    ids = sorted(cache.case_ids)[: args.cases]
    engines: dict[tuple[str, str], InferenceModel] = {}

    def engine(backend: str, precision: str, torch_group_norm: bool = False) -> InferenceModel:
        key = (backend, precision + ("-torchgn" if torch_group_norm else ""))
        if key not in engines:
            if torch_group_norm:  # its own cache folder: both export forms share a cache key
                import functools

                import kidneyssl.inference.ov_backend as ov_backend

                real, env = ov_backend.export_openvino, os.environ.get("KIDNEYSSL_CACHE_DIR")
                ov_backend.export_openvino = functools.partial(real, group_norm="torch")  # type: ignore
                os.environ["KIDNEYSSL_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench_agreement_torchgn_")
                try:
                    engines[key] = InferenceModel(module, backend=backend, precision=precision)
                finally:
                    ov_backend.export_openvino = real  # type: ignore[assignment]
                    if env is None:
                        del os.environ["KIDNEYSSL_CACHE_DIR"]
                    else:
                        os.environ["KIDNEYSSL_CACHE_DIR"] = env
            else:
                engines[key] = InferenceModel(module, backend=backend, precision=precision)
        return engines[key]

    variants = [v for v in args.variants.split(",") if v]
    rows: dict[str, list[dict]] = {v: [] for v in ["reference", *variants]}
    started, load_start = time.time(), os.getloadavg()
    def run(cid: str, image: np.ndarray, record, label: np.ndarray, backend: str, precision: str,
            crop: bool = False, context_mm: float | None = None, kidney_margin: int | None = None,
            torch_group_norm: bool = False,
            reference_grid: np.ndarray | None = None) -> tuple[dict, np.ndarray, np.ndarray]:
        c = cfg if context_mm is None else dataclasses.replace(
            cfg, inference=dataclasses.replace(cfg.inference, half_context_mm=context_mm))
        eng = engine(backend, precision, torch_group_norm)
        t0 = time.perf_counter()
        if crop or kidney_margin is not None:
            grid_mask, original = segment_regions(eng, image, c, record, "body" if crop else "kidneys",
                                                  reference_grid, kidney_margin or 0)
            infer_s = time.perf_counter() - t0
            strategy = "body box" if crop else f"kidney boxes +{kidney_margin}"
        else:
            seg = segment_image(eng, image, c, record=record)
            assert seg.original_mask is not None
            grid_mask, original, infer_s, strategy = seg.mask, seg.original_mask, seg.timings["infer"], seg.strategy
        row = {"case": cid, "infer_s": round(infer_s, 3), "segment_s": round(time.perf_counter() - t0, 3),
               "dice_vs_label_grid": round(dice(grid_mask, label), 4), "strategy": strategy,
               "shape": list(image.shape)}
        return row, grid_mask, original

    for cid in ids:
        case = cache.load(cid, mmap=True)
        label, image = np.asarray(case.label) > 0, np.asarray(case.image)
        ref_row, ref_grid, ref_mask = run(cid, image, case.record, label, "torch", "fp32")
        rows["reference"].append(ref_row)
        for v in variants:
            row, _, mask = run(cid, image, case.record, label, **parse_variant(v), reference_grid=ref_grid)
            row["dice_vs_reference"] = round(dice(mask, ref_mask), 5)
            rows[v].append(row)
            print(f"{cid} {v}: dice {row['dice_vs_reference']} infer {row['infer_s']} s "
                  f"(reference {ref_row['infer_s']} s)", flush=True)
    summary = {}
    for v, rs in rows.items():
        entry = {"infer_s_total": round(sum(r["infer_s"] for r in rs), 2),
                 "mean_dice_vs_label_grid": round(float(np.mean([r["dice_vs_label_grid"] for r in rs])), 4)}
        if v != "reference":
            d = [r["dice_vs_reference"] for r in rs]
            entry.update(min_dice_vs_reference=min(d), mean_dice_vs_reference=round(float(np.mean(d)), 5),
                         meets_0995=min(d) >= 0.995,
                         infer_time_over_reference=round(entry["infer_s_total"] /
                                                         max(1e-9, sum(r["infer_s"] for r in rows["reference"])), 3))
        summary[v] = entry
    result = {"benchmark": "agreement", "checkpoint": str(args.checkpoint), "cache": str(args.cache),
              "model": dataclasses.asdict(cfg.model), "spacing_mm": list(cfg.preprocess.spacing_mm),
              "cases": ids, "threads": args.threads, "cpu": cpu_model_name(), "cpu_count": os.cpu_count(),
              "precision_choices": {f"{b}-{p}": e.precision_choice.describe() for (b, p), e in engines.items()},
              "load_average_start": load_start, "load_average_end": os.getloadavg(),
              "seconds": round(time.time() - started, 1), "summary": summary, "rows": rows}
    text = json.dumps(result, indent=2)
    print(text)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
