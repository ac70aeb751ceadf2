"""Worker for tests/training/test_distributed.py: started twice by the test with SLURM's variables
(as ``srun`` would), it joins the process group and writes what it found.

Usage: python slurm_worker.py OUT_DIR
Writes OUT_DIR/rank{R}.json: {"rank", "world", "local_rank", "launcher", "sum"} (sum of all ranks' rank + 1).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(out: str) -> None:
    from kidneyssl.training.distributed import all_reduce_sum, init_distributed, shutdown_distributed

    ctx = init_distributed("cpu", timeout_minutes=2)
    total = all_reduce_sum([ctx.rank + 1], ctx)[0]
    Path(out, f"rank{ctx.rank}.json").write_text(json.dumps(
        {"rank": ctx.rank, "world": ctx.world_size, "local_rank": ctx.local_rank, "launcher": ctx.launcher,
         "sum": total}))
    shutdown_distributed(ctx)


if __name__ == "__main__":
    main(sys.argv[1])
