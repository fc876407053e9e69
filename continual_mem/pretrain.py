"""Pretrain a small ViT here, since no model hub reaches this machine.

The demo backbone is timm's `vit_tiny_patch16_224` architecture shrunk to 32x32 images (patch 4,
depth 4) and pretrained from scratch on GENERATED pen-stroke glyphs (`builtin:glyphs`: 64 classes of
random curves, half of them scanned at a low resolution), data disjoint from every downstream source
(no digits among them). Results shown with it say so.

Pretraining runs on one thread, so the recipe (`PretrainConfig()`) gives the same bytes every time
on the same CPU kind: the package ships them (`SHIPPED_DEMO_WEIGHTS`, sha256 `SHIPPED_DEMO_SHA256`),
and the demo and the scenario commands use that file instead of pretraining for minutes. Float32
kernels round differently from one instruction set to another, so on another CPU kind (measured:
an AVX-512 Xeon) the recipe gives other bytes; tests/test_backbone.py's slow test checks the sha256.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from .adapter import write_safetensors
from .backbone import create_backbone
from .data import GLYPH_CLASSES, InputSpec, LabeledImages, load_source
from .errors import ConfigError

DEMO_MODEL = "vit_tiny_patch16_224"
DEMO_KWARGS: dict[str, Any] = {"img_size": 32, "patch_size": 4, "depth": 4}
DEMO_DATA = "builtin:glyphs"
DEMO_EPOCHS = 4
#: Threads pretraining runs on: one, so that the recipe reproduces the same weights bit for bit.
PRETRAIN_THREADS = 1
#: The recipe's weights as `save_backbone(model, path, pretrain_metadata(PretrainConfig()))` writes them.
SHIPPED_DEMO_WEIGHTS = Path(__file__).parent / "weights" / "demo-vit.safetensors"
SHIPPED_DEMO_SHA256 = "7f8f7b456ca6eca96908fc9e3c1d833615bc198948fa8be066bd60258475b7d0"


@dataclass(frozen=True)
class PretrainConfig:
    model_name: str = DEMO_MODEL
    model_kwargs: tuple[tuple[str, Any], ...] = tuple(DEMO_KWARGS.items())
    data: str = DEMO_DATA
    epochs: int = DEMO_EPOCHS
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"learning rate must be > 0, got {self.lr}")


def pretrain_backbone(
    config: PretrainConfig = PretrainConfig(),
    on_epoch: Callable[[int, float, float], None] | None = None,
    data: LabeledImages | None = None,
) -> tuple[VisionTransformer, dict[str, float]]:
    """Train every weight of a fresh ViT as a classifier of `config.data` (already loaded: `data`);
    returns it in eval mode.

    Runs on one CPU thread (`PRETRAIN_THREADS`), whatever the process uses otherwise: float sums
    split over threads round differently, and one thread makes the weights the same bytes on every
    run, which is what lets the package ship the demo backbone (`SHIPPED_DEMO_WEIGHTS`).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(PRETRAIN_THREADS)
    try:
        return _pretrain(config, on_epoch, data)
    finally:
        torch.set_num_threads(previous)


def _pretrain(
    config: PretrainConfig, on_epoch: Callable[[int, float, float], None] | None, data: LabeledImages | None
) -> tuple[VisionTransformer, dict[str, float]]:
    torch.manual_seed(config.seed)
    data = data if data is not None else load_source(config.data)
    model = create_backbone(config.model_name, num_classes=len(data.class_names), **dict(config.model_kwargs))
    images = InputSpec.from_backbone(model)(data.images)
    total = config.epochs * math.ceil(len(data) / config.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total, pct_start=0.1)
    gen = torch.Generator().manual_seed(config.seed)
    start = time.perf_counter()
    model.train()
    loss_sum = correct = 0.0
    for epoch in range(config.epochs):
        loss_sum = correct = 0.0
        for batch in torch.randperm(len(data), generator=gen).split(config.batch_size):
            logits = model(images[batch])
            loss = F.cross_entropy(logits, data.labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += float(loss.detach()) * len(batch)
            correct += float((logits.argmax(-1) == data.labels[batch]).sum())
        if on_epoch is not None:
            on_epoch(epoch, loss_sum / len(data), correct / len(data))
    model.eval()
    metrics = {"loss": loss_sum / len(data), "accuracy": correct / len(data), "seconds": time.perf_counter() - start}
    return model, metrics


def save_backbone(model: VisionTransformer, path: Path, metadata: dict[str, str]) -> Path:
    """The backbone's weights as one safetensors file (written atomically, byte-reproducible)."""
    return write_safetensors(path, model.state_dict(), metadata)


def pretrain_metadata(config: PretrainConfig) -> dict[str, str]:
    return {
        "timm_name": config.model_name,
        "model_kwargs": json.dumps(dict(config.model_kwargs)),
        "pretrain_data": config.data,
        "pretrain_epochs": str(config.epochs),
    }


def shipped_demo_weights() -> Path:
    """The package's copy of the recipe's weights, checked against `SHIPPED_DEMO_SHA256`."""
    digest = hashlib.sha256(SHIPPED_DEMO_WEIGHTS.read_bytes()).hexdigest()
    if digest != SHIPPED_DEMO_SHA256:
        raise ConfigError(f"{SHIPPED_DEMO_WEIGHTS} has sha256 {digest}, not the recipe's {SHIPPED_DEMO_SHA256}")
    return SHIPPED_DEMO_WEIGHTS


def demo_backbone(cache_dir: Path | None = None, config: PretrainConfig = PretrainConfig()) -> VisionTransformer:
    """The demo backbone: the shipped weights for the recipe, else pretrained once and cached in `cache_dir`.

    Loads through timm's real local-weights path, so the file is used like any other.
    """
    if config == PretrainConfig():
        path = shipped_demo_weights()
        kwargs = {**dict(config.model_kwargs), "num_classes": GLYPH_CLASSES}
        return create_backbone(config.model_name, weights=path, exact=True, **kwargs)
    cache_dir = Path(cache_dir or os.environ.get("CMEM_CACHE", Path.home() / ".cache" / "continual-mem"))
    data = load_source(config.data)
    # The data's own fingerprint joins the key: a change to a generator's defaults retrains.
    key = json.dumps({**asdict(config), "data_fingerprint": data.fingerprint()}, sort_keys=True, default=str)
    path = cache_dir / f"demo-backbone-{hashlib.sha256(key.encode()).hexdigest()[:12]}.safetensors"
    if not path.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        model, _ = pretrain_backbone(config, data=data)
        save_backbone(model, path, pretrain_metadata(config))
    num_classes = len(data.class_names)
    return create_backbone(
        config.model_name, weights=path, exact=True, num_classes=num_classes, **dict(config.model_kwargs)
    )
