"""The served set: immutable snapshots of what an alias points at, built from the store.

A `Snapshot` names, for every task deployed under the served alias, the version that answers it
and the loaded adapter. It never changes once built: a deploy builds a new one and the server
swaps one reference, so a request resolved against a snapshot keeps its versions to the end.

`SnapshotLoader` loads what snapshots need, once: backbones keyed by (name, weights sha256) and
adapters keyed by (task, version, artifact sha256), never by name alone, so a same-name redeploy
can never serve a stale adapter. Every adapter file is checked against the sha256 the store
recorded, and against the backbone's fingerprint, before it can serve.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType

import torch
from timm.models.vision_transformer import VisionTransformer

from continual_mem.adapter import BackboneIdentity, TaskAdapter
from continual_mem.data import InputSpec
from continual_mem.errors import ContinualMemError
from store import DeployedEntry, StoreError, TaskStore, VersionInfo

AdapterKey = tuple[str, int, str]


class LoadError(ContinualMemError):
    """A deployed or pinned version that cannot be served (missing, tampered, another backbone)."""


@dataclass(frozen=True, eq=False)
class LoadedBackbone:
    """One frozen backbone on the serving device, with the input transform its tasks need."""

    name: str
    identity: BackboneIdentity
    model: VisionTransformer
    spec: InputSpec


@dataclass(frozen=True, eq=False)
class ServedTask:
    """One task version ready to answer: what `/v1/tasks` lists and what a request is resolved to."""

    task: str
    version: int
    alias: str | None
    mode: str
    memory: int
    class_names: tuple[str, ...]
    artifact_sha256: str
    backbone: LoadedBackbone
    adapter: TaskAdapter
    loaded_since: datetime

    @property
    def ref(self) -> str:
        return f"{self.task}@{self.version}"

    @property
    def key(self) -> AdapterKey:
        return (self.task, self.version, self.artifact_sha256)


@dataclass(frozen=True)
class Failure:
    """A task whose wanted version could not be loaded; the snapshot keeps its old one, if any."""

    task: str
    wanted_version: int
    error: str
    since: datetime


@dataclass(frozen=True)
class Snapshot:
    """What the server answers with, by task name. Never modified after it is built."""

    generation: int
    alias: str
    tasks: Mapping[str, ServedTask]
    failures: Mapping[str, Failure]
    wanted: Mapping[str, AdapterKey]
    built_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def complete(self) -> bool:
        """Every task the store deploys under the alias is served at the version it wants."""
        return not self.failures and all(t in self.tasks and self.tasks[t].key == key for t, key in self.wanted.items())


def empty_snapshot(alias: str) -> Snapshot:
    return Snapshot(0, alias, MappingProxyType({}), MappingProxyType({}), MappingProxyType({}))


def wanted_keys(entries: Iterable[DeployedEntry]) -> dict[str, AdapterKey]:
    return {e.task: (e.task, e.version, e.artifact_sha256) for e in entries}


class SnapshotLoader:
    """Builds snapshots and resolves pinned versions; thread-safe, each file loaded once."""

    def __init__(self, store: TaskStore, device: torch.device, pinned_capacity: int = 32) -> None:
        self.store = store
        self.device = device
        self._lock = threading.RLock()
        self._backbones: dict[tuple[str, str], LoadedBackbone] = {}
        self._adapters: dict[AdapterKey, TaskAdapter] = {}
        self._pinned: OrderedDict[AdapterKey, ServedTask] = OrderedDict()
        self._pinned_capacity = pinned_capacity

    # ------------------------------------------------------------------------------ snapshots
    def deployed(self, alias: str) -> list[DeployedEntry]:
        return self.store.deployed(alias)

    def build(self, entries: list[DeployedEntry], previous: Snapshot, generation: int) -> Snapshot:
        """The next snapshot: every entry at its wanted version, or, where that fails, its old one."""
        tasks: dict[str, ServedTask] = {}
        failures: dict[str, Failure] = {}
        now = datetime.now(UTC)
        backbones: dict[str, LoadedBackbone] = {}
        for entry in entries:
            old = previous.tasks.get(entry.task)
            if old is not None and old.key == (entry.task, entry.version, entry.artifact_sha256):
                tasks[entry.task] = old
                continue
            try:
                if entry.backbone not in backbones:
                    backbones[entry.backbone] = self.backbone(entry.backbone)
                tasks[entry.task] = self._served(entry, backbones[entry.backbone], now)
            except (ContinualMemError, StoreError, OSError) as exc:
                earlier = previous.failures.get(entry.task)
                same = earlier is not None and earlier.wanted_version == entry.version and earlier.error == str(exc)
                failures[entry.task] = earlier if same else Failure(entry.task, entry.version, str(exc), now)
                if old is not None:
                    tasks[entry.task] = old
        self._retain(tasks.values())
        return Snapshot(
            generation,
            previous.alias,
            MappingProxyType(dict(sorted(tasks.items()))),
            MappingProxyType(failures),
            MappingProxyType(wanted_keys(entries)),
        )

    def _served(self, entry: DeployedEntry, backbone: LoadedBackbone, now: datetime) -> ServedTask:
        key = (entry.task, entry.version, entry.artifact_sha256)
        adapter = self._adapter(key, backbone)
        return ServedTask(
            task=entry.task,
            version=entry.version,
            alias=entry.alias,
            mode=entry.mode,
            memory=entry.memory_size,
            class_names=tuple(entry.class_names),
            artifact_sha256=entry.artifact_sha256,
            backbone=backbone,
            adapter=adapter,
            loaded_since=now,
        )

    # ------------------------------------------------------------------------------ pinned versions
    def pinned(self, task: str, version: int, served: Snapshot) -> ServedTask:
        """A version asked for by number (`task@3`) that the snapshot does not deploy.

        Only ready versions on a backbone the server already holds are served; the most recently
        used `pinned_capacity` of them stay loaded.
        """
        info = self.store.get_version(f"{task}@{version}")
        if info.status != "ready" or info.deleted:
            raise LoadError(f"version {task}@{version} is {'deleted' if info.deleted else info.status}, not ready")
        backbone = self._held_backbone(info, served)
        key = (task, version, str(info.artifact_sha256))
        with self._lock:
            hit = self._pinned.get(key)
            if hit is not None:
                self._pinned.move_to_end(key)
                return hit
        adapter = self._adapter(key, backbone)
        entry = ServedTask(
            task=task,
            version=version,
            alias=None,
            mode=info.mode,
            memory=info.memory_size,
            class_names=tuple(adapter.config.class_names),
            artifact_sha256=key[2],
            backbone=backbone,
            adapter=adapter,
            loaded_since=datetime.now(UTC),
        )
        with self._lock:
            self._pinned[key] = entry
            while len(self._pinned) > self._pinned_capacity:
                self._pinned.popitem(last=False)
        return entry

    def _held_backbone(self, info: VersionInfo, served: Snapshot) -> LoadedBackbone:
        with self._lock:
            for backbone in self._backbones.values():
                if backbone.name == info.backbone:
                    return backbone
        held = sorted({t.backbone.name for t in served.tasks.values()})
        raise LoadError(
            f"version {info.ref} runs on backbone {info.backbone!r}, which this server does not hold "
            f"(it holds: {', '.join(held) or 'none'})"
        )

    # ------------------------------------------------------------------------------ caches
    def backbone(self, name: str) -> LoadedBackbone:
        """The backbone `name` as the store records it now, loaded once per weights sha256."""
        from continual_mem.services import load_backbone

        info = self.store.get_backbone(name)
        key = (name, info.weights_sha256)
        with self._lock:
            if key in self._backbones:
                return self._backbones[key]
            model, identity = load_backbone(self.store, name)
            model = model.to(self.device).eval()
            loaded = LoadedBackbone(name, identity, model, InputSpec.from_backbone(model))
            self._backbones[key] = loaded
            return loaded

    def _adapter(self, key: AdapterKey, backbone: LoadedBackbone) -> TaskAdapter:
        with self._lock:
            if key in self._adapters:
                return self._adapters[key]
        task, version, _ = key
        path = self.store.artifact_path(f"{task}@{version}")  # re-hashes the file against the store's sha256
        adapter = TaskAdapter.load(path, expect_backbone=backbone.identity)
        if adapter.config.extends:
            raise LoadError(
                f"{task}@{version} extends other tasks ({', '.join(adapter.config.extends)}); "
                "the server answers independent tasks only"
            )
        if (adapter.depth, adapter.dim) != (len(backbone.model.blocks), int(backbone.model.embed_dim)):
            raise LoadError(f"{task}@{version} does not fit backbone {backbone.name!r}")
        adapter = adapter.to(self.device).eval().requires_grad_(False)
        with self._lock:
            return self._adapters.setdefault(key, adapter)

    def _retain(self, served: Iterable[ServedTask]) -> None:
        """Forget adapters neither served nor pinned (they are reloaded, and re-checked, if asked again)."""
        with self._lock:
            keep = {t.key for t in served} | set(self._pinned)
            for key in [k for k in self._adapters if k not in keep]:
                del self._adapters[key]
