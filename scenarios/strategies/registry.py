"""The strategy registry: one entry per strategy, from which everything else about it is derived.

An entry says how to build the strategy (`build`), which of the budget's learning rates trains it
(`lr_group`), the protocols it runs in, its run time relative to Naive (`cost`, so the longest
runs start first) and a line of help. `StrategySpec` (a strategy as a run names it: name, memory
size, attention, bottleneck size) and `Budget.lr_for` live here, on top of it; `build_strategy`, `compare_specs`,
the worker ordering and `cmem scenario --help` read it too.

A strategy registers itself with `register(...)` in its family's module of this package. Keep
those modules light (no torch, timm or Avalanche at import): import them inside `build`, so that
`cmem scenario --help` lists the strategies without loading any of them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..errors import ScenarioError

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer

    from continual_mem.adapter import AttentionMode

    from ..benchmarks import Protocol, Scenario
    from ..strategy import Route

#: Which of `Budget`'s base rates a strategy trains with (`Budget.lr_<group>`).
LrGroup = Literal["adapter", "prompt", "finetune"]
PROTOCOLS: tuple[Protocol, ...] = ("task", "class")
#: The sizes a strategy named by a pattern (`adapter-R`, `memory-M+adapter-R`) runs at when none is given.
DEFAULT_MEMORY = 5
DEFAULT_BOTTLENECK = 5
#: The size fields of a pattern: {M} memory tokens per layer, {R} bottleneck width.
_PATTERN_FIELDS = {"M": "memory", "R": "bottleneck"}


@dataclass(frozen=True)
class BuildRequest:
    """What a builder gets: the run's spec, scenario, backbone (its own copy), budget and rate."""

    spec: StrategySpec
    scenario: Scenario
    backbone: VisionTransformer
    budget: Budget
    lr: float
    route: Route
    #: The Avalanche template arguments every strategy shares (batch sizes, epochs, device,
    #: evaluator, and the shared plugins); a builder may override some (NCM trains one pass).
    common: dict[str, Any]


@dataclass(frozen=True)
class StrategyEntry:
    """One registered strategy.

    `name` is what `StrategySpec.name` holds. A `sized` strategy takes a memory size, written
    `NAME-M` on the command line (and labelled so in results); an entry with `attention="full"` is
    the full-attention variant of `name`, written `NAME-full-M`. A `pattern` strategy writes its
    sizes where the pattern says: `adapter-{R}` (bottleneck R), `memory-{M}+adapter-{R}`.
    """

    name: str
    build: Callable[[BuildRequest], Any]
    lr_group: LrGroup
    cost: float
    help: str
    protocols: tuple[Protocol, ...] = PROTOCOLS
    sized: bool = False
    attention: Literal["reuse", "full"] = "reuse"
    #: Class protocol: infers the task with the memory strategy's router (`--route`).
    routed: bool = False
    pattern: str | None = None

    @property
    def takes_memory(self) -> bool:
        """Whether runs of it have a memory size (`memory-M`, `memory-M+adapter-R`)."""
        return self.sized or "{M}" in (self.pattern or "")

    @property
    def takes_bottleneck(self) -> bool:
        """Whether runs of it have a bottleneck size (`adapter-R`)."""
        return "{R}" in (self.pattern or "")

    @property
    def key(self) -> str:
        """The registry key: `name`, or `name-full` for a full-attention variant."""
        return f"{self.name}-full" if self.attention == "full" else self.name

    @property
    def usage(self) -> str:
        """How the command line writes it: `memory-M`, `memory-full-M`, `adapter-R`, `ewc`, ..."""
        if self.pattern:
            return self.pattern.format(M="M", R="R")
        return f"{self.key}-M" if self.sized else self.key

    def label(self, memory: int, bottleneck: int = DEFAULT_BOTTLENECK) -> str:
        """The run's label in results: `memory-5`, `memory-full-5`, `adapter-5`, `ewc`, ..."""
        if self.pattern:
            return self.pattern.format(M=memory, R=bottleneck)
        return f"{self.key}-{memory}" if self.sized else self.key

    @property
    def only_protocol(self) -> Protocol | None:
        """The one protocol this strategy runs in, if it does not run in both."""
        return self.protocols[0] if len(self.protocols) == 1 else None


