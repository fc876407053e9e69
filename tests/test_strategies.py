"""The strategy registry drives everything: names, parsing, building, rates, costs, comparisons, help."""

from __future__ import annotations

import pkgutil

import pytest
import torch
from click.testing import CliRunner
from conftest import tiny_vit

import scenarios.strategies as strategies_package
from continual_mem.cli.scenario import scenario_group
from continual_mem.data import InputSpec
from scenarios.benchmarks import split_digits
from scenarios.plugins import CosineSchedule, TrainableCounter
from scenarios.runner import Budget, StrategySpec, _relative_cost, build_strategy, compare_specs
from scenarios.strategies import FAMILIES, REGISTRY, STRATEGIES, BuildRequest, register
from scenarios.strategies.registry import DEFAULT_BOTTLENECK, DEFAULT_MEMORY, StrategyEntry

FAST = Budget(epochs=1, batch_size=16)


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return tiny_vit(num_classes=8)


@pytest.fixture(scope="module")
def scenarios_by_protocol(backbone):
    spec = InputSpec.from_backbone(backbone)
    return {p: split_digits(spec, p, limit_per_class=4) for p in ("task", "class")}


def _spec(entry: StrategyEntry) -> StrategySpec:
    """A sized strategy at size 2; a pattern strategy at the sizes a comparison runs it (5 and 5)."""
    if entry.pattern:
        return StrategySpec(entry.name, DEFAULT_MEMORY, entry.attention, DEFAULT_BOTTLENECK)
    return StrategySpec(entry.name, 2, entry.attention)


def test_every_family_module_is_listed() -> None:
    modules = {m.name for m in pkgutil.iter_modules(strategies_package.__path__)} - {"registry"}
    assert set(FAMILIES) == modules


def test_every_entry_has_a_rate_a_cost_protocols_and_help() -> None:
    assert tuple(dict.fromkeys(e.name for e in REGISTRY.values())) == STRATEGIES
    for key, entry in REGISTRY.items():
        spec = _spec(entry)
        assert spec.entry is entry and entry.key == key
        assert Budget().lr_for(spec) == getattr(Budget(), f"lr_{entry.lr_group}") > 0
        assert _relative_cost(spec) == entry.cost > 0
        assert entry.help and set(entry.protocols) <= {"task", "class"}
        parsed = StrategySpec.parse(spec.label)  # the label parses back to the same strategy and size
        assert parsed.entry is entry and parsed.label == spec.label
        for protocol in ("task", "class"):
            listed = [s.label for s in compare_specs(protocol, (2,))]
            assert (spec.label in listed) == (protocol in entry.protocols), (spec.label, protocol)


@pytest.mark.parametrize("key", list(REGISTRY))
def test_every_entry_builds_in_each_protocol_it_runs_in(key, backbone, scenarios_by_protocol) -> None:
    entry = REGISTRY[key]
    for protocol, scenario in scenarios_by_protocol.items():
        spec = _spec(entry)
        if protocol not in entry.protocols:
            with pytest.raises(Exception, match="protocol only"):
                build_strategy(spec, scenario, backbone, FAST)
            continue
        strategy = build_strategy(spec, scenario, backbone, FAST)
        assert any(isinstance(p, TrainableCounter) for p in strategy.plugins)
        schedules = [p for p in strategy.plugins if isinstance(p, CosineSchedule)]
        assert key == "ncm" or schedules[0].lr == FAST.lr_for(spec)  # NCM takes no gradient step


def test_help_lists_every_strategy() -> None:
    for command in ("run", "compare"):
        text = CliRunner().invoke(scenario_group, [command, "--help"]).output
        for entry in REGISTRY.values():
            assert entry.usage in text and entry.help[:30] in " ".join(text.split()), (command, entry.usage)


def test_a_new_strategy_is_one_registration(backbone, scenarios_by_protocol) -> None:
    """Registering an entry is all it takes: the spec parses, builds, has a rate, cost and place."""
    built = []

    def build(request: BuildRequest):
        built.append(request)
        return "a strategy"

    entry = register("test-only", build, lr_group="prompt", cost=2.5, help="a test", protocols=("class",))
    try:
        spec = StrategySpec("test-only")
        assert spec.label == "test-only" and spec.only_protocol == "class"
        assert FAST.lr_for(spec) == FAST.lr_prompt and _relative_cost(spec) == 2.5
        assert build_strategy(spec, scenarios_by_protocol["class"], backbone, FAST) == "a strategy"
        assert built[0].lr == FAST.lr_prompt and built[0].scenario.protocol == "class"
        assert "test-only" in [s.label for s in compare_specs("class")]
        assert "test-only" not in [s.label for s in compare_specs("task")]
        with pytest.raises(ValueError, match="registered twice"):
            register("test-only", build, lr_group="prompt", cost=1.0, help="again")
    finally:
        del REGISTRY[entry.key]


@pytest.mark.parametrize(
    ("text", "label", "memory", "bottleneck"),
    [
        ("adapter-7", "adapter-7", 5, 7),
        ("adapter", "adapter-5", 5, 5),
        ("memory-3+adapter-9", "memory-3+adapter-9", 3, 9),
    ],
)
def test_pattern_strategies_parse_their_sizes(text, label, memory, bottleneck) -> None:
    spec = StrategySpec.parse(text)
    assert (spec.label, spec.memory, spec.bottleneck) == (label, memory, bottleneck)
    assert spec.entry.takes_bottleneck and spec.entry.takes_memory == ("memory" in text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("adapter-0", "bottleneck size must be >= 1, got 0"),
        ("adapter-x", "bad adapter strategy 'adapter-x'; expected adapter-R"),
        ("memory-5+adapter-x", "expected memory-M\\+adapter-R"),
        ("memory-0+adapter-5", "memory size must be >= 1, got 0"),
    ],
)
def test_pattern_strategies_refuse_bad_sizes(text, message) -> None:
    from scenarios.errors import ScenarioError

    with pytest.raises(ScenarioError, match=message):
        StrategySpec.parse(text)


def test_comparisons_run_the_combination_once() -> None:
    """memory-5+adapter-5 only, whatever the memory sizes compared."""
    for protocol in ("task", "class"):
        labels = [s.label for s in compare_specs(protocol, (1, 5, 10, 20))]
        assert [x for x in labels if "adapter" in x] == ["adapter-5", "memory-5+adapter-5"]
