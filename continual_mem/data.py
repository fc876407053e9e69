"""Labelled image sources and the transform to a backbone's input.

Sources (strings, as the CLI takes them):
  * a directory: one sub-folder per class (torchvision ImageFolder conventions);
  * `builtin:digits[?classes=5,6]`: scikit-learn's real 8x8 handwritten digits (1,797 images);
  * `builtin:shifted-digits[?classes=..&part=train|test&seed=..&stripes=..&noise=..]`: the same real digits drawn with
    textured ink and ground, half inverted, with noise (GENERATED from them, `shifted_digits`): a
    domain shift from the demo backbone's pretraining; train and test parts from disjoint digits;
  * `builtin:glyphs[?n=..&seed=..&lowres=..]`: GENERATED pen-stroke glyphs, the pretraining data of
    the project's demo backbone; no digits among them;
  * `builtin:shapes[?n=..&seed=..]`: GENERATED geometric shapes, a simpler pretraining set.
All sources give float images in [0, 1], (N, C, H, W), before the backbone's own transform.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ContinualMemError
from .images import MAX_PIXELS, ImageError, batch_at_side, decode_image, to_side

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
SYNTHETIC_SIZE = 32
#: Side images are brought to when the caller names none: the largest image's, at most this.
MAX_DEFAULT_SIDE = 224
SHAPE_NAMES = ("disk", "square", "triangle", "cross", "ring", "hbar", "vbar", "diagonal")


class DataError(ContinualMemError):
    """A data source that cannot be read: missing, empty, unreadable images."""


@dataclass
class LabeledImages:
    """Images (N, C, H, W) float in [0, 1], labels (N,) and the class names labels index into."""

    images: Tensor
    labels: Tensor
    class_names: list[str]
    source: str
    native_size: tuple[int, int] | None = None
    """The largest (H, W) among the images as read, where they were resized on loading (folders)."""

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: Tensor | Sequence[int]) -> LabeledImages:
        index = torch.as_tensor(index, dtype=torch.long)
        return LabeledImages(self.images[index], self.labels[index], self.class_names, self.source, self.native_size)

    def fingerprint(self) -> str:
        """sha256 of the images, labels and class names: which data a version was trained on."""
        digest = hashlib.sha256()
        digest.update("\n".join(self.class_names).encode())
        digest.update(self.labels.numpy().tobytes())
        digest.update((self.images * 255).round().to(torch.uint8).numpy().tobytes())
        return digest.hexdigest()


def load_source(
    spec: str, skip_bad: bool = False, side: int | None = None, max_pixels: int = MAX_PIXELS
) -> LabeledImages:
    """Read a data source given as a directory path or a `builtin:` name with query options.

    `side` and `max_pixels` apply to image folders (see `load_image_folder`).
    """
    if spec.startswith("builtin:"):
        return _load_builtin(spec)
    return load_image_folder(Path(spec), skip_bad=skip_bad, side=side, max_pixels=max_pixels)


def source_class_names(spec: str) -> list[str]:
    """The class names of a data source; a folder's images are listed, not decoded."""
    if spec.startswith("builtin:"):
        return _load_builtin(spec).class_names
    return [class_dir.name for class_dir, _ in _class_files(Path(spec))]


def _load_builtin(spec: str) -> LabeledImages:
    name, _, query = spec[len("builtin:") :].partition("?")
    options = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    builders = {
        "digits": _digits_from_options,
        "shifted-digits": _shifted_digits_from_options,
        "shapes": _shapes_from_options,
        "glyphs": _glyphs_from_options,
    }
    if name not in builders:
        raise DataError(f"unknown built-in data set {name!r} (known: {', '.join(sorted(builders))})")
    try:
        data = builders[name](options)
    except (TypeError, ValueError) as exc:
        raise DataError(f"bad options in {spec!r}: {exc}") from None
    data.source = spec
    return data


def _int_list(text: str) -> list[int]:
    return [int(p) for p in text.split(",") if p.strip()]


def _digits_from_options(options: dict[str, str]) -> LabeledImages:
    unknown = set(options) - {"classes"}
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}")
    classes = _int_list(options["classes"]) if "classes" in options else None
    return digits(classes)


def _shifted_digits_from_options(options: dict[str, str]) -> LabeledImages:
    from .shifted_digits import shifted_digits

    unknown = set(options) - {"classes", "part", "seed", "stripes", "noise"}
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}")
    classes = _int_list(options["classes"]) if "classes" in options else None
    style = {k: float(options[k]) for k in ("stripes", "noise") if k in options}
    return shifted_digits(classes, part=options.get("part", "train"), seed=int(options.get("seed", 0)), **style)


