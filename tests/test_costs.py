"""Issue 11: Table 5's measured costs against a hand computation on a small ViT, exact integers."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, tiny_vit

from scenarios.bottleneck import count_bottleneck_parameters
from scenarios.costs import SHARED_TASKS, count_flops, meta_backbone, regime_costs

L, D, PATCH, IMG = TINY["depth"], TINY["embed_dim"], TINY["patch_size"], TINY["img_size"]
N = (IMG // PATCH) ** 2 + 1  # patches + class token
C, R = 4, 3  # head classes, bottleneck
SIZES = (1, 5)


def block_flops(tokens: int, keys: int) -> int:
    """One block for `tokens` queries over `keys` keys: qkv, scores and weighted sum, proj, MLP (4D)."""
    return 2 * tokens * D * 3 * D + 4 * tokens * keys * D + 2 * tokens * D * D + 2 * 2 * tokens * D * 4 * D


FROZEN = 2 * (IMG // PATCH) ** 2 * (3 * PATCH * PATCH) * D + L * block_flops(N, N)
HEAD = 2 * D * C


def expected_flops() -> dict[str, tuple[int, int | None]]:
    """Regime -> (FLOPs per image for one task, extra per task when SHARED_TASKS share a reuse pass)."""
    T = SHARED_TASKS

    def reuse(m: int) -> tuple[int, int]:
        one = FROZEN + L * block_flops(1, N + 1 + m) + HEAD
        shared = L * T * block_flops(1, N + T + T * m) // T + HEAD  # every task's query sees all T tasks' keys
        return one, shared

    out: dict[str, tuple[int, int | None]] = {
        "Frozen backbone (reference)": (FROZEN, None),
        "Full fine-tuning": (FROZEN + HEAD, None),
        "Head only": reuse(0),
        "Class token (head + class)": reuse(0),
        f"adapter-{R}": (FROZEN + L * 2 * N * 4 * D * R + HEAD, None),
        f"memory-5+adapter-{R}": (FROZEN + L * 4 * N * 5 * D + L * 2 * N * 4 * D * R + HEAD, None),
    }
    for m in SIZES:
        out[f"memory-full-{m}"] = (FROZEN + L * 4 * N * m * D + HEAD, None)
        out[f"memory-{m}"] = reuse(m)
    return out


def expected_params(finetuned: torch.nn.Module) -> dict[str, int]:
    head = (D + 1) * C
    out = {
        "Frozen backbone (reference)": 0,
        "Full fine-tuning": sum(p.numel() for p in finetuned.parameters()),
        "Head only": head,
        "Class token (head + class)": D + head,
        f"adapter-{R}": count_bottleneck_parameters(L, D, R) + D + head,
        f"memory-5+adapter-{R}": count_bottleneck_parameters(L, D, R) + L * 5 * D + D + head,
    }
    for m in SIZES:
        out[f"memory-full-{m}"] = out[f"memory-{m}"] = L * m * D + D + head
    return out


def _backbones(device: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    name = "vit_tiny_patch16_224"
    if device == "meta":
        return meta_backbone(name, **TINY), meta_backbone(name, C, **TINY)
    return tiny_vit(name, num_classes=0), tiny_vit(name, num_classes=C)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_every_regime_against_the_hand_computation(device) -> None:
    """CPU tensors (PyTorch's CPU attention kernel, which FlopCounterMode needs our formula for) and
    the meta device (what Table 5 runs on) give the same exact integers as the hand computation."""
    backbone, finetuned = _backbones(device)
    rows = {r.regime: r for r in regime_costs(backbone, "tiny", finetuned, C, SIZES, R)}
    flops, params = expected_flops(), expected_params(finetuned)
    assert set(rows) == set(flops)
    for regime, row in rows.items():
        one, shared = flops[regime]
        assert (row.flops, row.extra_flops, row.params) == (one, one - FROZEN, params[regime]), regime
        assert row.shared_extra_flops == shared, regime
    assert {r.regime for r in rows.values() if r.passes == "1"} == {
        "Frozen backbone (reference)",
        "Head only",
        "Class token (head + class)",
        *(f"memory-{m}" for m in SIZES),
    }


def test_attention_on_the_cpu_is_counted() -> None:
    q = torch.randn(2, 3, 7, 16)
    k = torch.randn(2, 3, 11, 16)
    flops = count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, k))
    assert flops == 2 * 2 * 3 * (7 * 11 * 16 + 7 * 11 * 16)


def test_results_document_has_tables_4_and_5(tmp_path) -> None:
    """`cmem scenario results --render-only` renders Table 4 from the runs and Table 5 from the kept costs."""
    import json
    from dataclasses import asdict, replace

    from test_scenarios import _fake_result

    from scenarios.results import ALL_RESULTS, render_results
    from scenarios.runner import Budget

    runs = []
    for protocol, labels in (
        ("task", ("memory-full-5", "memory-5", "adapter-5", "memory-5+adapter-5")),
        ("class", ("memory-5", "adapter-5", "memory-5+adapter-5")),
    ):
        for i, label in enumerate(labels):
            run = _fake_result(label, protocol, 0.9 + i / 100)
            run.metrics["backbone_passes_to_serve_all"] = 5.0 + (protocol == "class") if "adapter" in label else 1.0
            run.config["budget"].update(lr_adapter=0.001 * (i + 1), lr_head=0.01)  # each column its own rate
            runs.append(run)
    runs.append(_fake_result("adapter-5", "task", 0.8, scenario="shifted-digits"))
    runs[-1].config["budget"].update(lr_adapter=0.03, lr_head=0.3)
    backbone, finetuned = _backbones("meta")
    rows = regime_costs(backbone, "tiny", finetuned, C, SIZES, R)
    rows = [replace(r, regime=r.regime.replace(f"adapter-{R}", "adapter-5")) for r in rows]
    costs = {
        "head_classes": C,
        "shared_tasks": SHARED_TASKS,
        "bottleneck": 5,
        "torch": torch.__version__,
        "architectures": {
            "ViT-B/16": {
                "architecture": "tiny",
                "tokens": N,
                "depth": L,
                "dim": D,
                "img_size": [IMG] * 2,
                "rows": [asdict(r) for r in rows],
            }
        },
    }
    facts = {
        "architecture": "vit",
        "config": {"img_size": 32, "patch_size": 4, "depth": 4, "embed_dim": 192, "num_heads": 3},
        "parameters": 1e6,
        "sha256": "ab" * 32,
    }
    kept = {
        "facts": facts,
        "budget": vars(Budget()),
        "seeds": [0],
        "quick": False,
        "command": "cmem scenario results",
        "elapsed_s": 60.0,
        "generated_at": "2026-01-01T00:00:00+00:00",
        "results": [r.to_dict() for r in runs],
        "costs": costs,
    }
    (tmp_path / ALL_RESULTS).write_text(json.dumps(kept))
    doc = render_results(tmp_path)
    assert "## Table 4 layout" in doc and "## Table 5 layout" in doc
    assert "| paper, iNaturalist, accuracy (%) | 50.1 | – | 49.9 | 50.3 |" in doc
    assert "| ours, split-digits, task-incremental, accuracy (%) | 90.0 | 91.0 | 92.0 | 93.0 |" in doc
    assert "| ours, split-digits, class-incremental, accuracy (%) | – | 90.0 | 91.0 | 92.0 |" in doc
    assert "| ours, split-digits, learning rates: tokens and adapters / head | 0.001 / 0.01 | 0.002 / 0.01 |" in doc
    assert "| ours, shifted-digits, learning rates: tokens and adapters / head | – | – | 0.03 / 0.3 | – |" in doc
    assert (
        "| ours, backbone passes per image to serve all 5 tasks | task: 1 | task: 1, class: 1 | task: 5, class: 6 |"
        in doc
    )
    memory_5 = L * 5 * D + D
    assert f"{memory_5:,} | {memory_5:,} | {count_bottleneck_parameters(L, D, R) + D:,} |" in doc
    assert f"| memory-full-5 | {L * 5 * D + D + (D + 1) * C:,} | " in doc
    assert "| adapter-5 | " in doc and "T (class-IL: T + 1) |" in doc
