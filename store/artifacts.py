"""Content-addressed artifact files and pure-Python safetensors header handling.

Layout under the artifact root: ``ab/abcdef....safetensors`` (the first two hex
digits of the sha256 shard the files) and ``tmp/*.part`` for writes in
progress. A write goes temp file -> fsync -> rename, so a file under its final
name is always complete; the database row that refers to it is committed only
afterwards, so a crash can leave an unreferenced file (collected by
``TaskStore.gc``) but never a row pointing at a partial file.

The root is a local directory, or any fsspec URL (``memory://``, ``s3://``...);
remote files are downloaded to a local cache and verified before use.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import struct
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any

import fsspec

from store.errors import ArtifactIntegrityError, InvalidArtifactError, StorageError

_CHUNK = 1 << 20
_TMP_DIR = "tmp"
_KEY_RE = re.compile(r"[0-9a-f]{2}/([0-9a-f]{64})(\.[a-z0-9]{1,16})?")
_SUFFIX_RE = re.compile(r"\.[a-z0-9]{1,16}")
ARTIFACT_SUFFIX = ".safetensors"


@dataclass(frozen=True)
class StoredArtifact:
    """A file stored under the artifact root; ``key`` is its path relative to the root."""

    key: str
    uri: str
    sha256: str
    size: int


@dataclass(frozen=True)
class ArtifactEntry:
    """A file found under the artifact root by a scan (``is_temp``: an unfinished write)."""

    key: str
    age_s: float
    is_temp: bool


def artifact_key(sha256: str, suffix: str = ARTIFACT_SUFFIX) -> str:
    """The content address of a file: ``ab/abcdef...<suffix>``."""
    return f"{sha256[:2]}/{sha256}{suffix}"


def suffix_of(name: str) -> str:
    """The file suffix kept in an artifact's key (lower case, or empty when unusual)."""
    suffix = PurePosixPath(name).suffix.lower()
    return suffix if _SUFFIX_RE.fullmatch(suffix) else ""


def sha256_file(path: Path) -> tuple[str, int]:
    """sha256 hex digest and size of a local file."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _copy_hashing(src: IO[bytes], dst: IO[bytes]) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while chunk := src.read(_CHUNK):
        digest.update(chunk)
        dst.write(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _verify(path: Path, sha256: str, shown_as: str) -> Path:
    if not path.is_file():
        raise ArtifactIntegrityError(f"artifact {shown_as} is missing (expected sha256 {sha256})")
    actual, _ = sha256_file(path)
    if actual != sha256:
        raise ArtifactIntegrityError(
            f"artifact {shown_as} is corrupt: its sha256 is {actual} but {sha256} was recorded"
        )
    return path


class ArtifactStore(ABC):
    """Interface of an artifact root; see ``LocalArtifactStore`` and ``FsspecArtifactStore``."""

    @abstractmethod
    def put(self, src: Path, suffix: str = ARTIFACT_SUFFIX) -> StoredArtifact:
        """Copy ``src`` in under its content address (temp -> fsync -> rename)."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def verified_path(self, key: str, sha256: str) -> Path:
        """A local path to the file, whose sha256 was just checked against ``sha256``."""

    @abstractmethod
    def uri(self, key: str) -> str: ...

    @abstractmethod
    def entries(self) -> Iterator[ArtifactEntry]:
        """Every artifact and temp file under the root, with its age."""

    @abstractmethod
    def remove(self, key: str) -> None: ...


def refuse_files_in_the_way(*folders: Path) -> None:
    """Refuse a file where the store needs a folder (created later, on first write)."""
    for folder in folders:
        if folder.exists() and not folder.is_dir():
            raise StorageError(f"{folder} is a file, not a folder: the store keeps its files there; move it away")


