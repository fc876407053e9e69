"""The core's promises (issue 2): exactness against timm, task independence, save/load, training."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHITECTURES, tiny_vit

from continual_mem.adapter import TaskAdapter, count_task_parameters
from continual_mem.errors import (
    AdapterFormatError,
    BackboneMismatchError,
    ContinualMemError,
    UnknownTaskError,
    UnsupportedBackboneError,
)
from continual_mem.model import MemoryViT
from continual_mem.train import TrainConfig, fit_task


def images(n: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def model_with_tasks(name: str = "vit_tiny_patch16_224", **tasks: tuple[int, int]) -> MemoryViT:
    """tasks: name -> (num_classes, num_memory), all in reuse mode."""
    model = MemoryViT(tiny_vit(name))
    for task, (classes, memory) in tasks.items():
        model.add_task(task, classes, num_memory=memory)
    return model


def randomize(adapter: TaskAdapter, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


# --------------------------------------------------------------------------- 1. exact vs timm
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_full_mode_with_no_memory_reproduces_timm(arch: str) -> None:
    vit = tiny_vit(arch)
    x = images()
    expected = vit(x)
    model = MemoryViT(vit)
    model.add_task("same", vit.num_classes, num_memory=0, mode="full")
    model.tasks["same"].head.load_state_dict(vit.head.state_dict())
    got = model.forward_full(x, "same")
    assert (got - expected).abs().max().item() <= 1e-6


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_reuse_pass_backbone_output_equals_timm_exactly(arch: str) -> None:
    vit = tiny_vit(arch)
    x = images()
    expected_logits = vit(x)
    expected_features = vit.forward_head(vit.forward_features(x), pre_logits=True)
    model = MemoryViT(vit)
    model.add_task("a", 3, num_memory=4)
    out = model.forward_reuse(x)
    assert torch.equal(out.backbone_logits, expected_logits)
    assert torch.equal(out.features, expected_features)


def test_memory_changes_the_output() -> None:
    model = model_with_tasks(a=(3, 4))
    randomize(model.tasks["a"], 0)
    x = images()
    before = model.forward_reuse(x).logits["a"]
    with torch.no_grad():  # in place (a LayerNorm would erase a constant shift): the K/V cache must notice
        model.tasks["a"].memory.mul_(torch.linspace(-2.0, 2.0, model.dim))
    after = model.forward_reuse(x).logits["a"]
    assert (before - after).abs().max().item() > 1e-3


# --------------------------------------------------------------------------- 2. reuse independence
def test_multi_task_pass_equals_each_task_alone() -> None:
    model = model_with_tasks(a=(3, 5), b=(4, 2), c=(2, 7), d=(5, 1))
    for i, adapter in enumerate(model.tasks.values()):
        randomize(adapter, i)
    x = images(8)
    together = model.forward_reuse(x)
    for name in model.task_names:
        alone = model.forward_reuse(x, [name]).logits[name]
        assert (together.logits[name] - alone).abs().max().item() <= 1e-5


def test_adding_removing_retraining_b_leaves_a_and_backbone_alone() -> None:
    model = model_with_tasks(a=(3, 5))
    randomize(model.tasks["a"], 0)
    x = images(8)
    base = model.forward_reuse(x)

    def check(out) -> None:
        assert torch.equal(out.backbone_logits, base.backbone_logits)
        assert (out.logits["a"] - base.logits["a"]).abs().max().item() <= 1e-6
        assert torch.equal(out.logits["a"].argmax(-1), base.logits["a"].argmax(-1))

    model.add_task("b", 4, num_memory=3)
    randomize(model.tasks["b"], 1)
    check(model.forward_reuse(x))
    randomize(model.tasks["b"], 2)  # "retrained"
    check(model.forward_reuse(x))
    model.remove_task("b")
    after_remove = model.forward_reuse(x)
    check(after_remove)
    assert torch.equal(after_remove.logits["a"], base.logits["a"])  # same set, same bits


def test_same_tasks_give_bit_identical_outputs() -> None:
    model = model_with_tasks(a=(3, 5), b=(4, 2))
    x = images(8)
    first, second = model.forward_reuse(x), model.forward_reuse(x)
    for name in ("a", "b"):
        assert torch.equal(first.logits[name], second.logits[name])


def test_reuse_task_differs_from_plain_class_token_by_design() -> None:
    """A fresh reuse task also sees the original class token's key: not timm's output."""
    vit = tiny_vit()
    model = MemoryViT(vit)
    model.add_task("a", vit.num_classes, num_memory=0)
    model.tasks["a"].head.load_state_dict(vit.head.state_dict())
    x = images()
    assert (model.forward_reuse(x).logits["a"] - vit(x)).abs().max().item() > 1e-4


def test_extension_sees_earlier_tasks_but_never_changes_them() -> None:
    model = model_with_tasks(a=(3, 4))
    randomize(model.tasks["a"], 0)
    x = images()
    a_before = model.forward_reuse(x).logits["a"]
    model.add_task("b", 2, num_memory=3, extension=True)
    model.add_task("c", 2, num_memory=3)
    randomize(model.tasks["b"], 5)
    with torch.no_grad():
        for name, p in model.tasks["b"].named_parameters():
            model.tasks["c"].get_parameter(name).copy_(p)
    out = model.forward_reuse(x)
    assert model.tasks["b"].config.extends == ("a",)
    assert (out.logits["a"] - a_before).abs().max().item() <= 1e-6
    assert (out.logits["b"] - out.logits["c"]).abs().max().item() > 1e-4  # b also sees a
    only_b = model.forward_reuse(x, ["b"]).logits["b"]  # pulls a in by itself
    assert (only_b - out.logits["b"]).abs().max().item() <= 1e-5
    with pytest.raises(ContinualMemError, match="extend"):
        model.remove_task("a")


# --------------------------------------------------------------------------- 3. full mixed batch
def test_full_mode_mixed_batch_equals_per_sample_runs() -> None:
    model = MemoryViT(tiny_vit())
    for i, (name, classes, memory) in enumerate([("a", 3, 5), ("b", 4, 5), ("c", 2, 2)]):
        model.add_task(name, classes, num_memory=memory, mode="full")
        randomize(model.tasks[name], i)
    x = images(7)
    plan = ["a", "b", "c", "a", "c", "b", "b"]
    mixed = model.forward_full(x, plan)
    assert mixed.shape == (7, 4)
    for i, task in enumerate(plan):
        alone = model.forward_full(x[i : i + 1], task)[0]
        assert (mixed[i, : alone.shape[0]] - alone).abs().max().item() <= 1e-5
        assert torch.isinf(mixed[i, alone.shape[0] :]).all()


def test_modes_are_not_mixed_up() -> None:
    model = model_with_tasks(a=(3, 2))
    model.add_task("f", 3, num_memory=2, mode="full")
    x = images(2)
    with pytest.raises(ContinualMemError, match="reuse mode"):
        model.forward_full(x, "a")
    with pytest.raises(ContinualMemError, match="full mode"):
        model.forward_reuse(x, ["f"])
    with pytest.raises(UnknownTaskError, match="'nope' is not loaded"):
        model.forward_reuse(x, ["nope"])
    out = model.forward_tasks(x)
    assert out.backbone_passes == 2 and set(out.logits) == {"a", "f"}


# --------------------------------------------------------------------------- 4. training
@pytest.mark.parametrize("mode", ["reuse", "full"])
def test_training_changes_only_that_task(mode: str) -> None:
    model = model_with_tasks(a=(3, 2))
    model.add_task("b", 3, num_memory=2, mode=mode)
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    tasks_before = {k: v.clone() for k, v in model.tasks.state_dict().items()}
    x, y = images(16), torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(0))
    fit_task(model, "b", x, y, TrainConfig(steps=3, batch_size=8, lr=1e-2))
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, backbone_before[k]), k
    for k, v in model.tasks.state_dict().items():
        changed = not torch.equal(v, tasks_before[k])
        assert changed == k.startswith("b."), k
    assert all(p.grad is None for p in model.backbone.parameters())


def test_tokens_and_head_learn_at_their_own_rates() -> None:
    model = model_with_tasks(a=(3, 2))
    adapter = model.adapter("a")
    groups = adapter.param_groups(1e-3, 1e-2)
    assert [g["lr"] for g in groups] == [1e-3, 1e-2]
    assert groups[0]["params"] == [adapter.memory, adapter.cls_token]
    assert groups[1]["params"] == [adapter.head.weight, adapter.head.bias]
    adapter.cls_token.requires_grad_(False)  # head + memory: frozen tensors are left out
    assert [len(g["params"]) for g in adapter.param_groups(1e-3, 1e-2)] == [1, 2]
    x, y = images(8), torch.randint(0, 3, (8,), generator=torch.Generator().manual_seed(0))
    adapter.cls_token.requires_grad_(True)
    lrs: list[list[float]] = []
    original_step = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        lrs.append([g["lr"] for g in self.param_groups])
        return original_step(self, *args, **kwargs)

    torch.optim.AdamW.step = step
    try:
        fit_task(model, "a", x, y, TrainConfig(steps=2, batch_size=8, lr=1e-3, head_lr=1e-2))
    finally:
        torch.optim.AdamW.step = original_step
    assert lrs == [[1e-3, 1e-2], [5e-4, 5e-3]]  # one cosine over both rates
    with pytest.raises(ValueError, match="learning rates must be > 0"):
        TrainConfig(head_lr=0.0)


def test_reuse_training_builds_no_graph_through_the_backbone() -> None:
    model = model_with_tasks(a=(3, 2))
    model.train()
    out = model.forward_reuse(images(2))
    assert out.backbone_logits.grad_fn is None and out.features.grad_fn is None
    assert out.logits["a"].grad_fn is not None
    assert not model.backbone.training


def test_training_is_deterministic() -> None:
    results = []
    for _ in range(2):
        model = model_with_tasks(a=(3, 2))
        x, y = images(16), torch.arange(16) % 3
        fit_task(model, "a", x, y, TrainConfig(steps=2, batch_size=8, seed=3))
        results.append(model.tasks["a"].state_dict())
    for k in results[0]:
        assert torch.equal(results[0][k], results[1][k])


# --------------------------------------------------------------------------- 5. fused vs manual
def set_fused(model: MemoryViT, fused: bool) -> None:
    for blk in model.backbone.blocks:
        blk.attn.fused_attn = fused


def test_fused_and_manual_attention_agree() -> None:
    model = model_with_tasks("vit_small_patch14_reg4_dinov2", a=(3, 5), b=(4, 1))
    model.add_task("f", 3, num_memory=3, mode="full")
    for i, adapter in enumerate(model.tasks.values()):
        randomize(adapter, i)
    x = images()
    set_fused(model, True)
    fused = model.forward_tasks(x).logits
    fused_bb = model.forward_reuse(x).backbone_logits
    set_fused(model, False)
    manual = model.forward_tasks(x).logits
    assert torch.equal(model.forward_reuse(x).backbone_logits, model.backbone(x))  # manual path exact too
    assert (model.forward_reuse(x).backbone_logits - fused_bb).abs().max().item() <= 1e-5
    for name in fused:
        assert (fused[name] - manual[name]).abs().max().item() <= 1e-5


# --------------------------------------------------------------------------- 6. parameter count
def test_trainable_parameters_per_task_vit_b16() -> None:
    import timm

    vit = timm.create_model("vit_base_patch16_224", num_classes=10)
    model = MemoryViT(vit)
    adapter = model.add_task("t", 100, num_memory=5)
    assert adapter.memory.numel() == 46_080  # the paper's figure for ViT-B/16, m=5
    assert adapter.num_trainable() == 12 * 5 * 768 + 768 + 769 * 100
    assert adapter.num_trainable() == count_task_parameters(12, 5, 768, 100)


# --------------------------------------------------------------------------- 7. save / load
def test_save_load_round_trip(tmp_path) -> None:
    model = model_with_tasks(a=(3, 5))
    model.add_task("f", 4, num_memory=2, mode="full", class_names=["w", "x", "y", "z"])
    randomize(model.tasks["a"], 0)
    randomize(model.tasks["f"], 1)
    x = images()
    expected = model.forward_tasks(x).logits
    model.save_task("a", tmp_path / "a.safetensors")
    model.save_task("f", tmp_path / "f.safetensors")
    fresh = MemoryViT(tiny_vit())
    fresh.load_task("a", tmp_path / "a.safetensors")
    loaded = fresh.load_task("f", tmp_path / "f.safetensors")
    assert loaded.config.class_names == ("w", "x", "y", "z") and loaded.mode == "full"
    got = fresh.forward_tasks(x).logits
    for name in expected:
        assert torch.equal(got[name], expected[name])


def test_loading_onto_another_backbone_is_refused(tmp_path) -> None:
    model = model_with_tasks(a=(3, 5))
    path = model.save_task("a", tmp_path / "a.safetensors")
    other = MemoryViT(tiny_vit(seed=7))
    with pytest.raises(BackboneMismatchError, match="trained on backbone"):
        other.load_task("a", path)
    deeper = MemoryViT(tiny_vit(depth=3))
    with pytest.raises(BackboneMismatchError):
        deeper.load_task("a", path)


def test_class_ids_are_saved_and_files_without_them_still_load(tmp_path) -> None:
    """A head's benchmark class ids (issue 13) travel in the file; a file written before they
    existed (no `class_ids` in its config) loads as before, and such files are still written so."""
    import json

    from safetensors import safe_open

    model = model_with_tasks(plain=(3, 2))
    model.add_task("global", 2, num_memory=2, class_ids=[4, 1])
    assert TaskAdapter.load(model.save_task("global", tmp_path / "g.safetensors")).config.class_ids == (4, 1)
    plain = model.save_task("plain", tmp_path / "p.safetensors")
    with safe_open(str(plain), framework="pt") as f:
        assert "class_ids" not in json.loads(f.metadata()["config"])
    assert TaskAdapter.load(plain).config.class_ids == ()
    with pytest.raises(ValueError, match=r"class_ids must be 2 distinct ids >= 0, got \[3, 3\]"):
        model.add_task("bad", 2, class_ids=[3, 3])


def test_truncated_tampered_and_misshapen_files_are_refused(tmp_path) -> None:
    import json

    from safetensors.torch import load_file, save_file

    model = model_with_tasks(a=(3, 5))
    path = model.save_task("a", tmp_path / "a.safetensors")
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) - 100])
    with pytest.raises(AdapterFormatError, match="not a readable safetensors file"):
        model.load_task("t", truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(AdapterFormatError):
        model.load_task("g", garbage)

    tensors = load_file(str(path))
    adapter = model.tasks["a"]
    meta = adapter.metadata()
    wrong = tmp_path / "wrong.safetensors"
    save_file({**tensors, "memory": tensors["memory"][:, :2].contiguous()}, str(wrong), metadata=meta)
    with pytest.raises(AdapterFormatError, match="'memory' has shape"):
        model.load_task("w", wrong)
    meta_bad = {**meta, "config": json.dumps({"num_classes": 3, "num_memory": 5, "mode": "sideways"})}
    save_file(tensors, str(wrong), metadata=meta_bad)
    with pytest.raises(AdapterFormatError, match="invalid adapter metadata"):
        model.load_task("w", wrong)
    save_file(tensors, str(wrong), metadata={k: v for k, v in meta.items() if k != "format"})
    with pytest.raises(AdapterFormatError, match="not a continual-mem adapter"):
        model.load_task("w", wrong)
    assert model.task_names == ["a"]  # nothing half-added


# --------------------------------------------------------------------------- unsupported models
@pytest.mark.parametrize(
    ("name", "kwargs", "reason"),
    [
        ("vit_medium_patch16_gap_256", {}, "no class token"),
        ("vit_tiny_patch16_224", {"global_pool": "avg"}, "pools with 'avg'"),
        ("deit_tiny_distilled_patch16_224", {}, "distillation"),
    ],
)
def test_unsupported_backbones_are_refused_with_the_reason(name, kwargs, reason) -> None:
    import timm

    vit = timm.create_model(name, img_size=32, patch_size=8, depth=1, embed_dim=48, num_heads=3, **kwargs)
    with pytest.raises(UnsupportedBackboneError, match=reason):
        MemoryViT(vit)


def test_task_only_pass_skips_the_backbone_head_and_gives_the_same_logits() -> None:
    model = model_with_tasks(a=(3, 5), b=(4, 2))
    for i, adapter in enumerate(model.tasks.values()):
        randomize(adapter, i)
    x = images()
    full = model.forward_reuse(x)
    lean = model.forward_reuse(x, backbone_outputs=False)
    assert lean.backbone_logits is None and lean.features is None
    for name in ("a", "b"):
        assert torch.equal(lean.logits[name], full.logits[name])
        assert torch.equal(model(x, name), model.forward_reuse(x, [name]).logits[name])
