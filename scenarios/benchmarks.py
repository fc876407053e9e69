"""Class-split scenarios as Avalanche benchmarks (`nc_benchmark` over tensor data sets).

Every scenario splits a labelled image set by classes into experiences, in a fixed class order,
after a seeded stratified train/test split. Images reach the backbone at its own input size, channels
and normalisation (`InputSpec`, from timm's data config of that backbone), whatever their native
size: turned into model input once when that fits `PRECOMPUTE_BYTES` (the Avalanche data sets then
hold model input), else kept at their native size and resized one by one as they are read (an
Avalanche transform: CIFAR-100 at 224 px would take 36 GB at once). `describe()` says which, and
what was resized to what.

Classes per experience: as even as possible, the remainder going to the first experience (10
classes in 3 experiences: 4, 3, 3), or a given number in the first and the rest split evenly over
the others (the "B50 Inc10" protocols: 100 classes, 6 experiences, 50 in the first).

Protocols:
  * `task`: experience k has task label k and class ids 0..C_k-1 (the task label is given at test);
  * `class`: every experience has task label 0 and class ids are global, numbered 0..N-1 in order
    of appearance (experience k holds the next C_k ids); the task is never given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from continual_mem.data import (
    InputSpec,
    LabeledImages,
    digits,
    load_image_folder,
    split_train_val,
)
from continual_mem.shifted_digits import TEST_DIGITS, TEST_DRAWS, TRAIN_DIGITS, TRAIN_DRAWS, shifted_digits_parts

from .errors import ScenarioError

Protocol = Literal["task", "class"]
PROTOCOLS: tuple[Protocol, ...] = ("task", "class")

#: Seeds that fix a scenario (class order and train/test split) independently of the run seed.
ORDER_SEED = 0
SPLIT_SEED = 0
TEST_FRACTION = 0.3
TORCHVISION_SETS = ("MNIST", "FashionMNIST", "CIFAR10", "CIFAR100")
#: Model input up to this size (train and test together) is computed once, before training.
PRECOMPUTE_BYTES = 2 * 1024**3


@dataclass
class Scenario:
    """One benchmark, with what is needed to read its results.

    `experience_classes[k]` lists the ORIGINAL class ids of experience k (indices into
    `class_names`); the benchmark's own ids follow the protocol (see the module docstring).
    """

    name: str
    protocol: Protocol
    benchmark: Any  # Avalanche's NCScenario (untyped here: this module imports Avalanche lazily)
    class_names: list[str]
    experience_classes: list[list[int]]
    source: str
    train_size: int
    test_size: int
    details: dict[str, object] = field(default_factory=dict)

    @property
    def n_experiences(self) -> int:
        return len(self.experience_classes)

    @property
    def class_order(self) -> list[int]:
        return [c for classes in self.experience_classes for c in classes]

    def class_tasks(self) -> dict[int, int]:
        """The benchmark's class ids -> the experience (task) that holds them."""
        stream = self.benchmark.train_stream
        return {int(c): k for k, exp in enumerate(stream) for c in exp.classes_in_this_experience}

    def describe(self) -> dict[str, object]:
        """JSON-ready facts of the scenario, stored with every run."""
        return {
            "scenario": self.name,
            "protocol": self.protocol,
            "source": self.source,
            "experiences": [[self.class_names[c] for c in cs] for cs in self.experience_classes],
            "train_size": self.train_size,
            "test_size": self.test_size,
            **self.details,
        }


def seeded_order(num_classes: int, seed: int = ORDER_SEED) -> list[int]:
    """A random class order that depends on `seed` only."""
    return torch.randperm(num_classes, generator=torch.Generator().manual_seed(seed)).tolist()


def _check_order(order: Sequence[int], num_classes: int) -> list[int]:
    order = list(order)
    if sorted(order) != list(range(num_classes)):
        raise ScenarioError(f"class order must name each of the {num_classes} classes once, got {order}")
    return order


