"""Issue 14: the 18 ways `cmem` broke its promises under bad inputs and faults, one test each.

Each test failed before its fix. The table-driven suite over every command is `test_fuzz.py`;
the faults that need a real process (SIGTERM, SIGKILL in the middle of training) are here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_store_fixtures as fx
from cli_harness import (
    LOW_DATA,
    TINY_ARGS,
    assert_refused,
    blank_png,
    build_store,
    class_folders,
    copy_store,
    digit_pngs,
    invoke,
    ok,
    snapshot,
    sql,
)

from store.artifacts import read_safetensors_header, write_safetensors_with_metadata

CMEM = Path(sys.executable).parent / "cmem"
store = fx.store  # the seeded store on SQLite and on PostgreSQL (bound here, as the store tests do)
db_url = fx.db_url
HUGE_VERSION = "99999999999999999999999"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("reliability") / "home"
    build_store(home)
    return home


@pytest.fixture
def home(built, tmp_path) -> Path:
    return copy_store(built, tmp_path / "home")


@pytest.fixture
def exported(home, tmp_path) -> Path:
    dest = tmp_path / "low-1.safetensors"
    ok(home, "export", "low@1", str(dest))
    return dest


def versions(home: Path, task: str) -> list[dict]:
    return json.loads(ok(home, "task", "versions", task, "--all", "--json").stdout)


def start_training(home: Path) -> subprocess.Popen[str]:
    """A real `cmem task train` process, long enough to be stopped in the middle."""
    args = [str(CMEM), "--home", str(home), "task", "train", "low", "--data", LOW_DATA, "--epochs", "500"]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until_training(home: Path, proc: subprocess.Popen[str], timeout_s: float = 120.0) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        if any(v["status"] == "training" for v in versions(home, "low")):
            time.sleep(1.0)  # a few training steps in
            return
        time.sleep(0.2)
    raise AssertionError("training did not start")


# ---------------------------------------------------------------------------------- 1 killed training
def test_1_sigterm_marks_the_version_failed(home) -> None:
    proc = start_training(home)
    wait_until_training(home, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and err.strip().splitlines()[-1] == "Error: terminated", err
    latest = versions(home, "low")[-1]
    assert (latest["number"], latest["status"], latest["failure_reason"]) == (2, "failed", "terminated")


def test_1_sigkill_leaves_a_version_that_listing_marks_failed(home) -> None:
    """A training process beats a heartbeat; once it stops, the listing and cleaning commands reap it."""
    proc = start_training(home)
    wait_until_training(home, proc)
    assert versions(home, "low")[-1]["status"] == "training"  # alive: left alone
    proc.kill()
    proc.communicate(timeout=60)
    assert versions(home, "low")[-1]["status"] == "training"  # its last heartbeat is recent
    # as if the process had died an hour ago
    sql(home / "store.db", "UPDATE task_versions SET heartbeat_at = datetime('now', '-1 hour') WHERE number = 2")
    latest = versions(home, "low")[-1]
    assert latest["status"] == "failed" and latest["finished_at"] is not None
    assert "abandoned" in latest["failure_reason"] and "heartbeat" in latest["failure_reason"]


def test_1_gc_reaps_an_abandoned_version(home) -> None:
    sql(
        home / "store.db",
        "INSERT INTO task_versions (task_id, number, status, mode, memory_size, hyperparams, created_at,"
        " heartbeat_at) SELECT id, 2, 'training', 'reuse', 5, '{}', datetime('now', '-2 day'),"
        " datetime('now', '-2 day') FROM tasks WHERE name = 'low'",
    )
    assert "marked 1 abandoned training version(s) failed: low@2" in ok(home, "gc").stdout
    assert versions(home, "low")[-1]["status"] == "failed"


def test_1_a_beating_version_is_alive_and_a_silent_one_abandoned(store) -> None:
    """On SQLite and PostgreSQL: the heartbeat, not the start time, says whether a version is abandoned."""
    version = store.begin_version("digits", "memory", 4, {})
    assert store.stale_versions(older_than_s=3600) == [] and store.fail_stale(older_than_s=3600) == []
    time.sleep(0.3)
    store.beat(version)
    assert store.stale_versions(older_than_s=0.2) == []  # it began 0.3 s ago, but beat just now
    time.sleep(0.3)
    (abandoned,) = store.fail_stale(older_than_s=0.2)
    assert (abandoned.ref, abandoned.status) == ("digits@1", "failed")
    assert abandoned.failure_reason == "abandoned: no heartbeat from its training process for more than 0.2 s"
    store.beat(version)  # a late beat of a failed version changes nothing
    assert store.get_version("digits@1").status == "failed"


def test_1_heartbeat_beats_until_closed_and_outlives_a_failed_beat() -> None:
    from store.liveness import Heartbeat

    beats: list[float] = []

    def beat() -> None:
        beats.append(time.monotonic())
        if len(beats) == 2:
            raise RuntimeError("database is locked")

    with Heartbeat(beat, interval_s=0.01) as heart:
        while len(beats) < 5:
            time.sleep(0.01)
    after_close = len(beats)
    time.sleep(0.05)
    assert len(beats) == after_close and heart.failures == 1


# ---------------------------------------------------------------------------------- 2 tampered exports
def flip_a_bit(path: Path, tensor: str) -> None:
    header = read_safetensors_header(path)
    at = header.data_start + header.tensors[tensor]["data_offsets"][0] + 5
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def with_metadata(source: Path, dest: Path, **changes: str) -> Path:
    write_safetensors_with_metadata(source, dest, changes)
    return dest


def test_2_tampered_exports_are_refused(home, exported, tmp_path) -> None:
    meta = read_safetensors_header(exported).metadata
    flipped = tmp_path / "flipped.safetensors"
    flipped.write_bytes(exported.read_bytes())
    flip_a_bit(flipped, "memory")
    metrics = {**json.loads(meta["cmem.metrics"]), "val_accuracy": 0.999}
    tampered = [
        flipped,
        with_metadata(exported, tmp_path / "classes.safetensors", **{"cmem.class_names": '["0", "1", "X"]'}),
        with_metadata(exported, tmp_path / "metrics.safetensors", **{"cmem.metrics": json.dumps(metrics)}),
        with_metadata(exported, tmp_path / "depth.safetensors", depth="4"),
    ]
    before = snapshot(home)
    for path in tampered:
        assert_refused(invoke(home, "import", str(path), "--task", "copy"), "digest")
    assert snapshot(home) == before
    assert "Imported" in ok(home, "import", str(exported), "--task", "copy").stdout


def with_true_digest(path: Path) -> Path:
    """Recompute a tampered file's digest, as a forger who knows the format would."""
    from store.integrity import DIGEST_KEY, content_digest

    header = read_safetensors_header(path)
    return with_metadata(path, path, **{DIGEST_KEY: content_digest(path, header)})


