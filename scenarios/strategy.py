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
  parameters only, i.e. the current task's adapter (AdamW, or `optimizer=` a factory of those
  parameter groups); checkpoints (`avalanche.checkpointing`) leave the optimizer out.

Outputs are in the benchmark's label space, whatever class ids it uses (0..C-1 per experience, or
Avalanche's default global ids). Evaluating experiences not trained yet (the whole test stream,
Avalanche's periodic evaluation before the first experience) answers them at chance and changes
nothing later training sees.

Class-incremental task inference (`TaskRouter`) uses the same pass: the frozen backbone's pooled
features against per-class statistics (nearest class mean, or linear discriminant with a shared,
shrunk covariance), or the task heads' energies / max-softmax. The statistics come from the
frozen backbone, so learning a task never changes another task's routing statistics.
"""

from __future__ import annotations

from collections.abc import Callable
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
from continual_mem.train import TrainConfig

from .backbone_cache import BackboneCache, reuse_pass
from .benchmarks import Protocol
from .metrics import tasks_of_classes

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

    def has_statistics(self) -> bool:
        """Whether any class has been observed: routing needs at least one."""
        return bool((self.class_counts > 0).any())

    def task_of(self, classes: Tensor) -> Tensor:
        """The task index (B,) of each (global) class id; -1 for a class of no registered task."""
        return tasks_of_classes(self.class_task, classes)

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


#: One head's answer within a batch: the rows it answers (B,) bool, the benchmark class id of each
#: of its columns, its logits (rows, C).
Answer = tuple[Tensor, list[int], Tensor]


class MemoryTokenModel(MultiTaskModule):
    """Avalanche model: a frozen ViT that grows one memory-token task per experience.

    Outputs are in the benchmark's label space: a task's head output j is the logit of its j-th
    class id (`classes_of`), whatever ids the benchmark uses (0..C-1 per experience, or Avalanche's
    global ids); every other column is -inf. In the task protocol, a task label not trained yet
    (an experience evaluated before it is learned) answers at chance: equal logits over the classes
    Avalanche's evaluation adaptation names for it, and no adapter is created for it.
    """

    #: Full attention serves one task per pass; routing (class protocol) needs every task's pass.
    full_attention_protocols: tuple[Protocol, ...] = ("task",)

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
        if variant.attention == "full" and protocol not in self.full_attention_protocols:
            raise ValueError("full attention needs the task label: it runs in the task protocol only")
        self.vit = MemoryViT(backbone)
        self.variant = variant
        self.protocol = protocol
        self.route = route
        self.router = TaskRouter(self.vit.dim, shrinkage) if protocol == "class" else None
        self.task_names: list[str] = []
        self.task_of_label: dict[int, int] = {}
        #: Task protocol: class ids of task labels met in evaluation before they were trained.
        self.untrained_classes: dict[int, list[int]] = {}
        self.last_features: Tensor | None = None
        self.last_routes: dict[Route, Tensor] = {}
        #: Reuse mode: per-image backbone outputs shared by a process's runs (`scenarios.backbone_cache`).
        self.backbone_cache: BackboneCache | None = None

    # ------------------------------------------------------------------------------- adaptation
    def adaptation(self, experience) -> None:
        """Before training an experience: freeze every task, add the experience's own task.

        Before evaluating one: only note the classes of a task label not trained yet.
        """
        super().adaptation(experience)
        classes = sorted(int(c) for c in experience.classes_in_this_experience)
        labels = [int(t) for t in experience.task_labels]
        if not self.training:
            if self.protocol == "task":
                self.untrained_classes.update({t: classes for t in labels if t not in self.task_of_label})
            return
        name = task_name(experience.current_experience)
        if name in self.vit.tasks:
            return
        self.freeze_tasks()
        self.add_task(name, classes, labels)

    def add_task(self, name: str, classes: list[int], task_labels: list[int]) -> int:
        """A new trainable task adapter for `classes` (benchmark class ids); returns its index."""
        taken = sorted({t for t in task_labels if t in self.task_of_label}) if self.protocol == "task" else []
        if taken:
            raise ValueError(
                f"task label(s) {taken} already belong to a trained task: the task protocol needs a new task "
                "label per experience (e.g. nc_benchmark(..., task_labels=True))"
            )
        adapter = self.vit.add_task(
            name,
            len(classes),
            num_memory=self.variant.num_memory,
            mode=self.variant.attention,
            class_names=[str(c) for c in classes],
            class_ids=classes,
        )
        adapter.cls_token.requires_grad_(self.variant.train_class_token)
        adapter.memory.requires_grad_(self.variant.num_memory > 0)
        index = len(self.task_names)
        self.task_names.append(name)
        if self.protocol == "task":
            self.task_of_label.update({t: index for t in task_labels})
        else:
            self.router.add_classes(classes, index)
        return index

    def freeze_tasks(self) -> None:
        for adapter in self.vit.tasks.values():
            adapter.requires_grad_(False)

    def classes_of(self, task: int) -> list[int]:
        """The benchmark class id of each of task `task`'s head outputs (kept in its adapter)."""
        config = self.vit.adapter(self.task_names[task]).config
        return list(config.class_ids) or list(range(config.num_classes))

    @property
    def task_classes(self) -> list[list[int]]:
        return [self.classes_of(t) for t in range(len(self.task_names))]

    # ------------------------------------------------------------------------------- forward
    def forward(self, x: Tensor, task_labels: Tensor | int | None = None) -> Tensor | dict[int, Tensor]:
        if task_labels is None:
            return self.forward_all_tasks(x)
        if self.training:
            return self._forward_train(x, task_labels)
        if self.protocol == "task":
            return self._forward_given(x, torch.as_tensor(task_labels, device=x.device).expand(x.shape[0]))
        return self._forward_routed(x)

    @property
    def full_attention(self) -> bool:
        return self.variant.attention == "full"

    def forward_single_task(self, x: Tensor, task_label: int) -> Tensor:
        """Head logits of one task (task protocol: by task label), its task token alone in the pass."""
        return self._task_logits(x, self.task_of_label[int(task_label)])

    def forward_all_tasks(self, x: Tensor) -> dict[int, Tensor]:
        """Every task's head logits, keyed by task index: ONE backbone pass (reuse), one per task (full)."""
        if self.full_attention:
            return {i: self.vit.forward_full(x, name) for i, name in enumerate(self.task_names)}
        return dict(enumerate(self._reuse_logits(x)))

    def _task_logits(self, x: Tensor, task: int) -> Tensor:
        name = self.task_names[task]
        if self.full_attention:
            return self.vit.forward_full(x, name)
        return self._reuse_pass(x, [name])[name]

    def _reuse_logits(self, x: Tensor) -> list[Tensor]:
        """Every task's head logits from one reuse pass (which also keeps the backbone features)."""
        logits = self._reuse_pass(x, self.task_names)
        return [logits[name] for name in self.task_names]

    def _reuse_pass(self, x: Tensor, names: list[str]) -> dict[str, Tensor]:
        """One reuse pass (over the cache's backbone outputs, if any); keeps the pooled features."""
        logits, self.last_features = reuse_pass(self.vit, x, names, self.backbone_cache)
        return logits

    def _forward_train(self, x: Tensor, task_labels: Tensor | int) -> Tensor:
        """The task being learned, the newest one."""
        current = len(self.task_names) - 1
        if self.protocol == "task":
            labels = torch.as_tensor(task_labels).unique().tolist()
            if [self.task_of_label.get(int(t)) for t in labels] != [current]:
                raise ValueError(f"training batch holds task labels {labels}; only the newest task trains")
        every_row = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        return self._in_label_space(x, [(every_row, self.classes_of(current), self._task_logits(x, current))])

    def _forward_given(self, x: Tensor, labels: Tensor) -> Tensor:
        """Task protocol: each sample gets its own task's logits; an untrained task answers at chance."""
        chosen = torch.tensor([self.task_of_label.get(t, -1) for t in labels.tolist()], device=x.device)
        answers = self._trained_answers(x, chosen)
        for label in labels[chosen < 0].unique().tolist():
            if label not in self.untrained_classes:
                raise ValueError(
                    f"task label {label} is neither trained nor met in an evaluation: its classes are unknown"
                )
            rows = labels == label
            classes = self.untrained_classes[label]
            answers.append((rows, classes, x.new_zeros(int(rows.sum()), len(classes))))
        return self._in_label_space(x, answers, self.max_class_label)

    def _trained_answers(self, x: Tensor, chosen: Tensor) -> list[Answer]:
        """Task protocol: the answers of the trained tasks (`chosen` >= 0), one pass for all (reuse)."""
        present = [t for t in chosen.unique().tolist() if t >= 0]
        if not present:
            return []
        if self.full_attention:
            trained = chosen >= 0
            mixed = self.vit.forward_full(x[trained], [self.task_names[t] for t in chosen[trained].tolist()])
            own = chosen[trained]
            return [(chosen == t, self.classes_of(t), mixed[own == t, : len(self.classes_of(t))]) for t in present]
        logits = self._reuse_logits(x)
        return [(chosen == t, self.classes_of(t), logits[t][chosen == t]) for t in present]

    def _forward_routed(self, x: Tensor) -> Tensor:
        """Class protocol: one pass for all tasks; each sample gets its inferred task's logits.

        Before any task is learned, every class gets the same logit (chance).
        """
        if not self.router.has_statistics():
            self.last_routes = {}
            return x.new_zeros(x.shape[0], self.max_class_label)
        logits = self._reuse_logits(x)
        self.last_routes = self.router.routes(self.last_features, logits)
        chosen = self.last_routes[self.route]
        answers = [(chosen == t, self.classes_of(t), logits[t][chosen == t]) for t in chosen.unique().tolist()]
        return self._in_label_space(x, answers, self.max_class_label)

    @staticmethod
    def _in_label_space(x: Tensor, answers: list[Answer], width: int = 0) -> Tensor:
        """(B, width or more) outputs: each answer's logits in its class columns, -inf everywhere else.

        So argmax and softmax of a row are those of the head that answered it.
        """
        width = max([width] + [max(classes) + 1 for _, classes, _ in answers])
        like = answers[0][2] if answers else x
        out = like.new_full((x.shape[0], width), float("-inf"))
        for rows, classes, logits in answers:
            index = rows.nonzero(as_tuple=True)[0]
            out[index[:, None], torch.tensor(classes, device=out.device)[None, :]] = logits
        return out

    def task_of_class(self, classes: Tensor) -> Tensor:
        """Class protocol: the task index (B,) owning each class id; -1 for a class of no trained task."""
        return self.router.task_of(classes)


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


