"""Data sources: built-ins, image folders, the backbone's input transform."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import tiny_vit
from PIL import Image

from continual_mem.data import (
    DataError,
    InputSpec,
    digits,
    load_source,
    split_train_val,
)
from continual_mem.shifted_digits import shifted_digits, shifted_digits_parts, source_rows


def test_digits_are_the_real_scikit_learn_digits() -> None:
    from sklearn.datasets import load_digits

    data = load_source("builtin:digits")
    assert data.images.shape == (1797, 1, 8, 8) and data.images.dtype == torch.float32
    assert torch.equal(data.labels, torch.tensor(load_digits().target))
    assert data.images.min() == 0.0 and data.images.max() == 1.0


def test_class_subsets_are_relabelled_in_the_given_order() -> None:
    data = load_source("builtin:digits?classes=7,2")
    full = digits()
    assert data.class_names == ["7", "2"]
    assert int((data.labels == 0).sum()) == int((full.labels == 7).sum())
    assert torch.equal(data.images[data.labels == 1], full.images[full.labels == 2])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("builtin:nope", "unknown built-in data set 'nope'"),
        ("builtin:digits?classes=3,11", "classes must be distinct ids in 0..9"),
        ("builtin:digits?classes=3,3", "classes must be distinct"),
        ("builtin:digits?colour=red", "unknown option"),
        ("builtin:shifted-digits?seed=one", "bad options"),
        ("builtin:shifted-digits?part=val", "part must be one of train, test"),
        ("builtin:shifted-digits?n=5", "unknown option"),
        ("builtin:shifted-digits?stripes=0.5", "stripes must be in"),
    ],
)
def test_bad_builtin_specs_are_refused(spec: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_source(spec)


def test_generated_data_is_deterministic_and_float32() -> None:
    shapes = load_source("builtin:shapes?n=2")
    glyphs = load_source("builtin:glyphs?n=2")
    assert shapes.images.dtype == glyphs.images.dtype == torch.float32 and len(glyphs.class_names) == 64


#: The glyphs' raw float32 bytes (`LabeledImages.fingerprint` rounds to 8 bits, hiding a last-bit change).
GLYPH_BYTES = """
import hashlib
from continual_mem.data import load_source
print(hashlib.sha256(load_source("builtin:glyphs?n=3").images.numpy().tobytes()).hexdigest())
"""


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="OpenBLAS's x86 kernels are named here")
def test_glyphs_have_the_same_bytes_whichever_blas_kernel_numpy_runs() -> None:
    """The pretraining glyphs must not follow the CPU: numpy's OpenBLAS rounds `@` with FMA on one CPU
    (Haswell, SkylakeX, Zen kernels) and without it on another (Prescott), which used to change them."""
    digests = {
        core: subprocess.run(
            [sys.executable, "-c", GLYPH_BYTES],
            env={**os.environ, "OPENBLAS_CORETYPE": core},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for core in ("Prescott", "Haswell")
    }
    assert len(set(digests.values())) == 1 and len(digests["Haswell"]) == 64, digests


def test_glyph_strokes_turn_as_a_matrix_product_would() -> None:
    from continual_mem.data import _turned

    rng = np.random.default_rng(0)
    points, rot = rng.normal(size=(5, 2)).astype(np.float32), rng.normal(size=(2, 2)).astype(np.float32)
    turned = _turned(points, rot)
    assert turned.dtype == np.float32 and turned.shape == (5, 2)
    np.testing.assert_allclose(turned, points.astype(np.float64) @ rot.T.astype(np.float64), rtol=1e-6, atol=1e-6)


def test_shifted_digits_are_seeded_balanced_and_disjoint() -> None:
    from sklearn.datasets import load_digits

    train, test = shifted_digits_parts(seed=0)
    again_train, again_test = shifted_digits_parts(seed=0)
    assert torch.equal(train.images, again_train.images) and torch.equal(test.images, again_test.images)
    assert not torch.equal(train.images, shifted_digits_parts(seed=1)[0].images)
    assert train.images.shape == (3600, 1, 32, 32) and test.images.shape == (2500, 1, 32, 32)
    assert train.images.dtype == torch.float32 and 0.0 <= float(train.images.min()) < float(train.images.max()) <= 1.0
    assert train.labels.bincount().tolist() == [360] * 10 and test.labels.bincount().tolist() == [250] * 10
    train_rows, test_rows = source_rows(seed=0)
    assert set(train_rows).isdisjoint(test_rows)  # no real digit is drawn for both parts
    assert len(set(train_rows)) == 1200 and len(set(test_rows)) == 500
    target = load_digits().target
    assert (
        torch.equal(train.labels, torch.from_numpy(target[train_rows]))
        and (target[test_rows] == test.labels.numpy()).all()
    )
    # Three drawings of one digit are three different images.
    assert not torch.equal(train.images[0], train.images[1]) and train_rows[0] == train_rows[1] == train_rows[2]


def test_shifted_digits_source_options() -> None:
    pair = load_source("builtin:shifted-digits?classes=4,1&part=test")
    assert pair.class_names == ["4", "1"] and len(pair) == 500 and pair.source.startswith("builtin:shifted-digits")
    test = shifted_digits(part="test")
    assert torch.equal(pair.images[pair.labels == 1], test.images[test.labels == 1])
    assert len(load_source("builtin:shifted-digits")) == 3600


def test_image_folder_converts_grey_and_rgba_and_refuses_or_skips_bad_files(tmp_path) -> None:
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    Image.fromarray(np.full((10, 12), 255, np.uint8), mode="L").save(tmp_path / "cat" / "grey.png")
    Image.fromarray(np.zeros((6, 6, 4), np.uint8), mode="RGBA").save(tmp_path / "dog" / "rgba.png")
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match=r"1 unreadable image.*broken\.jpg.*--skip-bad"):
        load_source(str(tmp_path))
    data = load_source(str(tmp_path), skip_bad=True)
    assert data.class_names == ["cat", "dog"] and data.labels.tolist() == [0, 1]
    assert data.images.shape == (2, 3, 12, 12)
    assert torch.allclose(data.images[0], torch.ones(3, 12, 12)) and data.images[1].abs().max() == 0


def test_input_spec_follows_the_backbone() -> None:
    vit = tiny_vit(img_size=16, patch_size=4)
    spec = InputSpec.from_backbone(vit)
    out = spec(digits([0, 1]).images[:4])
    assert out.shape == (4, 3, 16, 16)
    assert spec.img_size == 16 and len(spec.mean) == 3
    vit(out)  # the backbone accepts it


def test_split_is_stratified_and_seeded() -> None:
    data = digits([0, 1])
    train, val = split_train_val(data, 0.2, seed=3)
    train2, val2 = split_train_val(data, 0.2, seed=3)
    assert torch.equal(val.labels, val2.labels) and torch.equal(train.images, train2.images)
    assert len(train) + len(val) == len(data)
    for c in (0, 1):
        assert int((val.labels == c).sum()) == round(int((data.labels == c).sum()) * 0.2)
    with pytest.raises(DataError, match="validation split"):
        split_train_val(data, 1.5, seed=0)