def test_2_an_export_that_disagrees_with_itself_is_refused_at_import(home, exported, tmp_path) -> None:
    """With the digest forged, the checks of shapes and fields against each other still refuse it."""
    deeper = with_true_digest(with_metadata(exported, tmp_path / "depth.safetensors", depth="4"))
    larger = with_true_digest(with_metadata(exported, tmp_path / "memory.safetensors", **{"cmem.memory_size": "7"}))
    before = snapshot(home)
    assert_refused(
        invoke(home, "import", str(deeper)), "tensor 'memory' is F32[2, 5, 48], its metadata says F32[4, 5, 48]"
    )
    assert_refused(invoke(home, "import", str(larger)), "the adapter's num_memory is 5, but 7 is expected")
    assert snapshot(home) == before


def test_2_loading_an_adapter_checks_its_digest(exported, tmp_path) -> None:
    """The adapter file itself carries a digest that `TaskAdapter.load` checks, store or no store."""
    from continual_mem.adapter import TaskAdapter
    from continual_mem.errors import AdapterFormatError

    assert TaskAdapter.load(exported).config.class_names == ("0", "1", "2")
    config = json.loads(read_safetensors_header(exported).metadata["config"])
    renamed = with_metadata(
        exported, tmp_path / "renamed.safetensors", config=json.dumps({**config, "class_names": ["0", "1", "X"]})
    )
    with pytest.raises(AdapterFormatError, match="does not match its digest"):
        TaskAdapter.load(renamed)


