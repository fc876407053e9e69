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
class _Batch:
    """One batch as it runs: its jobs and, per job, the probabilities found so far and the passes."""

    jobs: Sequence[Job]
    stats: BatchStats
    probs: list[dict[str, Tensor]]
    passes: list[int]


@dataclass
class _Group:
    """The jobs of a batch that ask for tasks of one backbone: their images as one input, by rows."""

    model: MemoryViT
    inputs: Tensor
    rows: dict[int, range]  # job -> its rows of `inputs`
    tasks: dict[int, list[ServedTask]]  # job -> its tasks on this backbone


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
        batch = _Batch(jobs, stats, [{} for _ in jobs], [0] * len(jobs))
        for backbone in {id(t.backbone): t.backbone for job in jobs for t in job.tasks}.values():
            group = self._group(batch, backbone)
            self._run_reuse(batch, group)
            self._run_full(batch, group)
        answers = [self._answer(job, p, n) for job, p, n in zip(jobs, batch.probs, batch.passes)]
        self._trim()
        stats.seconds = time.perf_counter() - start
        return answers, stats

    # ------------------------------------------------------------------------------ one backbone
    def _group(self, batch: _Batch, backbone: LoadedBackbone) -> _Group:
        tasks = {j: [t for t in job.tasks if t.backbone is backbone] for j, job in enumerate(batch.jobs)}
        rows: dict[int, range] = {}
        images: list[Tensor] = []
        for j, own in tasks.items():
            if own:
                rows[j] = range(len(images), len(images) + len(batch.jobs[j].images))
                images.extend(batch.jobs[j].images)
        inputs = backbone.spec.batch(images).to(self.device)
        return _Group(self._model(backbone), inputs, rows, {j: own for j, own in tasks.items() if own})

    def _run_reuse(self, batch: _Batch, group: _Group) -> None:
        """ONE reuse pass over the images of every job asking for a reuse task, for the union of them."""
        wanted = [j for j, own in group.tasks.items() if any(t.mode == "reuse" for t in own)]
        if not wanted:
            return
        union = {t.key: t for j in wanted for t in group.tasks[j] if t.mode == "reuse"}
        slots = {key: self._attach(group.model, task) for key, task in union.items()}
        index = [i for j in wanted for i in group.rows[j]]
        inputs = group.inputs if len(index) == group.inputs.shape[0] else group.inputs[torch.tensor(index)]
        logits = group.model.forward_reuse(inputs, list(slots.values()), backbone_outputs=False).logits
        batch.stats.tasks_per_reuse_pass.append(len(union))
        offset = 0
        for j in wanted:
            n = len(group.rows[j])
            for t in group.tasks[j]:
                if t.mode == "reuse":
                    batch.probs[j][t.task] = logits[slots[t.key]][offset : offset + n].float().softmax(-1)
            offset += n
            batch.passes[j] += 1

    def _run_full(self, batch: _Batch, group: _Group) -> None:
        """Every (image, full task) pair as one row of mixed-task `forward_full` batches."""
        pairs = [(j, t) for j, own in group.tasks.items() for t in own if t.mode == "full"]
        if not pairs:
            return
        slots = {t.key: self._attach(group.model, t) for _, t in pairs}
        row_index = [i for j, _ in pairs for i in group.rows[j]]
        row_slot = [slots[t.key] for j, t in pairs for _ in group.rows[j]]
        outputs = []
        for start in range(0, len(row_index), self.max_rows):
            chunk = torch.tensor(row_index[start : start + self.max_rows])
            outputs.append(group.model.forward_full(group.inputs[chunk], row_slot[start : start + self.max_rows]))
        width = max(o.shape[1] for o in outputs)
        logits = torch.cat([torch.nn.functional.pad(o, (0, width - o.shape[1]), value=float("-inf")) for o in outputs])
        offset = 0
        for j, t in pairs:
            n = len(group.rows[j])
            batch.probs[j][t.task] = logits[offset : offset + n, : len(t.class_names)].float().softmax(-1)
            offset += n
            batch.passes[j] += 1
        batch.stats.full_task_runs += len(pairs)

    # ------------------------------------------------------------------------------ adapters
    def _model(self, backbone: LoadedBackbone) -> MemoryViT:
        model = self._models.get(id(backbone))
        if model is None:
            model = MemoryViT(backbone.model, backbone.identity).eval()
            self._models[id(backbone)] = model
        return model

    def _attach(self, model: MemoryViT, task: ServedTask) -> str:
        """The model's slot name for this exact version, attaching it on first use (LRU-bounded)."""
        key = (id(model), task.key)
        slot = self._slots.get(key)
        if slot is not None:
            self._slots.move_to_end(key)
            return slot
        slot = f"t{self._next_slot}"
        self._next_slot += 1
        model.attach(slot, task.adapter)
        self._slots[key] = slot
        return slot

    def _trim(self) -> None:
        """After a batch: detach the least recently used versions beyond `capacity`."""
        owners = {id(m): m for m in self._models.values()}
        while len(self._slots) > self.capacity:
            (owner, _), old_slot = self._slots.popitem(last=False)
            owners[owner].remove_task(old_slot)

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
