"""Runs one dynamic batch: ONE reuse pass per backbone for the union of the reuse tasks asked for.

Only the inference thread calls `Engine.run`. Each request (`Job`) carries the images it sent and
the task versions it was resolved to when it arrived, so requests resolved against different
snapshots can share a batch and each still gets the versions it started with. Reuse-mode tasks of
every request in the batch share one backbone pass over all their images; full-mode tasks run as
mixed-task batches, each image once per full task it asked for.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from continual_mem.model import MemoryViT

from .snapshot import AdapterKey, LoadedBackbone, ServedTask


@dataclass(frozen=True)
class Job:
    """One request as the engine sees it: decoded images (3, H, W) and the task versions to answer."""

    images: tuple[Tensor, ...]
    tasks: tuple[ServedTask, ...]
    top_k: int


@dataclass(frozen=True)
class TopLabel:
    label: str
    probability: float


@dataclass
class JobAnswer:
    """Per image, per task name: the top labels. `backbone_passes` counts what each image cost."""

    per_image: list[dict[str, list[TopLabel]]]
    backbone_passes: int


@dataclass
class BatchStats:
    images: int
    requests: int
    tasks_per_reuse_pass: list[int] = field(default_factory=list)
    full_task_runs: int = 0
    seconds: float = 0.0


@dataclass
class _Group:
    """The jobs of a batch that ask for tasks of one backbone, and their image rows."""

    backbone: LoadedBackbone
    jobs: list[int] = field(default_factory=list)
    rows: dict[int, tuple[int, int]] = field(default_factory=dict)


class Engine:
    """Holds one `MemoryViT` per backbone, into which adapters are attached by (task, version, sha256)."""

    def __init__(self, device: torch.device, max_rows: int = 64, capacity: int = 512) -> None:
        self.device = device
        self.max_rows = max_rows
        self.capacity = capacity
        self._models: dict[int, MemoryViT] = {}
        self._slots: OrderedDict[tuple[int, AdapterKey], str] = OrderedDict()
        self._next_slot = 0

    @torch.inference_mode()
    def run(self, jobs: Sequence[Job]) -> tuple[list[JobAnswer], BatchStats]:
        start = time.perf_counter()
        stats = BatchStats(images=sum(len(j.images) for j in jobs), requests=len(jobs))
        probs: list[dict[str, Tensor]] = [{} for _ in jobs]
        passes = [0] * len(jobs)
        for group in self._groups(jobs):
            self._run_group(group, jobs, probs, passes, stats)
        answers = [self._answer(job, p, n) for job, p, n in zip(jobs, probs, passes)]
        stats.seconds = time.perf_counter() - start
        return answers, stats

    # ------------------------------------------------------------------------------ one backbone
    def _groups(self, jobs: Sequence[Job]) -> list[_Group]:
        groups: dict[int, _Group] = {}
        for j, job in enumerate(jobs):
            for backbone in {id(t.backbone): t.backbone for t in job.tasks}.values():
                groups.setdefault(id(backbone), _Group(backbone)).jobs.append(j)
        return list(groups.values())

    def _run_group(
        self, group: _Group, jobs: Sequence[Job], probs: list[dict[str, Tensor]], passes: list[int], stats: BatchStats
    ) -> None:
        model = self._model(group.backbone)
        images: list[Tensor] = []
        for j in group.jobs:
            group.rows[j] = (len(images), len(images) + len(jobs[j].images))
            images.extend(jobs[j].images)
        x = group.backbone.spec.batch(images).to(self.device)
        own = [[t for t in jobs[j].tasks if t.backbone is group.backbone] for j in range(len(jobs))]
        self._run_reuse(model, group, x, own, probs, passes, stats)
        self._run_full(model, group, x, own, probs, passes, stats)

    def _run_reuse(self, model, group, x, own, probs, passes, stats) -> None:  # type: ignore[no-untyped-def]
        wanted = [j for j in group.jobs if any(t.mode == "reuse" for t in own[j])]
        if not wanted:
            return
        union = {t.key: t for j in wanted for t in own[j] if t.mode == "reuse"}
        slots = {key: self._attach(model, group.backbone, task) for key, task in union.items()}
        index = torch.cat([torch.arange(*group.rows[j]) for j in wanted]).to(self.device)
        rows = x if len(index) == x.shape[0] else x[index]
        logits = model.forward_reuse(rows, list(slots.values()), backbone_outputs=False).logits
        stats.tasks_per_reuse_pass.append(len(union))
        offset = 0
        for j in wanted:
            n = group.rows[j][1] - group.rows[j][0]
            for t in own[j]:
                if t.mode == "reuse":
                    probs[j][t.task] = logits[slots[t.key]][offset : offset + n].float().softmax(-1)
            offset += n
            passes[j] += 1

    def _run_full(self, model, group, x, own, probs, passes, stats) -> None:  # type: ignore[no-untyped-def]
        """Every (image, full task) pair as one row of mixed-task `forward_full` batches."""
        pairs = [(j, t) for j in group.jobs for t in own[j] if t.mode == "full"]
        if not pairs:
            return
        slots = {t.key: self._attach(model, group.backbone, t) for _, t in pairs}
        row_index: list[int] = []
        row_slot: list[str] = []
        for j, t in pairs:
            first, last = group.rows[j]
            row_index.extend(range(first, last))
            row_slot.extend([slots[t.key]] * (last - first))
        outputs = []
        for start in range(0, len(row_index), self.max_rows):
            chunk = torch.tensor(row_index[start : start + self.max_rows], device=self.device)
            outputs.append(model.forward_full(x[chunk], row_slot[start : start + self.max_rows]))
        width = max(o.shape[1] for o in outputs)
        logits = torch.cat([torch.nn.functional.pad(o, (0, width - o.shape[1]), value=float("-inf")) for o in outputs])
        offset = 0
        for j, t in pairs:
            n = group.rows[j][1] - group.rows[j][0]
            probs[j][t.task] = logits[offset : offset + n, : len(t.class_names)].float().softmax(-1)
            offset += n
            passes[j] += 1
        stats.full_task_runs += len(pairs)

    # ------------------------------------------------------------------------------ adapters
    def _model(self, backbone: LoadedBackbone) -> MemoryViT:
        model = self._models.get(id(backbone))
        if model is None:
            model = MemoryViT(backbone.model, backbone.identity).eval()
            self._models[id(backbone)] = model
        return model

    def _attach(self, model: MemoryViT, backbone: LoadedBackbone, task: ServedTask) -> str:
        """The model's slot name for this exact version, attaching it on first use (LRU-bounded)."""
        key = (id(backbone), task.key)
        slot = self._slots.get(key)
        if slot is not None:
            self._slots.move_to_end(key)
            return slot
        slot = f"t{self._next_slot}"
        self._next_slot += 1
        model.attach(slot, task.adapter)
        self._slots[key] = slot
        while len(self._slots) > self.capacity:
            (old_backbone, _), old_slot = self._slots.popitem(last=False)
            self._models[old_backbone].remove_task(old_slot)
        return slot

    # ------------------------------------------------------------------------------ answers
    @staticmethod
    def _answer(job: Job, probs: dict[str, Tensor], passes: int) -> JobAnswer:
        per_image: list[dict[str, list[TopLabel]]] = [{} for _ in job.images]
        for t in job.tasks:
            p = probs[t.task]
            values, index = p.topk(min(job.top_k, p.shape[1]), dim=-1)
            for i, (vs, ix) in enumerate(zip(values.tolist(), index.tolist())):
                per_image[i][t.task] = [TopLabel(t.class_names[c], v) for v, c in zip(vs, ix)]
        return JobAnswer(per_image, passes)
