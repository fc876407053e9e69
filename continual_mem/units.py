"""Numbers for people, shared by the CLI and the scenario reports (no dependency: anything may import it)."""

from __future__ import annotations


def human_size(size: float | None) -> str:
    """A byte count in binary units: `512 B`, `20.2 KiB`, `6.9 MiB`; `-` for None (unknown)."""
    if size is None:
        return "-"
    unit = "B"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            break
        size /= 1024
    return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