def experience_sizes(num_classes: int, n_experiences: int, first_classes: int | None = None) -> list[int]:
    """Classes in each experience (see the module docstring); refuses a split that cannot be made."""
    if not 1 <= n_experiences <= num_classes:
        raise ScenarioError(
            f"cannot split {num_classes} classes into {n_experiences} experiences; choose 1 to {num_classes}"
        )
    others = n_experiences - 1
    if first_classes is None:
        rest = num_classes // n_experiences
        return [num_classes - rest * others] + [rest] * others
    if not 1 <= first_classes <= num_classes:
        raise ScenarioError(f"the first experience must hold 1 to {num_classes} classes, got {first_classes}")
    left = num_classes - first_classes
    if left < others or (others == 0 and left):
        raise ScenarioError(
            f"{first_classes} classes in the first experience leave {left} for {others} more experience(s)"
        )
    if others == 0:
        return [first_classes]
    if left % others:
        raise ScenarioError(f"the {left} classes after the first experience do not split evenly into {others}")
    return [first_classes] + [left // others] * others


def _experience_classes(order: list[int], sizes: list[int]) -> list[list[int]]:
    return [order[end - size : end] for size, end in zip(sizes, accumulate(sizes))]


def _limit_per_class(data: LabeledImages, limit: int | None, seed: int) -> LabeledImages:
    """At most `limit` images per class (seeded choice); used by quick runs and large sets."""
    if limit is None:
        return data
    gen = torch.Generator().manual_seed(seed)
    keep = []
    for label in range(len(data.class_names)):
        rows = (data.labels == label).nonzero(as_tuple=True)[0]
        keep.append(rows[torch.randperm(len(rows), generator=gen)[:limit]])
    return data.subset(torch.cat(keep).sort().values)


def from_labeled_images(
    name: str,
    train: LabeledImages,
    test: LabeledImages,
    input_spec: InputSpec,
    protocol: Protocol,
    n_experiences: int,
    class_order: Sequence[int] | None = None,
    details: dict[str, object] | None = None,
    first_classes: int | None = None,
) -> Scenario:
    """Split train/test images by classes into an Avalanche benchmark of the given protocol.

    `first_classes`: classes in the first experience (default: as even a split as can be made).
    """
    from avalanche.benchmarks import nc_benchmark

    if protocol not in PROTOCOLS:
        raise ScenarioError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    num_classes = len(train.class_names)
    order = _check_order(class_order if class_order is not None else seeded_order(num_classes), num_classes)
    sizes = experience_sizes(num_classes, n_experiences, first_classes)
    experiences = _experience_classes(order, sizes)
    per_image = _model_input_bytes(len(train) + len(test), input_spec) > PRECOMPUTE_BYTES
    transform = input_spec.one if per_image else None
    benchmark = nc_benchmark(
        _dataset(train, input_spec, per_image),
        _dataset(test, input_spec, per_image),
        n_experiences=n_experiences,
        task_labels=protocol == "task",
        shuffle=False,
        fixed_class_order=order,
        per_exp_classes={0: sizes[0]} if len(set(sizes)) > 1 else None,
        class_ids_from_zero_in_each_exp=protocol == "task",
        class_ids_from_zero_from_first_exp=protocol == "class",
        train_transform=transform,
        eval_transform=transform,
    )
    return Scenario(
        name=name,
        protocol=protocol,
        benchmark=benchmark,
        class_names=list(train.class_names),
        experience_classes=experiences,
        source=train.source,
        train_size=len(train),
        test_size=len(test),
        details={**(details or {}), "input": input_details(train, input_spec, per_image)},
    )


def _model_input_bytes(count: int, input_spec: InputSpec) -> int:
    return count * input_spec.in_chans * input_spec.img_size**2 * 4  # float32


def _dataset(data: LabeledImages, input_spec: InputSpec, per_image: bool) -> Any:
    """A TensorDataset of model input, or of the native images when they are resized as read."""
    from torch.utils.data import TensorDataset

    return TensorDataset(data.images if per_image else _model_input(data.images, input_spec), data.labels)


def _model_input(images: Tensor, input_spec: InputSpec, chunk: int = 2048) -> Tensor:
    """The backbone's input for every image, computed in chunks to bound peak memory."""
    return torch.cat([input_spec(images[i : i + chunk]) for i in range(0, len(images), chunk)])


def input_details(data: LabeledImages, input_spec: InputSpec, per_image: bool) -> dict[str, object]:
    """What was resized to what (kept with every run, printed in reports).

    The native size is the images' own, or for a folder (whose images are resized one by one as they
    are loaded) the largest among them.
    """
    native = data.native_size or tuple(data.images.shape[-2:])
    return {
        "native_size": [int(native[0]), int(native[1])],
        "native_channels": int(data.images.shape[1]),
        "model_size": [input_spec.img_size, input_spec.img_size],
        "model_channels": input_spec.in_chans,
        "mean": list(input_spec.mean),
        "std": list(input_spec.std),
        "resized": "per image, as read" if per_image else "once, before training",
    }


def _limit_both(train: LabeledImages, test: LabeledImages, limit: int | None) -> tuple[LabeledImages, LabeledImages]:
    """`limit` training images per class, and test images in the split's proportion."""
    test_limit = None if limit is None else max(1, round(limit * TEST_FRACTION / (1 - TEST_FRACTION)))
    return _limit_per_class(train, limit, SPLIT_SEED), _limit_per_class(test, test_limit, SPLIT_SEED)


def _split(data: LabeledImages, limit: int | None) -> tuple[LabeledImages, LabeledImages]:
    return _limit_both(*split_train_val(data, TEST_FRACTION, SPLIT_SEED), limit)


def split_digits(
    input_spec: InputSpec,
    protocol: Protocol = "task",
    class_order: Sequence[int] | None = None,
    n_experiences: int = 5,
    limit_per_class: int | None = None,
    first_classes: int | None = None,
) -> Scenario:
    """scikit-learn's real 8x8 digits, 10 classes in 5 experiences of 2 (seeded class order)."""
    train, test = _split(digits(), limit_per_class)
    return from_labeled_images(
        "split-digits",
        train,
        test,
        input_spec,
        protocol,
        n_experiences,
        class_order,
        {"test_fraction": TEST_FRACTION, "split_seed": SPLIT_SEED, "limit_per_class": limit_per_class},
        first_classes,
    )


def split_shifted_digits(
    input_spec: InputSpec,
    protocol: Protocol = "task",
    class_order: Sequence[int] | None = None,
    n_experiences: int = 5,
    limit_per_class: int | None = None,
    first_classes: int | None = None,
) -> Scenario:
    """The real digits drawn textured, half inverted and noisy (`continual_mem.shifted_digits`).

    Its own train/test parts (disjoint source digits): 360 training and 250 test images per class,
    so 500 test images per task of two classes, in split-digits' seeded class order.
    """
    train, test = _limit_both(*shifted_digits_parts(SPLIT_SEED), limit_per_class)
    return from_labeled_images(
        "shifted-digits",
        train,
        test,
        input_spec,
        protocol,
        n_experiences,
        class_order,
        {
            "split_seed": SPLIT_SEED,
            "limit_per_class": limit_per_class,
            "train": f"{TRAIN_DIGITS} real digits per class drawn {TRAIN_DRAWS} times",
            "test": f"{TEST_DIGITS} other real digits per class drawn {TEST_DRAWS} times",
        },
        first_classes,
    )


def split_image_folder(
    root: Path,
    input_spec: InputSpec,
    protocol: Protocol = "task",
    class_order: Sequence[int] | None = None,
    n_experiences: int = 5,
    limit_per_class: int | None = None,
    first_classes: int | None = None,
) -> Scenario:
    """Any folder of class sub-folders, split by classes (seeded order unless given)."""
    data = load_image_folder(root, side=input_spec.img_size)
    train, test = _split(data, limit_per_class)
    return from_labeled_images(
        f"folder:{root}",
        train,
        test,
        input_spec,
        protocol,
        n_experiences,
        class_order,
        {"test_fraction": TEST_FRACTION, "split_seed": SPLIT_SEED, "limit_per_class": limit_per_class},
        first_classes,
    )


def _torchvision_images(name: str, root: Path, train: bool, download: bool) -> LabeledImages:
    import torchvision

    if name not in TORCHVISION_SETS:
        raise ScenarioError(f"torchvision set must be one of {TORCHVISION_SETS}, got {name!r}")
    try:
        ds = getattr(torchvision.datasets, name)(str(root), train=train, download=download)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted. You can use download=True"
        hint = "" if download else " (pass --download to fetch it)"
        raise ScenarioError(f"{name} not found under {root}{hint}: {exc}") from None
    images = torch.as_tensor(ds.data)
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    return LabeledImages(
        images.float() / 255.0, torch.as_tensor(ds.targets, dtype=torch.long), list(ds.classes), f"torchvision:{name}"
    )


def split_torchvision(
    name: str,
    root: Path,
    input_spec: InputSpec,
    protocol: Protocol = "task",
    class_order: Sequence[int] | None = None,
    n_experiences: int = 10,
    limit_per_class: int | None = None,
    first_classes: int | None = None,
    download: bool = False,
) -> Scenario:
    """A torchvision set already on disk under `root` (downloaded only with `download=True`).

    Uses the set's own train/test split; `limit_per_class` caps training images per class (and
    test images in proportion).
    """
    train, test = _limit_both(
        _torchvision_images(name, root, True, download),
        _torchvision_images(name, root, False, download),
        limit_per_class,
    )
    return from_labeled_images(
        f"torchvision:{name}",
        train,
        test,
        input_spec,
        protocol,
        n_experiences,
        class_order,
        {"root": str(root), "limit_per_class": limit_per_class},
        first_classes,
    )


BUILTIN_SCENARIOS = ("split-digits", "shifted-digits")
SCENARIO_HELP = (
    "split-digits | shifted-digits | folder:PATH | torchvision:NAME[:ROOT] "
    f"(NAME one of {', '.join(TORCHVISION_SETS)}; ROOT defaults to ./data)"
)


def benchmarks_text() -> str:
    """What each built-in benchmark is and why shifted-digits is a real shift (for docs/results.md)."""
    return (
        "- **split-digits**: scikit-learn's 1,797 real 8x8 handwritten digits, seeded stratified 70/30 "
        "train/test split, 10 classes in 5 experiences of 2 in a fixed seeded class order (about 108 test "
        "images per experience: one seed to the next moves a strategy 2-4 points).\n"
        f"- **shifted-digits**: the same real digits, GENERATED into 32x32 drawings: each digit scaled to "
        "32 px as in split-digits, its ink and its ground filled with two random striped textures (orientation, "
        "frequency, phase per image), half of the images inverted (dark ink on a light ground), Gaussian noise. "
        f"The real digits are split first, per class and seeded: {TRAIN_DIGITS} for training, drawn "
        f"{TRAIN_DRAWS} times each, and {TEST_DIGITS} others for testing, drawn {TEST_DRAWS} times each "
        f"({10 * TRAIN_DIGITS * TRAIN_DRAWS:,} training and {10 * TEST_DIGITS * TEST_DRAWS:,} test images, "
        f"{2 * TEST_DIGITS * TEST_DRAWS} per experience of 2 classes; no test image shares its source digit "
        "with a training image). Same class order as split-digits. **Why the shift is real**: the demo "
        "backbone was pretrained on clean light pen strokes on a black ground (generated glyphs); it has never "
        "seen textures, inverted contrast or this noise, so its class token's features separate these digits "
        "less well than a model that adapts its features: head-only falls well below per-task full "
        "fine-tuning here: the gap the memory tokens are meant to close."
    )


def check_scenario_name(name: str) -> None:
    """Refuse a scenario name `build_scenario` cannot build, before any backbone or data is loaded."""
    if name in BUILTIN_SCENARIOS:
        return
    if name.startswith("folder:"):
        if not Path(name[len("folder:") :]).is_dir():
            raise ScenarioError(f"scenario {name!r}: folder {name[len('folder:') :]} does not exist")
        return
    if name.startswith("torchvision:"):
        set_name = name[len("torchvision:") :].partition(":")[0]
        if set_name not in TORCHVISION_SETS:
            raise ScenarioError(f"torchvision set must be one of {TORCHVISION_SETS}, got {set_name!r}")
        return
    raise ScenarioError(f"unknown scenario {name!r}; expected {SCENARIO_HELP}")


def build_scenario(
    name: str,
    input_spec: InputSpec,
    protocol: Protocol = "task",
    class_order: Sequence[int] | None = None,
    n_experiences: int | None = None,
    limit_per_class: int | None = None,
    download: bool = False,
    first_classes: int | None = None,
) -> Scenario:
    """A scenario by name (see `SCENARIO_HELP`); `n_experiences` None: the scenario's default."""
    common: dict[str, Any] = {
        "input_spec": input_spec,
        "protocol": protocol,
        "class_order": class_order,
        "limit_per_class": limit_per_class,
        "first_classes": first_classes,
    }
    if name == "split-digits":
        return split_digits(n_experiences=n_experiences or 5, **common)
    if name == "shifted-digits":
        return split_shifted_digits(n_experiences=n_experiences or 5, **common)
    if name.startswith("folder:"):
        return split_image_folder(Path(name[len("folder:") :]), n_experiences=n_experiences or 5, **common)
    if name.startswith("torchvision:"):
        set_name, _, root = name[len("torchvision:") :].partition(":")
        return split_torchvision(
            set_name, Path(root or "data"), n_experiences=n_experiences or 10, download=download, **common
        )
    raise ScenarioError(f"unknown scenario {name!r}; expected {SCENARIO_HELP}")
