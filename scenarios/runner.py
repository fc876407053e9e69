"""Run strategies on a scenario: the same backbone, data, budget and seed for every one.

`run_strategy` trains experience by experience and, after each, evaluates the experiences seen so
far through Avalanche's EvaluationPlugin: row i of the accuracy matrix. Metrics are defined in
`scenarios.metrics`. With `amp`, training and evaluation run under bf16 autocast on the run's
device (the CLI allows it on CUDA only); float32 otherwise.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from timm.models.vision_transformer import VisionTransformer

from . import avalanche_deprecations_dropped
from .backbone_cache import BackboneCache, deterministic_input
from .benchmarks import Protocol, Scenario, ScenarioError
from .metrics import (
    BWT_KEY,
    FORGETTING_KEY,
    accuracy_row,
    average_accuracy,
    make_evaluator,
    passes_to_serve_all,
    pretrained_keys,
    stored_bytes,
    task_id_accuracies,
)
from .plugins import CosineSchedule, TrainableCounter
from .strategies import QUICK_BUDGET as QUICK_BUDGET  # defined with the registry, importable from here too
from .strategies import REGISTRY, Budget, BuildRequest, StrategySpec
from .strategies.registry import DEFAULT_MEMORY
from .strategy import DEFAULT_ROUTE, Route

MEMORY_SIZES = (1, 5, 10, 20)
PROBE_IMAGES = 8


@dataclass
class RunResult:
    """One strategy on one scenario: the accuracy matrix (row i: after experience i) and metrics."""

    scenario: str
    strategy: str
    protocol: Protocol
    accuracy_matrix: list[list[float]]
    metrics: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        keys = {"scenario", "strategy", "protocol", "accuracy_matrix", "metrics", "config", "wall_time_s"}
        return cls(**{k: v for k, v in data.items() if k in keys})


def build_strategy(
    spec: StrategySpec,
    scenario: Scenario,
    backbone: VisionTransformer,
    budget: Budget,
    device: str = "cpu",
    route: Route = DEFAULT_ROUTE,
):
    """The Avalanche strategy of `spec` on `backbone` (which it may train: pass a copy)."""
    if not spec.supports(scenario.protocol):
        raise ScenarioError(f"{spec.label} runs in the {spec.only_protocol} protocol only")
    lr = budget.lr_for(spec)
    common: dict[str, Any] = {
        "train_mb_size": budget.batch_size,
        "train_epochs": budget.epochs,
        "eval_mb_size": budget.eval_batch_size,
        "device": device,
        "evaluator": make_evaluator(scenario.class_tasks() if scenario.protocol == "class" else None),
        "plugins": [TrainableCounter(), CosineSchedule(lr)],
    }
    return spec.entry.build(BuildRequest(spec, scenario, backbone, budget, lr, route, common))


def _probe(scenario: Scenario, device: str) -> tuple[torch.Tensor, Any]:
    """A few test images, and the experience they come from."""
    experience = scenario.benchmark.test_stream[0]
    dataset = experience.dataset
    return torch.stack([dataset[i][0] for i in range(min(PROBE_IMAGES, len(dataset)))]).to(device), experience


def precision(device: str, amp: bool) -> torch.autocast:
    """bf16 autocast on `device` with `amp`; a context that changes nothing without."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp)


def run_strategy(
    scenario: Scenario,
    spec: StrategySpec,
    backbone: VisionTransformer,
    budget: Budget = Budget(),
    device: str = "cpu",
    route: Route = DEFAULT_ROUTE,
    progress: bool | None = None,
    after_experience: Callable[[int, Any], None] | None = None,
    amp: bool = False,
    backbone_cache: BackboneCache | None = None,
) -> RunResult:
    """Train `spec` through the scenario's experiences; evaluate the seen ones after each.

    `after_experience(i, strategy)` runs after experience i's evaluation (tests use it to look at
    the model). `progress=None` shows a progress bar on terminals only. `backbone_cache`: the
    frozen backbone's outputs per image, for reuse-mode models (those with a `backbone_cache`
    attribute), unless the scenario's training images are randomly augmented; results are the same
    with or without it.
    """
    with precision(device, amp):
        return _run(scenario, spec, backbone, budget, device, amp, route, progress, after_experience, backbone_cache)


