"""What each regime costs (the paper's Table 5), measured: trainable parameters and forward FLOPs.

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` over the very passes the scenarios
run (`MemoryViT.forward_reuse` / `forward_full`, `scenarios.bottleneck.forward_adapted`, timm's own
forward for full fine-tuning), one image at a time. It counts matrix products, convolutions and
attention (2 FLOPs per multiply-add), not norms, activations or additions. Models are built on
the meta device: shapes only, no weights, no memory, a second per architecture; the counts are
those of real tensors (`tests/test_costs.py` checks both against a hand computation).

A task's memory keys and values depend on the task only, not on the image: they are computed once
per task and cached (`MemoryViT`), so a warm-up pass runs before counting and they are not in the
per-image figures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula, sdpa_flop_count

from continual_mem.adapter import BackboneIdentity
from continual_mem.model import MemoryViT

from .bottleneck import TaskBottlenecks, forward_adapted

#: The architectures of the table (224 px, random weights: FLOPs and parameters do not depend on them).
ARCHITECTURES = {"ViT-B/32": "vit_base_patch32_224", "ViT-B/16": "vit_base_patch16_224"}
MEMORY_SIZES = (1, 5, 10, 20)
BOTTLENECK = 5
#: Classes of every task head in the table (the heads' cost is (D + 1) * C parameters, 2 * D * C FLOPs).
HEAD_CLASSES = 10
#: Tasks that share one reuse pass when the cost per task of serving many is measured.
SHARED_TASKS = 16


def _register_cpu_sdpa() -> None:
    """FlopCounterMode counts CUDA's fused attention but not the CPU kernel PyTorch picks on the
    CPU: count it the same way (2 * B * H * (Nq * Nk * Dh + Nq * Nk * Dv))."""
    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if op in flop_registry:
        return

    @register_flop_formula(op)
    def _sdpa_cpu(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)


_register_cpu_sdpa()


def count_flops(run: Callable[[], object]) -> int:
    """Forward FLOPs of `run()`, without autograd."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        run()
    return int(counter.get_total_flops())


def _warm(run: Callable[[], object]) -> None:
    """Run once without counting: fills the per-task memory key/value cache (not a per-image cost)."""
    with torch.no_grad():
        run()