def test_2_signed_exports(home, tmp_path) -> None:
    signed = tmp_path / "signed.safetensors"
    ok(home, "export", "low@1", str(signed), env={"CMEM_EXPORT_KEY": "key-one"})
    unsigned = tmp_path / "unsigned.safetensors"
    ok(home, "export", "low@1", str(unsigned))
    before = snapshot(home)
    wrong = invoke(home, "import", str(signed), "--task", "copy", env={"CMEM_EXPORT_KEY": "key-two"})
    assert_refused(wrong, "signature does not match CMEM_EXPORT_KEY")
    missing = invoke(home, "import", str(unsigned), "--task", "copy", env={"CMEM_EXPORT_KEY": "key-one"})
    assert_refused(missing, "is not signed")
    assert snapshot(home) == before
    ok(home, "import", str(signed), "--task", "copy", env={"CMEM_EXPORT_KEY": "key-one"})


# ---------------------------------------------------------------------------------- 3 refused import
def test_3_a_refused_import_writes_nothing(home, exported) -> None:
    before = snapshot(home)
    assert_refused(invoke(home, "import", str(exported), "--task", "high"), "has classes")
    read_only = f"sqlite:///file:{home / 'store.db'}?mode=ro&uri=true"
    assert_refused(invoke(home, "--db", read_only, "import", str(exported), "--task", "copy"), "read")
    assert snapshot(home) == before


