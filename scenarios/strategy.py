"""The memory-token strategy, the Avalanche way: a MultiTaskModule, a plugin, a SupervisedTemplate.

* `MemoryTokenModel` (an Avalanche `MultiTaskModule`) wraps `continual_mem.model.MemoryViT`. Its
  `adaptation` adds one task adapter (memory tokens, class token, head) per training experience
  and freezes the earlier ones. Training runs the new task alone; evaluation answers EVERY seen
  task from one `forward_reuse` pass per batch (one backbone pass), then picks per sample the
  task it was asked (task-incremental) or the task it infers (class-incremental).
  With `attention="full"` (the paper's Table 2 setting, task-incremental only) the input tokens
  attend to the task's memory too: each sample runs through its own task (mixed-task batches
  stay one pass), but serving every task for one image takes one pass per task.
* `MemoryTokenPlugin` feeds the task router with the backbone features the training passes
  already computed, and freezes the task when its experience ends.
* `MemoryTokenStrategy` (a `TrainableOnlyTemplate`) rebuilds the optimizer over the trainable
  parameters only, i.e. the current task's adapter.

Class-incremental task inference (`TaskRouter`) uses the same pass: the frozen backbone's pooled
features against per-class statistics (nearest class mean, or linear discriminant with a shared,
shrunk covariance), or the task heads' energies / max-softmax. The statistics come from the
frozen backbone, so learning a task never changes another task's routing statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from avalanche.models import MultiTaskModule
from avalanche.training.plugins import SupervisedPlugin
from avalanche.training.templates import SupervisedTemplate
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from continual_mem.adapter import AttentionMode
from continual_mem.model import MemoryViT

from .benchmarks import Protocol

Route = Literal["lda", "nmc", "energy", "max-softmax"]
ROUTES: tuple[Route, ...] = ("lda", "nmc", "energy", "max-softmax")
DEFAULT_ROUTE: Route = "lda"
#: Weight of the scaled identity mixed into the shared covariance (LDA routing); None: the
#: Oracle Approximating Shrinkage estimate, computed from the same running statistics.
DEFAULT_SHRINKAGE: float | None = None


@dataclass(frozen=True)
class AdapterVariant:
    """What each task trains: the paper's columns Head only / Head + Class / memory m."""

    num_memory: int
    train_class_token: bool = True
    attention: AttentionMode = "reuse"

    @property
    def label(self) -> str:
        if self.num_memory == 0:
            return "head+class" if self.train_class_token else "head-only"
        return f"memory-{'full-' if self.attention == 'full' else ''}{self.num_memory}"


HEAD_ONLY = AdapterVariant(0, train_class_token=False)
HEAD_CLASS = AdapterVariant(0, train_class_token=True)


def task_name(experience_id: int) -> str:
    return f"exp{experience_id}"


