"""Serving cost of continual learners: answer EVERY learned task for a batch of images.

The memory-token model answers T tasks from one backbone pass; per-task fine-tuning needs T ViTs
and T passes; L2P needs two passes (query ViT + prompted ViT). This script times each on random
weights of the demo backbone's geometry (timing does not depend on the weights).

    PYTHONPATH=. .venv/bin/python benchmarks/scenarios.py [--tasks 1,5,20] [--batch 64] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch


def _time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def measure(tasks: list[int], batch: int, repeats: int) -> list[dict[str, float | int | str]]:
    from continual_mem import pretrain
    from continual_mem.backbone import create_backbone
    from scenarios.baselines import PerTaskFineTune
    from scenarios.metrics import count_backbone_passes
    from scenarios.strategy import AdapterVariant, MemoryTokenModel

    torch.manual_seed(0)
    backbone = create_backbone(pretrain.DEMO_MODEL, num_classes=8, **pretrain.DEMO_KWARGS).eval()
    images = torch.randn(batch, 3, 32, 32)
    rows: list[dict[str, float | int | str]] = []
    for t in tasks:
        memory = MemoryTokenModel(backbone, AdapterVariant(5), "task").eval()
        per_task = PerTaskFineTune(backbone).eval()
        for k in range(t):
            memory.add_task(f"exp{k}", [0, 1], [k])
            per_task.add_expert(k, 2)
        for name, model in (("memory-5", memory), ("full-ft", per_task)):
            with torch.no_grad(), count_backbone_passes(list(model.modules())) as counter:
                model.forward_all_tasks(images)
            with torch.no_grad():
                seconds = _time(lambda m=model: m.forward_all_tasks(images), repeats)
            rows.append(
                {
                    "strategy": name,
                    "tasks": t,
                    "batch": batch,
                    "backbone_passes": counter.images / batch,
                    "seconds_per_batch": seconds,
                    "images_per_s": batch / seconds,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="1,5,20", help="comma-separated task counts")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = measure([int(t) for t in args.tasks.split(",")], args.batch, args.repeats)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"{'strategy':<10} {'tasks':>5} {'passes':>7} {'s/batch':>9} {'images/s':>9}")
    for r in rows:
        print(
            f"{r['strategy']:<10} {r['tasks']:>5} {r['backbone_passes']:>7g} {r['seconds_per_batch']:>9.3f} {r['images_per_s']:>9.0f}"
        )


if __name__ == "__main__":
    main()