# ---------------------------------------------------------------------------------- 4 large images
def test_4_each_image_is_resized_on_its_own(tmp_path) -> None:
    """A 4000x4000 image beside small ones: each keeps its own size until it goes to the backbone's side alone."""
    import torch

    from continual_mem.data import InputSpec, load_source
    from continual_mem.images import decode_image, to_side
    from continual_mem.services import load_image_files

    digits = digit_pngs(tmp_path / "digits", [0, 1, 2])
    big = blank_png(tmp_path / "big.png", 4000, 4000)
    files, images = load_image_files([*digits, big])
    assert files == [*digits, big] and [tuple(i.shape) for i in images] == [(3, 8, 8)] * 3 + [(3, 4000, 4000)]
    spec = InputSpec(16, 3, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    batch = spec.batch(images)
    for row, path in enumerate(digits):
        assert torch.equal(batch[row], spec(to_side(decode_image(path), 16)[None])[0])
    data = class_folders(tmp_path / "data", [0, 1])
    blank_png(data / "1" / "big.png", 4000, 4000)
    folder = load_source(str(data), side=16)
    assert folder.images.shape == (9, 3, 16, 16)
    assert torch.equal(folder.images[0], to_side(decode_image(data / "0" / "digit-0-0.png"), 16))


def test_4_an_image_over_the_pixel_limit_is_refused_by_name(home, tmp_path) -> None:
    bomb = blank_png(tmp_path / "bomb.png", 10_000, 10_000)
    assert_refused(invoke(home, "predict", str(bomb)), f"{bomb} is 10000x10000 = 100.0 megapixels, over the limit")
    raised = ok(home, "predict", str(digit_pngs(tmp_path, [1])[0]), "--max-pixels", "200000000").stdout
    assert "low@1" in raised
    data = class_folders(tmp_path / "data", [0, 1, 2])
    blank_png(data / "2" / "bomb.png", 10_000, 10_000)
    before = snapshot(home)
    assert_refused(invoke(home, "task", "train", "low", "--data", str(data)), "bomb.png is 10000x10000")
    assert snapshot(home) == before


# ---------------------------------------------------------------------------------- 5 --memory bound
def test_5_memory_sizes_that_cannot_make_sense_are_refused(home) -> None:
    before = snapshot(home)
    for size in ("100000", "99999999"):
        result = invoke(home, "task", "train", "low", "--data", LOW_DATA, "--memory", size, "--steps", "1")
        assert_refused(result, "more memory tokens per layer than the 17 tokens")
    scenario = invoke(home, "scenario", "run", "split-digits", "-s", "memory-99999999", "--backbone", "random")
    assert_refused(scenario, "more memory tokens per layer than the 65 tokens")
    assert snapshot(home) == before


def test_5_memory_that_would_not_fit_is_refused() -> None:
    from continual_mem.errors import ContinualMemError
    from continual_mem.train import check_memory_fits

    check_memory_fits(depth=12, num_memory=20, dim=768, tokens=197, heads=12, batch_size=16, mode="full")
    with pytest.raises(ContinualMemError, match=r"needs about [\d.]+ GiB .* [\d.]+ GiB (are|is) available"):
        check_memory_fits(depth=48, num_memory=2000, dim=8192, tokens=4097, heads=64, batch_size=512, mode="full")


# ---------------------------------------------------------------------------------- 6 unknown device
def test_6_an_unknown_device_is_refused_before_anything_is_written(home) -> None:
    before = snapshot(home)
    for device in ("tpu", "cuda:x"):
        result = invoke(home, "task", "train", "low", "--data", LOW_DATA, "--device", device)
        assert_refused(result, f"device {device!r} is not a device")
    assert snapshot(home) == before


# ---------------------------------------------------------------------------------- 7 huge versions
def test_7_version_numbers_beyond_the_database_are_not_found(home, tmp_path) -> None:
    before = snapshot(home)
    for args in (
        ["deploy", f"low@{HUGE_VERSION}"],
        ["export", f"low@{HUGE_VERSION}", str(tmp_path / "x.safetensors")],
        ["eval", f"low@{HUGE_VERSION}", "--data", LOW_DATA],
        ["task", "tag", "low", "a=b", "--version", HUGE_VERSION],
    ):
        assert_refused(invoke(home, *args), "version numbers are at most 2147483647")
    assert snapshot(home) == before


# ---------------------------------------------------------------------------------- 8 predict batch size
def test_8_predict_batch_size_must_be_positive(home, tmp_path) -> None:
    image = str(digit_pngs(tmp_path, [1])[0])
    for size in ("0", "-1"):
        assert_refused(
            invoke(home, "predict", image, "--batch-size", size), f"--batch-size must be at least 1, got {size}"
        )


# ---------------------------------------------------------------------------------- 9 missing drivers
def test_9_a_missing_database_driver_names_its_package(tmp_path) -> None:
    cases = {
        "mysql://user@localhost/cmem": "pip install mysqlclient",
        "postgresql+psycopg://postgres@127.0.0.1/test": "pip install psycopg",
        "postgresql+pg8000://postgres@127.0.0.1/test": "pip install pg8000",
    }
    for url, package in cases.items():
        line = assert_refused(invoke(tmp_path / "home", "--db", url, "task", "list"), package)
        assert "driver" in line
    assert not (tmp_path / "home").exists()


# ---------------------------------------------------------------------------------- 10 corrupt database
def test_10_a_corrupt_database_file_is_named(home) -> None:
    (home / "store.db").write_bytes(os.urandom(8192))
    before = snapshot(home)
    for args in (["task", "list"], ["init"], ["db", "current"], ["db", "upgrade"]):
        assert_refused(invoke(home, *args), f"{home / 'store.db'} is not a SQLite database")
    assert snapshot(home) == before


# ---------------------------------------------------------------------------------- 11 newer schema
def test_11_a_database_newer_than_the_code(home) -> None:
    sql(home / "store.db", "UPDATE alembic_version SET version_num = '0099_future'")
    before = snapshot(home)
    current = ok(home, "db", "current").stdout
    assert "newer than this code" in current and "db upgrade" not in current
    assert_refused(invoke(home, "db", "upgrade"), "revision '0099_future' is newer than this code")
    assert snapshot(home) == before


# ---------------------------------------------------------------------------------- 12 file for a folder
def test_12_a_file_where_a_folder_must_be(home, tmp_path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert_refused(invoke(a_file, "init"), f"{a_file} is a file, not a folder")
    for sub in ("artifacts/tmp", "artifacts"):
        copy = copy_store(home, tmp_path / f"copy-{sub.replace('/', '-')}")
        target = copy / sub
        if target.is_dir():
            import shutil

            shutil.rmtree(target)
        target.write_text("x")
        before = snapshot(copy)
        assert_refused(invoke(copy, "task", "list"), f"{target} is a file, not a folder")
        assert snapshot(copy) == before


# ---------------------------------------------------------------------------------- 13 export destination
def test_13_export_to_an_unwritable_or_missing_place(home, tmp_path) -> None:
    before = snapshot(home)
    assert_refused(invoke(home, "export", "low@1", "/proc/low.safetensors"), "cannot write /proc/low.safetensors")
    missing = tmp_path / "no" / "such" / "low.safetensors"
    assert_refused(invoke(home, "export", "low@1", str(missing)), f"folder {missing.parent} does not exist")
    assert not (tmp_path / "no").exists() and snapshot(home) == before


# ---------------------------------------------------------------------------------- 14 bad model args
def test_14_model_arguments_timm_rejects(home) -> None:
    before = snapshot(home)
    add = ["backbone", "add", "b2", "--model", "vit_tiny_patch16_224", "--random-init"]
    assert_refused(invoke(home, *add, "--arg", "img_size=abc"), "cannot build vit_tiny_patch16_224 with img_size='abc'")
    assert_refused(invoke(home, *add, "--arg", "bogus_kw=1"), "unexpected keyword argument 'bogus_kw'")
    assert snapshot(home) == before


# ---------------------------------------------------------------------------------- 15 skip-bad
def test_15_skip_bad_refuses_a_class_left_without_images(home, tmp_path) -> None:
    data = class_folders(tmp_path / "data", [0, 1, 2])
    for image in (data / "2").iterdir():
        image.write_bytes(b"not an image")
    before = snapshot(home)
    result = invoke(home, "task", "train", "low", "--data", str(data), "--skip-bad", "--steps", "1")
    assert_refused(result, f"class folder {data / '2'} has no readable image (4 skipped)")
    assert snapshot(home) == before


# ---------------------------------------------------------------------------------- 16 one stderr line
@pytest.mark.timeout(60)
def test_16_scenario_name_is_checked_before_the_backbone_loads(home) -> None:
    assert_refused(invoke(home, "scenario", "run", "nosuch", "-s", "memory"), "unknown scenario 'nosuch'")


def test_16_backbone_add_fails_fast_without_a_network(home) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env["HF_ENDPOINT"] = "https://hub.invalid"  # never resolves, network or not
    started = time.perf_counter()
    proc = subprocess.run(
        [str(CMEM), "--home", str(home), "backbone", "add", "b2", "--model", "vit_tiny_patch16_224", *TINY_ARGS],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert time.perf_counter() - started < 30
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and proc.stdout == "", proc.stderr
    assert lines[0].startswith("Error: cannot reach the model hub") and "--weights FILE" in lines[0]


# ---------------------------------------------------------------------------------- 17 PostgreSQL home
@pytest.mark.postgres
def test_17_a_refused_command_on_a_fresh_postgres_creates_no_home(tmp_path) -> None:
    from test_store_fixtures import pg_schema_url

    with pg_schema_url() as url:
        assert_refused(invoke(tmp_path / "home", "--db", url, "task", "list"), "run `cmem db upgrade`")
        assert not (tmp_path / "home").exists()


# ---------------------------------------------------------------------------------- 18 task delete
def test_18_task_delete_needs_an_explicit_version(home) -> None:
    ok(home, "task", "train", "low", "--data", LOW_DATA, "--steps", "1", "--batch-size", "16")
    before = snapshot(home)
    assert_refused(invoke(home, "task", "delete", "low"), "give the version to delete, e.g. low@2")
    assert snapshot(home) == before
    assert "Deleted low@2" in ok(home, "task", "delete", "low@2").stdout
