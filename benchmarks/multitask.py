"""How much does serving T tasks cost? One reuse pass vs separate passes vs plain timm (issue 2).

CPU timings with random weights (timing does not depend on them), median of repeats:
  * reuse pass serving T tasks (m memory tokens each), T in --tasks: what `cmem predict` runs,
    task logits only (`backbone_outputs=False`: the frozen model's own head is not computed);
  * T separate single-task passes: the single-task pass measured, times T (separate passes are
    independent and cost the same each; 4 of them are also timed back to back as a check);
  * T passes of plain timm: plain forward times T;
  * a full-mode forward (m tokens) vs plain timm;
  * one reuse-mode training step vs one full-mode training step (forward, backward, AdamW).

    python benchmarks/multitask.py [--models vit_small_patch16_224 vit_base_patch16_224] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from continual_mem.adapter import BackboneIdentity
from continual_mem.model import MemoryViT


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each callable, timed round-robin so that load on the machine hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def build(model_name: str, num_tasks: int, memory: int, mode: str) -> MemoryViT:
    torch.manual_seed(0)
    vit = timm.create_model(model_name, num_classes=10).eval()
    model = MemoryViT(vit, identity=BackboneIdentity(model_name, "random-weights"))
    for t in range(num_tasks):
        model.add_task(f"t{t}", 10, num_memory=memory, mode=mode)
    return model.eval()


def train_step(model: MemoryViT, task: str, x: torch.Tensor) -> Callable[[], None]:
    """One optimizer step on the task's parameters (forward, backward, AdamW)."""
    optimizer = torch.optim.AdamW(model.task_parameters(task), lr=1e-3)
    y = torch.arange(x.shape[0]) % 10

    def step() -> None:
        model.train()
        loss = F.cross_entropy(model(x, task), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.eval()

    return step


def bench_model(name: str, tasks: list[int], batch: int, memory: int, repeats: int) -> dict:
    x = torch.randn(batch, 3, 224, 224)
    reuse = build(name, max(tasks), memory, "reuse")
    full = build(name, 1, memory, "full")
    names = [f"t{i}" for i in range(max(tasks))]
    with torch.inference_mode():
        fns: dict[str, Callable[[], object]] = {
            "plain": lambda: reuse.backbone(x),
            "full": lambda: full.forward_full(x, "t0"),
        }
        for t in tasks:
            fns[f"reuse{t}"] = lambda t=t: reuse.forward_reuse(x, names[:t], backbone_outputs=False)
        fns["separate4"] = lambda: [reuse(x, n) for n in names[:4]]
        forward = interleaved_medians(fns, repeats)
    steps = interleaved_medians({"reuse": train_step(reuse, "t0", x), "full": train_step(full, "t0", x)}, repeats)
    plain, single = forward["plain"], forward["reuse1"]
    result: dict = {"model": name, "batch": batch, "memory": memory, "plain_s": plain, "full_s": forward["full"]}
    result["reuse"] = {
        t: {"one_pass_s": forward[f"reuse{t}"], "separate_passes_s": single * t, "plain_passes_s": plain * t}
        for t in tasks
    }
    result["separate_measured"] = {"tasks": 4, "seconds": forward["separate4"]}
    result["reuse_step_s"], result["full_step_s"] = steps["reuse"], steps["full"]
    one = result["reuse"]
    result["ratios"] = {
        **{f"reuse_T{t}_over_T1": one[t]["one_pass_s"] / single for t in tasks},
        "reuse_T1_over_plain": single / plain,
        "full_m5_over_plain": forward["full"] / plain,
        "reuse_step_over_full_step": steps["reuse"] / steps["full"],
        **{f"separate_over_one_pass_T{t}": one[t]["separate_passes_s"] / one[t]["one_pass_s"] for t in tasks},
    }
    return result


TARGETS = {
    "reuse_T16_over_T1": 1.10,
    "reuse_T32_over_T1": 1.20,
    "reuse_T1_over_plain": 1.05,
    "full_m5_over_plain": 1.05,
    "reuse_step_over_full_step": 0.5,
}


def print_table(results: list[dict]) -> None:
    for r in results:
        print(f"\n{r['model']}  batch {r['batch']}  m={r['memory']}  plain timm pass {r['plain_s']:.3f} s")
        print(f"{'T':>3} | {'one reuse pass':>15} | {'T single-task passes':>21} | {'T plain passes':>15} | speed-up")
        for t, row in r["reuse"].items():
            print(
                f"{t:>3} | {row['one_pass_s']:>13.3f} s | {row['separate_passes_s']:>19.3f} s | "
                f"{row['plain_passes_s']:>13.3f} s | {row['separate_passes_s'] / row['one_pass_s']:>6.1f}x"
            )
        if "separate_measured" in r:
            m = r["separate_measured"]
            print(f"    ({m['tasks']} single-task passes timed back to back: {m['seconds']:.3f} s)")
        print(
            f"full-mode forward {r['full_s']:.3f} s; train step reuse {r['reuse_step_s']:.3f} s vs full {r['full_step_s']:.3f} s"
        )
        for key, limit in TARGETS.items():
            value = r["ratios"].get(key)
            if value is not None:
                print(f"  {key:<28} {value:6.3f}  (target <= {limit})  {'ok' if value <= limit else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vit_small_patch16_224", "vit_base_patch16_224"])
    parser.add_argument("--tasks", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--memory", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if 1 not in args.tasks or max(args.tasks) < 4:
        parser.error("--tasks must include 1 (the ratios are relative to it) and reach at least 4")
    torch.set_num_threads(args.threads)
    results = [bench_model(m, sorted(args.tasks), args.batch, args.memory, args.repeats) for m in args.models]
    if args.json:
        summary = {"torch": torch.__version__, "threads": args.threads, "results": results}
        for key in TARGETS:  # headline keys: the worst model's value
            values = [r["ratios"][key] for r in results if key in r["ratios"]]
            if values:
                summary[key] = max(values)
        print(json.dumps(summary, indent=2))
    else:
        print_table(results)


if __name__ == "__main__":
    main()