class TaskRouter(nn.Module):
    """Infers a sample's task from one reuse pass, without a task label.

    Keeps, per class, the sum and count of the frozen backbone's pooled features, and one shared
    second moment; that is all `nmc` (cosine to class means) and `lda` (Gaussian classes with a
    shared covariance, shrunk towards a scaled identity) need. Both pick the task of the best
    class. `energy` (logsumexp) and `max-softmax` compare the task heads' own logits instead.

    The backbone's features are strongly anisotropic: the classes differ along low-variance
    directions, so LDA's whitening matters and a heavy shrinkage erases it. The default shrinkage
    is therefore estimated (OAS), not fixed.
    """

    def __init__(self, dim: int, shrinkage: float | None = DEFAULT_SHRINKAGE) -> None:
        super().__init__()
        self.shrinkage = shrinkage
        self.register_buffer("class_sums", torch.zeros(0, dim))
        self.register_buffer("class_counts", torch.zeros(0))
        self.register_buffer("class_task", torch.zeros(0, dtype=torch.long))
        self.register_buffer("second_moment", torch.zeros(dim, dim))
        self._lda: tuple[Tensor, Tensor] | None = None

    def add_classes(self, classes: list[int], task: int) -> None:
        """Register the (global) class ids of a new task."""
        needed = max(classes) + 1
        if needed > len(self.class_task):
            grow = needed - len(self.class_task)
            self.class_sums = torch.cat([self.class_sums, self.class_sums.new_zeros(grow, self.class_sums.shape[1])])
            self.class_counts = torch.cat([self.class_counts, self.class_counts.new_zeros(grow)])
            self.class_task = torch.cat([self.class_task, self.class_task.new_full((grow,), -1)])
        self.class_task[torch.tensor(classes)] = task

    def observe(self, features: Tensor, classes: Tensor) -> None:
        """Add a batch of backbone features (B, D) of known (global) classes (B,)."""
        f = features.detach().to(self.class_sums.dtype)
        self.class_sums.index_add_(0, classes, f)
        self.class_counts.index_add_(0, classes, torch.ones_like(f[:, 0]))
        self.second_moment += f.T @ f
        self._lda = None

    def _means(self) -> tuple[Tensor, Tensor]:
        """Known class ids (K,) and their mean features (K, D), in float64."""
        known = (self.class_counts > 0).nonzero(as_tuple=True)[0]
        return known, self.class_sums[known].double() / self.class_counts[known, None].double()

    def _lda_parameters(self) -> tuple[Tensor, Tensor]:
        """(D, K) weights and (K,) biases of the linear discriminant over the known classes."""
        if self._lda is None:
            known, means = self._means()
            counts = self.class_counts[known].double()
            n, dim = counts.sum(), means.shape[1]
            scatter = self.second_moment.double() - (means.T * counts) @ means
            cov = scatter / n
            rho = self.shrinkage if self.shrinkage is not None else oas_shrinkage(cov, float(n))
            target = torch.eye(dim, dtype=cov.dtype, device=cov.device) * torch.trace(cov) / dim
            cov = (1 - rho) * cov + rho * target
            weights = torch.linalg.solve(cov, means.T)
            self._lda = (weights, -0.5 * (means * weights.T).sum(dim=1))
        return self._lda

    def class_scores(self, features: Tensor, method: Literal["lda", "nmc"]) -> tuple[Tensor, Tensor]:
        """Scores (B, K) of the known classes and those classes' ids (K,)."""
        known, means = self._means()
        f = features.to(torch.float64)
        if method == "nmc":
            scores = nn.functional.normalize(f, dim=1) @ nn.functional.normalize(means, dim=1).T
        else:
            weights, bias = self._lda_parameters()
            scores = f @ weights + bias
        return scores, known

    def routes(self, features: Tensor, task_logits: list[Tensor]) -> dict[Route, Tensor]:
        """The task index (B,) each method infers for each sample."""
        out: dict[Route, Tensor] = {}
        for method in ("lda", "nmc"):
            scores, known = self.class_scores(features, method)
            out[method] = self.class_task[known[scores.argmax(dim=1)]]
        stacked = [logits.float() for logits in task_logits]
        out["energy"] = torch.stack([z.logsumexp(dim=1) for z in stacked], dim=1).argmax(dim=1)
        out["max-softmax"] = torch.stack([z.softmax(dim=1).amax(dim=1) for z in stacked], dim=1).argmax(dim=1)
        return out


def oas_shrinkage(cov: Tensor, n: float) -> float:
    """Oracle Approximating Shrinkage (Chen et al. 2010) of a covariance estimated from n samples,
    as scikit-learn's `sklearn.covariance.oas` computes it, but from the covariance alone."""
    p = cov.shape[0]
    mu = torch.trace(cov) / p
    alpha = (cov * cov).mean()
    den = (n + 1.0) * (alpha - mu * mu / p)
    return 1.0 if float(den) == 0.0 else min(float((alpha + mu * mu) / den), 1.0)


