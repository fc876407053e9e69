"""Build, check and fingerprint the frozen timm backbone."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import timm
import torch
from timm.models.vision_transformer import Attention, Block, VisionTransformer

from .adapter import BackboneIdentity, tensors_sha256
from .errors import BackboneLoadError, UnsupportedBackboneError

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz")
#: How long to wait for the model hub to answer before saying it cannot be reached.
HUB_PROBE_TIMEOUT_S = 5.0
LOCAL_WEIGHTS_HINT = (
    "download the weights where a network is available and pass the file (cmem backbone add --weights FILE)"
)


def architecture_name(model: torch.nn.Module) -> str:
    """The timm architecture name of a model built by `timm.create_model`, else its class name."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(model).__name__)


def check_supported(model: torch.nn.Module, name: str | None = None) -> VisionTransformer:
    """Refuse, with the reason, any model the memory method cannot be applied to exactly."""
    name = name or architecture_name(model)
    if not isinstance(model, VisionTransformer):
        raise UnsupportedBackboneError(f"{name}: {type(model).__name__} is not a timm VisionTransformer")
    if getattr(model, "dist_token", None) is not None:
        raise UnsupportedBackboneError(f"{name}: distillation tokens are not supported")
    if model.cls_token is None:
        raise UnsupportedBackboneError(
            f"{name}: the model has no class token (global pool {model.global_pool!r}); "
            "memory tokens need one class token per task"
        )
    if model.global_pool != "token" or model.attn_pool is not None:
        raise UnsupportedBackboneError(f"{name}: the head pools with {model.global_pool!r}, not the class token")
    for i, blk in enumerate(model.blocks):
        if type(blk) is not Block or type(blk.attn) is not Attention:
            raise UnsupportedBackboneError(
                f"{name}: block {i} is {type(blk).__name__}/{type(getattr(blk, 'attn', None)).__name__}; "
                "only timm's pre-norm Block with standard Attention is supported"
            )
    return model


def fingerprint(model: torch.nn.Module) -> str:
    """sha256 over every tensor of the state dict (names, dtypes, shapes and bytes, sorted by name)."""
    return tensors_sha256(model.state_dict())


def identity_of(model: torch.nn.Module, name: str | None = None) -> BackboneIdentity:
    return BackboneIdentity(name or architecture_name(model), fingerprint(model))


def backbone_config(model: VisionTransformer) -> dict[str, Any]:
    """The numbers that describe a ViT backbone (stored next to it, shown to users)."""
    patch = model.patch_embed.patch_size
    img = model.patch_embed.img_size
    return {
        "img_size": int(img[0]) if img is not None else None,
        "patch_size": int(patch[0]),
        "in_chans": int(model.patch_embed.proj.in_channels),
        "depth": len(model.blocks),
        "embed_dim": int(model.embed_dim),
        "num_heads": int(model.blocks[0].attn.num_heads),
        "reg_tokens": int(model.num_reg_tokens),
        "num_classes": int(model.num_classes),
    }


def create_backbone(
    model_name: str,
    weights: str | os.PathLike[str] | None = None,
    pretrained: bool = False,
    exact: bool = False,
    **kwargs: Any,
) -> VisionTransformer:
    """A timm ViT, with hub weights (`pretrained=True`) or a local weight file, checked supported.

    Local files go through timm's own pretrained loader (`pretrained_cfg_overlay=dict(file=...)`),
    which filters the checkpoint: a head of another size is dropped and position embeddings are
    resampled; `.pth` files are read with `weights_only=True` (no pickled code runs), `.npz` files
    with timm's big_vision loader. `exact=True` instead loads a `.safetensors` state dict as it is,
    strictly: how the store rebuilds the backbones it keeps.
    """
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise BackboneLoadError(f"weights file {path} does not exist")
        if path.suffix not in WEIGHT_SUFFIXES:
            raise BackboneLoadError(
                f"weights file {path} has suffix {path.suffix!r}; expected one of {WEIGHT_SUFFIXES}"
            )
        if exact:
            return check_supported(_load_exact(model_name, path, kwargs), model_name)
        overlay: dict[str, Any] = dict(file=str(path), custom_load=path.suffix == ".npz")
        head = checkpoint_head_size(path)
        if head is not None:  # timm keeps the file's head when the model asks for that many classes
            overlay["num_classes"] = head
        kwargs["pretrained_cfg_overlay"] = overlay
        pretrained = True
    elif pretrained:
        _check_hub_reachable()
    try:
        model = timm.create_model(model_name, pretrained=pretrained, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise BackboneLoadError(f"timm has no model named {model_name!r}") from None
        raise BackboneLoadError(f"cannot load {model_name} weights: {_first_line(exc)}") from None
    except (TypeError, ValueError) as exc:  # keyword arguments the model does not take, or of another type
        given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k != "pretrained_cfg_overlay")
        raise BackboneLoadError(
            f"timm cannot build {model_name}{' with ' + given if given else ''}: {_first_line(exc)}"
        ) from None
    except Exception as exc:  # hub offline, unreadable file, shape clash: one line for the user
        if weights is None and not pretrained:
            raise
        source = weights if weights is not None else "the model hub"
        hint = f"; {LOCAL_WEIGHTS_HINT}" if weights is None else ""
        raise BackboneLoadError(
            f"cannot load {model_name} weights from {source}: {type(exc).__name__}: {_first_line(exc)}{hint}"
        ) from None
    return check_supported(model, model_name)


def _check_hub_reachable() -> None:
    """Fail within seconds when the model hub cannot be reached, not after its client's minute of retries.

    Skipped in offline mode (the hub client then reads its cache and fails fast by itself) and behind
    a proxy (the hub may be reachable through it when it is not directly).
    """
    from huggingface_hub import constants

    if constants.is_offline_mode() or any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY")):
        return
    endpoint = urlsplit(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    problem = _unreachable(endpoint.hostname or "", port, HUB_PROBE_TIMEOUT_S)
    if problem is not None:
        raise BackboneLoadError(
            f"cannot reach the model hub ({constants.ENDPOINT}: {problem}); {LOCAL_WEIGHTS_HINT},"
            " or set HF_HUB_OFFLINE=1 to use weights already in the hub's cache"
        )


def _unreachable(host: str, port: int, timeout_s: float) -> str | None:
    """Why `host:port` does not accept a connection within `timeout_s` (name lookup included), or None."""
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(exc.strerror or str(exc))

    thread = threading.Thread(target=connect, daemon=True)  # a name lookup has no timeout of its own
    thread.start()
    thread.join(timeout_s)
    return outcome[0] if outcome else f"no answer within {timeout_s:g} s"


def _load_exact(model_name: str, path: Path, kwargs: dict[str, Any]) -> torch.nn.Module:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    model = create_backbone(model_name, **kwargs)
    try:
        model.load_state_dict(load_file(str(path)), strict=True)
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise BackboneLoadError(f"cannot load {model_name} weights from {path}: {_first_line(exc)}") from None
    return model.eval()


def checkpoint_head_size(path: str | os.PathLike[str]) -> int | None:
    """Classes of the head stored in a weight file, so the model is built to match it."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return int(f.get_slice("head.weight").get_shape()[0]) if "head.weight" in f.keys() else None  # noqa: SIM118
        if path.suffix in (".pth", ".pt", ".bin"):
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else {}
            head = state.get("head.weight")
            return int(head.shape[0]) if head is not None else None
    except Exception:  # unreadable: timm's loader will say why, with the file's name
        return None
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
