"""Issue 10 in the scenarios: the backbone cache, the validation split, learning rates chosen on it.

Tiny random ViTs and a few images per class; every run here takes about a second.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_vit
from torch.utils.data import Dataset

from scenarios.backbone_cache import BackboneCache, deterministic_input
from scenarios.lr_selection import ADAPTER_GRID, chosen_budget, selection_requests, selections
from scenarios.runner import Budget, ScenarioKey, StrategySpec, run_requests, run_strategy
from scenarios.validation import VALIDATION_FRACTION

FAST = Budget(epochs=2, batch_size=16)
LIMIT = 10

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def backbone():
    return tiny_vit(num_classes=8)


def _run(key: ScenarioKey, backbone, label: str, cache: BackboneCache | None) -> tuple[object, dict]:
    """A run, and its adapters' tensors after the last experience."""
    scenario = key.build(backbone)
    final: dict[str, torch.Tensor] = {}

    def grab(i: int, strategy) -> None:
        if i == scenario.n_experiences - 1 and hasattr(strategy.model, "vit"):
            final.update({k: v.clone() for k, v in strategy.model.vit.tasks.state_dict().items()})

    result = run_strategy(
        scenario, StrategySpec.parse(label), backbone, FAST, progress=False, after_experience=grab, backbone_cache=cache
    )
    return result, final


@pytest.mark.parametrize(("protocol", "label"), [("task", "memory-5"), ("class", "memory-5"), ("task", "head-only")])
def test_backbone_cache_gives_bit_equal_runs(backbone, protocol, label) -> None:
    key = ScenarioKey("split-digits", protocol, limit_per_class=LIMIT)
    cache = BackboneCache()
    plain, plain_tensors = _run(key, backbone, label, None)
    cached, cached_tensors = _run(key, backbone, label, cache)
    assert cached.config["backbone_cache"] and not plain.config["backbone_cache"]
    assert cached.accuracy_matrix == plain.accuracy_matrix
    assert cached.metrics["task_id_accuracy"] == plain.metrics["task_id_accuracy"]
    assert plain_tensors.keys() == cached_tensors.keys()
    assert all(torch.equal(plain_tensors[k], cached_tensors[k]) for k in plain_tensors)
    # every image ran the backbone once (training and test images of 5 experiences); the rest were hits
    assert cache.misses == len(cache) == 10 * LIMIT + 10 * 4 and cache.hits > cache.misses
    # the serving cost is still measured on the backbone, not the cache
    assert cached.metrics["backbone_passes_to_serve_all"] == plain.metrics["backbone_passes_to_serve_all"]


def test_backbone_cache_is_shared_by_strategies_and_skipped_where_it_cannot_help(backbone) -> None:
    key = ScenarioKey("split-digits", "task", limit_per_class=LIMIT)
    cache = BackboneCache()
    _run(key, backbone, "head-class", cache)
    misses = cache.misses
    second, _ = _run(key, backbone, "memory-1", cache)
    assert second.config["backbone_cache"] and cache.misses == misses  # nothing computed again
    full, _ = _run(key, backbone, "memory-full-1", cache)
    assert not full.config["backbone_cache"]  # input tokens attend to the memory: nothing to reuse
    assert not _run(key, backbone, "ncm", cache)[0].config["backbone_cache"]


def test_backbone_cache_budget_and_random_augmentation(backbone) -> None:
    from continual_mem.model import MemoryViT

    vit = MemoryViT(backbone)
    images = torch.randn(4, 3, 32, 32)
    small = BackboneCache(max_bytes=1)
    small.outputs(vit, images)
    assert len(small) == 1 and small.full  # the first image fills it; the others are computed, not kept

    class Noisy(Dataset):
        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            return images[i] + torch.randn_like(images[i]), 0

    assert not deterministic_input(Noisy())
    assert deterministic_input(torch.utils.data.TensorDataset(images, torch.zeros(4)))


def _samples(stream) -> set[tuple[bytes, int, int]]:
    return {(x.numpy().tobytes(), int(y), int(t)) for exp in stream for x, y, t in exp.dataset}


