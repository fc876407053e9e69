"""The strategy registry: one entry per strategy, from which everything else about it is derived.

An entry says how to build the strategy (`build`), which of the budget's learning rates trains it
(`lr_group`), the protocols it runs in, its run time relative to Naive (`cost`, so the longest
runs start first) and a line of help. `StrategySpec`'s names and parsing, `build_strategy`,
`Budget.lr_for`, `compare_specs`, the worker ordering and `cmem scenario --help` all read it.

A strategy registers itself with `register(...)` in its family's module of this package. Keep
those modules light (no torch, timm or Avalanche at import): import them inside `build`, so that
`cmem scenario --help` lists the strategies without loading any of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer

    from ..benchmarks import Protocol, Scenario
    from ..runner import Budget, StrategySpec
    from ..strategy import Route

#: Which of `Budget`'s base rates a strategy trains with (`Budget.lr_<group>`).
LrGroup = Literal["adapter", "prompt", "finetune"]
PROTOCOLS: tuple[Protocol, ...] = ("task", "class")


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
    the full-attention variant of `name`, written `NAME-full-M`.
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

    @property
    def key(self) -> str:
        """The registry key: `name`, or `name-full` for a full-attention variant."""
        return f"{self.name}-full" if self.attention == "full" else self.name

    @property
    def usage(self) -> str:
        """How the command line writes it: `memory-M`, `memory-full-M`, `ewc`, ..."""
        return f"{self.key}-M" if self.sized else self.key

    def label(self, memory: int) -> str:
        """The run's label in results: `memory-5`, `memory-full-5`, `ewc`, ..."""
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
) -> StrategyEntry:
    """Add a strategy to the registry (a key registered twice is a programming error)."""
    entry = StrategyEntry(name, build, lr_group, cost, help, protocols, sized, attention, routed)
    if entry.key in REGISTRY:
        raise ValueError(f"strategy {entry.key!r} is registered twice")
    unknown = set(protocols) - set(PROTOCOLS)
    if not protocols or unknown:
        raise ValueError(f"strategy {entry.key!r}: protocols must be some of {PROTOCOLS}, got {protocols}")
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
