"""Pretrain a small ViT here, since no model hub reaches this machine.

The demo backbone is timm's `vit_tiny_patch16_224` architecture shrunk to 32x32 images (patch 4,
depth 4) and pretrained from scratch on GENERATED pen-stroke glyphs (`builtin:glyphs`: 64 classes of
random curves, half of them scanned at a low resolution), data disjoint from every downstream source
(no digits among them). Results shown with it say so.

Float32 kernels round differently from one CPU to another: torch picks its vectorized kernels by
instruction set (an AVX-512 sum adds 16 lanes, an AVX2 one 8), MKL picks GEMM code by instruction
set, vendor and cache size, and oneDNN compiles its convolutions for the CPU at hand. So pretraining
runs in a child process whose kernels are pinned (`PINNED_KERNELS`, oneDNN off, one thread), and
the recipe keeps out of MKL's vector math (VML), whose float32 `sqrt` rounds one way on an Intel
CPU and another on an AMD one under every `MKL_CBWR` branch measured (and `erfinv` under some):
it initialises without `erfinv` (`init_without_vector_math`) and takes AdamW's square root as
`rsqrt().reciprocal()` (`AdamWWithoutVectorMath`). The bytes then follow neither the caller's settings nor the CPU: the
shipped weights (`SHIPPED_DEMO_WEIGHTS`, sha256 `SHIPPED_DEMO_SHA256`) come again from the recipe,
which tests/test_backbone.py's slow test checks; its CI test checks a small pinned pretraining
against the bytes an Intel Xeon and an AMD EPYC both gave.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
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
from .errors import ConfigError, ContinualMemError

DEMO_MODEL = "vit_tiny_patch16_224"
DEMO_KWARGS: dict[str, Any] = {"img_size": 32, "patch_size": 4, "depth": 4}
DEMO_DATA = "builtin:glyphs"
DEMO_EPOCHS = 8
#: Threads pretraining runs on: one, so that the recipe reproduces the same weights bit for bit.
PRETRAIN_THREADS = 1
#: The pretraining process's environment, read as torch and MKL load, so set before the process
#: starts: torch's own kernels built for AVX2 (on any CPU that has it, AVX-512 ones included) and
#: MKL's conditional-numerical-reproducibility branch that gives the same results on Intel and AMD
#: CPUs (SSE2 code: pretraining runs about 2x slower than on MKL's own choice).
PINNED_KERNELS: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE",
    "OMP_NUM_THREADS": str(PRETRAIN_THREADS),
    "MKL_NUM_THREADS": str(PRETRAIN_THREADS),
}
#: The recipe's weights as `save_backbone(model, path, pretrain_metadata(PretrainConfig()))` writes them.
SHIPPED_DEMO_WEIGHTS = Path(__file__).parent / "weights" / "demo-vit.safetensors"
SHIPPED_DEMO_SHA256 = "73ea22f7645751d5100dc58e3e5337f83271eb20a2f0f98eda1d313459dd9b52"


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


@dataclass(frozen=True)
class PretrainRun:
    """What a pretraining reports besides the model: its metrics and the kernels it ran on."""

    metrics: dict[str, float]
    kernels: str
    #: Whether the pinned kernels ran (an x86-64 CPU with AVX2, torch built with MKL): then the
    #: weights depend neither on the caller's settings nor on the CPU's instruction sets.
    pinned: bool


def pretrain_backbone(
    config: PretrainConfig = PretrainConfig(),
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> tuple[VisionTransformer, PretrainRun]:
    """Train every weight of a fresh ViT as a classifier of `config.data`; returns it in eval mode.

    Runs in a child process with `PINNED_KERNELS` (this process's kernels are chosen already and
    stay as they are), which loads the data itself: generating the glyphs rounds by the kernels too.
    """
    with tempfile.TemporaryDirectory(prefix="cmem-pretrain-") as tmp:
        weights, log = Path(tmp) / "weights.safetensors", Path(tmp) / "stderr.log"
        command = [sys.executable, "-m", "continual_mem.pretrain_process", json.dumps(asdict(config)), str(weights)]
        with log.open("w") as stderr:
            child = subprocess.Popen(
                command, env={**os.environ, **PINNED_KERNELS}, stdout=subprocess.PIPE, stderr=stderr, text=True
            )
            try:
                done = _follow(child, on_epoch)
            finally:
                if child.poll() is None:
                    child.kill()
                child.wait()
        if child.returncode != 0 or done is None:
            lines = log.read_text().strip().splitlines() or [f"exit status {child.returncode}"]
            raise ContinualMemError(f"pretraining failed: {lines[-1]}")
        kwargs = {**dict(config.model_kwargs), "num_classes": done["num_classes"]}
        model = create_backbone(config.model_name, weights=weights, exact=True, **kwargs)
    return model.eval(), PretrainRun(done["metrics"], done["kernels"], done["pinned"])


def _follow(child: subprocess.Popen[str], on_epoch: Callable[[int, float, float], None] | None) -> dict | None:
    """Relay the child's epoch lines to `on_epoch`; its last line, once it has saved the weights.

    Lines that are not the child's own JSON (a library printing to stdout) are passed over."""
    assert child.stdout is not None
    done = None
    for line in child.stdout:
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(message, dict):
            continue
        if "epoch" in message and on_epoch is not None:
            on_epoch(message["epoch"], message["loss"], message["accuracy"])
        done = message if "metrics" in message else done
    return done


