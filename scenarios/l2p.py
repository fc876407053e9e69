"""Avalanche's LearningToPrompt (L2P) on OUR backbone: a small compatibility layer, not a fork.

avalanche-lib 0.6.0's `LearningToPrompt` cannot run here as shipped:
  1. it builds its ViTs through `avalanche.models.vit.create_model`, whose
     `_create_vision_transformer` indexes timm's `PretrainedCfg` like a dict
     (`pretrained_cfg["url"]`): `TypeError: 'PretrainedCfg' object is not subscriptable` with
     timm 1.0.31;
  2. it only knows the hub's 224-px architectures and loads hub weights (`pretrained=True`);
  3. it replaces the head by `nn.Linear(768, num_classes)`: right for ViT-B only;
  4. it builds a SECOND frozen ViT (`original_vit`) whose class-token features query the prompt
     pool, i.e. two backbone passes per image.
The layer keeps upstream's training step, prompt selection, loss, masking and optimizer, and:
  * while `LearningToPrompt.__init__` runs (only then), points the name `create_model` in
    `avalanche.training.supervised.l2p` at `_build_vit`, which makes upstream's own `ViTWithPrompt`
    with our backbone's geometry and loads our backbone's weights (position embeddings extended by
    upstream's `checkpoint_filter_fn`: prompt positions repeat the class token's). Both the
    prompted ViT and the query ViT are built this way, so both carry our pretrained weights;
  * swaps the 768-wide head for one of the backbone's width (before any training step).
Point 4 stays: it is L2P's design, and the memory strategy's one-pass routing is what it is
compared with.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from timm.models.vision_transformer import VisionTransformer
from torch import nn

with warnings.catch_warnings():  # upstream imports timm's deprecated `timm.models.layers/helpers`
    warnings.filterwarnings("ignore", message="Importing from timm.models", category=FutureWarning)
    from avalanche.models.timm_vit import ViTWithPrompt, checkpoint_filter_fn
    from avalanche.training.supervised import l2p as upstream

#: L2P's prompt pool as in its CIFAR-100 setting (pool 10, length 5, top-5).
POOL_SIZE = 10
PROMPT_LENGTH = 5
TOP_K = 5
#: Tensors our backbone does not have: the prompt pool, its keys, and the (new-size) head.
_NEW_TENSORS = {"prompt.prompt", "prompt.prompt_key", "head.weight", "head.bias"}


class L2PCompatibilityError(RuntimeError):
    """Our backbone's weights do not fit upstream's ViTWithPrompt."""


def _geometry(backbone: VisionTransformer) -> dict[str, Any]:
    """ViTWithPrompt keyword arguments that reproduce the backbone's architecture."""
    block = backbone.blocks[0]
    return {
        "img_size": backbone.patch_embed.img_size,
        "patch_size": backbone.patch_embed.patch_size,
        "in_chans": backbone.patch_embed.proj.in_channels,
        "embed_dim": backbone.embed_dim,
        "depth": len(backbone.blocks),
        "num_heads": block.attn.num_heads,
        "mlp_ratio": block.mlp.fc1.out_features / backbone.embed_dim,
        "qkv_bias": block.attn.qkv.bias is not None,
    }


def _build_vit(
    backbone: VisionTransformer, model_name: str = "", pretrained: bool = False, **kwargs: Any
) -> ViTWithPrompt:
    """Stands in for upstream's `create_model`: upstream's ViTWithPrompt carrying our weights.

    `model_name` and `pretrained` are upstream's hub selectors; the backbone replaces both.
    """
    model = ViTWithPrompt(**_geometry(backbone), **kwargs)
    state = {k: v for k, v in backbone.state_dict().items() if not k.startswith("head.")}
    result = model.load_state_dict(checkpoint_filter_fn(state, model), strict=False)
    missing = set(result.missing_keys) - _NEW_TENSORS
    if missing or result.unexpected_keys:
        raise L2PCompatibilityError(
            f"backbone weights do not fit ViTWithPrompt: missing {sorted(missing)}, "
            f"unexpected {sorted(result.unexpected_keys)}"
        )
    return model.eval()


@contextmanager
def _upstream_builds_from(backbone: VisionTransformer) -> Iterator[None]:
    original = upstream.create_model
    upstream.create_model = lambda **kwargs: _build_vit(backbone, **kwargs)
    try:
        yield
    finally:
        upstream.create_model = original


class BackboneL2P(upstream.LearningToPrompt):
    """Upstream `LearningToPrompt`, built on `backbone` (see the module docstring)."""

    def __init__(self, *, backbone: VisionTransformer, num_classes: int, **kwargs: Any) -> None:
        kwargs.setdefault("pool_size", POOL_SIZE)
        kwargs.setdefault("prompt_length", PROMPT_LENGTH)
        kwargs.setdefault("top_k", TOP_K)
        with _upstream_builds_from(backbone):
            super().__init__(model_name=type(backbone).__name__, num_classes=num_classes, pretrained=False, **kwargs)
        # Upstream: `model.head = torch.nn.Linear(768, num_classes)`. Its optimizer is rebuilt over
        # `model.parameters()` before every experience, so the new head is trained.
        self.model.head = nn.Linear(backbone.embed_dim, num_classes).to(self.device)