def _run(
    scenario: Scenario,
    spec: StrategySpec,
    backbone: VisionTransformer,
    budget: Budget,
    device: str,
    amp: bool,
    route: Route,
    progress: bool | None,
    after_experience: Callable[[int, Any], None] | None,
    backbone_cache: BackboneCache | None,
) -> RunResult:
    from avalanche.training.determinism.rng_manager import RNGManager
    from tqdm.auto import tqdm

    RNGManager.set_random_seeds(budget.seed)
    free = pretrained_keys(backbone)
    strategy = build_strategy(spec, scenario, copy.deepcopy(backbone), budget, device, route)
    cached = _attach_cache(strategy.model, scenario, backbone_cache)
    train_stream, test_stream = scenario.benchmark.train_stream, scenario.benchmark.test_stream
    matrix: list[list[float]] = []
    train_time = eval_time = 0.0
    metrics: dict[str, float] = {}
    start, cpu_start = time.perf_counter(), time.process_time()
    bar = tqdm(
        list(train_stream),
        desc=f"{scenario.name}/{scenario.protocol}/{spec.label}",
        unit="exp",
        disable=None if progress is None else not progress,
        leave=False,
    )
    for i, experience in enumerate(bar):
        t0 = time.perf_counter()
        with avalanche_deprecations_dropped():
            strategy.train(experience)
        t1 = time.perf_counter()
        strategy.evaluator.reset_last_metrics()
        metrics = strategy.eval(test_stream[: i + 1])
        eval_time += time.perf_counter() - t1
        train_time += t1 - t0
        matrix.append(accuracy_row(metrics, i + 1))
        bar.set_postfix(acc=f"{average_accuracy(matrix):.3f}")
        if after_experience is not None:
            after_experience(i, strategy)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    n = scenario.n_experiences
    stored = stored_bytes(strategy, free)
    task_ids = task_id_accuracies(metrics)
    counter = next(p for p in strategy.plugins if isinstance(p, TrainableCounter))
    probe, probe_experience = _probe(scenario, device)
    if cached:  # serving counts the backbone passes it would run, not the cache's
        strategy.model.backbone_cache = None
    passes = passes_to_serve_all(strategy, probe, probe_experience)
    summary: dict[str, Any] = {
        "average_accuracy": average_accuracy(matrix),
        "forgetting": float(metrics.get(FORGETTING_KEY, 0.0)),
        "bwt": float(metrics.get(BWT_KEY, 0.0)),
        "task_id_accuracy": task_ids.get(route, task_ids.get("argmax")),
        "task_id_accuracy_by_route": task_ids or None,
        "trainable_params_per_task": sum(counter.per_experience) / n,
        "stored_bytes_per_task": stored.total / n,
        "serving_bytes_per_task": stored.serving / n,
        "learning_bytes_per_task": stored.learning / n,
        "backbone_passes_to_serve_all": passes.images / probe.shape[0],
        "model_input_size": _one_size(passes.sizes),
        "train_time_s": train_time,
        "eval_time_s": eval_time,
        # CPU seconds of the run (one thread): about its wall time on an idle core, whatever the load
        "cpu_time_s": cpu,
    }
    config = {
        **scenario.describe(),
        "strategy": spec.label,
        "budget": asdict(budget),
        "lr": budget.lr_for(spec),
        "route": route if scenario.protocol == "class" and spec.entry.routed else None,
        "device": device,
        "amp": amp,
        "backbone_cache": cached,
    }
    return RunResult(scenario.name, spec.label, scenario.protocol, matrix, summary, config, wall)


def _attach_cache(model: Any, scenario: Scenario, cache: BackboneCache | None) -> bool:
    """Give `model` the cache if it takes one (reuse-mode memory models) and the input is deterministic."""
    if cache is None or not hasattr(model, "backbone_cache"):
        return False
    if getattr(model, "full_attention", False) or not deterministic_input(scenario.benchmark.train_stream[0].dataset):
        return False
    model.backbone_cache = cache
    return True


def _one_size(sizes: set[tuple[int, int]]) -> list[int]:
    """The (H, W) every backbone pass got (measured at the patch embeddings)."""
    if len(sizes) != 1:
        raise RuntimeError(f"the backbone passes got images of {len(sizes)} sizes: {sorted(sizes)}")
    return list(next(iter(sizes)))


