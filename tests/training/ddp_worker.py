"""Worker for tests/training/test_distributed.py: a few epochs of segmentation training on a tiny
fixed dataset, run as 1 process (gradient accumulation) or under torchrun (DDP, gloo).

Usage: python ddp_worker.py OUT_JSON ACCUMULATE EPOCHS [NAN_RANK]
Writes (rank 0): {"losses": [...], "params": [...flattened weights...], "gathered": [...], "world": N}
With NAN_RANK, that rank's first loss is NaN: every rank writes OUT_JSON.rankR with the error it
raised and whether its weights are still the initial ones.
"""

from __future__ import annotations

import json
import sys


def main(out: str, accumulate: int, epochs: int, nan_rank: int = -1) -> None:
    import torch

    from kidneyssl.config import ModelConfig, SegTrainConfig
    from kidneyssl.losses import BCEDiceLoss, segmentation_loss
    from kidneyssl.models import build_segmentation_model
    from kidneyssl.training.distributed import (
        gather_objects,
        init_distributed,
        shard,
        shutdown_distributed,
    )
    from kidneyssl.training.loop import build_optimizer, epoch_order, train_one_epoch
    from kidneyssl.training.seeding import configure_determinism, seed_everything

    configure_determinism(True, threads=1)
    ctx = init_distributed("cpu")
    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(1, 16, 16, 16, generator=gen), (torch.rand(1, 16, 16, 16, generator=gen) > 0.7).float())
            for _ in range(6)]
    seed_everything(0)
    model = build_segmentation_model(ModelConfig(init_features=4, growth_rate=4, norm_groups=2, embedding_dim=8,
                                                 reconstruction=True))
    train_cfg = SegTrainConfig(epochs=epochs, pos_weight=1.0)
    criterion = BCEDiceLoss(train_cfg.pos_weight)
    optimizer = build_optimizer(model, 1e-3, 1e-2)
    initial = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()
    net = model
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model)
    losses = []
    for epoch in range(epochs):
        calls = [0]

        def compute(m, item, epoch=epoch, calls=calls):
            x, y = item
            loss = segmentation_loss(m(x[None]), x[None], y[None], epoch, epochs, train_cfg, criterion)
            calls[0] += 1
            if ctx.rank == nan_rank and calls[0] == 1:
                loss = {**loss, "total": loss["total"] * float("nan")}
            return loss["total"], {"bce": float(loss["bce"])}, 1

        order = epoch_order(len(data), epoch, 0, ctx)
        try:
            result = train_one_epoch(net, (data[i] for i in order), compute, optimizer, ctx,
                                     accumulate=accumulate, total=len(order))
        except Exception as err:  # noqa: BLE001 - the test reads what each rank raised
            now = torch.cat([p.detach().flatten() for p in model.parameters()])
            with open(f"{out}.rank{ctx.rank}", "w") as fh:
                json.dump({"error": f"{type(err).__name__}: {err}", "unchanged": bool(torch.equal(now, initial))}, fh)
            del net
            shutdown_distributed(ctx)
            return
        losses.append(result.loss)
    # Validation-style gather with uneven shards (5 cases over 2 ranks: 3 + 2) must not hang.
    gathered = gather_objects([i * 10 for i in shard(list(range(5)), ctx)], ctx)
    if ctx.is_main:
        params = torch.cat([p.detach().flatten() for p in model.parameters()]).tolist()
        with open(out, "w") as fh:
            json.dump({"losses": losses, "params": params, "gathered": gathered,
                       "world": ctx.world_size}, fh)
    del net  # the DDP reducer holds the process group: release it before the group goes
    shutdown_distributed(ctx)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *(int(a) for a in sys.argv[4:5]))
