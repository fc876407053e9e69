"""`cmem demo`: the README's main job on the embedded default (SQLite, built-in data, tiny ViT)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from continual_mem.units import human_size

from .backbone import pretrain_backbone_with_progress, pretrain_config
from .options import at_least_one
from .output import Table, metric
from .root import App, pass_app
from .task import train_with_progress

DEMO_BACKBONE = "demo-vit"
DEMO_TASKS = (
    ("digits-low", "builtin:digits?classes=0,1,2,3,4", "handwritten digits 0-4 (scikit-learn, real)"),
    ("digits-high", "builtin:digits?classes=5,6,7,8,9", "handwritten digits 5-9 (scikit-learn, real)"),
    ("dots", "builtin:synthetic", "count 1-5 dots laid out as a row or a column (generated)"),
)


def _step(message: str) -> None:
    click.secho(f"\n== {message}", bold=True)


@click.command()
@click.option("--epochs", type=int, default=10, show_default=True, help="Training epochs per task.")
@click.option("--memory", type=int, default=5, show_default=True, help="Memory tokens per layer.")
@click.option("--pretrain-epochs", type=int, default=None, help="Backbone pretraining epochs (default: the demo's).")
@pass_app
def demo(app: App, epochs: int, memory: int, pretrain_epochs: int | None) -> None:
    """Pretrain a tiny ViT, grow it into 3 tasks, deploy them and answer all of them in one pass."""
    at_least_one(epochs=epochs, memory=memory, pretrain_epochs=pretrain_epochs)
    started = time.perf_counter()
    store = app.open_store(create=True)
    from continual_mem import services
    from continual_mem.data import source_class_names
    from continual_mem.train import TrainConfig

    _step(f"1. backbone {DEMO_BACKBONE} (store: {store.home})")
    if any(b.name == DEMO_BACKBONE for b in store.list_backbones()):
        click.echo(f"{DEMO_BACKBONE} is already in the store: reused")
    else:
        config = pretrain_config(None, {}, epochs=pretrain_epochs)
        click.echo(
            f"No model hub here: pretraining {config.model_name} {dict(config.model_kwargs)} on {config.data} "
            "(generated pen-stroke glyphs, disjoint from every task below)"
        )
        pretrain_backbone_with_progress(store, DEMO_BACKBONE, config)

    _step("2. register and train the tasks (reuse mode: the backbone never changes)")
    from continual_mem.train import DistContext
    from store import NotFoundError

    for name, source, description in DEMO_TASKS:
        try:
            store.get_task(name)
        except NotFoundError:
            store.register_task(name, DEMO_BACKBONE, source_class_names(source), description)
        request = services.TrainRequest(name, source, memory, "reuse", 0.2, False, TrainConfig(epochs=epochs, seed=0))
        version, metrics = train_with_progress(store, request, DistContext())
        click.echo(f"{version.ref}: val accuracy {metrics['val_accuracy']:.3f} ({metrics['train_seconds']:.1f} s)")
        store.set_alias(name, "production", version.number, actor="cmem demo")

    _step("3. predict every deployed task from ONE backbone pass")
    images = _write_sample_images(store.home / "demo-images")
    loaded = services.load_versions(store, services.deployed_refs(store, "production"))
    files, batch = services.load_image_files(images)
    answers, passes = services.predict(loaded, batch, top_k=1)
    click.echo(f"{len(loaded.versions)} tasks answered with {passes} backbone pass(es) per batch")
    Table(
        [
            (f.name, *(f"{a[t][0].label} ({a[t][0].probability:.2f})" for t in loaded.versions))
            for f, a in zip(files, answers)
        ],
        ["image", *loaded.versions],
    ).echo()

    _step("4. what the store says is deployed")
    Table(
        [
            (
                e.task,
                e.alias,
                e.version,
                e.mode,
                e.memory_size,
                metric(e.metrics, "val_accuracy"),
                e.backbone,
                human_size(e.artifact_size),
            )
            for e in store.deployed()
        ],
        ["task", "alias", "version", "mode", "memory", "val acc", "backbone", "size"],
    ).echo()
    click.echo(f"\nDone in {time.perf_counter() - started:.0f} s. Try: cmem --home {app.home} task show dots")
    click.echo(
        f"Serve every deployed task over HTTP: cmem --home {app.home} serve  (then: curl -F "
        f"image=@{files[0]} http://127.0.0.1:8000/v1/predict)"
    )


def _write_sample_images(directory: Path) -> list[Path]:
    """One test image per task source, written as PNG files like a user's own."""
    import numpy as np
    from PIL import Image

    from continual_mem.data import load_source

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, source, _ in DEMO_TASKS:
        data = load_source(source)
        index = len(data) // 2
        pixels = (data.images[index, 0].numpy() * 255).round().astype(np.uint8)
        path = directory / f"{name}-{data.class_names[int(data.labels[index])]}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


COMMANDS = [demo]
