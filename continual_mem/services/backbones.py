"""Backbones between the store and the core: registered from timm (hub or local weights) or
pretrained here, kept as one safetensors file, and rebuilt from it with their weights checked.

The scenario commands also run on two built-in backbones (`demo`, `random`) and on a one-off timm
model with a local weights file; `resolve_backbone` and `one_off_backbone` return any of them with
its `Provenance` (what a run records about the weights it used).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from timm.models.vision_transformer import VisionTransformer

from store import BackboneInfo, TaskStore

from .. import pretrain
from ..adapter import BackboneIdentity
from ..backbone import architecture_name, backbone_config, checkpoint_head_size, create_backbone, fingerprint
from ..data import load_source
from ..errors import BackboneMismatchError, ContinualMemError
from ..pretrain import PretrainConfig, pretrain_backbone, save_backbone

#: The built-in backbones of the scenario commands: `demo`, the project's small ViT pretrained on
#: generated glyphs (the weights shipped in the package, `pretrain.SHIPPED_DEMO_WEIGHTS`); `random`, a tiny untrained ViT of the same family
#: (seeded), for smoke tests. No backbone can be registered under these names, so they always
#: mean the built-in ones.
BUILTIN_BACKBONES = ("demo", "random")
#: Patch 4, as the demo backbone: 64 patches + the class token, so every memory size a results run
#: trains (up to 20 tokens per layer) fits.
RANDOM_BACKBONE = {"img_size": 32, "patch_size": 4, "depth": 2, "embed_dim": 48, "num_heads": 3}


@dataclass(frozen=True)
class Provenance:
    """Which weights a run used: the backbone's name (registered or built-in; a one-off run's
    weights file name), its timm architecture, the sha256 of its tensors (`backbone.fingerprint`)
    and where the weights came from."""

    name: str
    architecture: str
    weights_sha256: str
    source: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


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
    _ensure_new_backbone(store, name)
    kwargs = _with_head_of(weights, model_kwargs) if weights is not None else dict(model_kwargs or {})
    model = create_backbone(model_name, weights=weights, pretrained=not random_init and weights is None, **kwargs)
    kwargs["num_classes"] = int(model.num_classes)
    source = str(weights) if weights else ("random init" if random_init else "model hub")
    return _register(store, name, model_name, model, kwargs, {"source": source})


def _with_head_of(weights: Path, model_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """The model's keyword arguments, with a head of the weight file's size unless they set one."""
    kwargs = dict(model_kwargs or {})
    head = checkpoint_head_size(weights) if "num_classes" not in kwargs else None
    return kwargs if head is None else {**kwargs, "num_classes": head}


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
    load_source(config.data)  # bad data is refused here, with its own error; the child loads it again
    if on_start is not None:
        on_start()
    model, run = pretrain_backbone(config, on_epoch)
    kwargs = {**dict(config.model_kwargs), "num_classes": int(model.num_classes)}
    pretrain_record = {**asdict(config), "metrics": run.metrics, "kernels": run.kernels, "pinned_kernels": run.pinned}
    extra = {"source": f"pretrained here on {config.data}", "pretrain": pretrain_record}
    extra["pretrain"]["model_kwargs"] = dict(config.model_kwargs)
    return _register(store, name, config.model_name, model, kwargs, extra)


def add_demo_backbone(store: TaskStore, name: str) -> BackboneInfo:
    """Register the demo backbone shipped in the package (its sha256 checked): the weights `cmem
    backbone pretrain` gives with the demo recipe, bit for bit, without minutes of pretraining."""
    _ensure_new_backbone(store, name)
    config = PretrainConfig()
    model = pretrain.demo_backbone(config=config)
    kwargs = {**dict(config.model_kwargs), "num_classes": int(model.num_classes)}
    pretrain_record = {**asdict(config), "model_kwargs": dict(config.model_kwargs)}
    extra = {
        "source": f"shipped with the package, pretrained by the recipe on {config.data}",
        "pretrain": pretrain_record,
    }
    return _register(store, name, config.model_name, model, kwargs, extra)


def _ensure_new_backbone(store: TaskStore, name: str) -> None:
    from store import AlreadyExistsError, NotFoundError

    if name in BUILTIN_BACKBONES:
        raise ContinualMemError(
            f"backbone name {name!r} is reserved: `cmem scenario --backbone {name}` means the built-in {name} backbone"
        )
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


def resolve_backbone(store: TaskStore | None, name: str) -> tuple[VisionTransformer, Provenance]:
    """A built-in backbone (`BUILTIN_BACKBONES`), or one registered in `store` (its weights checked)."""
    if name == "demo":
        model = pretrain.demo_backbone()
        return model, _provenance(model, "demo", f"pretrained on {pretrain.DEMO_DATA} (the package's shipped weights)")
    if name == "random":
        model = _random_backbone()
        return model, _provenance(model, "random", "random init (seed 0)")
    if store is None:
        raise ContinualMemError(
            f"unknown backbone {name!r}: not {', '.join(BUILTIN_BACKBONES)}, and no task store to look it up in"
        )
    info = _registered(store, name)
    model, identity = load_backbone(store, name)
    source = str(info.config.get("source", "unknown"))
    return model, Provenance(name, identity.name, identity.sha256, source)


def _random_backbone() -> VisionTransformer:
    import torch

    torch.manual_seed(0)
    return create_backbone(pretrain.DEMO_MODEL, num_classes=8, **RANDOM_BACKBONE).eval()


def _registered(store: TaskStore, name: str) -> BackboneInfo:
    from store import NotFoundError

    try:
        return store.get_backbone(name)
    except NotFoundError:
        raise ContinualMemError(
            f"unknown backbone {name!r}: not {', '.join(BUILTIN_BACKBONES)} or a backbone of the store "
            "(see `cmem backbone list`)"
        ) from None


def one_off_backbone(
    model_name: str, weights: Path, model_kwargs: dict[str, Any] | None = None
) -> tuple[VisionTransformer, Provenance]:
    """A timm model with a local weights file, loaded as `cmem backbone add --weights` loads it, without
    registering it (its head is sized from the file)."""
    model = create_backbone(model_name, weights=weights, **_with_head_of(weights, model_kwargs)).eval()
    return model, _provenance(model, weights.name, str(weights.resolve()))


def _provenance(model: VisionTransformer, name: str, source: str) -> Provenance:
    return Provenance(name, architecture_name(model), fingerprint(model), source)