@pytest.mark.parametrize("protocol", ["task", "class"])
def test_validation_split_comes_from_training_data_only(backbone, protocol) -> None:
    scenario = ScenarioKey("split-digits", protocol, limit_per_class=LIMIT).build(backbone)
    key = ScenarioKey("split-digits", protocol, limit_per_class=LIMIT, validation=True)
    validation, again = key.build(backbone), key.build(backbone)
    train, test = _samples(scenario.benchmark.train_stream), _samples(scenario.benchmark.test_stream)
    v_train, v_val = _samples(validation.benchmark.train_stream), _samples(validation.benchmark.test_stream)
    assert v_val <= train and v_train <= train  # the same images with the same labels and task labels
    assert not v_val & v_train and v_val | v_train == train
    assert not {x for x, _, _ in v_val} & {x for x, _, _ in test}  # no test image anywhere
    assert len(v_val) == round(VALIDATION_FRACTION * LIMIT) * 10  # 20% of each class
    assert (v_train, v_val) == (_samples(again.benchmark.train_stream), _samples(again.benchmark.test_stream))
    for exp, val_exp in zip(scenario.benchmark.train_stream, validation.benchmark.test_stream):
        assert exp.classes_in_this_experience == val_exp.classes_in_this_experience
    assert validation.details["validation"]["of"] == "training data"


def test_learning_rate_selection_picks_the_best_validation_rate(backbone) -> None:
    keys = [ScenarioKey("split-digits", "task", limit_per_class=LIMIT)]
    specs = [StrategySpec.parse("head-only"), StrategySpec.parse("ewc")]
    requests = selection_requests(keys, specs, FAST, "cpu", False)
    assert [r.spec.label for r in requests] == ["head-only"] * 3  # ewc keeps the budget's rate
    assert all(r.scenario.validation for r in requests)  # never the test data
    results = run_requests(requests, backbone, progress=False)
    assert all(r.config["validation"]["of"] == "training data" for r in results)
    (chosen,) = selections(requests, results)
    scores = [r.metrics["average_accuracy"] for r in results]
    best = scores.index(max(scores))
    assert chosen.chosen == {"lr_adapter": ADAPTER_GRID[best][0], "lr_head": ADAPTER_GRID[best][1]}
    assert [c.validation_accuracy for c in chosen.candidates] == scores
    tuned = chosen_budget(FAST, "split-digits", "head-only", [chosen])
    assert (tuned.lr_adapter, tuned.lr_head) == ADAPTER_GRID[best]
    assert chosen_budget(FAST, "split-digits", "ewc", [chosen]) == FAST


def test_results_header_reports_the_chosen_rates(tmp_path) -> None:
    from scenarios.lr_selection import Candidate, Selection
    from scenarios.results import ALL_RESULTS, render_results

    memory = Selection(
        "split-digits",
        "memory-5",
        (
            Candidate(dict(lr_adapter=1e-3, lr_head=1e-2), 0.5),
            Candidate(dict(lr_adapter=3e-3, lr_head=3e-2), 0.75),
            Candidate(dict(lr_adapter=1e-2, lr_head=1e-1), 0.75),
        ),
    )
    full = Selection(
        "split-digits",
        "full-ft",
        tuple(Candidate(dict(lr_finetune=r), a) for r, a in ((3e-5, 0.6), (1e-4, 0.5), (3e-4, 0.4))),
    )
    assert memory.chosen == {"lr_adapter": 3e-3, "lr_head": 3e-2}  # the first of a tie
    assert chosen_budget(Budget(), "split-digits", "memory-full-5", [memory, full]).lr_adapter == 3e-3
    kept = {
        "facts": {
            "architecture": "vit",
            "config": {"img_size": 32, "patch_size": 4, "depth": 4, "embed_dim": 192, "num_heads": 3},
            "parameters": 1e6,
            "sha256": "ab" * 32,
        },
        "budget": vars(Budget()),
        "seeds": [0],
        "quick": False,
        "command": "cmem scenario results --seeds 0,1,2",
        "elapsed_s": 600.0,
        "generated_at": "2026-01-01T00:00:00+00:00",
        "results": [],
        "lr_selection": [memory.to_dict(), full.to_dict()],
    }
    (tmp_path / ALL_RESULTS).write_text(json.dumps(kept))
    doc = render_results(tmp_path)
    header = doc[: doc.index("## Setup")]
    assert (
        "| split-digits | memory-5 | 1e-03 / 1e-02 -> 50.0; **3e-03 / 3e-02 -> 75.0**; 1e-02 / 1e-01 -> 75.0 | 3e-03 / 3e-02 |"
        in header
    )
    assert "| split-digits | full-ft | **3e-05 -> 60.0**; 1e-04 -> 50.0; 3e-04 -> 40.0 | 3e-05 |" in header
    assert "| `cmem scenario results --seeds 0,1,2` | 43 min (idle) | 10.0 min (this run) |" in header
    assert "| `cmem scenario compare split-digits` | 878 s (idle, 30 runs) |" in header