@dataclass(frozen=True)
class ScenarioKey:
    """What builds a scenario; runs in worker processes rebuild it from this (cheap, seeded).

    `n_experiences` None: the scenario's default; `first_classes`: classes in the first experience.
    """

    name: str
    protocol: Protocol
    class_order: tuple[int, ...] | None = None
    limit_per_class: int | None = None
    download: bool = False
    n_experiences: int | None = None
    first_classes: int | None = None
    #: Train on 80% of the training data, test on the other 20% (`scenarios.validation`), not on the test data.
    validation: bool = False

    def build(self, backbone: VisionTransformer) -> Scenario:
        from continual_mem.data import InputSpec

        from .benchmarks import build_scenario
        from .validation import validation_scenario

        scenario = build_scenario(
            self.name,
            InputSpec.from_backbone(backbone),
            self.protocol,
            self.class_order,
            self.n_experiences,
            limit_per_class=self.limit_per_class,
            download=self.download,
            first_classes=self.first_classes,
        )
        return validation_scenario(scenario) if self.validation else scenario


@dataclass(frozen=True)
class RunRequest:
    """One run of a comparison."""

    scenario: ScenarioKey
    spec: StrategySpec
    budget: Budget
    device: str = "cpu"
    route: Route = DEFAULT_ROUTE
    amp: bool = False


def _relative_cost(spec: StrategySpec) -> float:
    """Rough run time relative to Naive (the registry's, measured on split-digits), used to start the
    longest runs first so that parallel workers finish together."""
    return spec.entry.cost


class _Worker:
    """Per-process state: the backbone and the scenarios built so far."""

    backbone: ClassVar[VisionTransformer | None] = None
    scenarios: ClassVar[dict[ScenarioKey, Scenario]] = {}
    cache: ClassVar[BackboneCache | None] = None

    @classmethod
    def start(cls, backbone: VisionTransformer, threads: int) -> None:
        torch.set_num_threads(threads)
        cls.backbone, cls.scenarios, cls.cache = backbone, {}, BackboneCache()

    @classmethod
    def run(cls, request: RunRequest) -> RunResult:
        assert cls.backbone is not None, "worker not started"
        if request.scenario not in cls.scenarios:
            cls.scenarios[request.scenario] = request.scenario.build(cls.backbone)
        scenario = cls.scenarios[request.scenario]
        return run_strategy(
            scenario,
            request.spec,
            cls.backbone,
            request.budget,
            request.device,
            request.route,
            False,
            amp=request.amp,
            backbone_cache=cls.cache,
        )


def run_requests(
    requests: Sequence[RunRequest],
    backbone: VisionTransformer,
    jobs: int = 1,
    threads: int = 1,
    on_result: Callable[[RunRequest, RunResult], None] | None = None,
    progress: bool | None = None,
) -> list[RunResult]:
    """Run every request, in `jobs` worker processes of `threads` PyTorch threads each.

    Worker processes (not threads) use several cores even for these small models, and do not
    suffer from intra-op thread oversubscription on a busy machine. Results come back in request
    order; `on_result` sees each as it completes (in the calling process).
    """
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    from tqdm.auto import tqdm

    results: dict[int, RunResult] = {}
    bar = tqdm(total=len(requests), desc="runs", unit="run", disable=None if progress is None else not progress)
    if jobs <= 1:
        previous = torch.get_num_threads()
        _Worker.start(backbone, threads)
        try:
            for i, request in enumerate(requests):
                results[i] = _Worker.run(request)
                if on_result is not None:
                    on_result(request, results[i])
                bar.update()
        finally:
            torch.set_num_threads(previous)
    else:
        context = get_context("spawn")  # a fresh interpreter: no forked torch thread pools
        with ProcessPoolExecutor(
            jobs, mp_context=context, initializer=_Worker.start, initargs=(backbone, threads)
        ) as pool:
            longest_first = sorted(range(len(requests)), key=lambda i: -_relative_cost(requests[i].spec))
            futures = {pool.submit(_Worker.run, requests[i]): i for i in longest_first}
            for future in as_completed(futures):
                i = futures[future]
                results[i] = future.result()
                if on_result is not None:
                    on_result(requests[i], results[i])
                bar.update()
    bar.close()
    return [results[i] for i in range(len(requests))]


def compare_specs(protocol: Protocol, memory_sizes: Sequence[int] = MEMORY_SIZES) -> list[StrategySpec]:
    """Every strategy that runs in `protocol`: memory sizes (reuse, and full attention where the
    task label is given), the paper's columns, adapters and the combination at their default sizes
    only (memory-5+adapter-5: one run, not one per memory size), the baselines."""
    specs = []
    for entry in REGISTRY.values():
        sizes = memory_sizes if entry.sized else (DEFAULT_MEMORY,)
        specs += [StrategySpec(entry.name, m, entry.attention) for m in sizes]
    return [s for s in specs if s.supports(protocol)]