class MemoryTokenModel(MultiTaskModule):
    """Avalanche model: a frozen ViT that grows one memory-token task per experience."""

    def __init__(
        self,
        backbone: VisionTransformer,
        variant: AdapterVariant,
        protocol: Protocol,
        route: Route = DEFAULT_ROUTE,
        shrinkage: float | None = DEFAULT_SHRINKAGE,
    ) -> None:
        super().__init__()
        if route not in ROUTES:
            raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
        if variant.attention == "full" and protocol != "task":
            raise ValueError("full attention needs the task label: it runs in the task protocol only")
        self.vit = MemoryViT(backbone)
        self.variant = variant
        self.protocol = protocol
        self.route = route
        self.router = TaskRouter(self.vit.dim, shrinkage) if protocol == "class" else None
        self.task_names: list[str] = []
        self.task_classes: list[list[int]] = []
        self.task_of_label: dict[int, int] = {}
        self.last_features: Tensor | None = None
        self.last_routes: dict[Route, Tensor] = {}

    # ------------------------------------------------------------------------------- adaptation
    def adaptation(self, experience) -> None:
        """Before training an experience: freeze every task, add the experience's own task."""
        super().adaptation(experience)
        if not self.training:
            return
        name = task_name(experience.current_experience)
        if name in self.vit.tasks:
            return
        self.freeze_tasks()
        classes = sorted(int(c) for c in experience.classes_in_this_experience)
        self.add_task(name, classes, [int(t) for t in experience.task_labels])

    def add_task(self, name: str, classes: list[int], task_labels: list[int]) -> int:
        """A new trainable task adapter for `classes` (benchmark class ids); returns its index."""
        adapter = self.vit.add_task(
            name,
            len(classes),
            num_memory=self.variant.num_memory,
            mode=self.variant.attention,
            class_names=[str(c) for c in classes],
        )
        adapter.cls_token.requires_grad_(self.variant.train_class_token)
        adapter.memory.requires_grad_(self.variant.num_memory > 0)
        index = len(self.task_names)
        self.task_names.append(name)
        self.task_classes.append(classes)
        if self.protocol == "task":
            self.task_of_label.update({t: index for t in task_labels})
        else:
            self.router.add_classes(classes, index)
        return index

    def freeze_tasks(self) -> None:
        for adapter in self.vit.tasks.values():
            adapter.requires_grad_(False)

    # ------------------------------------------------------------------------------- forward
    def forward(self, x: Tensor, task_labels: Tensor | int | None = None) -> Tensor | dict[int, Tensor]:
        if task_labels is None:
            return self.forward_all_tasks(x)
        if self.training:
            return self._forward_train(x, task_labels)
        return self._forward_eval(x, task_labels)

    @property
    def full_attention(self) -> bool:
        return self.variant.attention == "full"

    def forward_single_task(self, x: Tensor, task_label: int) -> Tensor:
        """Logits of one task (task protocol: by task label), its task token alone in the pass."""
        name = self.task_names[self.task_of_label[int(task_label)]]
        if self.full_attention:
            return self.vit.forward_full(x, name)
        out = self.vit.forward_reuse(x, [name])
        self.last_features = out.features
        return out.logits[name]

    def forward_all_tasks(self, x: Tensor) -> dict[int, Tensor]:
        """Every task's logits, keyed by task index: ONE backbone pass (reuse), one per task (full)."""
        if self.full_attention:
            return {i: self.vit.forward_full(x, name) for i, name in enumerate(self.task_names)}
        out = self.vit.forward_reuse(x, self.task_names)
        self.last_features = out.features
        return {i: out.logits[name] for i, name in enumerate(self.task_names)}

    def _forward_train(self, x: Tensor, task_labels: Tensor | int) -> Tensor:
        """The task being learned, the newest one."""
        current = len(self.task_names) - 1
        if self.protocol == "task":
            labels = torch.as_tensor(task_labels).unique().tolist()
            if [self.task_of_label.get(int(t)) for t in labels] != [current]:
                raise ValueError(f"training batch holds task labels {labels}; only the newest task trains")
            return self.forward_single_task(x, labels[0])
        name = self.task_names[current]
        out = self.vit.forward_reuse(x, [name])
        self.last_features = out.features
        chosen = torch.full((x.shape[0],), current, dtype=torch.long, device=x.device)
        return self._place({current: out.logits[name]}, chosen)

    def _forward_eval(self, x: Tensor, task_labels: Tensor | int) -> Tensor:
        """One pass for all tasks; each sample gets the logits of its given or inferred task."""
        if self.full_attention:
            return self.vit.forward_full(x, [self.task_names[t] for t in self._given_tasks(task_labels, x.shape[0])])
        out = self.vit.forward_reuse(x, self.task_names)
        self.last_features = out.features
        logits = [out.logits[name] for name in self.task_names]
        if self.protocol == "task":
            chosen = torch.tensor(self._given_tasks(task_labels, x.shape[0]), device=x.device)
            width = max(z.shape[1] for z in logits)
            result = logits[0].new_full((x.shape[0], width), float("-inf"))
            for t in chosen.unique().tolist():
                rows = chosen == t
                result[rows, : logits[t].shape[1]] = logits[t][rows]
            return result
        self.last_routes = self.router.routes(out.features, logits)
        chosen = self.last_routes[self.route]
        return self._place(dict(enumerate(logits)), chosen)

    def _given_tasks(self, task_labels: Tensor | int, batch: int) -> list[int]:
        """Task protocol: each sample's task index, from its task label."""
        return [self.task_of_label[int(t)] for t in torch.as_tensor(task_labels).expand(batch).tolist()]

    def _place(self, logits: dict[int, Tensor], chosen: Tensor) -> Tensor:
        """Class protocol: each sample's chosen-task logits in that task's global class columns.

        Every other column is -inf, so argmax and softmax are those of the chosen task's head.
        """
        ref = next(iter(logits.values()))
        result = ref.new_full((chosen.shape[0], self.max_class_label), float("-inf"))
        for t in chosen.unique().tolist():
            rows = (chosen == t).nonzero(as_tuple=True)[0]
            columns = torch.tensor(self.task_classes[t], device=ref.device)
            result[rows[:, None], columns[None, :]] = logits[t][rows]
        return result

    def task_of_class(self, classes: Tensor) -> Tensor:
        """Class protocol: the task index (B,) owning each global class id."""
        return self.router.class_task.to(classes.device)[classes]


