"""Drive `cmem` in-process and check what it promises when it refuses (imported by tests; holds none).

The README's promise for a refused command: exit code 1 (or click's 2 for a usage error), exactly
one `Error: ...` line on stderr (after click's usage lines for exit 2), no traceback, nothing on
stdout, and the store unchanged byte for byte. `snapshot` captures the store: the database's
content (SQLite's dump) and the sha256 of every file under the home.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import tempfile
from collections.abc import Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from click.testing import CliRunner, Result
from PIL import Image

from continual_mem.cli import cli

TINY_ARGS = ("--arg", "img_size=16", "--arg", "patch_size=4", "--arg", "depth=2")
TINY_ARGS += ("--arg", "embed_dim=48", "--arg", "num_heads=3")
TRAIN_FAST = ("--steps", "3", "--batch-size", "16")
LOW_DATA = "builtin:digits?classes=0,1,2"
HIGH_DATA = "builtin:digits?classes=7,8,9"
SQLITE_SIDE_FILES = ("store.db-wal", "store.db-shm")
#: Environment variables that would point a command elsewhere than the test's store.
CLEAN_ENV: dict[str, str | None] = {"CMEM_HOME": None, "CMEM_DB_URL": None, "CMEM_EXPORT_KEY": None}


def invoke(home: Path | None, *args: str, env: Mapping[str, str | None] | None = None) -> Result:
    """Run `cmem [--home HOME] ARGS` in this process; stdout and stderr are kept apart."""
    prefix = ["--home", str(home)] if home is not None else []
    return CliRunner().invoke(cli, [*prefix, *args], env={**CLEAN_ENV, **(env or {})})


def ok(home: Path, *args: str, env: Mapping[str, str | None] | None = None) -> Result:
    result = invoke(home, *args, env=env)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def build_store(home: Path) -> None:
    """A small store: a tiny random backbone, two trained and deployed digit tasks (reuse and full)."""
    ok(home, "init")
    ok(home, "backbone", "add", "tiny", "--model", "vit_tiny_patch16_224", "--random-init", *TINY_ARGS)
    ok(home, "task", "register", "low", "--backbone", "tiny", "--data", LOW_DATA)
    ok(home, "task", "register", "high", "--backbone", "tiny", "--classes", "7,8,9")
    ok(home, "task", "train", "low", "--data", LOW_DATA, *TRAIN_FAST)
    ok(home, "task", "train", "high", "--data", HIGH_DATA, *TRAIN_FAST, "--mode", "full")
    ok(home, "deploy", "low@1")
    ok(home, "deploy", "high@1")


def copy_store(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    return dest


def refusal_line(result: Result, code: int = 1) -> str:
    """Check the refusal promises and return the `Error:` line."""
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{type(result.exception).__name__}: {result.exception}\n{result.stderr}"
    )
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout == "", result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    if code == 2:  # click's usage error: "Usage: ...", "Try ...", then the one Error line
        assert lines[0].startswith("Usage: ") and len(errors) == 1 and lines[-1] == errors[0], result.stderr
    else:
        assert len(lines) == 1 and len(errors) == 1, result.stderr
    return errors[0]


def assert_refused(result: Result, match: str, code: int = 1) -> str:
    line = refusal_line(result, code)
    assert match in line, line
    return line


@dataclass(frozen=True)
class Snapshot:
    """Everything under a home: each file's sha256, and the database's content."""

    files: dict[str, str]
    database: tuple[str, ...]


def snapshot(home: Path) -> Snapshot:
    """The store's state, read without touching it (the database is dumped from a copy).

    SQLite's own side files (`store.db-wal`, `store.db-shm`) are left out of the file list: a
    reader may create them, and their content is in the dump.
    """
    files = {}
    if home.exists():
        for path in sorted(p for p in home.rglob("*") if p.is_file() or p.is_symlink()):
            if path.name not in SQLITE_SIDE_FILES:
                files[path.relative_to(home).as_posix()] = _sha256(path)
    return Snapshot(files, _dump_sqlite(home / "store.db"))


def _sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:  # a folder where a file was, a dangling link: recorded as such
        return f"unreadable: {exc.strerror}"


def _dump_sqlite(db: Path) -> tuple[str, ...]:
    if not db.is_file():
        return ()
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in ("", "-wal"):
            if Path(f"{db}{suffix}").is_file():
                shutil.copyfile(f"{db}{suffix}", Path(tmp) / f"store.db{suffix}")
        conn = sqlite3.connect(Path(tmp) / "store.db")
        try:
            return tuple(conn.iterdump())
        except sqlite3.DatabaseError as exc:  # not a database: its bytes are compared instead
            return (f"not a database: {exc}",)
        finally:
            conn.close()


# ------------------------------------------------------------------------------------ inputs
def sql(db: Path, statement: str, *params: object) -> list[tuple]:
    """Run one SQL statement on a SQLite file, committed and closed (no connection left open)."""
    with closing(sqlite3.connect(db)) as conn, conn:
        return conn.execute(statement, params).fetchall()


def digit_pngs(folder: Path, classes: Sequence[int], per_class: int = 1) -> list[Path]:
    """Real 8x8 scikit-learn digits as PNG files, `per_class` of each class, into `folder`."""
    from continual_mem.data import digits

    data = digits(list(classes))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for label, digit in enumerate(classes):
        rows = (data.labels == label).nonzero()[:per_class, 0]
        for i, row in enumerate(rows.tolist()):
            path = folder / f"digit-{digit}-{i}.png"
            Image.fromarray((data.images[row, 0].numpy() * 255).astype(np.uint8)).save(path)
            paths.append(path)
    return paths


def class_folders(root: Path, classes: Sequence[int], per_class: int = 4) -> Path:
    """An image-folder data source: one sub-folder per class, named after the digit."""
    for digit in classes:
        digit_pngs(root / str(digit), [digit], per_class)
    return root


def blank_png(path: Path, width: int, height: int, mode: str = "L") -> Path:
    """A large but tiny-on-disk image (all zeros compress to almost nothing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (width, height)).save(path)
    return path


def rewrite_metadata(source: Path, dest: Path, metadata: dict[str, str]) -> Path:
    """A copy of a safetensors file whose `__metadata__` is replaced (tensors unchanged): tampering."""
    import json
    import struct

    from store.artifacts import read_safetensors_header

    header = read_safetensors_header(source)
    blob = json.dumps({"__metadata__": metadata, **header.tensors}, separators=(",", ":")).encode()
    blob += b" " * (-(8 + len(blob)) % 8)
    dest.write_bytes(struct.pack("<Q", len(blob)) + blob + source.read_bytes()[header.data_start :])
    return dest


def flip_bit(path: Path, offset_from_end: int = 7) -> Path:
    """Flip one bit of a file in place, `offset_from_end` bytes before its end (in the tensor data)."""
    data = bytearray(path.read_bytes())
    data[len(data) - offset_from_end] ^= 0x01
    path.write_bytes(bytes(data))
    return path
