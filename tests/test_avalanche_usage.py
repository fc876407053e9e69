"""The memory strategy in a user's own Avalanche script (issue 13).

Built as an Avalanche user builds it (`avalanche_user`): `nc_benchmark` with Avalanche's defaults,
Avalanche's EvaluationPlugin and metrics, periodic evaluation, checkpoints; a tiny random ViT on a
few of scikit-learn's digits, one epoch per experience.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche_user import (
    BWT,
    FORGETTING,
    PROTOCOLS,
    STREAM_ACCURACY,
    adapters_digest,
    digits_benchmark,
    memory_strategy,
    train_and_checkpoint,
)

from continual_mem.adapter import TaskAdapter
from scenarios.metrics import TASK_ID_PREFIX, tasks_of_classes

ROOT = Path(__file__).resolve().parents[1]
_EXP_ACCURACY = re.compile(r"^Top1_Acc_Exp/eval_phase/test_stream/Task\d+/Exp(\d+)$")


pytestmark = pytest.mark.usefixtures("one_thread")


def _experience_accuracies(metrics: dict[str, float]) -> dict[int, float]:
    return {int(m.group(1)): v for k, v in metrics.items() if (m := _EXP_ACCURACY.match(k))}


def _targets(experience) -> torch.Tensor:
    return torch.tensor([int(experience.dataset[i][1]) for i in range(len(experience.dataset))])


def _batch(experience) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    samples = [experience.dataset[i] for i in range(len(experience.dataset))]
    return tuple(torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in range(3))  # type: ignore[return-value]


def _share_of_first_class(experience) -> float:
    """The accuracy of equal logits over the experience's classes: argmax picks the first."""
    targets = _targets(experience)
    return float((targets == min(experience.classes_in_this_experience)).sum()) / len(targets)


def _trained(protocol: str, n_experiences: int, **options):
    RNGManager.set_random_seeds(0)
    benchmark = digits_benchmark(protocol)
    strategy = memory_strategy(protocol, **options)
    for experience in benchmark.train_stream[:n_experiences]:
        strategy.train(experience)
    return benchmark, strategy


def _trained_and_evaluated(benchmark):
    """Train every experience, evaluating the experiences seen so far after each."""
    RNGManager.set_random_seeds(0)
    strategy = memory_strategy("task")
    for i, experience in enumerate(benchmark.train_stream):
        strategy.train(experience)
        strategy.evaluator.reset_last_metrics()
        metrics = strategy.eval(benchmark.test_stream[: i + 1])
    return strategy, metrics


# ------------------------------------------------------------------------------ 1. global class ids
def test_global_class_ids_train_and_answer_in_the_benchmark_label_space(tmp_path) -> None:
    benchmark = digits_benchmark("task")
    classes = [sorted(e.classes_in_this_experience) for e in benchmark.train_stream]
    assert classes != [[0, 1]] * 5  # Avalanche's default keeps the data set's class ids
    strategy, metrics = _trained_and_evaluated(benchmark)
    assert metrics[FORGETTING] == 0.0 and metrics[BWT] == 0.0
    model = strategy.model.eval()
    assert model.task_classes == classes
    for experience in benchmark.test_stream:
        x, _, t = _batch(experience)
        with torch.no_grad():
            out = model(x, t)
        finite = [torch.isfinite(row).nonzero(as_tuple=True)[0].tolist() for row in out]
        assert finite == [sorted(experience.classes_in_this_experience)] * len(x)

    # the very same learning as with class ids from zero in each experience (in the same order)
    ascending = list(range(10))
    global_ids, _ = _trained_and_evaluated(digits_benchmark("task", fixed_class_order=ascending))
    zero_based, _ = _trained_and_evaluated(
        digits_benchmark("task", fixed_class_order=ascending, class_ids_from_zero_in_each_exp=True)
    )
    assert zero_based.model.task_classes == [[0, 1]] * 5
    for name, adapter in zero_based.model.vit.tasks.items():
        same_task = global_ids.model.vit.tasks[name].state_dict()
        assert all(torch.equal(tensor, same_task[key]) for key, tensor in adapter.state_dict().items())

    path = model.vit.save_task("exp1", tmp_path / "exp1.safetensors")
    assert TaskAdapter.load(path).config.class_ids == tuple(classes[1])


def test_a_task_label_used_twice_is_refused_in_the_task_protocol() -> None:
    benchmark = digits_benchmark("class")  # every experience has task label 0
    strategy = memory_strategy("task")
    strategy.train(benchmark.train_stream[0])
    with pytest.raises(ValueError, match=r"task label\(s\) \[0\] already belong to a trained task"):
        strategy.train(benchmark.train_stream[1])


# ------------------------------------------------------------------- 2. whole-stream evaluation
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_whole_stream_evaluation_answers_untrained_tasks_and_changes_nothing(protocol) -> None:
    """Untrained experiences: chance (task protocol: equal logits over their classes) or 0 (class
    protocol: their classes are no learned task's); what training sees next is left as it was."""
    benchmark, strategy = _trained(protocol, 1)
    before = {k: v.clone() for k, v in strategy.model.state_dict().items()}
    metrics = strategy.eval(benchmark.test_stream)
    after = strategy.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert list(strategy.model.vit.tasks) == ["exp0"]
    accuracies = _experience_accuracies(metrics)
    for experience in benchmark.test_stream[1:]:
        expected = _share_of_first_class(experience) if protocol == "task" else 0.0
        assert accuracies[experience.current_experience] == pytest.approx(expected, abs=1e-12)

    # training the next experience gives the very same task as without that evaluation
    RNGManager.set_random_seeds(1)
    strategy.train(benchmark.train_stream[1])
    _, reference = _trained(protocol, 1)
    RNGManager.set_random_seeds(1)
    reference.train(benchmark.train_stream[1])
    assert adapters_digest(strategy) == adapters_digest(reference)


