"""Benchmark: data-loading time per segmentation training step on the CPU, demo preset.

Writes the demo phantoms, prepares the cache, then times HalfVolumeDataset items (memory-mapped
cache; a first pass, then warm) and a few training steps of the demo network in the same run.
JSON to stdout and to benchmarks/results/data_loading.json."""
import json, os, tempfile, time
from pathlib import Path
import numpy as np
import torch
torch.set_num_threads(2)
os.environ.setdefault("KIDNEYSSL_NO_PROGRESS", "1")
from kidneyssl.config import load_preset
from kidneyssl.data.cache import prepare_dataset, open_cache
from kidneyssl.phantoms import write_dataset
from kidneyssl.data.segmentation import HalfVolumeDataset
from kidneyssl.models import build_segmentation_model
from kidneyssl.losses import BCEDiceLoss, segmentation_loss
def main():
    cfg = load_preset("demo")
    tmp = Path(tempfile.mkdtemp())
    write_dataset(tmp / "data", int(cfg.synth["cases"]), int(cfg.synth["seed"]), resolution=cfg.synth["resolution"], workers=2)
    prepare_dataset(tmp / "data", tmp / "cache", cfg.preprocess, workers=2)
    cache = open_cache(tmp / "cache", expected=cfg.preprocess)
    from kidneyssl.inference.sliding_window import context_voxels

    ds = HalfVolumeDataset(cache, list(cache.case_ids), context=context_voxels(cfg.inference, cfg.preprocess.spacing_mm[2]))
    load0 = os.getloadavg()
    os.system("sync; echo 1 > /proc/sys/vm/drop_caches 2>/dev/null")
    load_s = []
    for i in range(len(ds)):
        t = time.perf_counter(); item = ds[i]; load_s.append(time.perf_counter() - t)
    warm_s = []
    for i in range(len(ds)):
        t = time.perf_counter(); item = ds[i]; warm_s.append(time.perf_counter() - t)
    model = build_segmentation_model(cfg.model)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    crit = BCEDiceLoss(1.0 if isinstance(cfg.train.pos_weight, str) else cfg.train.pos_weight)
    step_s = []
    for i in range(min(6, len(ds))):
        item = ds[i]
        x, y = item["image"][None], item["label"][None]
        t = time.perf_counter()
        loss = segmentation_loss(model(x), x, y, 0, cfg.train.epochs, cfg.train, crit)["total"]
        opt.zero_grad(); loss.backward(); opt.step()
        step_s.append(time.perf_counter() - t)
    res = {"items": len(ds), "half_shape": list(item["image"].shape), "load_first_pass_s_mean": float(np.mean(load_s)),
           "load_first_pass_s_max": float(np.max(load_s)), "load_warm_s_mean": float(np.mean(warm_s)),
           "train_step_s_median": float(np.median(step_s[1:])), "load_average_start": load0, "load_average_end": os.getloadavg()}
    res["load_fraction_of_step"] = res["load_first_pass_s_mean"] / res["train_step_s_median"]
    res = {"benchmark": "data_loading", "preset": "demo", "device": "cpu", "threads": 2, **res}
    print(json.dumps(res, indent=2))
    out = Path(__file__).resolve().parent / "results" / "data_loading.json"
    out.write_text(json.dumps(res, indent=2) + "\n")

if __name__ == '__main__':
    main()