class MemoryTokenPlugin(SupervisedPlugin):
    """Feeds the task router during the first epoch, freezes the task after its experience.

    Routing statistics use the frozen backbone's features, identical in every epoch (no
    augmentation), so the first epoch sees each training sample exactly once and costs no extra
    backbone pass.
    """

    def after_training_iteration(self, strategy: SupervisedTemplate, *args, **kwargs) -> None:
        model: MemoryTokenModel = strategy.model
        if model.protocol == "class" and strategy.clock.train_exp_epochs == 0:
            model.router.observe(model.last_features, strategy.mb_y)

    def after_training_exp(self, strategy: SupervisedTemplate, *args, **kwargs) -> None:
        strategy.model.freeze_tasks()


class TrainableOnlyTemplate(SupervisedTemplate):
    """SupervisedTemplate whose optimizer is a fresh AdamW over the trainable parameters only.

    Avalanche calls `make_optimizer` once before the first experience's adaptation too, when
    nothing may be trainable yet: no optimizer is built then.
    """

    def __init__(self, *, lr: float, weight_decay: float = 0.0, **kwargs) -> None:
        self.lr = lr
        self.weight_decay = weight_decay
        super().__init__(optimizer=None, **kwargs)

    def make_optimizer(self, **kwargs) -> None:
        groups = self.param_groups()
        if groups:
            self.optimizer = torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay)

    def param_groups(self) -> list[dict]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        return [{"params": params}] if params else []


class MemoryTokenStrategy(TrainableOnlyTemplate):
    """The memory-token strategy: each experience trains its own new task adapter, nothing else.

    Memory and class token learn at `lr`, the head at `head_lr` (`TaskAdapter.param_groups`).
    """

    def __init__(
        self, *, model: MemoryTokenModel, head_lr: float, plugins: list[SupervisedPlugin] | None = None, **kwargs
    ) -> None:
        self.head_lr = head_lr
        super().__init__(model=model, plugins=[MemoryTokenPlugin(), *(plugins or [])], **kwargs)

    def param_groups(self) -> list[dict]:
        model: MemoryTokenModel = self.model
        if not model.task_names:
            return []
        groups = model.vit.adapter(model.task_names[-1]).param_groups(self.lr, self.head_lr)
        return [{**g, "base_lr": g["lr"]} for g in groups]
