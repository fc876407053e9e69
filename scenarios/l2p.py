"""Avalanche's LearningToPrompt (L2P) on OUR backbone: a small compatibility layer, not a fork.

avalanche-lib 0.6.0's `LearningToPrompt` cannot run here as shipped:
  1. it builds its ViTs through `avalanche.models.vit.create_model`, whose
     `_create_vision_transformer` indexes timm's `PretrainedCfg` like a dict
     (`pretrained_cfg["url"]`): `TypeError: 'PretrainedCfg' object is not subscriptable` with
     timm 1.0.31;
  2. it only knows the hub's 224-px architectures and loads hub weights (`pretrained=True`);
  3. it replaces the head by `nn.Linear(768, num_classes)`: right for ViT-B only;
  4. its `ViTWithPrompt` assembles tokens as the original ViT did (class token, position
     embeddings over it), so a backbone with register tokens, position embeddings that leave the
     class token out (DINOv2, DeiT-3) or a pre-norm (CLIP) does not fit it;
  5. it builds a SECOND frozen ViT (`original_vit`) whose class-token features query the prompt
     pool, i.e. two backbone passes per image.
The layer keeps upstream's training step, prompt selection, loss, masking and optimizer, and:
  * while `LearningToPrompt.__init__` runs (only then), points the name `create_model` in
    `avalanche.training.supervised.l2p` at `_build_vit`, which makes a `PromptedViT`: upstream's
    `ViTWithPrompt` (its prompt pool and head, at the backbone's width) made of copies of our
    backbone's own modules, tokens assembled as timm assembles them. Both the prompted ViT and the
    query ViT are built this way, so both carry our pretrained weights;
  * swaps the 768-wide head for one of the backbone's width (before any training step).
Point 5 stays: it is L2P's design, and the memory strategy's one-pass routing is what it is
compared with.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

with warnings.catch_warnings():  # upstream imports timm's deprecated `timm.models.layers/helpers`
    warnings.filterwarnings("ignore", message="Importing from timm.models", category=FutureWarning)
    from avalanche.models.timm_vit import ViTWithPrompt
    from avalanche.training.supervised import l2p as upstream

#: L2P's prompt pool as in its CIFAR-100 setting (pool 10, length 5, top-5).
POOL_SIZE = 10
PROMPT_LENGTH = 5
TOP_K = 5
#: The backbone's modules and tensors a PromptedViT is made of (copied, frozen), and the facts
#: about its tokens that timm's `_pos_embed` reads.
_BACKBONE_PARTS = (
    "patch_embed",
    "cls_token",
    "reg_token",
    "pos_embed",
    "patch_drop",
    "norm_pre",
    "blocks",
    "norm",
    "fc_norm",
)
_TOKEN_FACTS = ("no_embed_class", "num_prefix_tokens", "num_reg_tokens", "has_class_token", "dynamic_img_size")


class PromptedViT(ViTWithPrompt):
    """Upstream's ViTWithPrompt made of copies of OUR backbone's modules, for any backbone the
    memory method supports (`continual_mem.backbone.check_supported`).

    Upstream builds the prompt pool and the head at the backbone's width (with no blocks of its
    own: ours replace them). Tokens are assembled as timm does (`_pos_embed`: class and register
    tokens, position embeddings with or without the class token's, then the pre-norm), with the
    selected prompts right after the class token, where upstream's `forward_head` reads them.
    Prompts get the class token's position embedding, as upstream's checkpoint filter gives them
    (none where the class token has none). Everything copied from the backbone is frozen.
    """

    def __init__(self, backbone: VisionTransformer, **kwargs: Any) -> None:
        embed = backbone.patch_embed
        super().__init__(
            img_size=embed.img_size,
            patch_size=embed.patch_size,
            in_chans=embed.proj.in_channels,
            embed_dim=backbone.embed_dim,
            depth=0,
            **kwargs,
        )
        for name in _BACKBONE_PARTS:
            setattr(self, name, copy.deepcopy(getattr(backbone, name)))
        for name in _TOKEN_FACTS:
            setattr(self, name, getattr(backbone, name))
        for name in _BACKBONE_PARTS:
            part = getattr(self, name)
            if part is not None:
                part.requires_grad_(False)

    def forward_features(
        self, x: Tensor, task_id: int = -1, cls_features: Tensor | None = None, train: bool = False
    ) -> dict[str, Any]:
        """Upstream's signature; `task_id` and `train` select prompts by mask, which is not used here."""
        patches = self.patch_embed(x)
        tokens = self._pos_embed(patches)  # [class, registers, patches], positioned
        res: dict[str, Any] = {}
        if hasattr(self, "prompt"):
            flat = patches.reshape(patches.shape[0], -1, patches.shape[-1])
            res = self.prompt(flat, prompt_mask=None, cls_features=cls_features)
            self.total_prompt_len = res["total_prompt_len"]
            prompts = res["prompted_embedding"][:, : self.total_prompt_len]
            if not self.no_embed_class and self.pos_embed is not None:
                prompts = prompts + self.pos_embed[:, :1]
            tokens = torch.cat([tokens[:, :1], prompts, tokens[:, 1:]], dim=1)
        x = self.blocks(self.norm_pre(self.patch_drop(tokens)))
        res["x"] = self.norm(x)
        return res


def _build_vit(
    backbone: VisionTransformer, model_name: str = "", pretrained: bool = False, **kwargs: Any
) -> PromptedViT:
    """Stands in for upstream's `create_model`: a PromptedViT of our backbone.

    `model_name` and `pretrained` are upstream's hub selectors; the backbone replaces both.
    """
    if kwargs.get("use_prompt_mask"):
        raise ValueError("use_prompt_mask is not supported on our backbone: prompts are selected by their keys")
    return PromptedViT(backbone, **kwargs).eval()


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
