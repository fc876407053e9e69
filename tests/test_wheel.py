"""The project installed from its wheel, not from the checkout: migrations and data files included.

Builds the wheel from a copy of the source (the checkout stays clean), installs it without its
dependencies into a temporary folder, and runs `cmem` from that copy in a process that cannot see
the repository: the store is created and upgraded from the migrations inside the wheel.
"""

from __future__ import annotations

import email
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: What a source copy leaves out (local environments, build output, caches, stores).
NOT_SOURCE = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".cmem", "reports", ".*_cache")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(work), str(source)],
        check=True,
        capture_output=True,
        text=True,
    )
    (built,) = work.glob("continual_mem-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        text=True,
    )
    return target


def _wheel_files(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _head_revision(files: dict[str, bytes]) -> str:
    """The one migration no other migration names as its down_revision."""
    revisions, downs = set(), set()
    for name, data in files.items():
        if re.fullmatch(r"store/migrations/versions/[^/]+\.py", name):
            text = data.decode()
            revisions.add(re.search(r'^revision[^=]*=\s*"([^"]+)"', text, re.M).group(1))
            down = re.search(r'^down_revision[^=]*=\s*"([^"]+)"', text, re.M)
            if down:
                downs.add(down.group(1))
    (head,) = revisions - downs
    return head


def test_the_wheel_carries_every_package_the_migrations_and_the_data_files(wheel) -> None:
    files = _wheel_files(wheel)
    data_files = {"store/migrations/env.py", "store/migrations/script.py.mako", "scenarios/metrics.md"}
    assert data_files | {"continual_mem/weights/demo-vit.safetensors"} <= set(files)
    migrations = sorted(p.name for p in (ROOT / "alembic" / "versions").glob("*.py"))
    assert migrations and all(f"store/migrations/versions/{m}" in files for m in migrations)
    for init in [*ROOT.glob("*/__init__.py"), *ROOT.glob("*/*/__init__.py")]:
        relative = init.relative_to(ROOT).as_posix()
        if relative.split("/")[0] in ("continual_mem", "store", "scenarios"):
            assert relative in files, f"{relative} is not in the wheel: add its package to pyproject.toml"
    assert not any(name.startswith(("alembic/", "tests/")) for name in files)


def test_the_installed_wheel_creates_and_upgrades_a_store(wheel, installed, tmp_path) -> None:
    files = _wheel_files(wheel)
    (metadata_name,) = [n for n in files if n.endswith(".dist-info/METADATA")]
    version = email.message_from_bytes(files[metadata_name])["Version"]
    head = _head_revision(files)
    home = tmp_path / "home"
    script = (
        "import sys\n"
        f"sys.path.insert(0, {str(installed)!r})\n"
        "import importlib.metadata, continual_mem, store, store.db\n"
        "from store import TaskStore\n"
        "from continual_mem.cli import cli\n"
        "print('FILES', continual_mem.__file__, store.__file__, store.db.ALEMBIC_DIR)\n"
        "print('METADATA', importlib.metadata.version('continual-mem'), continual_mem.__version__)\n"
        "def cmem(*args):\n"
        "    try:\n"
        f"        cli([*args], prog_name='cmem', standalone_mode=False)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "cmem('--version')\n"
        f"cmem('--home', {str(home)!r}, 'db', 'upgrade')\n"
        f"cmem('--home', {str(home)!r}, 'init')\n"
        f"cmem('--home', {str(home)!r}, 'db', 'current')\n"
        f"with TaskStore({str(home)!r}, upgrade=False) as s:\n"
        "    s.register_backbone('b', 'vit_tiny_patch16_224', '0' * 64, {'depth': 1})\n"
        "    print('BACKBONES', [b.name for b in s.list_backbones()])\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CMEM_HOME", "CMEM_DB_URL")}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    files_line = next(line for line in lines if line.startswith("FILES"))
    assert all(path.startswith(str(installed)) for path in files_line.split()[1:]), files_line  # not the repo
    assert f"METADATA {version} {version}" in lines  # the metadata and continual_mem.__version__
    assert f"cmem, version {version}" in lines
    assert f"sqlite:///{home / 'store.db'}: empty -> {head}" in lines
    assert f"Store ready at {home} (database sqlite:///{home / 'store.db'}, schema {head})" in lines
    assert f"database {head}; code {head} (up to date)" in lines
    assert "BACKBONES ['b']" in lines
