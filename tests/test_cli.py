"""`cmem` end to end (issue 4): CliRunner for the flows, real subprocesses for imports and torchrun."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import tiny_vit
from PIL import Image
from safetensors.torch import load_file, save_file

from continual_mem.backbone import fingerprint
from continual_mem.cli import cli
from continual_mem.cli.demo import DEMO_TASKS
from continual_mem.pretrain import demo_backbone
from continual_mem.pretrain_process import PINS_HOLD
from store import TaskStore

VENV_BIN = Path(sys.executable).parent
TINY_ARGS = [
    "--arg",
    "img_size=16",
    "--arg",
    "patch_size=4",
    "--arg",
    "depth=2",
    "--arg",
    "embed_dim=48",
    "--arg",
    "num_heads=3",
]
TRAIN_FAST = ["--steps", "6", "--batch-size", "32"]


def run(home: Path, *args: str, ok: bool = True):
    result = CliRunner().invoke(cli, ["--home", str(home), *args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def fails_cleanly(home: Path, *args: str, match: str) -> str:
    """Exit code != 0 and exactly one output line, `Error: ...`, naming the problem."""
    result = CliRunner().invoke(cli, ["--home", str(home), *args], catch_exceptions=False)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert match in lines[0], lines[0]
    return lines[0]


def snapshot(home: Path) -> tuple:
    """Everything a failed command must not have changed."""
    with TaskStore(home) as store:
        tasks = [(t.name, t.aliases) for t in store.list_tasks(include_archived=True)]
        versions = [(v.ref, v.status) for t in tasks for v in store.list_versions(t[0], include_deleted=True)]
        return tasks, versions, [b.name for b in store.list_backbones()]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    vit = tiny_vit(img_size=16, patch_size=4, num_classes=7)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def trained_home(tmp_path_factory, weights) -> Path:
    """A store with a tiny backbone and two trained, deployed digit tasks (built once)."""
    home = tmp_path_factory.mktemp("home")
    run(home, "init")
    run(home, "backbone", "add", "tiny", "--model", "vit_tiny_patch16_224", "--weights", str(weights), *TINY_ARGS)
    run(home, "task", "register", "low", "--backbone", "tiny", "--data", "builtin:digits?classes=0,1,2")
    run(home, "task", "register", "high", "--backbone", "tiny", "--classes", "7,8,9")
    run(home, "task", "train", "low", "--data", "builtin:digits?classes=0,1,2", *TRAIN_FAST)
    run(home, "task", "train", "high", "--data", "builtin:digits?classes=7,8,9", *TRAIN_FAST, "--mode", "full")
    run(home, "deploy", "low")
    run(home, "deploy", "high@1")
    return home


@pytest.fixture
def home(tmp_path, trained_home) -> Path:
    copy = tmp_path / "home"
    shutil.copytree(trained_home, copy)
    return copy


def digit_pngs(directory: Path, classes: list[int]) -> list[Path]:
    from continual_mem.data import digits

    data = digits(classes)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for c in range(len(classes)):
        index = int((data.labels == c).nonzero()[0])
        path = directory / f"digit-{classes[c]}.png"
        Image.fromarray((data.images[index, 0].numpy() * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------- happy paths
def test_backbone_is_stored_as_safetensors_and_rebuilt_exactly(home, weights) -> None:
    from continual_mem import services

    with TaskStore(home) as store:
        vit, identity = services.load_backbone(store, "tiny")
        info = store.get_backbone("tiny")
    original = load_file(str(weights))
    for key, value in vit.state_dict().items():
        assert torch.equal(value, original[key]), key
    assert identity.sha256 == info.weights_sha256 and info.config["depth"] == 2


def test_pth_weights_load_with_weights_only(tmp_path, weights) -> None:
    pth = tmp_path / "tiny.pth"
    torch.save({"state_dict": load_file(str(weights))}, pth)
    run(tmp_path, "init")
    run(tmp_path, "backbone", "add", "from-pth", "--model", "vit_tiny_patch16_224", "--weights", str(pth), *TINY_ARGS)
    out = json.loads(run(tmp_path, "backbone", "list", "--json").output)
    from continual_mem.backbone import fingerprint

    reference = tiny_vit(img_size=16, patch_size=4, num_classes=7)
    assert out[0]["weights_sha256"] == fingerprint(reference)


def test_train_records_a_ready_version_with_metrics(home) -> None:
    versions = json.loads(run(home, "task", "versions", "low", "--json").output)
    assert [v["number"] for v in versions] == [1]
    v = versions[0]
    assert v["status"] == "ready" and v["mode"] == "reuse" and v["memory_size"] == 5
    assert 0.0 <= v["metrics"]["val_accuracy"] <= 1.0 and v["metrics"]["steps"] == 6
    assert v["hyperparams"]["data"] == "builtin:digits?classes=0,1,2" and len(v["data_fingerprint"]) == 64


def test_same_seed_same_result(home) -> None:
    run(home, "task", "train", "low", "--data", "builtin:digits?classes=0,1,2", *TRAIN_FAST)
    with TaskStore(home) as store:
        first, second = store.get_version("low@1"), store.get_version("low@2")
    assert first.artifact_sha256 == second.artifact_sha256
    assert first.metrics["val_accuracy"] == second.metrics["val_accuracy"]


def test_deploy_rollback_and_deployed_listing(home) -> None:
    run(home, "task", "train", "low", "--data", "builtin:digits?classes=0,1,2", *TRAIN_FAST, "--seed", "1")
    assert "low@production -> version 2" in run(home, "deploy", "low@2").output
    deployed = {e["task"]: e for e in json.loads(run(home, "deployed", "--json").output)}
    assert deployed["low"]["version"] == 2 and deployed["high"]["version"] == 1
    assert deployed["high"]["mode"] == "full" and deployed["low"]["artifact_size"] > 0
    assert "version 1 (rolled back)" in run(home, "rollback", "low").output
    history = json.loads(run(home, "history", "low", "--json").output)
    assert [(m["kind"], m["from_version"], m["to_version"]) for m in history] == [
        ("set", None, 1),
        ("set", 1, 2),
        ("rollback", 2, 1),
    ]
    table = run(home, "deployed").output
    assert "low" in table and "high" in table and "tiny" in table


def test_predict_answers_every_task_from_one_pass(home, tmp_path) -> None:
    images = digit_pngs(tmp_path / "imgs", [0, 8])
    out = run(home, "predict", str(images[0]), str(tmp_path / "imgs"), "--json", "--top-k", "2").output
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 3  # one file + a folder of two
    first = lines[0]
    assert set(first["predictions"]) == {"low", "high"}
    assert first["backbone_passes"] == 2  # one reuse pass + one for the full-mode task
    top = first["predictions"]["low"]["top"]
    assert len(top) == 2 and {t["label"] for t in top} <= {"0", "1", "2"}
    assert abs(sum(t["probability"] for t in top) - 1.0) < 1.0  # probabilities, not logits

    table = run(home, "predict", str(images[0]), "--task", "low").output
    assert "1 task(s), 1 backbone pass(es) per batch" in table


def test_predict_matches_the_core_exactly(home, tmp_path) -> None:
    from continual_mem import services

    images = digit_pngs(tmp_path / "imgs", [1])
    out = json.loads(run(home, "predict", str(images[0]), "--task", "low", "--json", "--top-k", "3").output)
    with TaskStore(home) as store:
        loaded = services.load_versions(store, ["low"])
    _, batch = services.load_image_files(images)
    with torch.no_grad():
        probs = loaded.model.forward_reuse(loaded.spec.batch(batch)).logits["low"].softmax(-1)[0]
    best = int(probs.argmax())
    assert out["predictions"]["low"]["top"][0]["label"] == ["0", "1", "2"][best]
    assert out["predictions"]["low"]["top"][0]["probability"] == pytest.approx(float(probs[best]), abs=1e-6)


def test_eval_stores_accuracy_and_confusion_matrix(home) -> None:
    out = json.loads(run(home, "eval", "low@production", "--data", "builtin:digits?classes=0,1,2", "--json").output)
    matrix = np.array(out["confusion_matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == out["samples"] == 537
    assert out["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    with TaskStore(home) as store:
        evaluation = store.get_version("low@1").evaluations[-1]
    assert evaluation.metrics["accuracy"] == out["accuracy"]


def test_export_import_round_trip(home, tmp_path) -> None:
    dest = tmp_path / "low.safetensors"
    run(home, "export", "low@1", str(dest))
    assert "Imported" in run(home, "import", str(dest), "--task", "low-copy").output
    with TaskStore(home) as store:
        copy, original = (load_file(str(store.artifact_path(r))) for r in ("low-copy@1", "low@1"))
        assert store.get_version("low-copy@1").tags["imported-from"] == "low@1"
    assert copy.keys() == original.keys() and all(torch.equal(copy[k], original[k]) for k in copy)


def test_task_show_and_list(home) -> None:
    shown = run(home, "task", "show", "low").output
    assert "classes:     0, 1, 2" in shown and "production" in shown
    listed = json.loads(run(home, "task", "list", "--json").output)
    assert [t["name"] for t in listed] == ["high", "low"]


# ------------------------------------------------------------------------------- bad input
def test_bad_inputs_fail_with_one_line_and_write_nothing(home, tmp_path, weights) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    empty_class = tmp_path / "emptyclass"
    (empty_class / "0").mkdir(parents=True)
    (empty_class / "1").mkdir()
    digit_pngs(empty_class / "0", [0])
    corrupt = tmp_path / "corrupt"
    digit_pngs(corrupt / "0", [0])
    digit_pngs(corrupt / "1", [1])
    (corrupt / "1" / "broken.png").write_bytes(b"not a png")
    before = snapshot(home)
    train = ["task", "train", "low"]
    cases = [
        ([*train, "--data", str(tmp_path / "missing")], "does not exist"),
        ([*train, "--data", str(empty)], "has no class sub-folders"),
        ([*train, "--data", str(empty_class)], "holds no images"),
        ([*train, "--data", str(corrupt)], "broken.png"),
        ([*train, "--data", "builtin:digits?classes=3,4,5"], "are not those of task 'low'"),
        ([*train, "--data", "builtin:digits?classes=0,1,2", "--memory", "0"], "--memory must be at least 1"),
        ([*train, "--data", "builtin:digits?classes=0,1,2", "--memory", "-1"], "--memory must be at least 1"),
        (["task", "train", "nope", "--data", "builtin:digits"], "task 'nope' not found"),
        (["task", "register", "low", "--backbone", "tiny", "--classes", "a,b"], "already exists"),
        (["task", "register", "Bad Name", "--backbone", "tiny", "--classes", "a,b"], "Bad Name"),
        (["task", "register", "fresh", "--backbone", "nope", "--classes", "a,b"], "backbone 'nope' not found"),
        (["task", "register", "fresh", "--backbone", "tiny", "--data", str(empty)], "has no class sub-folders"),
        (["deploy", "low@9"], "not found"),
        (["deploy", "nope"], "task 'nope' not found"),
        (["predict", str(weights), "--alias", "staging"], "no task is deployed under alias 'staging'"),
        (["predict", str(weights), "--task", "low@canary"], "alias 'canary' of task 'low' not found"),
        (["predict", str(weights), "--task", "low"], "cannot read image"),
        (["rollback", "high"], "high"),
        (["backbone", "add", "tiny", "--model", "vit_tiny_patch16_224", "--weights", str(weights)], "already exists"),
        (
            ["backbone", "add", "x", "--model", "vit_tiny_patch16_224", "--weights", str(tmp_path / "no.pth")],
            "does not exist",
        ),
        (["backbone", "add", "x", "--model", "no_such_model", "--random-init"], "no model named"),
        (["task", "show", "nope"], "task 'nope' not found"),
        (["eval", "low@7", "--data", "builtin:digits?classes=0,1,2"], "not found"),
        (["import", str(weights)], str(weights.name)),
    ]
    for args, match in cases:
        fails_cleanly(home, *args, match=match)
    assert snapshot(home) == before


def test_adapter_of_another_backbone_is_refused(home, tmp_path) -> None:
    dest = tmp_path / "low.safetensors"
    run(home, "export", "low@1", str(dest))
    other = tmp_path / "other"
    run(other, "init")
    run(other, "backbone", "add", "tiny", "--model", "vit_tiny_patch16_224", "--random-init", *TINY_ARGS)
    fails_cleanly(other, "import", str(dest), match="weights")


def test_no_store_and_too_old_schema(home, tmp_path) -> None:
    fails_cleanly(tmp_path / "nothing", "task", "list", match="run `cmem init`")
    from alembic import command
    from store.db import alembic_config

    command.downgrade(alembic_config(db_url=f"sqlite:///{home / 'store.db'}"), "base")
    fails_cleanly(home, "task", "list", match="run `cmem db upgrade`")
    fails_cleanly(home, "deployed", match="run `cmem db upgrade`")
    assert "-> " in run(home, "db", "upgrade").output
    assert "up to date" in run(home, "db", "current").output


def test_ctrl_c_leaves_a_failed_version(home) -> None:
    """A real SIGINT in the middle of training: the version ends `failed`, never half-ready."""
    import signal
    import time

    proc = subprocess.Popen(
        [
            str(VENV_BIN / "cmem"),
            "--home",
            str(home),
            "task",
            "train",
            "low",
            "--data",
            "builtin:digits?classes=0,1,2",
            "--epochs",
            "200",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        # A shell's background job inherits SIGINT ignored, and Python then keeps it ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    with TaskStore(home) as store:
        while time.time() < deadline and not store.list_versions("low", status="training"):
            time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and err.strip().splitlines()[-1] == "Error: interrupted"
    with TaskStore(home) as store:
        latest = store.list_versions("low")[-1]
    assert latest.number == 2 and latest.status == "failed" and latest.failure_reason == "interrupted"


# ------------------------------------------------------------------------------- processes
HEAVY = ("torch", "timm", "avalanche")


@pytest.mark.parametrize(
    "args", [["--help"], ["task", "list"], ["deployed"], ["task", "show", "low"], ["backbone", "list"]]
)
def test_store_commands_do_not_import_torch(home, args) -> None:
    code = (
        "import sys\n"
        "from continual_mem.cli import cli\n"
        f"try:\n    cli.main({['--home', str(home), *args]!r}, prog_name='cmem')\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        f"print('HEAVY', sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "HEAVY []"


def test_cmem_script_runs_as_a_real_process(home) -> None:
    out = subprocess.run(
        [str(VENV_BIN / "cmem"), "--home", str(home), "deployed", "--json"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert {e["task"] for e in json.loads(out.stdout)} == {"low", "high"}
    bad = subprocess.run(
        [str(VENV_BIN / "cmem"), "--home", str(home), "task", "show", "nope"], capture_output=True, text=True
    )
    assert bad.returncode == 1 and bad.stderr.strip() == "Error: task 'nope' not found" and bad.stdout == ""


def test_torchrun_two_processes_match_one(home) -> None:
    """DDP over the adapter only, 2 CPU processes on gloo, equals a single-process run."""
    common = [
        "task",
        "train",
        "low",
        "--data",
        "builtin:digits?classes=0,1,2",
        "--steps",
        "4",
        "--batch-size",
        "32",
        "--seed",
        "5",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run(
        [
            str(VENV_BIN / "torchrun"),
            "--nproc-per-node",
            "2",
            "--master-port",
            "29517",
            str(VENV_BIN / "cmem"),
            "--home",
            str(home),
            *common,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    run(home, *common)
    with TaskStore(home) as store:
        versions = store.list_versions("low")
        assert [v.number for v in versions] == [1, 2, 3]  # rank 0 alone wrote one version
        assert versions[1].hyperparams["world_size"] == 2 and versions[2].hyperparams["world_size"] == 1
        two, one = (load_file(str(store.artifact_path(v))) for v in versions[1:])
    for key in one:
        assert torch.allclose(two[key], one[key], atol=1e-5), key
    assert any(not torch.equal(two[k], load_file(str(TaskStore(home).artifact_path("low@1")))[k]) for k in one)


@pytest.mark.skipif(not PINS_HOLD, reason="the pinned kernels need an x86-64 CPU with AVX2 and torch built with MKL")
def test_backbone_pretrain_runs_pinned_and_says_so(tmp_path) -> None:
    """`cmem backbone pretrain`: a pinned child process trains, the store keeps which kernels ran."""
    model = ("img_size=16", "patch_size=4", "depth=1", "embed_dim=32", "num_heads=2")
    args = [part for pair in model for part in ("--arg", pair)]
    run(tmp_path, "init")
    out = run(tmp_path, "backbone", "pretrain", "small", *args, "--data", "builtin:digits", "--epochs", "1").output
    assert "Added backbone small: vit_tiny_patch16_224 pretrained here on builtin:digits" in out
    assert "Kernels pinned (torch AVX2 kernels, MKL (MKL_CBWR=COMPATIBLE), oneDNN off, 1 thread(s))" in out
    with TaskStore(tmp_path) as store:
        pretrain = store.get_backbone("small").config["pretrain"]
    assert pretrain["pinned_kernels"] is True and pretrain["epochs"] == 1
    assert pretrain["model_kwargs"] == {"img_size": 16, "patch_size": 4, "depth": 1, "embed_dim": 32, "num_heads": 2}


def test_demo_runs_the_whole_job(tmp_path) -> None:
    """The README's main job, shortened to one epoch: shipped backbone, 3 tasks, deploy, one-pass predict."""
    out = run(tmp_path, "demo", "--epochs", "1").output
    assert "Registered the package's vit_tiny_patch16_224" in out
    assert "3 tasks answered with 2 backbone pass(es) per batch" in out  # the two reuse tasks share one
    assert f"Serve every deployed task over HTTP: cmem --home {tmp_path} serve" in out
    assert re.search(r"shifted on 500 held-out images \(other real digits\): head only 0\.\d{3}, with 5 memory", out)
    with TaskStore(tmp_path) as store:
        deployed = {e.task: e for e in store.deployed("production")}
        backbone = store.get_backbone("demo-vit")
        evaluations = store.get_version("shifted@1").evaluations
    assert sorted(deployed) == ["digits-high", "digits-low", "shifted"]
    assert [deployed[t].mode for t in sorted(deployed)] == [t.mode for t in sorted(DEMO_TASKS, key=lambda t: t.name)]
    assert all(e.metrics["val_accuracy"] >= 0.7 for e in deployed.values())  # one epoch only
    assert backbone.config["source"] == "shipped with the package, pretrained by the recipe on builtin:glyphs"
    assert backbone.weights_sha256 == fingerprint(demo_backbone())
    assert evaluations[0].metrics["samples"] == 500  # the held-out comparison is kept with the version
    again = run(tmp_path, "demo", "--epochs", "1").output
    assert "demo-vit is already in the store: reused" in again
    assert "digits-low@2" in again


@pytest.mark.slow
def test_the_demo_learns_every_task_and_the_memory_beats_a_head_alone(tmp_path) -> None:
    """The demo as the README runs it: every task >= 0.90 validation accuracy, the memory >= 2 points
    over head-only on the shifted task's held-out images."""
    out = run(tmp_path, "demo").output
    accuracies = [float(a) for a in re.findall(r"@1 \(\w+ mode\): val accuracy (\d\.\d{3})", out)]
    assert len(accuracies) == 3 and min(accuracies) >= 0.90, out
    head, memory = map(float, re.search(r"head only (\d\.\d{3}), with 5 memory tokens (\d\.\d{3})", out).groups())
    assert memory >= 0.90 and memory - head >= 0.02, out
