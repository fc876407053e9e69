"""Issue 14: bad inputs and faults over every `cmem` command, table-driven.

For each case: the exit code (1, or click's 2 for a usage error), exactly one `Error:` line on
stderr naming the problem (after click's usage lines for exit 2), no traceback, nothing on
stdout, and the store byte for byte as it was (every file's sha256 and the database's dump).

The cases are the table in `fuzz_cases.py`. Every case runs in this process (click's CliRunner)
on a copy of one small store built once. Arguments may name `{home}` (the copy) and `{in}` (the
prepared inputs); a case's `setup` damages the copy first (the snapshot is taken after it). Faults that need a real process (SIGTERM,
SIGKILL in the middle of training) are in `test_reliability.py`.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import click
import numpy as np
import pytest
from cli_harness import (
    assert_refused,
    blank_png,
    build_store,
    class_folders,
    copy_store,
    digit_pngs,
    flip_bit,
    invoke,
    ok,
    rewrite_metadata,
    snapshot,
)
from fuzz_cases import CASES, Case
from PIL import Image
from safetensors.numpy import save_file

from store.artifacts import read_safetensors_header


def make_inputs(folder: Path, store: Path) -> Path:
    """Every file the cases name, made once."""
    folder.mkdir()
    (folder / "a-file").write_text("a file, not a folder")
    (folder / "notes.txt").write_text("not an image, not weights")
    (folder / "empty").mkdir()
    (folder / "empty.png").write_bytes(b"")
    (folder / "garbage.safetensors").write_bytes(np.random.default_rng(1).bytes(4096))
    save_file({"x": np.zeros((2, 2), np.float32)}, str(folder / "plain.safetensors"))
    digit_pngs(folder / "digits", [0, 1, 2])
    png = (folder / "digits" / "digit-1-0.png").read_bytes()
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    blank_png(folder / "bomb.png", 10_000, 10_000)
    frames = [Image.new("L", (8, 8), value) for value in (0, 255)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:])
    Image.new("CMYK", (8, 8)).save(folder / "cmyk.jpg")
    Image.fromarray(np.full((8, 8), 40_000, np.uint16)).save(folder / "deep.png")
    _data_folders(folder)
    _exports(folder, store)
    return folder


def _data_folders(folder: Path) -> None:
    class_folders(folder / "corrupt", [0, 1, 2])
    (folder / "corrupt" / "1" / "broken.png").write_bytes(b"not a png")
    class_folders(folder / "all-bad", [0, 1, 2])
    for image in (folder / "all-bad" / "2").iterdir():
        image.write_bytes(b"not a png")
    class_folders(folder / "empty-class", [0, 1])
    (folder / "empty-class" / "2").mkdir()
    class_folders(folder / "bomb-data", [0, 1, 2])
    blank_png(folder / "bomb-data" / "2" / "bomb.png", 10_000, 10_000)


def _exports(folder: Path, store: Path) -> None:
    export = folder / "export.safetensors"
    ok(store, "export", "low@1", str(export))
    ok(store, "export", "low@1", str(folder / "signed.safetensors"), env={"CMEM_EXPORT_KEY": "key-one"})
    shutil.copyfile(export, folder / "flipped.safetensors")
    flip_bit(folder / "flipped.safetensors")
    data = export.read_bytes()
    (folder / "truncated.safetensors").write_bytes(data[: len(data) - 100])
    meta = read_safetensors_header(export).metadata
    metrics = json.dumps({**json.loads(meta["cmem.metrics"]), "val_accuracy": 0.999})
    tampered = {
        "classes": {"cmem.class_names": '["0", "1", "X"]'},
        "metrics": {"cmem.metrics": metrics},
        "depth": {"depth": "4"},
    }
    for name, change in tampered.items():
        rewrite_metadata(export, folder / f"{name}.safetensors", {**meta, **change})
    rewrite_metadata(export, folder / "no-digest.safetensors", {k: v for k, v in meta.items() if k != "cmem.digest"})


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fuzz")
    build_store(root / "home")
    return root / "home", make_inputs(root / "in", root / "home")


def command_paths(group: click.Group, prefix: str = "") -> list[str]:
    """Every runnable command, as the words that call it: `task train`, `scenario run`, ..."""
    paths = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            paths += command_paths(command, f"{prefix}{name} ")
        else:
            paths.append(f"{prefix}{name}")
    return paths


def test_the_table_covers_every_command() -> None:
    from continual_mem.cli import cli

    called = [f" {case.args} " for case in CASES]
    missing = [path for path in command_paths(cli) if not any(f" {path} " in args for args in called)]
    assert missing == []
    assert len(CASES) >= 100 and len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refused_cleanly_and_the_store_is_unchanged(case: Case, built, tmp_path) -> None:
    store, prepared = built
    home = copy_store(store, tmp_path / "home")
    inputs = copy_store(prepared, tmp_path / "in")
    if case.setup is not None:
        case.setup(home)
    args = shlex.split(case.args.format(home=home, **{"in": inputs}))
    before = snapshot(home)
    assert_refused(invoke(home, *args, env=case.env), case.match, case.code)
    assert snapshot(home) == before
    assert {p.name for p in inputs.iterdir()} == {p.name for p in prepared.iterdir()}
