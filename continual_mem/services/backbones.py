"""Backbones between the store and the core: registered from timm (hub or local weights) or
pretrained here, kept as one safetensors file, and rebuilt from it with their weights checked."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from timm.models.vision_transformer import VisionTransformer

from store import BackboneInfo, TaskStore

from ..adapter import BackboneIdentity
from ..backbone import backbone_config, checkpoint_head_size, create_backbone, fingerprint
from ..data import load_source
from ..errors import BackboneMismatchError, ContinualMemError
from ..pretrain import PretrainConfig, pretrain_backbone, save_backbone


def _register(
    store: TaskStore,
    name: str,
    model_name: str,
    model: VisionTransformer,
    model_kwargs: dict[str, Any],
    extra: dict[str, Any],
) -> BackboneInfo:
    """Keep the backbone's weights as a safetensors file, with what rebuilds it (timm name, kwargs)."""
    config = {**backbone_config(model), "model_kwargs": model_kwargs, **extra}
    metadata = {"timm_name": model_name, "model_kwargs": json.dumps(model_kwargs)}
    with tempfile.TemporaryDirectory() as tmp:
        weights = save_backbone(model, Path(tmp) / "weights.safetensors", metadata)
        return store.register_backbone(name, model_name, fingerprint(model), config, weights_file=weights)


def add_backbone(
    store: TaskStore,
    name: str,
    model_name: str,
    weights: Path | None = None,
    model_kwargs: dict[str, Any] | None = None,
    random_init: bool = False,
) -> BackboneInfo:
    """Register a timm backbone: hub weights, a local weight file, or (for tests) random weights.

    Whatever the source, the store keeps the weights as one safetensors file.
    """
    kwargs = dict(model_kwargs or {})
    _ensure_new_backbone(store, name)
    if weights is not None and "num_classes" not in kwargs:
        head = checkpoint_head_size(weights)
        if head is not None:
            kwargs["num_classes"] = head
    model = create_backbone(model_name, weights=weights, pretrained=not random_init and weights is None, **kwargs)
    kwargs["num_classes"] = int(model.num_classes)
    source = str(weights) if weights else ("random init" if random_init else "model hub")
    return _register(store, name, model_name, model, kwargs, {"source": source})


def pretrain_and_add_backbone(
    store: TaskStore,
    name: str,
    config: PretrainConfig = PretrainConfig(),
    on_epoch: Callable[[int, float, float], None] | None = None,
    on_start: Callable[[], None] | None = None,
) -> BackboneInfo:
    """Pretrain a small ViT here (no hub reaches this machine) and keep it like any backbone.

    `on_start` is called once the name and the data are checked, as the pretraining starts.
    """
    _ensure_new_backbone(store, name)
    data = load_source(config.data)
    if on_start is not None:
        on_start()
    model, metrics = pretrain_backbone(config, on_epoch, data=data)
    kwargs = {**dict(config.model_kwargs), "num_classes": int(model.num_classes)}
    extra = {"source": f"pretrained here on {config.data}", "pretrain": {**asdict(config), "metrics": metrics}}
    extra["pretrain"]["model_kwargs"] = dict(config.model_kwargs)
    return _register(store, name, config.model_name, model, kwargs, extra)


def _ensure_new_backbone(store: TaskStore, name: str) -> None:
    from store import AlreadyExistsError, NotFoundError

    try:
        store.get_backbone(name)
    except NotFoundError:
        return
    raise AlreadyExistsError(f"backbone {name!r} already exists")


def load_backbone(store: TaskStore, name: str) -> tuple[VisionTransformer, BackboneIdentity]:
    """Rebuild a stored backbone and check its weights are those recorded (sha256 of the tensors)."""
    info = store.get_backbone(name)
    path = store.backbone_weights_path(name)
    if path is None:
        raise ContinualMemError(f"backbone {name!r} has no stored weights")
    model = create_backbone(info.timm_name, weights=path, exact=True, **info.config.get("model_kwargs", {}))
    if fingerprint(model) != info.weights_sha256:
        raise BackboneMismatchError(
            f"backbone {name!r}: the weights rebuilt from {path} do not match the recorded sha256"
        )
    return model.eval(), BackboneIdentity(info.timm_name, info.weights_sha256)