class LocalArtifactStore(ArtifactStore):
    """Artifacts in a local folder, created on the first write (opening a store writes nothing)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        refuse_files_in_the_way(root, root / _TMP_DIR)

    def put(self, src: Path, suffix: str = ARTIFACT_SUFFIX) -> StoredArtifact:
        (self.root / _TMP_DIR).mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self.root / _TMP_DIR, suffix=".part")
        tmp = Path(tmp_name)
        try:
            with open(src, "rb") as source, os.fdopen(fd, "wb") as out:
                sha256, size = _copy_hashing(source, out)
                out.flush()
                os.fsync(out.fileno())
            key = artifact_key(sha256, suffix)
            final = self.root / key
            shard_is_new = not final.parent.exists()
            final.parent.mkdir(exist_ok=True)
            # Replacing an existing file of the same content is harmless and refreshes
            # its mtime, which keeps gc's grace period from collecting it mid-commit.
            os.replace(tmp, final)
            _fsync_dir(final.parent)
            if shard_is_new:
                _fsync_dir(self.root)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return StoredArtifact(key=key, uri=self.uri(key), sha256=sha256, size=size)

    def exists(self, key: str) -> bool:
        return (self.root / key).is_file()

    def verified_path(self, key: str, sha256: str) -> Path:
        path = self.root / key
        return _verify(path, sha256, str(path))

    def uri(self, key: str) -> str:
        return (self.root / key).as_uri()

    def entries(self) -> Iterator[ArtifactEntry]:
        now = time.time()
        for path in self.root.glob("*/*"):
            relative = path.relative_to(self.root).as_posix()
            is_temp = path.parent.name == _TMP_DIR
            if is_temp or _KEY_RE.fullmatch(relative):
                yield ArtifactEntry(relative, now - path.stat().st_mtime, is_temp)

    def remove(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)


class FsspecArtifactStore(ArtifactStore):
    """Artifacts under an fsspec URL; reads go through a verified local cache."""

    def __init__(self, url: str, cache_dir: Path) -> None:
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.cache_dir = cache_dir

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def put(self, src: Path, suffix: str = ARTIFACT_SUFFIX) -> StoredArtifact:
        tmp = self._path(f"{_TMP_DIR}/{uuid.uuid4().hex}.part")
        self.fs.makedirs(self._path(_TMP_DIR), exist_ok=True)
        try:
            with open(src, "rb") as source, self.fs.open(tmp, "wb") as out:
                sha256, size = _copy_hashing(source, out)
            key = artifact_key(sha256, suffix)
            self.fs.makedirs(self._path(key.split("/")[0]), exist_ok=True)
            self.fs.mv(tmp, self._path(key))
        except BaseException:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)
            raise
        return StoredArtifact(key=key, uri=self.uri(key), sha256=sha256, size=size)

    def exists(self, key: str) -> bool:
        return bool(self.fs.isfile(self._path(key)))

    def verified_path(self, key: str, sha256: str) -> Path:
        cached = self.cache_dir / key
        if cached.is_file() and sha256_file(cached)[0] == sha256:
            return cached
        if not self.exists(key):
            raise ArtifactIntegrityError(f"artifact {self.uri(key)} is missing (expected sha256 {sha256})")
        cached.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=cached.parent, suffix=".part")
        try:
            with self.fs.open(self._path(key), "rb") as remote, os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(remote, out, _CHUNK)
            _verify(Path(tmp_name), sha256, self.uri(key))
            os.replace(tmp_name, cached)
        finally:
            Path(tmp_name).unlink(missing_ok=True)
        return cached

    def uri(self, key: str) -> str:
        return f"{self.url}/{key}"

    def entries(self) -> Iterator[ArtifactEntry]:
        now = datetime.now(UTC)
        prefix = f"{self.root}/"
        for path in self.fs.find(self.root):
            relative = path.removeprefix(prefix).lstrip("/")
            is_temp = relative.startswith(f"{_TMP_DIR}/")
            if is_temp or _KEY_RE.fullmatch(relative):
                yield ArtifactEntry(relative, self._age_s(path, now), is_temp)

    def _age_s(self, path: str, now: datetime) -> float:
        """Age from the file system's modification time; 0 (too young to collect) if unknown."""
        try:
            modified = self.fs.modified(path)
        except (NotImplementedError, OSError):
            return 0.0
        if modified.tzinfo is None:
            modified = modified.replace(tzinfo=UTC)
        return float((now - modified).total_seconds())

    def remove(self, key: str) -> None:
        path = self._path(key)
        if self.fs.exists(path):
            self.fs.rm(path)


def open_artifact_store(root: str | Path, cache_dir: Path) -> ArtifactStore:
    """A local store for paths and ``file://`` URLs, an fsspec one for other URLs."""
    text = str(root)
    if text.startswith("file://"):
        return LocalArtifactStore(Path(fsspec.core.url_to_fs(text)[1]))
    if "://" in text:
        return FsspecArtifactStore(text, cache_dir)
    return LocalArtifactStore(Path(text).expanduser().resolve())


# --- safetensors headers -----------------------------------------------------------------

