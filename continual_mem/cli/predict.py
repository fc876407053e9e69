"""Running stored versions on images: `cmem predict` (every task, one backbone pass) and `cmem eval`."""

from __future__ import annotations

from pathlib import Path

import click

from .options import at_least_one, max_pixels_option
from .output import Table, emit, json_option
from .root import App, pass_app


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--task", "tasks", multiple=True, help="NAME, NAME@VERSION or NAME@ALIAS (repeatable).")
@click.option("--alias", default=None, help="Every task deployed under this alias (default: production).")
@click.option("--top-k", type=int, default=3, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@max_pixels_option
@json_option
@pass_app
def predict(
    app: App,
    paths: tuple[Path, ...],
    tasks: tuple[str, ...],
    alias: str | None,
    top_k: int,
    batch_size: int,
    max_pixels: int | None,
    as_json: bool,
) -> None:
    """Answer every requested task for images PATHS (files or folders) in ONE backbone pass per batch.

    Reuse-mode tasks share that pass; tasks trained in full mode need one pass each (said in the output).
    With --json: one JSON object per image and line.
    """
    if tasks and alias:
        raise click.ClickException("give --task or --alias, not both")
    at_least_one(top_k=top_k, batch_size=batch_size, max_pixels=max_pixels)
    store = app.open_store()
    from continual_mem import services
    from continual_mem.images import MAX_PIXELS

    refs = list(tasks) if tasks else services.deployed_refs(store, alias or "production")
    loaded = services.load_versions(store, refs)
    files, images = services.load_image_files(paths, max_pixels or MAX_PIXELS)
    answers, passes = services.predict(loaded, images, top_k=top_k, batch_size=batch_size)
    full = [t for t, v in loaded.versions.items() if v.mode == "full"]
    per_image = [
        {
            "path": str(path),
            "backbone_passes": passes,
            "predictions": {
                t: {
                    "version": loaded.versions[t].number,
                    "top": [{"label": p.label, "probability": round(p.probability, 6)} for p in preds],
                }
                for t, preds in answer.items()
            },
        }
        for path, answer in zip(files, answers)
    ]

    def show() -> None:
        note = f" ({', '.join(full)} trained in full mode: one pass each)" if full else ""
        click.echo(f"{len(loaded.versions)} task(s), {passes} backbone pass(es) per batch{note}")
        rows = []
        for path, answer in zip(files, answers):
            for t, preds in answer.items():
                rows.append(
                    (
                        str(path),
                        f"{t}@{loaded.versions[t].number}",
                        "  ".join(f"{p.label} {p.probability:.2f}" for p in preds),
                    )
                )
        Table(rows, ["image", "task", f"top-{top_k}"]).echo()

    emit(as_json, per_image, show, json_lines=True)


@click.command("eval")
@click.argument("ref")
@click.option("--data", "data_source", required=True, help="Labelled data with the task's classes.")
@click.option("--skip-bad", is_flag=True)
@max_pixels_option
@json_option
@pass_app
def eval_cmd(app: App, ref: str, data_source: str, skip_bad: bool, max_pixels: int | None, as_json: bool) -> None:
    """Accuracy, per-class accuracy and confusion matrix of REF (NAME, NAME@V, NAME@ALIAS); kept in the store."""
    at_least_one(max_pixels=max_pixels)
    store = app.open_store()
    from continual_mem import services
    from continual_mem.images import MAX_PIXELS

    result = services.evaluate_version(store, ref, data_source, skip_bad, max_pixels=max_pixels or MAX_PIXELS)

    def show() -> None:
        click.echo(
            f"{result['version']} on {data_source}: accuracy {result['accuracy']:.4f} over {result['samples']} images"
        )
        names = result["class_names"]
        Table(
            [(n, result["per_class_accuracy"][n], *row) for n, row in zip(names, result["confusion_matrix"])],
            ["class", "accuracy", *[f"->{n}" for n in names]],
        ).echo()

    emit(as_json, result, show)


COMMANDS = [predict, eval_cmd]
