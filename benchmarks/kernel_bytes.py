"""Which kernels give other bytes on this CPU? Fingerprints to compare across machines.

The demo recipe's bytes (`cmem backbone pretrain`) must not depend on the CPU. Run this on two
machines and compare the lines: a kernel whose hash differs between two CPUs under the same
`MKL_CBWR` is one that makes the recipe's bytes differ.

For each `MKL_CBWR` branch, in a fresh process with torch's AVX2 kernels, oneDNN off and one thread
(the recipe's pins but the branch), the sha256 prefixes of:
  * `mm`: one float32 GEMM (MKL's SGEMM: every linear layer and the patch convolution);
  * `sqrt`, `exp`: torch routes these float32 unary ops to MKL's vector math (VML): AdamW's
    `exp_avg_sq.sqrt()` runs every step;
  * `gelu`, `softmax`: torch's own vectorised kernels, for contrast;
  * `init`: the recipe's ViT as created, before any step (timm's `trunc_normal_` calls `erfinv_`,
    which torch routes to VML too);
and `sqrt_exact`: how many of the `sqrt` values differ from the correctly rounded square root.
Last, the pinned pretraining of a small ViT (1 epoch of `builtin:digits`) through
`pretrain_backbone`, as tests/test_backbone.py runs it; and the same pretraining, pinned likewise,
with the candidate fix that keeps VML out of the recipe (`VML_FREE`: timm's `trunc_normal_` init
redone with `normal_().clamp_()`, AdamW's square root taken as `rsqrt().reciprocal()`). If that
last fingerprint agrees on an Intel and an AMD machine, the fix holds.

    python benchmarks/kernel_bytes.py [--json] [--branches COMPATIBLE AVX2 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict
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
from continual_mem.pretrain import PretrainConfig
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
print(json.dumps({
    "mm": h(a @ b), "sqrt": h(sqrt), "exp": h((x / 10).exp()),
    "gelu": h(F.gelu(x - 5)), "softmax": h(torch.softmax(x.view(1024, 1024), -1)), "init": fingerprint(vit)[:12],
    "sqrt_exact": f"{int((sqrt != x.double().sqrt().float()).sum())} of {x.numel()} off",
}))
"""

#: The candidate fix, patched into `pretrain.pretrain_here` in a pinned child
#: (argv: repository root, the config as JSON).
VML_FREE = """
import sys, torch
sys.path.insert(0, sys.argv[1])
from continual_mem import pretrain
from continual_mem.backbone import fingerprint
from continual_mem.data import load_source

def create_without_vml(*args, **kwargs):
    model = create_backbone(*args, **kwargs)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, 0.02).clamp_(-2.0, 2.0)
                if module.bias is not None:
                    module.bias.zero_()
        model.pos_embed.normal_(0.0, 0.02).clamp_(-2.0, 2.0)
    return model

class AdamWWithoutVML(torch.optim.AdamW):
    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in (p for p in group["params"] if p.grad is not None):
                state = self.state[p]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                state["step"] += 1
                p.mul_(1 - group["lr"] * group["weight_decay"])
                state["exp_avg"].lerp_(p.grad, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                root = state["exp_avg_sq"].rsqrt().reciprocal() / (1 - beta2 ** state["step"]) ** 0.5
                p.addcdiv_(state["exp_avg"], root.add_(group["eps"]), value=-group["lr"] / (1 - beta1 ** state["step"]))

create_backbone, pretrain.create_backbone = pretrain.create_backbone, create_without_vml
pretrain.torch.optim.AdamW = AdamWWithoutVML
torch.backends.mkldnn.enabled = False
torch.set_num_threads(1)
config = pretrain.config_from_json(sys.argv[2])
model, _ = pretrain.pretrain_here(config, load_source(config.data))
print(fingerprint(model)[:12])
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


def vml_free_small_pretraining() -> str:
    command = [sys.executable, "-c", VML_FREE, str(ROOT), json.dumps(asdict(SMALL))]
    out = subprocess.run(command, env={**os.environ, **PINNED_KERNELS}, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--branches", nargs="+", default=list(BRANCHES))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = {
        "cpu": cpu_model(),
        "branches": {branch: probe(branch) for branch in args.branches},
        "small_pinned_pretraining": small_pretraining(),
        "small_pinned_pretraining_vml_free": vml_free_small_pretraining(),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"cpu: {report['cpu']}")
    for branch, hashes in report["branches"].items():
        print(f"MKL_CBWR={branch:<11} " + "  ".join(f"{k} {v}" for k, v in hashes.items()))
    print(f"small pinned pretraining: {report['small_pinned_pretraining']}")
    print(f"small pinned pretraining, VML-free candidate: {report['small_pinned_pretraining_vml_free']}")


if __name__ == "__main__":
    main()