def _shapes_from_options(options: dict[str, str]) -> LabeledImages:
    unknown = set(options) - {"n", "seed"}
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}")
    return shapes(n_per_class=int(options.get("n", 600)), seed=int(options.get("seed", 0)))


def _glyphs_from_options(options: dict[str, str]) -> LabeledImages:
    unknown = set(options) - {"n", "seed", "lowres"}
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}")
    lowres = float(options.get("lowres", GLYPH_LOWRES))
    if not 0.0 <= lowres <= 1.0:
        raise ValueError(f"lowres is a fraction in [0, 1], got {lowres}")
    return glyphs(n_per_class=int(options.get("n", GLYPH_PER_CLASS)), seed=int(options.get("seed", 0)), lowres=lowres)


def select_classes(data: LabeledImages, classes: Sequence[int] | None) -> LabeledImages:
    """Keep the given class ids (in that order), relabelled 0..k-1."""
    if classes is None:
        return data
    n = len(data.class_names)
    bad = [c for c in classes if not 0 <= c < n]
    if bad or len(set(classes)) != len(classes) or not classes:
        raise ValueError(f"classes must be distinct ids in 0..{n - 1}, got {list(classes)}")
    remap = torch.full((n,), -1, dtype=torch.long)
    remap[torch.tensor(classes)] = torch.arange(len(classes))
    keep = (remap[data.labels] >= 0).nonzero(as_tuple=True)[0]
    return LabeledImages(
        data.images[keep], remap[data.labels[keep]], [data.class_names[c] for c in classes], data.source
    )


def digits(classes: Sequence[int] | None = None) -> LabeledImages:
    """scikit-learn's handwritten digits: real 8x8 images with 17 grey levels, as (N, 1, 8, 8)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    data = LabeledImages(
        images, torch.tensor(bunch.target, dtype=torch.long), [str(i) for i in range(10)], "builtin:digits"
    )
    return select_classes(data, classes)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def _draw_shape(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One shape of random position, scale and thickness on a black square, values in [0, 1]."""
    yy, xx = _grid(size)
    r = rng.uniform(0.18, 0.32) * size
    cy, cx = rng.uniform(r, size - r, size=2)
    dy, dx = yy - cy, xx - cx
    t = max(1.0, rng.uniform(0.06, 0.12) * size)
    masks = {
        "disk": lambda: dy**2 + dx**2 <= r**2,
        "square": lambda: (np.abs(dy) <= r * 0.8) & (np.abs(dx) <= r * 0.8),
        "triangle": lambda: (dy <= r * 0.7) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6),
        "cross": lambda: ((np.abs(dy) <= t / 2) | (np.abs(dx) <= t / 2)) & (np.abs(dy) <= r) & (np.abs(dx) <= r),
        "ring": lambda: np.abs(np.sqrt(dy**2 + dx**2) - r * 0.8) <= t / 2,
        "hbar": lambda: (np.abs(dy) <= t / 2) & (np.abs(dx) <= r * 1.2),
        "vbar": lambda: (np.abs(dx) <= t / 2) & (np.abs(dy) <= r * 1.2),
        "diagonal": lambda: (np.abs(dy - dx) <= t / 1.4) & (np.abs(dx) <= r),
    }
    return masks[kind]().astype(np.float32) * rng.uniform(0.6, 1.0)


def _finish(canvas: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    canvas = canvas + rng.normal(0.0, noise, size=canvas.shape).astype(np.float32)
    return np.clip(canvas, 0.0, 1.0)


def shapes(n_per_class: int = 600, seed: int = 0, size: int = SYNTHETIC_SIZE) -> LabeledImages:
    """GENERATED pretraining data: 8 classes of single geometric shapes, randomly placed and scaled."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, kind in enumerate(SHAPE_NAMES):
        for _ in range(n_per_class):
            images.append(_finish(_draw_shape(kind, size, rng), rng, 0.08))
            labels.append(label)
    return LabeledImages(
        torch.from_numpy(np.stack(images).astype(np.float32)).unsqueeze(1),
        torch.tensor(labels),
        list(SHAPE_NAMES),
        "builtin:shapes",
    )


GLYPH_CLASSES = 64
GLYPH_PER_CLASS = 160
#: Fraction of glyph images scanned at a low resolution, and the sides (px) they are scanned at.
GLYPH_LOWRES = 0.5
GLYPH_LOW_SIDES = (8, 10, 12, 16)


def _bezier_points(controls: np.ndarray, steps: int = 24) -> np.ndarray:
    """Points along a quadratic Bezier curve given its 3 control points (3, 2)."""
    t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
    return (1 - t) ** 2 * controls[0] + 2 * (1 - t) * t * controls[1] + t**2 * controls[2]


def _render_strokes(strokes: list[np.ndarray], size: int, thickness: float) -> np.ndarray:
    """Anti-aliased strokes: brightness falls off with the distance to the nearest curve point."""
    points = np.concatenate([_bezier_points(c) for c in strokes])  # (P, 2) as (y, x)
    yy, xx = _grid(size)
    d2 = (yy.reshape(-1, 1) - points[:, 0]) ** 2 + (xx.reshape(-1, 1) - points[:, 1]) ** 2
    distance = np.sqrt(d2.min(axis=1)).reshape(size, size)
    return np.clip(thickness - distance + 0.5, 0.0, 1.0).astype(np.float32)


def _jittered(strokes: list[np.ndarray], size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A random similarity transform plus a little per-point jitter, like another hand."""
    angle = rng.uniform(-0.35, 0.35)
    scale = rng.uniform(0.8, 1.15)
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], np.float32)
    center = size / 2.0
    shift = rng.uniform(-3, 3, size=2).astype(np.float32)
    return [_turned(c - center, rot) + center + shift + rng.normal(0, 1.0, c.shape).astype(np.float32) for c in strokes]


