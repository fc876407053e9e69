"""Issue 11: per-task bottleneck adapters (`adapter-R`) and with memory (`memory-M+adapter-R`).

The same guarantees as the memory strategy: the frozen backbone never changes, a task's adapters
change nothing for any other task, task-incremental forgetting is exactly 0; tiny random ViTs.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_vit

from continual_mem.adapter import count_task_parameters
from continual_mem.data import InputSpec
from continual_mem.model import MemoryViT
from scenarios.benchmarks import split_digits
from scenarios.bottleneck import Bottleneck, TaskBottlenecks, count_bottleneck_parameters, forward_adapted
from scenarios.metrics import count_backbone_passes
from scenarios.runner import Budget, StrategySpec, build_strategy, run_strategy

FAST = Budget(epochs=2, batch_size=16)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def backbone():
    return tiny_vit(num_classes=8)


@pytest.fixture(scope="module")
def scenarios_by_protocol(backbone):
    spec = InputSpec.from_backbone(backbone)
    return {p: split_digits(spec, p, limit_per_class=12) for p in ("task", "class")}


def _images(scenario, k: int) -> torch.Tensor:
    dataset = scenario.benchmark.test_stream[k].dataset
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def _trained(bottlenecks: TaskBottlenecks) -> TaskBottlenecks:
    """The adapters with random weights everywhere (as if trained), so that they change the pass."""
    with torch.no_grad():
        for p in bottlenecks.parameters():
            p.normal_(0.0, 0.3)
    return bottlenecks


def test_a_new_bottleneck_is_exactly_the_identity() -> None:
    h = torch.randn(4, 17, 48)
    assert torch.equal(Bottleneck(48, 5)(h), h)


@pytest.mark.parametrize("memory", [0, 3])
def test_new_adapters_leave_the_pass_exactly_as_without_them(backbone, memory) -> None:
    """Zero-initialised adapters: the task's pass equals the memory strategy's full-attention pass,
    bit for bit (and, without memory, the frozen model's own class-token features)."""
    vit = MemoryViT(copy.deepcopy(backbone))
    vit.add_task("t", 3, num_memory=memory, mode="full")
    images = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        adapted = forward_adapted(vit, "t", TaskBottlenecks(vit.depth, vit.dim, 4), images)
        assert torch.equal(adapted, vit.forward_full(images, "t"))
        if memory == 0:
            features = vit.backbone.forward_head(vit.backbone.forward_features(images), pre_logits=True)
            assert torch.equal(adapted, vit.adapter("t").head(features))


def test_one_tasks_adapters_change_nothing_for_another(backbone) -> None:
    vit = MemoryViT(copy.deepcopy(backbone))
    for name in ("a", "b"):
        vit.add_task(name, 2, num_memory=2, mode="full")
    a, b = (_trained(TaskBottlenecks(vit.depth, vit.dim, 3)) for _ in range(2))
    images = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        before = forward_adapted(vit, "a", a, images)
        changed_b = forward_adapted(vit, "b", b, images)
        for p in b.parameters():
            p.add_(1.0)
        assert not torch.equal(forward_adapted(vit, "b", b, images), changed_b)
        assert torch.equal(forward_adapted(vit, "a", a, images), before)


@pytest.mark.parametrize("label", ["adapter-3", "memory-2+adapter-3"])
def test_adapters_never_forget_and_the_backbone_never_changes(backbone, scenarios_by_protocol, label) -> None:
    """Task protocol: after the last experience every earlier task answers exactly as when it was
    learned, its adapters are bit for bit those it finished with, and the backbone is the original."""
    scenario = scenarios_by_protocol["task"]
    when_learned: dict[int, torch.Tensor] = {}
    kept: dict[int, dict[str, torch.Tensor]] = {}
    models = []

    def snapshot(i: int, strategy) -> None:
        model = strategy.model
        models.append(model)
        model.eval()
        with torch.no_grad():
            when_learned[i] = model(_images(scenario, i), i)
        state = {**model.bottlenecks[f"exp{i}"].state_dict(), **model.vit.tasks[f"exp{i}"].state_dict()}
        kept[i] = {k: v.clone() for k, v in state.items()}

    result = run_strategy(
        scenario, StrategySpec.parse(label), backbone, FAST, progress=False, after_experience=snapshot
    )
    final = models[-1]
    for i, logits in when_learned.items():
        with torch.no_grad():
            assert torch.equal(final(_images(scenario, i), i), logits)
        state = {**final.bottlenecks[f"exp{i}"].state_dict(), **final.vit.tasks[f"exp{i}"].state_dict()}
        assert all(torch.equal(state[k], v) for k, v in kept[i].items())
        trained_up = final.bottlenecks[f"exp{i}"].attn[0].up.weight
        assert trained_up.abs().sum() > 0  # the adapters did learn
    original = backbone.state_dict()
    assert all(torch.equal(v, original[k]) for k, v in final.vit.backbone.state_dict().items())
    matrix = result.accuracy_matrix
    assert all(matrix[i][j] == matrix[j][j] for i in range(5) for j in range(i + 1))
    assert result.metrics["forgetting"] == 0.0 and result.metrics["bwt"] == 0.0


@pytest.mark.parametrize(("label", "memory"), [("adapter-3", 0), ("memory-2+adapter-3", 2)])
def test_each_task_trains_its_adapters_class_token_head_and_memory(backbone, scenarios_by_protocol, label, memory):
    result = run_strategy(scenarios_by_protocol["task"], StrategySpec.parse(label), backbone, FAST, progress=False)
    depth, dim = len(backbone.blocks), backbone.embed_dim
    expected = count_bottleneck_parameters(depth, dim, 3) + count_task_parameters(depth, memory, dim, 2)
    assert result.metrics["trainable_params_per_task"] == expected
    assert result.metrics["backbone_passes_to_serve_all"] == 5.0  # one pass per task


@pytest.mark.parametrize("label", ["adapter-3", "memory-2+adapter-3"])
def test_class_protocol_routes_from_the_frozen_pass(backbone, scenarios_by_protocol, label) -> None:
    scenario = scenarios_by_protocol["class"]
    result = run_strategy(scenario, StrategySpec.parse(label), backbone, FAST, progress=False)
    routes = result.metrics["task_id_accuracy_by_route"]
    assert set(routes) == {"lda", "nmc", "energy", "max-softmax"}
    assert result.metrics["task_id_accuracy"] == routes["lda"]
    assert result.metrics["backbone_passes_to_serve_all"] == 6.0  # 5 tasks + the routing pass
    assert len(result.accuracy_matrix) == 5 and 0.0 < result.metrics["average_accuracy"] <= 1.0
    assert result.config["route"] == "lda"


def test_routing_statistics_are_the_frozen_backbones_features(backbone, scenarios_by_protocol) -> None:
    """The router learns from the frozen pass (as the memory strategy's), never from adapted tokens."""
    scenario = scenarios_by_protocol["class"]
    adapters = build_strategy(StrategySpec.parse("adapter-3"), scenario, copy.deepcopy(backbone), FAST)
    memory = build_strategy(StrategySpec.parse("memory-2"), scenario, copy.deepcopy(backbone), FAST)
    for strategy in (adapters, memory):
        strategy.train(scenario.benchmark.train_stream[0])
    a, m = adapters.model.router, memory.model.router
    assert torch.equal(a.class_counts, m.class_counts)
    assert torch.allclose(a.class_sums, m.class_sums, rtol=1e-5, atol=1e-5)


def test_evaluation_passes_every_image_once_per_task_protocol(backbone, scenarios_by_protocol) -> None:
    scenario = scenarios_by_protocol["task"]
    strategy = build_strategy(StrategySpec.parse("adapter-2"), scenario, copy.deepcopy(backbone), Budget(epochs=1))
    for experience in scenario.benchmark.train_stream[:2]:
        strategy.train(experience)
    stream = scenario.benchmark.test_stream[:2]
    with count_backbone_passes(list(strategy.model.modules())) as counter:
        strategy.eval(stream)
    assert counter.images == sum(len(e.dataset) for e in stream)  # the given task's pass only
