"""scenarios/ (issue 5): benchmarks, the memory-token strategy, baselines, metrics, reports, CLI.

Everything here runs on tiny random ViTs and a few images per class; the full comparison on the
pretrained demo backbone is `@pytest.mark.slow`.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner
from conftest import tiny_vit

from continual_mem.adapter import count_task_parameters
from continual_mem.cli.scenario import scenario_group
from continual_mem.data import InputSpec
from scenarios.benchmarks import (
    ScenarioError,
    build_scenario,
    experience_sizes,
    seeded_order,
    split_digits,
    split_image_folder,
    split_shifted_digits,
)
from scenarios.metrics import count_backbone_passes
from scenarios.runner import (
    Budget,
    RunRequest,
    RunResult,
    ScenarioKey,
    StrategySpec,
    build_strategy,
    compare_specs,
    run_requests,
    run_strategy,
)
from scenarios.strategy import TaskRouter, oas_shrinkage

ROOT = Path(__file__).resolve().parents[1]
FAST = Budget(epochs=1, batch_size=16)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def backbone():
    return tiny_vit(num_classes=8)


@pytest.fixture(scope="module")
def spec(backbone) -> InputSpec:
    return InputSpec.from_backbone(backbone)


@pytest.fixture(scope="module")
def digits_task(spec):
    return split_digits(spec, "task", limit_per_class=15)


@pytest.fixture(scope="module")
def digits_class(spec):
    return split_digits(spec, "class", limit_per_class=15)


def test_cli_module_imports_neither_torch_timm_nor_avalanche() -> None:
    code = "import sys, continual_mem.cli.scenario; print(sorted(m for m in ('torch', 'timm', 'avalanche') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------ benchmarks
def test_split_digits_task_protocol(digits_task) -> None:
    bench = digits_task.benchmark
    assert digits_task.n_experiences == 5 and len(bench.train_stream) == 5
    assert digits_task.class_order == seeded_order(10)
    for k, exp in enumerate(bench.train_stream):
        assert list(exp.task_labels) == [k]
        assert sorted(exp.classes_in_this_experience) == [0, 1]
        x, _, t = exp.dataset[0]
        assert x.shape == (3, 32, 32) and int(t) == k
    again = split_digits(InputSpec.from_backbone(tiny_vit(num_classes=8)), "task", limit_per_class=15)
    assert torch.equal(bench.test_stream[2].dataset[3][0], again.benchmark.test_stream[2].dataset[3][0])


def test_split_digits_class_protocol(digits_class) -> None:
    for k, exp in enumerate(digits_class.benchmark.train_stream):
        assert list(exp.task_labels) == [0]
        assert sorted(exp.classes_in_this_experience) == [2 * k, 2 * k + 1]


def test_class_order_option_and_errors(spec) -> None:
    reverse = list(range(9, -1, -1))
    assert split_digits(spec, "task", reverse, limit_per_class=3).experience_classes[0] == [9, 8]
    with pytest.raises(ScenarioError, match="each of the 10 classes once"):
        split_digits(spec, "task", [0, 1, 2], limit_per_class=3)
    uneven = split_digits(spec, "task", reverse, n_experiences=3, limit_per_class=3)
    assert uneven.experience_classes == [[9, 8, 7, 6], [5, 4, 3], [2, 1, 0]]
    assert [len(e.classes_in_this_experience) for e in uneven.benchmark.train_stream] == [4, 3, 3]
    with pytest.raises(ScenarioError, match="unknown scenario"):
        build_scenario("split-nothing", spec)


def test_experience_sizes() -> None:
    assert experience_sizes(10, 5) == [2] * 5 and experience_sizes(10, 3) == [4, 3, 3]
    assert experience_sizes(100, 6, 50) == [50, 10, 10, 10, 10, 10] and experience_sizes(7, 1, 7) == [7]
    for args, message in (
        ((4, 5), "cannot split 4 classes into 5 experiences; choose 1 to 4"),
        ((10, 0), "cannot split 10 classes into 0"),
        ((10, 3, 5), "the 5 classes after the first experience do not split evenly into 2"),
        ((10, 1, 5), "5 classes in the first experience leave 5 for 0 more"),
        ((10, 4, 8), "8 classes in the first experience leave 2 for 3 more"),
        ((10, 2, 11), "the first experience must hold 1 to 10 classes, got 11"),
    ):
        with pytest.raises(ScenarioError, match=message):
            experience_sizes(*args)


def test_shifted_digits_scenario(spec) -> None:
    scenario = split_shifted_digits(spec, "task")
    assert scenario.train_size == 3600 and scenario.test_size == 2500 and scenario.n_experiences == 5
    assert scenario.class_order == split_digits(spec, "task", limit_per_class=5).class_order
    sizes = [len(experience.dataset) for experience in scenario.benchmark.test_stream]
    assert sizes == [500] * 5  # large enough to resolve a 2-point difference
    assert build_scenario("shifted-digits", spec, "class").protocol == "class"


def test_image_folder_scenario(tmp_path, spec) -> None:
    from PIL import Image

    for c in range(4):
        (tmp_path / f"class{c}").mkdir()
        for i in range(5):
            Image.new("RGB", (10, 10), (40 * c, 10 * i, 0)).save(tmp_path / f"class{c}" / f"{i}.png")
    scenario = split_image_folder(tmp_path, spec, "class", n_experiences=2)
    assert scenario.n_experiences == 2 and scenario.class_names == ["class0", "class1", "class2", "class3"]


def test_torchvision_set_not_on_disk_is_not_downloaded(tmp_path, spec) -> None:
    with pytest.raises(ScenarioError, match="--download"):
        build_scenario(f"torchvision:MNIST:{tmp_path}", spec)
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------ memory strategy
def _eval_logits(model, images: torch.Tensor, task: int) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(images, torch.full((images.shape[0],), task))


def _test_images(scenario, k: int) -> torch.Tensor:
    dataset = scenario.benchmark.test_stream[k].dataset
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


@pytest.mark.parametrize("label", ["memory-5", "memory-full-5"])
def test_memory_strategy_never_forgets(backbone, digits_task, label) -> None:
    """Must hold 1: after the last experience, every earlier task answers exactly as when learned."""
    when_learned: dict[int, torch.Tensor] = {}
    adapters: dict[int, dict[str, torch.Tensor]] = {}
    models = []

    def snapshot(i: int, strategy) -> None:
        models.append(strategy.model)
        when_learned[i] = _eval_logits(strategy.model, _test_images(digits_task, i), i)
        adapters[i] = {k: v.clone() for k, v in strategy.model.vit.tasks[f"exp{i}"].state_dict().items()}

    result = run_strategy(
        digits_task,
        StrategySpec.parse(label),
        backbone,
        Budget(epochs=2, batch_size=16),
        progress=False,
        after_experience=snapshot,
    )
    assert {a.mode for a in models[-1].vit.tasks.values()} == {"full" if "full" in label else "reuse"}
    final_model = models[-1]
    for i, logits in when_learned.items():
        after = _eval_logits(final_model, _test_images(digits_task, i), i)
        assert (after - logits).abs().max().item() <= 1e-6
        assert torch.equal(after.argmax(1), logits.argmax(1))
        for name, tensor in final_model.vit.tasks[f"exp{i}"].state_dict().items():
            assert torch.equal(tensor, adapters[i][name])
    matrix = result.accuracy_matrix
    assert all(matrix[i][j] == matrix[j][j] for i in range(5) for j in range(i + 1))
    assert result.metrics["forgetting"] == 0.0 and result.metrics["bwt"] == 0.0


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("memory-5", lambda L, D: count_task_parameters(L, 5, D, 2)),
        ("head-only", lambda L, D: (D + 1) * 2),
        ("memory-full-10", lambda L, D: count_task_parameters(L, 10, D, 2)),
        ("head-class", lambda L, D: D + (D + 1) * 2),
    ],
)
def test_each_experience_trains_only_its_own_adapter(backbone, digits_task, label, expected) -> None:
    result = run_strategy(digits_task, StrategySpec.parse(label), backbone, FAST, progress=False)
    depth, dim = len(backbone.blocks), backbone.embed_dim
    assert result.metrics["trainable_params_per_task"] == expected(depth, dim)
    assert result.metrics["forgetting"] == 0.0


def test_evaluation_is_one_backbone_pass_for_all_tasks(backbone, digits_task) -> None:
    strategy = build_strategy(StrategySpec("memory", 1), digits_task, backbone, FAST)
    for exp in digits_task.benchmark.train_stream:
        strategy.train(exp)
    stream = digits_task.benchmark.test_stream
    with count_backbone_passes(list(strategy.model.modules())) as counter:
        strategy.eval(stream)
    assert counter.images == sum(len(e.dataset) for e in stream)  # one pass per image, five tasks served
    images = _test_images(digits_task, 0)[:4]
    outputs = strategy.model.forward_all_tasks(images)
    assert sorted(outputs) == [0, 1, 2, 3, 4]
    # the same logits as running each task alone in the pass
    alone = strategy.model.vit.forward_reuse(images, ["exp3"]).logits["exp3"]
    assert (outputs[3] - alone).abs().max().item() <= 1e-5


def test_class_protocol_infers_the_task_from_the_same_pass(backbone, digits_class) -> None:
    result = run_strategy(digits_class, StrategySpec("memory", 1), backbone, FAST, progress=False)
    routes = result.metrics["task_id_accuracy_by_route"]
    assert set(routes) == {"lda", "nmc", "energy", "max-softmax"}
    assert all(0.0 <= v <= 1.0 for v in routes.values())
    assert result.metrics["task_id_accuracy"] == routes["lda"]
    assert result.metrics["backbone_passes_to_serve_all"] == 1.0
    assert len(result.accuracy_matrix) == 5


def test_class_protocol_output_is_one_tasks_logits(backbone, digits_class) -> None:
    strategy = build_strategy(StrategySpec("memory", 1), digits_class, backbone, FAST)
    for exp in digits_class.benchmark.train_stream[:3]:
        strategy.train(exp)
    model = strategy.model
    model.eval()
    with torch.no_grad():
        out = model(_test_images(digits_class, 1), 0)
    chosen = model.last_routes["lda"]
    for row, task in zip(out, chosen.tolist()):
        finite = torch.isfinite(row).nonzero(as_tuple=True)[0].tolist()
        assert finite == model.task_classes[task]


def test_task_router_on_separable_features() -> None:
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(6, 16, generator=gen) * 5
    router = TaskRouter(16)
    for task in range(3):
        router.add_classes([2 * task, 2 * task + 1], task)
    labels = torch.arange(6).repeat_interleave(30)
    features = centres[labels] + torch.randn(180, 16, generator=gen)
    router.observe(features, labels)
    routes = router.routes(features, [torch.zeros(180, 2)] * 3)
    truth = labels // 2
    assert torch.equal(routes["lda"], truth) and torch.equal(routes["nmc"], truth)


def test_oas_shrinkage_matches_scikit_learn() -> None:
    from sklearn.covariance import oas

    x = torch.randn(200, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * torch.linspace(
        0.1, 4, 12
    )
    _, expected = oas(x.numpy())
    centred = x - x.mean(0)
    assert math.isclose(oas_shrinkage(centred.T @ centred / 200, 200.0), expected, rel_tol=1e-9)


# ------------------------------------------------------------------------------------ baselines
@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("vit_tiny_patch16_224", {}),
        ("vit_tiny_patch16_224", {"img_size": 48, "reg_tokens": 4}),  # register tokens
        ("vit_small_patch14_reg4_dinov2", {}),  # no_embed_class, layer scale, registers
        ("vit_base_patch16_clip_224", {}),  # pre-norm, patch embedding without bias
        ("vit_tiny_patch16_224+qk_norm", {}),
    ],
)
def test_l2p_compatibility_layer_fits_any_supported_backbone(name, kwargs) -> None:
    from scenarios.l2p import PROMPT_LENGTH, TOP_K, BackboneL2P

    backbone = tiny_vit(name, num_classes=8, **kwargs)
    strategy = BackboneL2P(backbone=backbone, num_classes=10)
    images = torch.randn(3, 3, *backbone.patch_embed.img_size)
    with torch.no_grad():
        ours = backbone.forward_head(backbone.forward_features(images), pre_logits=True)
        query = strategy.original_vit(images)["pre_logits"]
        prompted = strategy.model(images, cls_features=query)
    assert torch.equal(ours, query)  # the query ViT is our backbone, bit for bit
    tokens = backbone.forward_features(images).shape[1]
    assert prompted["x"].shape[1] == tokens + PROMPT_LENGTH * TOP_K and prompted["logits"].shape == (3, 10)
    assert strategy.model.head.in_features == strategy.model.prompt.prompt.shape[-1] == backbone.embed_dim
    trainable = {n for n, p in strategy.model.named_parameters() if p.requires_grad}
    assert trainable == {"prompt.prompt", "prompt.prompt_key", "head.weight", "head.bias"}
    for key, tensor in backbone.blocks.state_dict().items():
        assert torch.equal(strategy.model.blocks.state_dict()[key], tensor)


def test_ncm_agrees_with_scikit_learn(backbone, digits_class) -> None:
    from sklearn.neighbors import NearestCentroid

    strategy = build_strategy(StrategySpec("ncm"), digits_class, backbone, FAST)
    for exp in digits_class.benchmark.train_stream:
        strategy.train(exp)
    train = [e.dataset[i] for e in digits_class.benchmark.train_stream for i in range(len(e.dataset))]
    x, y = torch.stack([s[0] for s in train]), torch.tensor([int(s[1]) for s in train])
    model = strategy.model
    reference = NearestCentroid().fit(model.features(x).numpy(), y.numpy())
    test = _test_images(digits_class, 3)
    model.eval()
    with torch.no_grad():
        ours = model(test, 0).argmax(1)
    assert ours.tolist() == reference.predict(model.features(test).numpy()).tolist()


def test_forgetting_and_bwt_follow_the_stated_formulas(backbone, digits_task) -> None:
    result = run_strategy(digits_task, StrategySpec("naive"), backbone, FAST, progress=False)
    r = result.accuracy_matrix
    last = len(r) - 1
    forgetting = sum(r[j][j] - r[last][j] for j in range(last)) / last
    assert math.isclose(result.metrics["forgetting"], forgetting, abs_tol=1e-9)
    assert math.isclose(result.metrics["bwt"], -forgetting, abs_tol=1e-9)
    assert math.isclose(result.metrics["average_accuracy"], sum(r[last]) / len(r[last]))


def test_serving_costs_per_strategy(backbone, digits_task, digits_class) -> None:
    full = run_strategy(digits_task, StrategySpec("full-ft"), backbone, FAST, progress=False)
    assert full.metrics["backbone_passes_to_serve_all"] == 5.0
    l2p = run_strategy(digits_class, StrategySpec("l2p"), backbone, FAST, progress=False)
    assert l2p.metrics["backbone_passes_to_serve_all"] == 2.0
    memory = run_strategy(digits_task, StrategySpec("memory", 1), backbone, FAST, progress=False)
    assert memory.metrics["stored_bytes_per_task"] < full.metrics["stored_bytes_per_task"] / 50
    full_attention = run_strategy(digits_task, StrategySpec("memory", 1, "full"), backbone, FAST, progress=False)
    assert full_attention.metrics["backbone_passes_to_serve_all"] == 5.0  # input tokens see one task's memory


def test_full_attention_memory_refuses_the_class_protocol(backbone, digits_class) -> None:
    with pytest.raises(ScenarioError, match="memory-full-5 runs in the task protocol only"):
        build_strategy(StrategySpec("memory", 5, "full"), digits_class, backbone, FAST)


def test_memory_and_class_token_learn_at_their_own_rate(backbone, digits_task) -> None:
    """The head decays from `lr_head`, memory and class token from `lr_adapter`, on one cosine."""
    budget = Budget(epochs=2, batch_size=16, lr_adapter=1e-3, lr_head=1e-2)
    rates: list[tuple[float, ...]] = []

    def record(i: int, strategy) -> None:
        groups = strategy.optimizer.param_groups
        rates.append(tuple(g["base_lr"] for g in groups))
        adapter = strategy.model.vit.tasks[f"exp{i}"]
        assert [len(g["params"]) for g in groups] == [2, 2] and groups[1]["params"][0] is adapter.head.weight
        decayed = [g["lr"] / g["base_lr"] for g in groups]
        assert decayed[0] == decayed[1] < 1  # one cosine over both rates

    run_strategy(digits_task, StrategySpec("memory", 1), backbone, budget, progress=False, after_experience=record)
    assert rates == [(1e-3, 1e-2)] * 5


def test_strategy_names_and_protocols() -> None:
    assert StrategySpec.parse("memory-10") == StrategySpec("memory", 10)
    assert StrategySpec.parse("memory", 20).label == "memory-20"
    with pytest.raises(ScenarioError, match="unknown strategy"):
        StrategySpec.parse("bogus")
    assert StrategySpec.parse("memory-full-10") == StrategySpec("memory", 10, "full")
    assert StrategySpec.parse("memory-full", 20).label == "memory-full-20"
    for bad in ("memory-full5", "memory-fullx", "memory-x"):
        with pytest.raises(ScenarioError, match="expected memory-M or memory-full-M"):
            StrategySpec.parse(bad)
    assert not StrategySpec.parse("memory-full-5").supports("class")
    assert "memory-full-5" in [s.label for s in compare_specs("task")]
    assert "memory-full-5" not in [s.label for s in compare_specs("class")]
    assert "full-ft" in [s.label for s in compare_specs("task")]
    assert "l2p" not in [s.label for s in compare_specs("task")]
    assert "l2p" in [s.label for s in compare_specs("class")]


# ------------------------------------------------------------------------------------ report, CLI
def _fake_result(
    strategy: str, protocol: str, accuracy: float, seed: int = 0, scenario: str = "split-digits"
) -> RunResult:
    metrics = {
        "average_accuracy": accuracy,
        "forgetting": 0.0,
        "bwt": 0.0,
        "task_id_accuracy": None,
        "task_id_accuracy_by_route": None,
        "trainable_params_per_task": 1000.0,
        "stored_bytes_per_task": 4000.0,
        "serving_bytes_per_task": 4000.0,
        "learning_bytes_per_task": 0.0,
        "backbone_passes_to_serve_all": 1.0,
        "train_time_s": 1.0,
        "eval_time_s": 1.0,
    }
    return RunResult(scenario, strategy, protocol, [[accuracy]], metrics, {"budget": {"seed": seed}}, 2.0)


def test_results_document_layout(tmp_path) -> None:
    from scenarios.results import ALL_RESULTS, render_results

    accuracies = (("memory-5", 0.9), ("memory-full-5", 0.93), ("head-only", 0.8), ("full-ft", 0.95))
    results = [_fake_result(c, "task", a, s) for c, a in accuracies for s in (0, 1)]
    results += [_fake_result("memory-5", "class", 0.7), _fake_result("l2p", "class", 0.5)]
    shifted = (("memory-5", 0.85), ("memory-full-5", 0.9), ("head-only", 0.84), ("full-ft", 0.95))
    results += [_fake_result(c, "task", a, s, "shifted-digits") for c, a in shifted for s in (0, 1)]
    facts = {
        "architecture": "vit",
        "config": {"img_size": 32, "patch_size": 4, "depth": 4, "embed_dim": 192, "num_heads": 3},
        "parameters": 1e6,
        "sha256": "ab" * 32,
        "pretraining": "`builtin:shapes`",
    }
    kept = {
        "facts": facts,
        "budget": vars(Budget()),
        "seeds": [0, 1],
        "quick": False,
        "command": "cmem scenario results",
        "elapsed_s": 60.0,
        "generated_at": "2026-01-01T00:00:00+00:00",
        "results": [r.to_dict() for r in results],
    }
    (tmp_path / ALL_RESULTS).write_text(json.dumps(kept))
    doc = render_results(tmp_path)
    assert "| Full | Head only | Head + Class | 1 | 5 | 10 | 20 |" in doc
    assert "| split-digits, memory: full attention | 95.0 ± 0.0 | 80.0 ± 0.0 | – | – | 93.0 ± 0.0 | – | – |" in doc
    assert "| split-digits, memory: reuse, one pass | 95.0 ± 0.0 | 80.0 ± 0.0 | – | – | 90.0 ± 0.0 | – | – |" in doc
    assert (
        "memory-5 (full attention): 93.0% vs head-only 80.0% (+13.0 points; claim >= +2: **holds**) and vs "
        "per-task full fine-tuning 95.0% (2.0 points behind; claim <= 3: **holds**)"
    ) in doc
    assert (
        "memory-5 (reuse, one pass): 90.0% vs head-only 80.0% (+10.0 points; claim >= +2: **holds**) and vs "
        "per-task full fine-tuning 95.0% (5.0 points behind; claim <= 3: **does not hold**)"
    ) in doc
    assert (
        "shifted-digits, task-incremental, memory-5 (reuse, one pass): 85.0% vs head-only 84.0% (+1.0 points; "
        "claim >= +2: **does not hold**) and vs per-task full fine-tuning 95.0% (10.0 points behind"
    ) in doc
    assert "shifted-digits, task-incremental, memory-5 (full attention): 90.0% vs head-only 84.0% (+6.0" in doc
    assert "**beats L2P**" in doc and "builtin:shapes" in doc


def test_cli_run_json_and_one_line_errors(tmp_path) -> None:
    from store import TaskStore

    obj = SimpleNamespace(open_store=lambda: TaskStore(tmp_path / "store"))
    runner = CliRunner()
    args = [
        "run",
        "split-digits",
        "-s",
        "memory",
        "-m",
        "2",
        "--backbone",
        "random",
        "--epochs",
        "1",
        "--limit-per-class",
        "4",
        "--no-progress",
        "--json",
    ]
    out = runner.invoke(scenario_group, args, obj=obj)
    assert out.exit_code == 0, out.output
    run = json.loads(out.stdout)
    assert run["strategy"] == "memory-2" and run["id"] == 1 and len(run["accuracy_matrix"]) == 5
    bad = runner.invoke(scenario_group, ["run", "split-digits", "-s", "bogus", "--backbone", "random"], obj=obj)
    assert bad.exit_code == 1 and "unknown strategy 'bogus'" in bad.output and "Traceback" not in bad.output
    wrong = runner.invoke(
        scenario_group, ["run", "split-digits", "-s", "full-ft", "--protocol", "class", "--backbone", "random"], obj=obj
    )
    assert wrong.exit_code == 1 and "task protocol only" in wrong.output
    listed = runner.invoke(scenario_group, ["runs", "--json"], obj=obj)
    assert [r["strategy"] for r in json.loads(listed.stdout)] == ["memory-2"]
    no_store = runner.invoke(scenario_group, ["runs"])
    assert no_store.exit_code == 1 and "no task store" in no_store.output
    unrecorded = runner.invoke(scenario_group, args)
    assert unrecorded.exit_code == 0 and json.loads(unrecorded.stdout)["id"] is None
    assert "runs are not recorded" in unrecorded.stderr


def test_quick_compare_cli(tmp_path) -> None:
    """The CI version of `cmem scenario compare`: every strategy, both protocols, recorded, reported."""
    from store import TaskStore

    obj = SimpleNamespace(open_store=lambda: TaskStore(tmp_path / "store"))
    report = tmp_path / "report"
    out = CliRunner().invoke(
        scenario_group,
        [
            "compare",
            "split-digits",
            "--quick",
            "--backbone",
            "random",
            "--limit-per-class",
            "6",
            "--memory-sizes",
            "1,5",
            "--report-dir",
            str(report),
            "--no-progress",
            "--json",
            "--jobs",
            "1",
        ],
        obj=obj,
    )
    assert out.exit_code == 0, out.output
    runs = json.loads(out.stdout)["runs"]
    labels = {(r["protocol"], r["strategy"]) for r in runs}
    assert {
        ("task", "memory-5"),
        ("task", "full-ft"),
        ("task", "head-only"),
        ("task", "naive"),
        ("class", "l2p"),
        ("class", "ncm"),
        ("class", "replay"),
        ("class", "cumulative"),
        ("task", "ewc"),
        ("task", "lwf"),
    } <= labels
    for r in runs:
        if r["strategy"].startswith(("memory", "head")) and r["protocol"] == "task":
            assert r["metrics"]["forgetting"] == 0.0
        if r["protocol"] == "class":  # every class-incremental learner's task-id accuracy is measured
            assert 0.0 <= r["metrics"]["task_id_accuracy"] <= 1.0
    assert len(TaskStore(tmp_path / "store").list_scenario_runs(scenario="split-digits")) == len(runs)
    text = (report / "report.md").read_text()
    assert "## task-incremental" in text and "## class-incremental" in text
    assert (report / "curves-task.png").stat().st_size > 0 and (report / "matrix-task-memory-5.png").exists()


def test_runs_in_worker_processes_match_runs_in_process(backbone) -> None:
    requests = [
        RunRequest(ScenarioKey("split-digits", protocol, limit_per_class=4), StrategySpec(name), FAST)
        for protocol, name in (("task", "head-only"), ("class", "ncm"))
    ]
    seen = []
    parallel = run_requests(requests, backbone, jobs=2, on_result=lambda q, r: seen.append(r.strategy), progress=False)
    serial = run_requests(requests, backbone, jobs=1, progress=False)
    assert [r.strategy for r in parallel] == ["head-only", "ncm"] and sorted(seen) == ["head-only", "ncm"]
    assert [r.accuracy_matrix for r in parallel] == [r.accuracy_matrix for r in serial]


# ------------------------------------------------------------------------------------ slow
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_full_compare_split_digits_on_the_demo_backbone(tmp_path) -> None:
    """Must hold 4: the full comparison finishes within 20 minutes on 2 cores."""
    import time

    start = time.perf_counter()
    out = CliRunner().invoke(
        scenario_group, ["compare", "split-digits", "--report-dir", str(tmp_path), "--no-progress", "--json"]
    )
    elapsed = time.perf_counter() - start
    assert out.exit_code == 0, out.output
    runs = {(r["protocol"], r["strategy"]): r["metrics"] for r in json.loads(out.stdout)["runs"]}
    assert elapsed < 20 * 60
    assert runs[("task", "memory-5")]["forgetting"] == 0.0
    assert runs[("task", "naive")]["forgetting"] > 0.0


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_results_command_quick(tmp_path) -> None:
    args = [
        "results",
        "--quick",
        "--backbone",
        "random",
        "--seeds",
        "0",
        "--out",
        str(tmp_path / "results.md"),
        "--report-dir",
        str(tmp_path / "reports"),
        "--no-progress",
        "--jobs",
        "1",
    ]
    out = CliRunner().invoke(scenario_group, args)
    assert out.exit_code == 0, out.output
    document = (tmp_path / "results.md").read_text()
    assert "Table 2 layout" in document
    assert "## Learning rates chosen on validation" in document and "| split-digits | memory-20 |" in document
    again = CliRunner().invoke(
        scenario_group,
        ["results", "--render-only", "--out", str(tmp_path / "again.md"), "--report-dir", str(tmp_path / "reports")],
    )
    assert again.exit_code == 0 and (tmp_path / "again.md").read_text() == document
    runs = len((tmp_path / "reports" / "runs.jsonl").read_text().splitlines())
    resumed = CliRunner().invoke(scenario_group, args)  # every run is kept: nothing trains again
    assert resumed.exit_code == 0 and f"resuming: {runs} run(s) kept" in resumed.output
    assert len((tmp_path / "reports" / "runs.jsonl").read_text().splitlines()) == runs
    assert "summed over 2 invocations" in (tmp_path / "results.md").read_text()


def test_docs_results_is_rendered_from_the_runs_kept_beside_it() -> None:
    """docs/results.md is exactly what its kept runs render to: no figure in it was edited by hand,
    and a change to the rendering that would alter it must regenerate it."""
    from scenarios.results import render_results

    docs = Path(__file__).resolve().parents[1] / "docs"
    assert render_results(docs / "results-data") == (docs / "results.md").read_text()
