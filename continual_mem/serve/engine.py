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
from itertools import accumulate

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
class _Output:
    """Logits (rows, C) of one task version on the device, and whose rows they are."""

    logits: Tensor
    task: ServedTask
    owners: list[tuple[int, int]]  # (job, first row of its images)


@dataclass
class _Batch:
    """One batch as it runs: its jobs, the outputs found so far, and each job's backbone passes."""

    jobs: Sequence[Job]
    stats: BatchStats
    outputs: list[_Output]
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
        batch = _Batch(jobs, stats, [], [0] * len(jobs))
        for backbone in {id(t.backbone): t.backbone for job in jobs for t in job.tasks}.values():
            group = self._group(batch, backbone)
            self._run_reuse(batch, group)
            self._run_full(batch, group)
        answers = self._answers(batch)
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
        inputs = backbone.spec.batch(images, self.device)
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
        first = dict(zip(wanted, accumulate((len(group.rows[j]) for j in wanted), initial=0)))
        for key, task in union.items():
            owners = [(j, first[j]) for j in wanted if any(t.key == key for t in group.tasks[j])]
            batch.outputs.append(_Output(logits[slots[key]], task, owners))
        for j in wanted:
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
            batch.outputs.append(_Output(logits[offset : offset + n, : len(t.class_names)], t, [(j, 0)]))
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
    def _answers(self, batch: _Batch) -> list[JobAnswer]:
        """Softmax and top-k of every output on the device, then ONE copy to the host for all of them."""
        k = max(job.top_k for job in batch.jobs)
        tops = [out.logits.float().softmax(-1).topk(min(k, out.logits.shape[1]), dim=-1) for out in batch.outputs]
        values = torch.cat([v.flatten() for v, _ in tops]).tolist() if tops else []
        index = torch.cat([i.flatten() for _, i in tops]).tolist() if tops else []
        per_image: list[list[dict[str, list[TopLabel]]]] = [[{} for _ in job.images] for job in batch.jobs]
        start = 0
        for out, (top_values, _) in zip(batch.outputs, tops):
            rows, width = top_values.shape
            names = out.task.class_names
            for j, first in out.owners:
                keep = min(batch.jobs[j].top_k, width)
                for image in range(len(batch.jobs[j].images)):
                    at = start + (first + image) * width
                    labels = zip(values[at : at + keep], index[at : at + keep])
                    per_image[j][image][out.task.task] = [TopLabel(names[c], v) for v, c in labels]
            start += rows * width
        return [JobAnswer(images, passes) for images, passes in zip(per_image, batch.passes)]