def _turned(points: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """`points @ rot.T` (points (P, 2)) in elementwise float32 arithmetic, the same bytes on every CPU.

    numpy hands `@` to OpenBLAS, whose kernel for the CPU at hand rounds with or without FMA."""
    return points[:, :1] * rot[:, 0] + points[:, 1:] * rot[:, 1]


def glyphs(
    n_per_class: int = GLYPH_PER_CLASS,
    seed: int = 0,
    size: int = SYNTHETIC_SIZE,
    num_classes: int = GLYPH_CLASSES,
    lowres: float = GLYPH_LOWRES,
) -> LabeledImages:
    """GENERATED pretraining data: 64 random pen-stroke glyphs (2-3 curves each), half scanned at low resolution.

    Each class is a fixed random set of quadratic curves; samples rotate, scale, shift and jitter
    them and vary the pen. No glyph is a digit: the classes are random curves. A `lowres` fraction
    of the images is scanned at 8-16 px and scaled back up, so a backbone pretrained on them also
    knows blurry, low-resolution strokes (downstream sources are often small images scaled up).
    """
    rng = np.random.default_rng(seed + 7_919)
    margin = size * 0.12
    prototypes = [
        [rng.uniform(margin, size - margin, size=(3, 2)).astype(np.float32) for _ in range(rng.integers(2, 4))]
        for _ in range(num_classes)
    ]
    images, labels = [], []
    for label, strokes in enumerate(prototypes):
        for _ in range(n_per_class):
            canvas = _render_strokes(_jittered(strokes, size, rng), size, rng.uniform(1.5, 3.0))
            images.append(_finish(canvas * rng.uniform(0.7, 1.0), rng, 0.05))
            labels.append(label)
    return LabeledImages(
        _low_resolution(torch.from_numpy(np.stack(images).astype(np.float32)).unsqueeze(1), lowres, rng),
        torch.tensor(labels),
        [f"glyph-{i:02d}" for i in range(num_classes)],
        "builtin:glyphs",
    )


def _low_resolution(images: Tensor, fraction: float, rng: np.random.Generator) -> Tensor:
    """A random `fraction` of the images shrunk (area) to 8-16 px, then scaled back up (bilinear)."""
    picked = rng.random(len(images)) < fraction
    sides = rng.choice(GLYPH_LOW_SIDES, size=len(images))
    out = images.clone()
    for side in GLYPH_LOW_SIDES:
        rows = torch.from_numpy(np.flatnonzero(picked & (sides == side)))
        if len(rows):
            small = F.interpolate(images[rows], size=(side, side), mode="area")
            out[rows] = F.interpolate(small, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return out


def load_image_folder(
    root: Path, skip_bad: bool = False, side: int | None = None, max_pixels: int = MAX_PIXELS
) -> LabeledImages:
    """A folder with one sub-folder per class; grayscale/RGBA images become RGB.

    Each image is decoded on its own (refused over `max_pixels`, see `images.decode_image`) and
    resized on its own to `side` (give the backbone's input side), so one large image never
    inflates the others; without `side`, to the largest image's side, at most `MAX_DEFAULT_SIDE`.
    Images that cannot be used are refused with their paths, or skipped with `skip_bad`; a class
    left without any image is refused either way.
    """
    images, labels, bad = [], [], []
    native = (0, 0)
    class_files = _class_files(root)
    for label, (class_dir, files) in enumerate(class_files):
        kept = 0
        for path in files:
            try:
                image = decode_image(path, max_pixels=max_pixels)
            except ImageError as exc:
                bad.append(str(exc))
                continue
            native = (max(native[0], image.shape[-2]), max(native[1], image.shape[-1]))
            images.append(_fit_side(image, side))
            labels.append(label)
            kept += 1
        if kept == 0 and skip_bad:
            raise DataError(f"class folder {class_dir} has no readable image ({len(files)} skipped)")
    if bad and not skip_bad:
        shown = "; ".join(bad[:3]) + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise DataError(f"{len(bad)} unreadable image(s): {shown} (use --skip-bad to skip them)")
    class_names = [class_dir.name for class_dir, _ in class_files]
    return LabeledImages(_batch_of(images, side), torch.tensor(labels), class_names, str(root), native)


def _class_files(root: Path) -> list[tuple[Path, list[Path]]]:
    """Each class sub-folder of `root` (sorted) with its image files; refused when empty or missing."""
    if not root.exists():
        raise DataError(f"data directory {root} does not exist")
    if not root.is_dir():
        raise DataError(f"data source {root} is not a directory")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"data directory {root} has no class sub-folders")
    classes = []
    for class_dir in class_dirs:
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"class folder {class_dir} holds no images")
        classes.append((class_dir, files))
    return classes