#: Element sizes in bits, as in the safetensors format (sub-byte float types included).
_DTYPE_BITS = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "I64": 64,
    "U64": 64,
    "F64": 64,
    "C64": 64,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
}
_MAX_HEADER = 100_000_000  # the limit the safetensors library itself enforces
_HEADER_ALIGN = 8


@dataclass(frozen=True)
class SafetensorsHeader:
    """A parsed header: ``tensors`` maps names to their dtype/shape/data_offsets entries."""

    tensors: dict[str, dict[str, Any]]
    metadata: dict[str, str]
    data_start: int


def read_safetensors_header(path: Path) -> SafetensorsHeader:
    """Parse and validate the header of a safetensors file without reading its tensors.

    Raises ``InvalidArtifactError`` naming the file and what is wrong: truncation,
    a header that is not JSON, offsets that do not tile the data area, etc.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise InvalidArtifactError(
                    f"{path} is not a valid safetensors file: {size} bytes, shorter than the 8-byte header length"
                )
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > min(_MAX_HEADER, size - 8):
                raise InvalidArtifactError(
                    f"{path} is not a valid safetensors file (truncated?): header length {header_len}"
                    f" but only {size - 8} bytes follow"
                )
            raw = f.read(header_len)
    except OSError as exc:
        raise ArtifactIntegrityError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArtifactError(f"{path} is not a valid safetensors file: header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise InvalidArtifactError(f"{path} is not a valid safetensors file: header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise InvalidArtifactError(f"{path} is not a valid safetensors file: __metadata__ must map strings to strings")
    data_start = 8 + header_len
    _check_tensor_entries(path, header, size - data_start)
    return SafetensorsHeader(tensors=header, metadata=metadata, data_start=data_start)


def _check_tensor_entries(path: Path, tensors: dict[str, Any], data_size: int) -> None:
    """Each entry well-formed, sized for its dtype and shape, and the entries tiling the data area."""
    spans = []
    for name, entry in tensors.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            ok = (
                isinstance(dtype, str)
                and all(isinstance(d, int) and d >= 0 for d in shape)
                and isinstance(begin, int)
                and isinstance(end, int)
                and 0 <= begin <= end
            )
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise InvalidArtifactError(f"{path} is not a valid safetensors file: bad entry for tensor {name!r}")
        bits = _DTYPE_BITS.get(dtype)
        if bits is not None and end - begin != math.ceil(math.prod(shape) * bits / 8):
            raise InvalidArtifactError(
                f"{path} is not a valid safetensors file: tensor {name!r} ({dtype}{shape}) spans {end - begin} bytes"
            )
        spans.append((begin, end))
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            break
        position = end
    if position != data_size:
        raise InvalidArtifactError(
            f"{path} is not a valid safetensors file (truncated?): tensors cover {position} bytes"
            f" of a {data_size}-byte data area, with gaps or overflow"
        )


def read_safetensors_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (empty if it has none)."""
    return read_safetensors_header(Path(path)).metadata


def write_safetensors_with_metadata(
    src: Path, dest: Path, metadata: dict[str, str], remove: Collection[str] = ()
) -> None:
    """Write ``src`` to ``dest`` with ``metadata`` merged into its ``__metadata__`` (less the ``remove`` keys).

    The tensor bytes are copied unchanged; the header is re-serialised and padded
    with spaces to keep the data area 8-byte aligned, as safetensors writers do.
    ``dest`` appears atomically (temp file -> fsync -> rename); a place that cannot be
    written is refused (``StorageError``).
    """
    header = read_safetensors_header(src)
    merged = {k: v for k, v in {**header.metadata, **metadata}.items() if k not in remove}
    if not all(isinstance(v, str) for v in merged.values()):
        raise TypeError("safetensors metadata values must be strings")
    blob = json.dumps({"__metadata__": merged, **header.tensors}, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-(8 + len(blob)) % _HEADER_ALIGN)
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as exc:
        raise StorageError(f"cannot write {dest}: {exc.strerror or exc}") from None
    try:
        with open(src, "rb") as source, os.fdopen(fd, "wb") as out:
            out.write(struct.pack("<Q", len(blob)))
            out.write(blob)
            source.seek(header.data_start)
            shutil.copyfileobj(source, out, _CHUNK)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_name, dest)
    except OSError as exc:
        raise StorageError(f"cannot write {dest}: {exc.strerror or exc}") from None
    finally:
        Path(tmp_name).unlink(missing_ok=True)