#: Builds the optimizer of one experience from the parameter groups of what it trains.
OptimizerFactory = Callable[[list[dict]], torch.optim.Optimizer]
#: The rates `cmem task train` uses: memory and class token at `lr`, the head at `head_lr`.
DEFAULT_RATES = TrainConfig()


def _checked_factory(optimizer: object, strategy: str) -> OptimizerFactory | None:
    """`optimizer` if it is None or a factory; a clear TypeError for anything else (an instance)."""
    if optimizer is None or (callable(optimizer) and not isinstance(optimizer, torch.optim.Optimizer)):
        return optimizer  # type: ignore[return-value]
    raise TypeError(
        f"{strategy} builds a new optimizer at every experience, over the parameters that experience trains "
        "(they do not exist before it), so it takes no optimizer instance: pass optimizer=<a function of the "
        "parameter groups>, e.g. optimizer=lambda groups: torch.optim.SGD(groups, momentum=0.9), or leave it "
        f"out for AdamW; got {type(optimizer).__name__}"
    )


class TrainableOnlyTemplate(SupervisedTemplate):
    """SupervisedTemplate that builds a new optimizer over the trainable parameters only, every experience.

    `optimizer`: left out, AdamW at `lr` with `weight_decay`; or a factory that takes the parameter
    groups (`param_groups()`) and returns the optimizer, e.g.
    `lambda groups: torch.optim.SGD(groups, lr=0.01, momentum=0.9)`. Avalanche calls
    `make_optimizer` once before the first experience's adaptation too, when nothing may be
    trainable yet: no optimizer is built then.

    Copies and pickles, Avalanche's `save_checkpoint` among them, leave the optimizer out: the next
    experience builds its own, and dill cannot pickle torch's optimizers.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: OptimizerFactory | None = None,
        lr: float,
        weight_decay: float = 0.0,
        **kwargs,
    ) -> None:
        self.lr = lr
        self.weight_decay = weight_decay
        self.optimizer_factory = _checked_factory(optimizer, type(self).__name__)
        super().__init__(model=model, optimizer=None, **kwargs)

    def make_optimizer(self, **kwargs) -> None:
        groups = self.param_groups()
        if groups:
            self.optimizer = (self.optimizer_factory or self.adamw)(groups)

    def adamw(self, groups: list[dict]) -> torch.optim.Optimizer:
        """The default optimizer (a method, not a `partial` of the class: dill pickles that by value)."""
        return torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay)

    def param_groups(self) -> list[dict]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        return [{"params": params}] if params else []

    def __getstate__(self) -> dict:
        return {**self.__dict__, "optimizer": None}


class MemoryTokenStrategy(TrainableOnlyTemplate):
    """The memory-token strategy: each experience trains its own new task adapter, nothing else.

    Memory and class token learn at `lr`, the head at `head_lr` (`TaskAdapter.param_groups`); an
    `optimizer` factory gets those two groups, each with its rate.
    """

    def __init__(
        self,
        *,
        model: MemoryTokenModel,
        optimizer: OptimizerFactory | None = None,
        lr: float = DEFAULT_RATES.lr,
        head_lr: float = DEFAULT_RATES.head_lr,
        plugins: list[SupervisedPlugin] | None = None,
        **kwargs,
    ) -> None:
        self.head_lr = head_lr
        super().__init__(
            model=model, optimizer=optimizer, lr=lr, plugins=[MemoryTokenPlugin(), *(plugins or [])], **kwargs
        )

    def param_groups(self) -> list[dict]:
        model: MemoryTokenModel = self.model
        if not model.task_names:
            return []
        groups = model.vit.adapter(model.task_names[-1]).param_groups(self.lr, self.head_lr)
        return [{**g, "base_lr": g["lr"]} for g in groups]
