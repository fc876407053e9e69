"""Each Table 2 and Table 4 regime's learning rate, chosen on a validation split of the training data.

The seed's Table 2 reports every fine-tuning regime at its own best learning rate. Here each
regime of a scenario (full fine-tuning, head only, head + class token, memory 1/5/10/20 in reuse
mode, and Table 4's adapter-5 and memory-5+adapter-5, so that memory meets adapters each at its
own best rate) trains once per candidate of its grid on the validation scenario
(`scenarios.validation`: 80% of each class's training images to train, the other 20% to score; the test images are never
read), seed = the first seed, task protocol; the best validation average accuracy wins (the first
candidate of the grid on a tie). Memory with full attention borrows the rate chosen for the same
memory size in reuse mode (the same parameters learn; its runs cannot share the backbone cache).
The final runs of that label, in both protocols and every seed, train with the chosen rate on the
whole training data and are tested on the test data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from .runner import Budget, RunRequest, RunResult, ScenarioKey, StrategySpec

#: Candidates of the memory / head regimes: (rate of memory and class tokens, rate of the head).
ADAPTER_GRID: tuple[tuple[float, float], ...] = ((1e-3, 1e-2), (3e-3, 3e-2), (1e-2, 1e-1))
#: Candidates of full fine-tuning (a whole pretrained ViT).
FINETUNE_GRID: tuple[float, ...] = (3e-5, 1e-4, 3e-4)
#: Labels whose rate is chosen (Table 2's, Table 4's adapters); a full-attention memory borrows its size's.
SELECTED = (
    "full-ft",
    "head-only",
    "head-class",
    "memory-1",
    "memory-5",
    "memory-10",
    "memory-20",
    "adapter-5",
    "memory-5+adapter-5",
)

Rates = dict[str, float]


def rate_label(label: str) -> str | None:
    """The label whose chosen rate a run of `label` uses (None: the budget's own rate)."""
    label = label.replace("memory-full-", "memory-")
    return label if label in SELECTED else None


def candidates(label: str) -> list[Rates]:
    """The budget fields each candidate of `label`'s regime sets."""
    if label == "full-ft":
        return [{"lr_finetune": lr} for lr in FINETUNE_GRID]
    return [{"lr_adapter": lr, "lr_head": head} for lr, head in ADAPTER_GRID]


def rates_text(rates: Rates) -> str:
    """`3e-03 / 3e-02` (memory and class tokens / head) or `1e-04` (the whole ViT)."""
    if "lr_finetune" in rates:
        return f"{rates['lr_finetune']:.0e}"
    return f"{rates['lr_adapter']:.0e} / {rates['lr_head']:.0e}"


@dataclass(frozen=True)
class Candidate:
    """One validation run of a regime: its rates and what it scored."""

    rates: Rates
    validation_accuracy: float


@dataclass(frozen=True)
class Selection:
    """A regime's candidates on one scenario, and the rates it trains with from then on."""

    scenario: str
    label: str
    candidates: tuple[Candidate, ...]

    @property
    def chosen(self) -> Rates:
        # max keeps the first of equals: a tie goes to the earlier rate of the grid
        return max(self.candidates, key=lambda c: c.validation_accuracy).rates

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "label": self.label,
            "candidates": [{"rates": c.rates, "validation_accuracy": c.validation_accuracy} for c in self.candidates],
            "chosen": self.chosen,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Selection:
        found = tuple(Candidate(c["rates"], c["validation_accuracy"]) for c in data["candidates"])
        return cls(data["scenario"], data["label"], found)


def selection_requests(
    keys: Sequence[ScenarioKey], specs: Sequence[StrategySpec], base: Budget, device: str, amp: bool
) -> list[RunRequest]:
    """Every validation run: each task-protocol key's validation scenario, each selected spec, each candidate."""
    requests = []
    for key in keys:
        validation = replace(key, validation=True)
        for spec in specs:
            if spec.label in SELECTED:
                requests += [
                    RunRequest(validation, spec, replace(base, **r), device, amp=amp) for r in candidates(spec.label)
                ]
    return requests


def selections(requests: Sequence[RunRequest], results: Sequence[RunResult]) -> list[Selection]:
    """The validation runs grouped by scenario and label, in request order."""
    found: dict[tuple[str, str], list[Candidate]] = {}
    for request, result in zip(requests, results):
        rates = {k: getattr(request.budget, k) for k in candidates(request.spec.label)[0]}
        found.setdefault((result.scenario, result.strategy), []).append(
            Candidate(rates, result.metrics["average_accuracy"])
        )
    return [Selection(scenario, label, tuple(c)) for (scenario, label), c in found.items()]


def chosen_budget(budget: Budget, scenario: str, label: str, chosen: Sequence[Selection]) -> Budget:
    """`budget` with the rates chosen for `label` (or the label it borrows from) on `scenario`."""
    source = rate_label(label)
    for selection in chosen:
        if (selection.scenario, selection.label) == (scenario, source):
            return replace(budget, **selection.chosen)
    return budget


def chosen_table(chosen: Sequence[Selection]) -> str:
    """Markdown: per scenario and regime, each candidate's validation accuracy; the chosen one in bold."""
    lines = [
        "| scenario | regime | candidates: rate(s) -> validation accuracy (%) | chosen |",
        "|---|---|---|---|",
    ]
    for s in chosen:
        cells = []
        for c in s.candidates:
            text = f"{rates_text(c.rates)} -> {100 * c.validation_accuracy:.1f}"
            cells.append(f"**{text}**" if c.rates == s.chosen else text)
        lines.append(f"| {s.scenario} | {s.label} | {'; '.join(cells)} | {rates_text(s.chosen)} |")
    return "\n".join(lines)