# ------------------------------------------------------------------- 3. task-id accuracy
def test_task_id_accuracy_counts_classes_not_seen_yet_as_wrong() -> None:
    benchmark, strategy = _trained("class", 2)
    seen = benchmark.test_stream[:2]
    on_seen = strategy.eval(seen)
    strategy.evaluator.reset_last_metrics()
    on_stream = strategy.eval(benchmark.test_stream)
    n_seen = sum(len(e.dataset) for e in seen)
    n_stream = sum(len(e.dataset) for e in benchmark.test_stream)
    methods = {k for k in on_seen if k.startswith(TASK_ID_PREFIX)}
    assert len(methods) == 4 and methods == {k for k in on_stream if k.startswith(TASK_ID_PREFIX)}
    for key in methods:  # the same right answers, over the whole stream
        assert round(on_stream[key] * n_stream) == round(on_seen[key] * n_seen)
    assert tasks_of_classes(torch.tensor([2, 0, 1]), torch.tensor([0, 2, 5])).tolist() == [2, 1, -1]


# ------------------------------------------------------------------- 4. periodic evaluation
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_periodic_evaluation_runs_before_the_first_experience(protocol) -> None:
    """Avalanche's PeriodicEval (eval_every=1) evaluates before anything is learned: chance."""
    benchmark = digits_benchmark(protocol)
    strategy = memory_strategy(protocol, eval_every=1)
    for experience in benchmark.train_stream[:2]:
        strategy.train(experience, eval_streams=[benchmark.test_stream])
    history = strategy.evaluator.get_all_metrics()
    stream = benchmark.test_stream
    if protocol == "task":  # each experience at chance over its own classes
        for experience in stream:
            t = experience.current_experience
            _, values = history[f"Top1_Acc_Exp/eval_phase/test_stream/Task{t:03d}/Exp{t:03d}"]
            assert values[0] == pytest.approx(_share_of_first_class(experience), abs=1e-12)
    else:  # every class gets the same logit: argmax says class 0
        targets = torch.cat([_targets(e) for e in stream])
        _, values = history[f"{STREAM_ACCURACY}/Task000"]
        assert values[0] == pytest.approx(float((targets == 0).sum()) / len(targets), abs=1e-12)
    assert len(values) == 2 * 2  # before each experience, and after its one epoch
    assert list(strategy.model.vit.tasks) == ["exp0", "exp1"]


# ------------------------------------------------------------------- 5. optimizer
def test_optimizer_factory_is_used_and_an_optimizer_instance_is_refused() -> None:
    built: list[torch.optim.Optimizer] = []

    def sgd(groups: list[dict]) -> torch.optim.Optimizer:
        built.append(torch.optim.SGD(groups, momentum=0.9))
        return built[-1]

    _, strategy = _trained("task", 2, optimizer=sgd, lr=1e-3, head_lr=1e-2)
    assert len(built) == 2 and strategy.optimizer is built[-1]
    adapter = strategy.model.vit.tasks["exp1"]
    groups = built[-1].param_groups
    assert [(g["lr"], g["momentum"]) for g in groups] == [(1e-3, 0.9), (1e-2, 0.9)]
    assert [id(p) for p in groups[1]["params"]] == [id(adapter.head.weight), id(adapter.head.bias)]
    assert built[-1].state[adapter.head.weight]["momentum_buffer"] is not None  # it trained

    model = memory_strategy("task").model
    with pytest.raises(TypeError, match=r"optimizer=lambda groups: torch.optim.SGD\(groups, momentum=0.9\)"):
        memory_strategy("task", optimizer=torch.optim.SGD(model.parameters(), lr=0.1))


# ------------------------------------------------------------------- checkpoints
def test_checkpoint_resumes_in_a_new_process_as_if_never_interrupted(tmp_path) -> None:
    """`save_checkpoint` / `maybe_load_checkpoint` as users call them, no `exclude`."""
    interrupted = {p: train_and_checkpoint(p, tmp_path / f"{p}.pkl", stop_after=1) for p in PROTOCOLS}
    out = tmp_path / "resumed.json"
    subprocess.run(
        [sys.executable, str(ROOT / "tests" / "avalanche_user.py"), str(tmp_path), str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    resumed = json.loads(out.read_text())
    for protocol in PROTOCOLS:
        uninterrupted = train_and_checkpoint(protocol, tmp_path / f"{protocol}-whole.pkl")
        assert resumed[protocol] == uninterrupted
        assert len(_experience_accuracies(resumed[protocol]["metrics"])) == 5
        assert interrupted[protocol]["adapters"] != uninterrupted["adapters"]
    assert resumed["task"]["metrics"][FORGETTING] == 0.0


# ------------------------------------------------------------------- the README's script
def test_readme_avalanche_script_runs_as_printed() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Use it from your own Avalanche script\n", 1)[1]
    script = section.split("```python\n", 1)[1].split("```", 1)[0]
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # a tiny model: threads only cost on a busy machine
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    assert re.fullmatch(r"accuracy per experience \[(0\.\d+, ){4}0\.\d+\]", out[-2])
    assert out[-1] == "forgetting 0.0"
