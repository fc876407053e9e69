"""What does training cost? K variants in one backbone pass per step, and the feature cache (issue 10).

CPU timings with random weights (timing does not depend on them), on `--images` random images:
  * `together8_over_1`: an epoch training 8 reuse-mode variants together (one backbone pass per
    step, `exact=True`: each task's attention its own kernel call; `stacked_rows`: whether the
    norms, projections and MLP ran once over all 8 tasks' rows, which the model does where a probe
    finds it rounds each row as alone) over an epoch training one;
  * `together8_over_separate8`: the same over 8 separate single-variant epochs (8 x the
    one-variant epoch, which every separate run costs alike);
  * `cached_epoch_over_uncached`: the second epoch of a run with the feature cache (served from
    the cache) over the second epoch of the same run without it;
  * `together_vs_alone_step1_max_abs_diff`: 8 variants (memory 1..20, three rates, two seeds)
    after one step together vs each after one step alone, over every adapter tensor;
  * `cached_vs_uncached_epoch1_max_abs_diff`: the adapters after the cached epoch vs uncached.

    python benchmarks/train.py [--json] [--quick] [--threads 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from continual_mem import attention
from continual_mem.adapter import BackboneIdentity
from continual_mem.feature_cache import FeatureCache
from continual_mem.model import MemoryViT
from continual_mem.together import Member, fit_together
from continual_mem.train import Progress, TrainConfig, seed_everything

VARIANTS = [
    (1, 1e-3, 0),
    (5, 3e-3, 0),
    (10, 1e-2, 0),
    (20, 1e-3, 0),
    (1, 3e-3, 1),
    (5, 1e-2, 1),
    (10, 1e-3, 1),
    (20, 3e-3, 1),
]
FULL = dict(model="vit_small_patch16_224", kwargs={}, images=256, batch=16, classes=10)
QUICK = dict(
    model="vit_tiny_patch16_224",
    kwargs=dict(img_size=32, patch_size=4, depth=2, embed_dim=48, num_heads=3),
    images=32,
    batch=8,
    classes=3,
)


class Setup:
    """One benchmark configuration: a random backbone, images and labels."""

    def __init__(self, cfg: dict) -> None:
        torch.manual_seed(0)
        self.vit = timm.create_model(cfg["model"], num_classes=cfg["classes"], **cfg["kwargs"]).eval()
        self.identity = BackboneIdentity(cfg["model"], "random-weights")
        side = self.vit.patch_embed.img_size[0]
        self.images = torch.randn(cfg["images"], 3, side, side)
        self.labels = torch.arange(cfg["images"]) % cfg["classes"]
        self.cfg = cfg

    def model(self, variants: list[tuple[int, float, int]]) -> tuple[MemoryViT, list[Member]]:
        model = MemoryViT(self.vit, self.identity)
        members = []
        for i, (memory, lr, seed) in enumerate(variants):
            seed_everything(seed)
            model.add_task(f"v{i}", self.cfg["classes"], num_memory=memory)
            members.append(Member(f"v{i}", self.labels, self.config(lr, seed)))
        return model, members

    def config(self, lr: float, seed: int, epochs: int = 1, steps: int | None = None) -> TrainConfig:
        return TrainConfig(epochs=epochs, steps=steps, lr=lr, batch_size=self.cfg["batch"], seed=seed, order_seed=0)


def epoch_times(setup: Setup, variants: list, epochs: int, cache: bool) -> tuple[list[float], dict]:
    """Seconds of each epoch of one together-run, and the adapters it ends with."""
    model, members = setup.model(variants)
    members = [Member(m.task, m.labels, setup.config(m.config.lr, m.config.seed, epochs)) for m in members]
    marks = [time.perf_counter()]
    steps_per_epoch = -(-setup.images.shape[0] // setup.cfg["batch"])

    def on_step(p: Progress) -> None:
        if p.step % steps_per_epoch == 0:
            marks.append(time.perf_counter())

    store = FeatureCache(setup.images.shape[0]) if cache else None
    fit_together(model, members, setup.images, on_step=on_step, cache=store)
    return [b - a for a, b in itertools.pairwise(marks)], adapters(model)


def adapters(model: MemoryViT) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": v.detach().clone() for n, a in model.tasks.items() for k, v in a.state_dict().items()}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def step1_diff(setup: Setup) -> float:
    """8 variants one step together vs each one step alone."""
    model, members = setup.model(VARIANTS)
    one_step = [Member(m.task, m.labels, setup.config(m.config.lr, m.config.seed, steps=1)) for m in members]
    fit_together(model, one_step, setup.images)
    together = adapters(model)
    worst = 0.0
    for i, variant in enumerate(VARIANTS):
        alone, (member,) = setup.model([variant])
        fit_together(alone, [Member(member.task, member.labels, one_step[i].config)], setup.images)
        mine = {k.replace("v0.", f"v{i}.", 1): v for k, v in adapters(alone).items()}
        worst = max(worst, max_diff(mine, {k: together[k] for k in mine}))
    return worst


def run(cfg: dict) -> dict:
    setup = Setup(cfg)
    model, (member,) = setup.model(VARIANTS[:1])  # warm-up: one-time allocations, thread pools
    fit_together(model, [Member(member.task, member.labels, setup.config(1e-3, 0, steps=2))], setup.images)
    one, uncached = epoch_times(setup, VARIANTS[:1], 2, cache=False)
    eight, _ = epoch_times(setup, VARIANTS, 1, cache=False)
    cached_times, cached = epoch_times(setup, VARIANTS[:1], 2, cache=True)
    return {
        "model": cfg["model"],
        "images": cfg["images"],
        "batch": cfg["batch"],
        "threads": torch.get_num_threads(),
        "exact": True,
        "stacked_rows": attention.rows_stack_exactly(
            attention.linear_shapes(setup.vit.blocks[0]), cfg["batch"], len(VARIANTS), "cpu", torch.get_num_threads()
        ),
        "epoch_1_variant_s": round(one[0], 3),
        "epoch_8_together_s": round(eight[0], 3),
        "epoch_cached_s": round(cached_times[1], 3),
        "epoch_uncached_s": round(one[1], 3),
        "together8_over_1": round(eight[0] / one[0], 3),
        "together8_over_separate8": round(eight[0] / (8 * one[0]), 3),
        "cached_epoch_over_uncached": round(cached_times[1] / one[1], 3),
        "together_vs_alone_step1_max_abs_diff": step1_diff(setup),
        "cached_vs_uncached_epoch1_max_abs_diff": max_diff(cached, uncached),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    parser.add_argument("--quick", action="store_true", help="A tiny ViT and 32 images: a smoke run.")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = run(QUICK if args.quick else FULL)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:42s} {value}")


if __name__ == "__main__":
    main()