#: Every strategy, in registration order (the order of comparisons and of the help text).
REGISTRY: dict[str, StrategyEntry] = {}


def register(
    name: str,
    build: Callable[[BuildRequest], Any],
    *,
    lr_group: LrGroup,
    cost: float,
    help: str,
    protocols: tuple[Protocol, ...] = PROTOCOLS,
    sized: bool = False,
    attention: Literal["reuse", "full"] = "reuse",
    routed: bool = False,
    pattern: str | None = None,
) -> StrategyEntry:
    """Add a strategy to the registry (a key registered twice is a programming error)."""
    entry = StrategyEntry(name, build, lr_group, cost, help, protocols, sized, attention, routed, pattern)
    if entry.key in REGISTRY:
        raise ValueError(f"strategy {entry.key!r} is registered twice")
    unknown = set(protocols) - set(PROTOCOLS)
    if not protocols or unknown:
        raise ValueError(f"strategy {entry.key!r}: protocols must be some of {PROTOCOLS}, got {protocols}")
    if pattern is not None and (sized or not set(re.findall(r"{(\w*)}", pattern)) <= set(_PATTERN_FIELDS)):
        raise ValueError(f"strategy {entry.key!r}: a pattern takes only {{M}} and {{R}}, and no `sized`")
    REGISTRY[entry.key] = entry
    return entry


def entry_for(name: str, attention: str = "reuse") -> StrategyEntry | None:
    """The entry of a spec's name and attention (a strategy without a full variant ignores it)."""
    if attention == "full" and f"{name}-full" in REGISTRY:
        return REGISTRY[f"{name}-full"]
    return REGISTRY.get(name)


def strategy_names() -> tuple[str, ...]:
    """Every name `StrategySpec` takes (a strategy and its full-attention variant share one)."""
    return tuple(dict.fromkeys(entry.name for entry in REGISTRY.values()))


def sized_usages(name: str | None = None) -> list[str]:
    """`memory-M`, `memory-full-M`: the sized forms (of `name`, or of every sized strategy)."""
    return [e.usage for e in REGISTRY.values() if e.sized and name in (None, e.name)]


def pattern_usages() -> list[str]:
    """`adapter-R`, `memory-M+adapter-R`: the forms of every pattern strategy."""
    return [e.usage for e in REGISTRY.values() if e.pattern]


def parse_sized(text: str) -> tuple[StrategyEntry, int | None] | None:
    """`memory-10` -> (memory, 10); `memory-full` -> (memory-full, None); None if `text` is not sized.

    Raises ValueError for a sized strategy's name with a size that is not a number.
    """
    for entry in sorted((e for e in REGISTRY.values() if e.sized), key=lambda e: -len(e.key)):
        if text == entry.key:
            return entry, None
        if text.startswith(entry.key + "-"):
            rest = text[len(entry.key) + 1 :]
            if not rest:
                return entry, None
            try:
                return entry, int(rest)
            except ValueError:
                raise ValueError(
                    f"bad {entry.name} strategy {text!r}; expected {' or '.join(sized_usages(entry.name))}"
                ) from None
    return None


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """`adapter-{R}` -> a regex whose named groups take whatever stands where the sizes go."""
    parts = re.split(r"{(\w)}", pattern)  # literal, field, literal, field, ..., literal
    return re.compile(
        "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[^-+]*)" for i, p in enumerate(parts)),
    )


def parse_pattern(text: str) -> tuple[StrategyEntry, dict[str, int]] | None:
    """`memory-5+adapter-10` -> (memory+adapter, {"memory": 5, "bottleneck": 10}); None if `text`
    is not written as a pattern strategy.

    Raises ValueError when it has a pattern's shape but a size that is not a number.
    """
    for entry in (e for e in REGISTRY.values() if e.pattern):
        match = _pattern_regex(entry.pattern).fullmatch(text)
        if match is None:
            continue
        try:
            return entry, {_PATTERN_FIELDS[k]: int(v) for k, v in match.groupdict().items()}
        except ValueError:
            raise ValueError(f"bad {entry.name} strategy {text!r}; expected {entry.usage}") from None
    return None


