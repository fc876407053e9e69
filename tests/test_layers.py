"""The import contract between the layers, checked statically over every module of the project.

Every `import` and `from ... import` of `continual_mem/`, `store/` and `scenarios/` counts: at the
top, inside functions, under `if TYPE_CHECKING:`. Relative imports are resolved. A rule forbids a
module and everything below it (`continual_mem.cli` forbids `continual_mem.cli.output` too).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("continual_mem", "store", "scenarios")
#: The composition packages of `continual_mem`; every other module of it is the core.
COMPOSITION = ("continual_mem.services", "continual_mem.cli", "continual_mem.serve")

# Who (a package, `core`, or `*` for every module) must not import what.
CONTRACT = """
who                     | must not import
store                   | torch timm avalanche continual_mem scenarios click fastapi
core                    | store scenarios avalanche click fastapi uvicorn sqlalchemy continual_mem.services continual_mem.cli
continual_mem.services  | click fastapi avalanche
scenarios               | click
*                       | continual_mem.cli
"""


def _rules() -> list[tuple[str, tuple[str, ...]]]:
    rows = [line.split("|") for line in CONTRACT.strip().splitlines()[1:]]
    return [(who.strip(), tuple(forbidden.split())) for who, forbidden in rows]


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _layer_has(who: str, module: str) -> bool:
    if who == "*":
        return not _under(module, "continual_mem.cli")  # the CLI may import itself
    if who == "core":
        return _under(module, "continual_mem") and not any(_under(module, c) for c in COMPOSITION)
    return _under(module, who)


def imported_names(module: str, source: str, is_package: bool = False) -> set[str]:
    """Every module name `source` imports (for `from a import b`: both `a` and `a.b`)."""
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


def violations(sources: dict[str, tuple[str, bool]]) -> list[str]:
    """`module imports name (rule: who must not import prefix)` for every broken rule.

    `sources` maps a module name to (its source, whether it is a package's `__init__`).
    """
    found = []
    for module, (source, is_package) in sorted(sources.items()):
        imported = imported_names(module, source, is_package)
        for who, forbidden in _rules():
            if not _layer_has(who, module):
                continue
            for name in sorted(imported):
                for prefix in forbidden:
                    if _under(name, prefix):
                        found.append(f"{module} imports {name} (rule: {who} must not import {prefix})")
    return found


def project_sources() -> dict[str, tuple[str, bool]]:
    sources = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            module = ".".join(parts[:-1] if is_package else parts)
            sources[module] = (path.read_text(encoding="utf-8"), is_package)
    return sources


def test_every_module_keeps_the_import_contract() -> None:
    sources = project_sources()
    assert {"store.store", "continual_mem.model", "continual_mem.services", "scenarios.runner"} <= set(sources)
    assert violations(sources) == []


@pytest.mark.parametrize(
    ("module", "source", "broken"),
    [
        ("store.versions", "def f():\n    import torch\n", "store must not import torch"),
        ("store.tasks", "from continual_mem.model import MemoryViT\n", "store must not import continual_mem"),
        ("continual_mem.model", "from .services import load_versions\n", "core must not import continual_mem.services"),
        ("continual_mem.train", "from store import TaskStore\n", "core must not import store"),
        (
            "continual_mem.data",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sqlalchemy import Engine\n",
            "core must not import sqlalchemy",
        ),
        ("continual_mem.services.inference", "import click\n", "continual_mem.services must not import click"),
        ("scenarios.runner", "from click import echo\n", "scenarios must not import click"),
        ("scenarios.report", "from continual_mem.cli import output\n", "* must not import continual_mem.cli"),
        ("continual_mem.services", "from .. import cli\n", "* must not import continual_mem.cli"),
    ],
)
def test_the_contract_catches_a_bad_import(module: str, source: str, broken: str) -> None:
    found = violations({module: (source, module == "continual_mem.services")})
    assert any(f"rule: {broken})" in v for v in found), found


def test_allowed_imports_pass() -> None:
    allowed = {
        "continual_mem.cli.task": ("from .output import emit\nfrom continual_mem import services\n", False),
        "continual_mem.services.training": ("from store import TaskStore\nfrom ..model import MemoryViT\n", False),
        "scenarios.runner": ("from continual_mem.adapter import AttentionMode\nimport avalanche\n", False),
        "store.db": ("from alembic import command\nimport sqlalchemy\n", False),
    }
    assert violations(allowed) == []