def _fit_side(image: Tensor, side: int | None) -> Tensor:
    """One image at `side`; without a side, shrunk to at most `MAX_DEFAULT_SIDE` (see `_batch_of`)."""
    if side is not None:
        return to_side(image, side)
    return to_side(image, MAX_DEFAULT_SIDE) if max(image.shape[-2:]) > MAX_DEFAULT_SIDE else image


def _batch_of(images: Sequence[Tensor], side: int | None) -> Tensor:
    """Images passed through `_fit_side` as one (N, 3, S, S) batch: S is `side`, else the largest image's."""
    return batch_at_side(images, side or max(max(image.shape[-2:]) for image in images))


@dataclass(frozen=True)
class InputSpec:
    """What a backbone expects: image side, channels and normalisation (timm's data config)."""

    img_size: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_backbone(cls, backbone: torch.nn.Module) -> InputSpec:
        from timm.data import resolve_data_config

        cfg = resolve_data_config({}, model=backbone)
        height = backbone.patch_embed.img_size[0]  # the built size, which kwargs may have changed
        chans = int(backbone.patch_embed.proj.in_channels)
        return cls(int(height), chans, tuple(cfg["mean"])[:chans], tuple(cfg["std"])[:chans])

    def batch(self, images: Sequence[Tensor], device: torch.device | str | None = None) -> Tensor:
        """Images (3, H, W) in [0, 1] of any sizes, each resized on its own, as one model input.

        With `device`, the stacked images move there before they are normalised (on a GPU, one
        copy and one kernel instead of per-image work on the host).
        """
        return self(batch_at_side(images, self.img_size).to(device))

    def __call__(self, images: Tensor) -> Tensor:
        """(N, C, H, W) in [0, 1] -> resized, channel-matched, normalised model input."""
        if images.shape[-1] != self.img_size or images.shape[-2] != self.img_size:
            images = F.interpolate(images, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        if images.shape[1] != self.in_chans:
            images = images.mean(dim=1, keepdim=True).expand(-1, self.in_chans, -1, -1)
        mean = images.new_tensor(self.mean).view(1, -1, 1, 1)
        std = images.new_tensor(self.std).view(1, -1, 1, 1)
        return (images - mean) / std

    def one(self, image: Tensor) -> Tensor:
        """One image (C, H, W) in [0, 1] -> its model input (a per-sample transform)."""
        return self(image.unsqueeze(0))[0]


def split_train_val(data: LabeledImages, val_fraction: float, seed: int) -> tuple[LabeledImages, LabeledImages]:
    """A stratified, seeded train/validation split."""
    train_idx, val_idx = split_indices(data.labels, len(data.class_names), val_fraction, seed)
    return data.subset(train_idx), data.subset(val_idx)


def split_indices(labels: Tensor, num_classes: int, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Rows of the train and validation parts of `split_train_val`, stratified on `labels`."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"validation split must be in [0, 1), got {val_fraction}")
    gen = torch.Generator().manual_seed(seed)
    train_idx, val_idx = [], []
    for label in range(num_classes):
        rows = (labels == label).nonzero(as_tuple=True)[0]
        rows = rows[torch.randperm(len(rows), generator=gen)]
        n_val = round(len(rows) * val_fraction)
        val_idx.append(rows[:n_val])
        train_idx.append(rows[n_val:])
    return torch.cat(train_idx), torch.cat(val_idx)
