"""Options and checks that several commands share (none of them imports torch)."""

from __future__ import annotations

import click

#: `--max-pixels` of the commands that read images: the decompression-bomb limit, raised by the user if need be.
max_pixels_option = click.option(
    "--max-pixels",
    type=int,
    default=None,
    help="Refuse images with more pixels than this (default 40 million).",
)


def at_least_one(**values: int | None) -> None:
    """Refuse any given option (`top_k=0` reads as --top-k) below 1, before anything is opened."""
    for name, value in values.items():
        if value is not None and value < 1:
            raise click.ClickException(f"--{name.replace('_', '-')} must be at least 1, got {value}")