def config_from_json(text: str) -> PretrainConfig:
    """The inverse of `json.dumps(asdict(config))`."""
    fields = json.loads(text)
    return PretrainConfig(**{**fields, "model_kwargs": tuple(tuple(item) for item in fields["model_kwargs"])})


def pretrain_here(
    config: PretrainConfig, data: LabeledImages, on_epoch: Callable[[int, float, float], None] | None = None
) -> tuple[VisionTransformer, dict[str, float]]:
    """The recipe's training loop, on this process's kernels (`pretrain_backbone` runs it pinned)."""
    torch.manual_seed(config.seed)
    model = create_backbone(config.model_name, num_classes=len(data.class_names), **dict(config.model_kwargs))
    init_without_vector_math(model)
    images = InputSpec.from_backbone(model)(data.images)
    total = config.epochs * math.ceil(len(data) / config.batch_size)
    optimizer = AdamWWithoutVectorMath(model.parameters(), lr=config.lr, weight_decay=0.05)
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


@torch.no_grad()
def init_without_vector_math(model: VisionTransformer) -> None:
    """timm's initialisation of the weights it draws through `trunc_normal_`, redrawn without `erfinv`.

    timm draws every linear weight and the position embedding from a normal(0, 0.02) truncated at
    +-2, by inverting the normal's CDF with `erfinv_`, which torch hands to VML. `normal_` and
    `clamp_` draw from the same distribution (the truncation lies 100 standard deviations out) with
    torch's own kernels. Linear biases are zeroed, as timm does.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.weight.normal_(0.0, 0.02).clamp_(-2.0, 2.0)
            if module.bias is not None:
                module.bias.zero_()
    model.pos_embed.normal_(0.0, 0.02).clamp_(-2.0, 2.0)


class AdamWWithoutVectorMath(torch.optim.AdamW):
    """AdamW (decoupled weight decay, bias-corrected moments) whose denominator avoids VML's `sqrt`.

    torch's AdamW takes `exp_avg_sq.sqrt()`, VML's float32 square root, which is not correctly
    rounded and rounds differently on Intel and AMD CPUs. `rsqrt().reciprocal()` runs on torch's own
    kernels. Only the options the recipe uses (`lr`, `betas`, `eps`, `weight_decay`) are honoured;
    `OneCycleLR` may change `lr` and `betas` between steps, and `step(closure)` returns the closure's
    loss, as with torch's AdamW.
    """

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in (p for p in group["params"] if p.grad is not None):
                state = self.state[param]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(param), exp_avg_sq=torch.zeros_like(param))
                state["step"] += 1
                param.mul_(1 - group["lr"] * group["weight_decay"])
                state["exp_avg"].lerp_(param.grad, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(param.grad, param.grad, value=1 - beta2)
                root = state["exp_avg_sq"].rsqrt().reciprocal() / (1 - beta2 ** state["step"]) ** 0.5
                step_size = group["lr"] / (1 - beta1 ** state["step"])
                param.addcdiv_(state["exp_avg"], root.add_(group["eps"]), value=-step_size)
        return loss


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
        model, _ = pretrain_backbone(config)
        save_backbone(model, path, pretrain_metadata(config))
    num_classes = len(data.class_names)
    return create_backbone(
        config.model_name, weights=path, exact=True, num_classes=num_classes, **dict(config.model_kwargs)
    )
