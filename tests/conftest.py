"""Shared fixtures: tiny timm ViTs with random (non-trivial) weights, so the suite stays fast."""

from __future__ import annotations

import os
import warnings

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no model hub here: fail fast instead of retrying
warnings.filterwarnings("ignore", message=".*QP solver.*")

TINY = dict(img_size=32, patch_size=8, depth=2, embed_dim=48, num_heads=3)

# name -> extra kwargs; the three first are different timm ViT families
ARCHITECTURES = {
    "vit_tiny_patch16_224": {},  # plain ViT, class pos-embedded
    "vit_small_patch14_reg4_dinov2": {},  # register tokens, layer scale, no_embed_class
    "vit_base_patch16_clip_224": {},  # norm_pre, no qkv bias on proj... CLIP layout
    "vit_tiny_patch16_224+qk_norm": {"qk_norm": True},  # qk_norm
    "deit_tiny_patch16_224": {},
}


def tiny_vit(name: str = "vit_tiny_patch16_224", seed: int = 0, num_classes: int = 5, **kwargs):
    """A tiny, randomly initialised timm ViT; every parameter is random so tests can fail."""
    import timm
    import torch

    base = name.split("+")[0]
    torch.manual_seed(seed)
    params = {**TINY, **ARCHITECTURES.get(name, {}), **kwargs}
    model = timm.create_model(base, num_classes=num_classes, **params)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2 if p.ndim == 1 else 0.1)
    return model.eval()


@pytest.fixture
def vit():
    return tiny_vit()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared machine they lose a lot."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
