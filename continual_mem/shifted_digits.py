"""`builtin:shifted-digits`: scikit-learn's real digits drawn in a style no pretraining here has seen.

Each real 8x8 digit is scaled to 32x32 (as split-digits reaches the demo backbone); its ink and its
background are filled with two random striped textures (orientation, frequency and phase drawn
per image, with overlapping brightness ranges), half of the images are inverted (dark ink on light
ground) and Gaussian noise is added. The demo backbone was pretrained on clean light strokes on a
black ground (`builtin:glyphs`), so textured, inverted, noisy digits are a real domain shift for
its features.

Real digits are split FIRST (per class, seeded: `TRAIN_DIGITS` for training, the next `TEST_DIGITS`
for testing), and only then drawn, `TRAIN_DRAWS` times each for training and `TEST_DRAWS` times each
for testing: no test image shares its source digit with a training image. 10 classes x 120 x 3 =
3,600 training images; 10 x 50 x 5 = 2,500 test images (500 per task of two classes).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .data import SYNTHETIC_SIZE, LabeledImages, select_classes

TRAIN_DIGITS = 120
TEST_DIGITS = 50
TRAIN_DRAWS = 3
TEST_DRAWS = 5
PARTS = ("train", "test")
#: Style strength. At amplitude 0.1 and noise 0.05, per-task full fine-tuning of the demo backbone
#: reached 88.0-89.2% (task protocol, seed 0, rates 1e-4 and 3e-4): below the 90% a benchmark needs
#: to tell methods apart. At 0.06 and 0.03 (measured, seed 0): full fine-tuning 95.1, head-only 82.3
#: (12.8 below: the shift is still real), memory-5 85.8.
NOISE = 0.03
AMPLITUDE = 0.06
#: Fraction of the images drawn dark on light.
INVERTED = 0.5


def shifted_digits(
    classes: Sequence[int] | None = None,
    part: str = "train",
    seed: int = 0,
    stripes: float = AMPLITUDE,
    noise: float = NOISE,
) -> LabeledImages:
    """One part (`train` or `test`) of the shifted digits, classes relabelled 0..k-1 when given.

    `stripes` (the textures' amplitude) and `noise` (its standard deviation) set how far the style
    moves; 0 and 0 leave the inversion alone (half of the digits dark on a light ground).
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {', '.join(PARTS)}, got {part!r}")
    if not (0.0 <= stripes <= 0.25 and 0.0 <= noise <= 0.5):
        raise ValueError(f"stripes must be in [0, 0.25] and noise in [0, 0.5], got {stripes} and {noise}")
    data = shifted_digits_parts(seed, stripes, noise)[PARTS.index(part)]
    return select_classes(data, classes)


def shifted_digits_parts(
    seed: int = 0, stripes: float = AMPLITUDE, noise: float = NOISE
) -> tuple[LabeledImages, LabeledImages]:
    """The training and test parts, drawn from disjoint sets of real digits."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    digits = bunch.images.astype(np.float32) / 16.0
    rng = np.random.default_rng(seed + 271_828)
    parts = []
    for rows, part in zip(source_rows(seed), PARTS):
        images = _draw(digits[rows], rng, stripes, noise)
        labels = torch.from_numpy(bunch.target[rows].astype(np.int64))
        parts.append(LabeledImages(images, labels, [str(i) for i in range(10)], f"builtin:shifted-digits?part={part}"))
    return parts[0], parts[1]


def source_rows(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Which of scikit-learn's digits each training and each test image draws (class by class).

    Per class, a seeded permutation of its real digits: the first `TRAIN_DIGITS` are drawn
    `TRAIN_DRAWS` times each for training, the next `TEST_DIGITS` `TEST_DRAWS` times each for testing.
    """
    from sklearn.datasets import load_digits

    target = load_digits().target
    rng = np.random.default_rng(seed + 314_159)
    train, test = [], []
    for label in range(10):
        rows = rng.permutation(np.flatnonzero(target == label))
        train.append(np.repeat(rows[:TRAIN_DIGITS], TRAIN_DRAWS))
        test.append(np.repeat(rows[TRAIN_DIGITS : TRAIN_DIGITS + TEST_DIGITS], TEST_DRAWS))
    return np.concatenate(train), np.concatenate(test)


def _draw(
    digits: np.ndarray, rng: np.random.Generator, stripes: float, noise: float, size: int = SYNTHETIC_SIZE
) -> torch.Tensor:
    """(M, 8, 8) digits in [0, 1] -> (M, 1, size, size) textured, half inverted, noisy images."""
    m = len(digits)
    scaled = F.interpolate(torch.from_numpy(digits).unsqueeze(1), size=(size, size), mode="bilinear")
    ink = scaled[:, 0].clamp(0, 1).numpy()
    canvas = ink * _stripes(m, size, 0.75, stripes, rng) + (1 - ink) * _stripes(m, size, 0.25, stripes, rng)
    inverted = rng.random(m) < INVERTED
    canvas[inverted] = 1.0 - canvas[inverted]
    canvas = canvas + rng.normal(0.0, noise, size=canvas.shape).astype(np.float32)
    return torch.from_numpy(np.clip(canvas, 0.0, 1.0)).unsqueeze(1)


def _stripes(m: int, size: int, mean: float, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """M random striped textures around `mean`: orientation, frequency, phase per image."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, np.pi, size=(m, 1, 1))
    frequency = rng.uniform(0.05, 0.15, size=(m, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, size=(m, 1, 1))
    wave = np.sin(2 * np.pi * frequency * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
    return (mean + amplitude * wave).astype(np.float32)