def help_text() -> str:
    """The `--strategy` help: every strategy as the command line writes it."""
    return ", ".join(entry.usage for entry in REGISTRY.values()) + "."


def help_table() -> str:
    """One line per strategy (usage, help, protocol), for a command's epilog (kept unwrapped)."""
    width = max(len(e.usage) for e in REGISTRY.values())
    lines = ["\b", "Strategies:"]
    for e in REGISTRY.values():
        where = f" ({e.only_protocol} only)" if e.only_protocol else ""
        lines.append(f"  {e.usage.ljust(width)}  {e.help}{where}")
    return "\n".join(lines)


@dataclass(frozen=True)
class StrategySpec:
    """A registered strategy's name (`scenarios.strategies`), its memory size, attention mode and
    bottleneck size (the adapter strategies' R; the others ignore it)."""

    name: str
    memory: int = DEFAULT_MEMORY
    attention: AttentionMode = "reuse"
    bottleneck: int = DEFAULT_BOTTLENECK

    def __post_init__(self) -> None:
        if entry_for(self.name) is None:
            known = ", ".join([*strategy_names(), *sized_usages(), *pattern_usages()])
            raise ScenarioError(f"unknown strategy {self.name!r} (known: {known})")
        if self.entry.takes_memory and self.memory < 1:
            raise ScenarioError(f"memory size must be >= 1, got {self.memory}")
        if self.entry.takes_bottleneck and self.bottleneck < 1:
            raise ScenarioError(f"bottleneck size must be >= 1, got {self.bottleneck}")

    @classmethod
    def parse(cls, text: str, memory: int | None = None) -> StrategySpec:
        """`memory-10`, `memory-full-10` (input tokens attend to the memory too), `memory` or
        `memory-full` (with `memory` or 5 tokens), `adapter-5`, `memory-5+adapter-5`, or any other
        strategy name."""
        default = memory if memory is not None else DEFAULT_MEMORY
        try:
            patterned = parse_pattern(text)
            sized = parse_sized(text) if patterned is None else None
        except ValueError as exc:
            raise ScenarioError(str(exc)) from None
        if patterned is not None:
            entry, sizes = patterned
            return cls(entry.name, **{"memory": default, **sizes}, attention=entry.attention)
        if sized is None:
            return cls(text, default)
        entry, size = sized
        return cls(entry.name, size if size is not None else default, entry.attention)

    @property
    def entry(self) -> StrategyEntry:
        """The registry's entry for this strategy (and attention mode)."""
        entry = entry_for(self.name, self.attention)
        assert entry is not None, self.name  # __post_init__ checked the name
        return entry

    @property
    def label(self) -> str:
        return self.entry.label(self.memory, self.bottleneck)

    def supports(self, protocol: Protocol) -> bool:
        return self.only_protocol in (None, protocol)

    @property
    def only_protocol(self) -> Protocol | None:
        """The one protocol this strategy runs in, if it does not run in both."""
        return self.entry.only_protocol


@dataclass(frozen=True)
class Budget:
    """Training budget shared by every strategy of a comparison.

    One schedule for all (AdamW, cosine from the base rate to 0 within each experience, same
    epochs, batch size and seed); the base rate depends on what is trained: task heads and L2P
    prompts learn from scratch and take a high rate, memory and class tokens a tenth of it (they
    pass through LayerNorm, see `TaskAdapter.param_groups`), fine-tuning a whole pretrained ViT a
    low one.
    NCM is fitted in one pass over the data, without gradients. The defaults fit the full
    split-digits comparison into 20 minutes on 2 CPU cores; with about 250 training images per
    experience they give 80 optimizer steps per experience.
    """

    epochs: int = 5
    batch_size: int = 16
    eval_batch_size: int = 256
    lr_adapter: float = 3e-3
    lr_head: float = 3e-2
    lr_prompt: float = 3e-2
    lr_finetune: float = 1e-4
    weight_decay: float = 0.0
    seed: int = 0

    def lr_for(self, spec: StrategySpec) -> float:
        """The base rate of the strategy's learning-rate group (`lr_adapter`, `lr_prompt`, `lr_finetune`)."""
        return float(getattr(self, f"lr_{spec.entry.lr_group}"))


QUICK_BUDGET = Budget(epochs=1)