def trainable(*modules: torch.nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


@dataclass(frozen=True)
class RegimeCost:
    """One regime on one architecture.

    `params`: trainable numbers one task owns (its head included); `flops`: forward FLOPs per image
    to answer one task; `extra_flops`: over the frozen backbone's pass; `shared_extra_flops`: reuse
    only, the extra FLOPs per task when SHARED_TASKS tasks share one pass; `passes`: backbone passes
    per image to serve T tasks.
    """

    regime: str
    params: int
    flops: int
    extra_flops: int
    passes: str
    shared_extra_flops: int | None = None


def meta_backbone(architecture: str, num_classes: int = 0, **kwargs) -> torch.nn.Module:
    """A timm ViT on the meta device (shapes only), in eval mode."""
    with torch.device("meta"):
        model = timm.create_model(architecture, num_classes=num_classes, **kwargs)
    return model.eval()


class _Meter:
    """Counts the regimes of one backbone (meta device, or any other for tests)."""

    def __init__(self, backbone: torch.nn.Module, architecture: str, classes: int) -> None:
        self.vit = MemoryViT(backbone, BackboneIdentity(architecture, "meta"))
        self.classes = classes
        self.device = backbone.cls_token.device
        self.images = torch.empty(1, 3, *backbone.patch_embed.img_size, device=self.device).normal_()
        self.frozen = count_flops(lambda: self.vit.forward_reuse(self.images, []))
        self._tasks = 0

    def task(self, num_memory: int, mode: str = "reuse", train_class_token: bool = True) -> str:
        name = f"t{self._tasks}"
        self._tasks += 1
        with self.device:  # built where the backbone is (meta: no data to copy the class token from)
            adapter = self.vit.add_task(name, self.classes, num_memory=num_memory, mode=mode)  # type: ignore[arg-type]
        adapter.cls_token.requires_grad_(train_class_token)
        adapter.memory.requires_grad_(num_memory > 0)
        return name

    def owned(self, name: str) -> int:
        return sum(p.numel() for p in self.vit.adapter(name).parameters() if p.requires_grad)

    def reuse(self, regime: str, num_memory: int, train_class_token: bool = True) -> RegimeCost:
        names = [self.task(num_memory, "reuse", train_class_token) for _ in range(SHARED_TASKS)]
        _warm(lambda: self.vit.forward_reuse(self.images, names))
        one = count_flops(lambda: self.vit.forward_reuse(self.images, names[:1]))
        shared = count_flops(lambda: self.vit.forward_reuse(self.images, names))
        params = self.owned(names[0])
        for name in names:
            self.vit.remove_task(name)
        return RegimeCost(regime, params, one, one - self.frozen, "1", (shared - self.frozen) // SHARED_TASKS)

    def full(self, regime: str, num_memory: int) -> RegimeCost:
        name = self.task(num_memory, "full")
        _warm(lambda: self.vit.forward_full(self.images, name))
        flops = count_flops(lambda: self.vit.forward_full(self.images, name))
        cost = RegimeCost(regime, self.owned(name), flops, flops - self.frozen, "T")
        self.vit.remove_task(name)
        return cost

    def adapters(self, regime: str, num_memory: int, size: int) -> RegimeCost:
        name = self.task(num_memory, "full")
        with self.device:
            bottlenecks = TaskBottlenecks(self.vit.depth, self.vit.dim, size)
        _warm(lambda: forward_adapted(self.vit, name, bottlenecks, self.images))
        flops = count_flops(lambda: forward_adapted(self.vit, name, bottlenecks, self.images))
        cost = RegimeCost(regime, self.owned(name) + trainable(bottlenecks), flops, flops - self.frozen, "T")
        self.vit.remove_task(name)
        return cost


def regime_costs(
    backbone: torch.nn.Module,
    architecture: str,
    finetuned: torch.nn.Module,
    classes: int = HEAD_CLASSES,
    memory_sizes: tuple[int, ...] = MEMORY_SIZES,
    bottleneck: int = BOTTLENECK,
) -> list[RegimeCost]:
    """Every regime of Table 5 on `backbone` (a head-less ViT) and `finetuned` (the same ViT with a
    head of `classes`: per-task full fine-tuning), frozen backbone first."""
    meter = _Meter(backbone, architecture, classes)
    full_ft = count_flops(lambda: finetuned(meter.images))
    rows = [
        RegimeCost("Frozen backbone (reference)", 0, meter.frozen, 0, "1"),
        RegimeCost("Full fine-tuning", trainable(finetuned), full_ft, full_ft - meter.frozen, "T"),
        meter.reuse("Head only", 0, train_class_token=False),
        meter.reuse("Class token (head + class)", 0),
    ]
    rows += [meter.full(f"memory-full-{m}", m) for m in memory_sizes]
    rows += [meter.reuse(f"memory-{m}", m) for m in memory_sizes]
    rows += [
        meter.adapters(f"adapter-{bottleneck}", 0, bottleneck),
        meter.adapters(f"memory-{BOTTLENECK}+adapter-{bottleneck}", BOTTLENECK, bottleneck),
    ]
    return rows


def measure_costs(architectures: dict[str, str] | None = None) -> dict[str, object]:
    """Table 5's measurements on every architecture, as JSON-ready data (kept in all-results.json)."""
    archs = architectures or ARCHITECTURES
    tables = {}
    for label, name in archs.items():
        backbone, finetuned = meta_backbone(name), meta_backbone(name, HEAD_CLASSES)
        config = {
            "img_size": list(backbone.patch_embed.img_size),
            "tokens": int(backbone.patch_embed.num_patches) + 1,
            "depth": len(backbone.blocks),
            "dim": int(backbone.embed_dim),
        }
        rows = regime_costs(backbone, name, finetuned)
        tables[label] = {"architecture": name, **config, "rows": [asdict(r) for r in rows]}
    return {
        "head_classes": HEAD_CLASSES,
        "shared_tasks": SHARED_TASKS,
        "bottleneck": BOTTLENECK,
        "torch": torch.__version__,
        "architectures": tables,
    }
