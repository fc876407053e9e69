"""The pretraining child process: `python -m continual_mem.pretrain_process CONFIG_JSON WEIGHTS_PATH`.

`pretrain.pretrain_backbone` starts it with `pretrain.PINNED_KERNELS` in its environment. It turns
oneDNN off (the patch convolution then runs as an MKL GEMM), loads the data, trains, saves the
weights as the recipe writes them, and prints one JSON line per epoch and a last one with the
metrics and the kernels that actually ran.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from .data import load_source
from .pretrain import PRETRAIN_THREADS, config_from_json, pretrain_here, pretrain_metadata, save_backbone

#: Whether this machine can run the pinned kernels: an x86-64 CPU with AVX2 (AVX-512 ones have it),
#: and torch built with MKL.
PINS_HOLD = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") and torch.backends.mkl.is_available()


def kernels_in_use() -> tuple[str, bool]:
    """The kernels this process runs on, and whether they are the pinned ones."""
    capability = torch.backends.cpu.get_cpu_capability()
    mkl = torch.backends.mkl.is_available()
    blas = f"MKL (MKL_CBWR={os.environ.get('MKL_CBWR', 'unset')})" if mkl else "no MKL"
    description = f"torch {capability} kernels, {blas}, oneDNN off, {torch.get_num_threads()} thread(s)"
    pinned = capability == "AVX2" and mkl and os.environ.get("MKL_CBWR") == "COMPATIBLE"
    return description, pinned


def main(config_json: str, weights: str) -> None:
    torch.backends.mkldnn.enabled = False
    torch.set_num_threads(PRETRAIN_THREADS)
    config = config_from_json(config_json)

    def report(epoch: int, loss: float, accuracy: float) -> None:
        print(json.dumps({"epoch": epoch, "loss": loss, "accuracy": accuracy}), flush=True)

    data = load_source(config.data)
    model, metrics = pretrain_here(config, data, report)
    save_backbone(model, Path(weights), pretrain_metadata(config))
    kernels, pinned = kernels_in_use()
    done = {"metrics": metrics, "kernels": kernels, "pinned": pinned, "num_classes": len(data.class_names)}
    print(json.dumps(done), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
