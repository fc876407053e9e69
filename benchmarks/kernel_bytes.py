"""Which kernels give other bytes on this CPU? Fingerprints to compare across machines.

The demo recipe's bytes (`cmem backbone pretrain`) must not depend on the CPU. Run this on two
machines and compare the lines: a kernel whose hash differs between two CPUs under the same
`MKL_CBWR` is one the recipe must keep out of.

For each `MKL_CBWR` branch, in a fresh process with torch's AVX2 kernels, oneDNN off and one thread
(the recipe's pins but the branch), the sha256 prefixes of:
  * `mm`: one float32 GEMM (MKL's SGEMM: every linear layer and the patch convolution);
  * `sqrt`, `exp`: torch routes these float32 unary ops to MKL's vector math (VML); `root`: the
    recipe's AdamW's square root, `rsqrt().reciprocal()`, on torch's own kernels;
  * `gelu`, `softmax`: torch's own vectorised kernels;
  * `timm_init`: the recipe's ViT as timm creates it (`trunc_normal_` calls `erfinv_`, VML too),
    and `init`: as the recipe starts it (`init_without_vector_math`);
and `sqrt_exact`: how many of the `sqrt` values differ from the correctly rounded square root.
Last, the recipe's generated glyphs, and the pinned pretraining of a small ViT (1 epoch of
`builtin:digits`) through `pretrain_backbone`, as tests/test_backbone.py runs it: an Intel Xeon
and an AMD EPYC both gave `d5f542d2c93d` (2026-11-27), VML's `sqrt` and `timm_init` differing.

    python benchmarks/kernel_bytes.py [--json] [--branches COMPATIBLE AVX2 ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from continual_mem.pretrain import PINNED_KERNELS, PretrainConfig  # noqa: E402

BRANCHES = ("COMPATIBLE", "SSE4_2", "AVX2", "AVX512", "AUTO")
#: The small pretraining of tests/test_backbone.py (`SMALL_PRETRAIN`): 1 epoch of digits, about 15 s.
SMALL = PretrainConfig(
    model_kwargs=(("img_size", 16), ("patch_size", 4), ("depth", 2), ("embed_dim", 64), ("num_heads", 2)),
    data="builtin:digits",
    epochs=1,
)

PROBE = """
import hashlib, json, sys, torch
import torch.nn.functional as F
sys.path.insert(0, sys.argv[1])
from continual_mem.backbone import create_backbone, fingerprint
from continual_mem.data import GLYPH_CLASSES
from continual_mem.pretrain import PretrainConfig, init_without_vector_math
torch.backends.mkldnn.enabled = False
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
a, b = torch.randn(257, 769, generator=g), torch.randn(769, 193, generator=g)
x = torch.rand(1 << 20, generator=g) * 10 + 1e-6
h = lambda t: hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:12]
sqrt = x.sqrt()
recipe = PretrainConfig()
torch.manual_seed(recipe.seed)
vit = create_backbone(recipe.model_name, num_classes=GLYPH_CLASSES, **dict(recipe.model_kwargs))
timm_init = fingerprint(vit)[:12]
init_without_vector_math(vit)
print(json.dumps({
    "mm": h(a @ b), "sqrt": h(sqrt), "exp": h((x / 10).exp()), "root": h(x.rsqrt().reciprocal()),
    "gelu": h(F.gelu(x - 5)), "softmax": h(torch.softmax(x.view(1024, 1024), -1)),
    "timm_init": timm_init, "init": fingerprint(vit)[:12],
    "sqrt_exact": f"{int((sqrt != x.double().sqrt().float()).sum())} of {x.numel()} off",
}))
"""


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def probe(branch: str) -> dict[str, str]:
    env = {**os.environ, **PINNED_KERNELS, "MKL_CBWR": branch}
    out = subprocess.run([sys.executable, "-c", PROBE, str(ROOT)], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def small_pretraining() -> str:
    from continual_mem.backbone import fingerprint
    from continual_mem.pretrain import pretrain_backbone

    model, run = pretrain_backbone(SMALL)
    return f"{fingerprint(model)[:12]} ({run.kernels})"


def glyph_bytes() -> str:
    """The recipe's glyphs, raw float32 bytes (`LabeledImages.fingerprint` rounds them to 8 bits)."""
    from continual_mem.data import load_source
    from continual_mem.pretrain import DEMO_DATA

    return hashlib.sha256(load_source(DEMO_DATA).images.numpy().tobytes()).hexdigest()[:12]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--branches", nargs="+", default=list(BRANCHES))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = {
        "cpu": cpu_model(),
        "branches": {branch: probe(branch) for branch in args.branches},
        "glyphs": glyph_bytes(),
        "small_pinned_pretraining": small_pretraining(),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"cpu: {report['cpu']}")
    for branch, hashes in report["branches"].items():
        print(f"MKL_CBWR={branch:<11} " + "  ".join(f"{k} {v}" for k, v in hashes.items()))
    print(f"glyphs: {report['glyphs']}")
    print(f"small pinned pretraining: {report['small_pinned_pretraining']}")


if __name__ == "__main__":
    main()
