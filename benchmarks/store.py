"""Task store benchmark: SQLite, 10,000 versions over 500 tasks, measured through the public API.

Targets (median): get a version by alias, list one task's versions, and the
deployed listing (500 aliases) each <= 5 ms; registering a version (begin +
completion with an already stored artifact, so the file write is excluded) <= 10 ms.

    python benchmarks/store.py            # a table
    python benchmarks/store.py --json     # one JSON object
Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file
from sqlalchemy import insert, select

# Run as a script, this file's own directory comes first on sys.path, and this file is
# named store.py too: put the repository root first so `store` is the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from store import TaskStore
from store import models as m
from store.db import make_engine

ALIAS = "production"
TARGETS_MS = {"get_by_alias": 5.0, "list_versions": 5.0, "deployed": 5.0, "register_version": 10.0}


def seed(store: TaskStore, tasks: int, versions_per_task: int) -> None:
    """Bulk-insert ready versions and one alias per task (Core inserts, one transaction)."""
    store.register_backbone("vit-tiny", "vit_tiny_patch16_224", "ab" * 32, {"img_size": 224, "depth": 12})
    now = m.utcnow()
    engine = make_engine(store.db_url)
    try:
        with engine.begin() as conn:
            backbone_id = conn.scalar(select(m.Backbone.id))
            conn.execute(
                insert(m.Task),
                [
                    {
                        "name": f"task-{t:04d}",
                        "description": f"benchmark task {t}",
                        "backbone_id": backbone_id,
                        "class_names": [f"class-{c}" for c in range(10)],
                        "created_at": now,
                    }
                    for t in range(tasks)
                ],
            )
            task_ids = {name: task_id for name, task_id in conn.execute(select(m.Task.name, m.Task.id))}
            versions = []
            for name, task_id in task_ids.items():
                for number in range(1, versions_per_task + 1):
                    sha = hashlib.sha256(f"{name}@{number}".encode()).hexdigest()
                    versions.append(
                        {
                            "task_id": task_id,
                            "number": number,
                            "status": "ready",
                            "mode": "memory",
                            "memory_size": 5,
                            "hyperparams": {"lr": 0.01, "epochs": 10},
                            "metrics": {"accuracy": 0.9},
                            "artifact_uri": f"file:///bench/{sha[:2]}/{sha}.safetensors",
                            "artifact_sha256": sha,
                            "artifact_size": 4096,
                            "created_at": now,
                            "finished_at": now,
                        }
                    )
            conn.execute(insert(m.TaskVersion), versions)
            conn.execute(
                insert(m.Alias),
                [
                    {"task_id": i, "name": ALIAS, "version_number": versions_per_task, "updated_at": now}
                    for i in task_ids.values()
                ],
            )
            conn.execute(
                insert(m.AliasMove),
                [
                    {
                        "task_id": i,
                        "alias": ALIAS,
                        "kind": "set",
                        "from_version": None,
                        "to_version": versions_per_task,
                        "actor": "bench",
                        "moved_at": now,
                    }
                    for i in task_ids.values()
                ],
            )
    finally:
        engine.dispose()


def timed(fn: Callable[[], Any], samples: int, warmup: int = 5) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU milliseconds of each call.

    The CPU time (this process only) shows the work itself when other processes
    compete for the cores, which inflates the wall-clock time.
    """
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(samples):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - start_cpu) * 1000)
    return wall, cpu


def run(home: Path, tasks: int, versions_per_task: int, samples: int) -> dict[str, Any]:
    start = time.perf_counter()
    with TaskStore(home) as store:
        seed(store, tasks, versions_per_task)
    seed_s = time.perf_counter() - start

    rng = random.Random(0)
    names = [f"task-{t:04d}" for t in range(tasks)]
    artifact = home / "bench-artifact.safetensors"
    save_file({"memory": np.zeros((4, 5, 192), dtype=np.float32)}, str(artifact))

    with TaskStore(home) as store:
        stored = store.store_artifact(artifact)

        def get_by_alias() -> None:
            assert store.get_version(f"{rng.choice(names)}@{ALIAS}").number == versions_per_task

        def list_versions() -> None:
            assert len(store.list_versions(rng.choice(names))) >= versions_per_task

        def deployed() -> None:
            assert len(store.deployed()) == tasks

        def register_version() -> None:
            version = store.begin_version(rng.choice(names), "memory", 5, {"lr": 0.01})
            store.complete_version(version, stored, {"accuracy": 0.9})

        timings = {
            "get_by_alias": timed(get_by_alias, samples),
            "list_versions": timed(list_versions, samples),
            "deployed": timed(deployed, max(samples // 4, 10)),
            "register_version": timed(register_version, samples),
        }
    results = {}
    for name, (durations, cpu) in timings.items():
        median = statistics.median(durations)
        results[name] = {
            "median_ms": round(median, 3),
            "p95_ms": round(statistics.quantiles(durations, n=20)[-1], 3),
            "cpu_median_ms": round(statistics.median(cpu), 3),
            "samples": len(durations),
            "target_ms": TARGETS_MS[name],
            "pass": median <= TARGETS_MS[name],
        }
    return {
        "engine": "sqlite",
        "tasks": tasks,
        "versions": tasks * versions_per_task,
        "aliases": tasks,
        "seed_s": round(seed_s, 2),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "results": results,
        "pass": all(r["pass"] for r in results.values()),
    }


def table(report: dict[str, Any]) -> str:
    lines = [
        f"task store benchmark: {report['engine']}, {report['versions']:,} versions over {report['tasks']} tasks,"
        f" {report['aliases']} aliases (seeded in {report['seed_s']} s);"
        f" load average {report['load_average_1m']} on {report['cpus']} CPUs",
        "",
        f"{'operation':<18} {'median ms':>10} {'p95 ms':>8} {'cpu ms':>8} {'target':>8}  result",
        f"{'-' * 18} {'-' * 10} {'-' * 8} {'-' * 8} {'-' * 8}  ------",
    ]
    for name, r in report["results"].items():
        lines.append(
            f"{name:<18} {r['median_ms']:>10.2f} {r['p95_ms']:>8.2f} {r['cpu_median_ms']:>8.2f}"
            f" {'<= ' + format(r['target_ms'], 'g'):>8}  {'pass' if r['pass'] else 'FAIL'}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--versions-per-task", type=int, default=20)
    parser.add_argument("--samples", type=int, default=200, help="timed calls per operation")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cmem-store-bench-") as home:
        report = run(Path(home), args.tasks, args.versions_per_task, args.samples)
    print(json.dumps(report) if args.json else table(report))
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
