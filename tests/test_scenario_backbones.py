"""Scenarios on the user's own backbone (issue 15), through `cmem` with a real store.

A tiny ViT at 48 px with 4 register tokens is registered from a local weights file made here; the
scenario commands resolve it by name (or a one-off `--model --weights`), feed it images at its own
size, record where its weights came from, and split the classes as asked. Bad input gets one
`Error:` line, exit code 1, and nothing recorded.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import tiny_vit
from PIL import Image
from safetensors.torch import save_file

from continual_mem.cli import cli
from store import TaskStore

pytestmark = pytest.mark.usefixtures("one_thread")

ARCH = "vit_tiny_patch16_224"
GEOMETRY = {"img_size": 48, "patch_size": 8, "depth": 2, "embed_dim": 48, "num_heads": 3, "reg_tokens": 4}
QUICK = ["--epochs", "1", "--limit-per-class", "4", "--no-progress"]


def model_args(geometry: dict[str, object]) -> list[str]:
    return [arg for key, value in geometry.items() for arg in ("--arg", f"{key}={json.dumps(value)}")]


def save_weights(model: torch.nn.Module, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def cmem(home: Path, *args: str):
    return CliRunner().invoke(cli, ["--home", str(home), *args], catch_exceptions=False)


def ok(home: Path, *args: str):
    result = cmem(home, *args)
    assert result.exit_code == 0, result.output
    return result


def recorded(home: Path) -> list:
    with TaskStore(home) as store:
        return store.list_scenario_runs()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return save_weights(
        tiny_vit(ARCH, num_classes=7, **GEOMETRY), tmp_path_factory.mktemp("weights") / "reg48.safetensors"
    )


@pytest.fixture(scope="module")
def home(tmp_path_factory, weights) -> Path:
    """A store with backbone `reg48` (48 px, 4 register tokens) added from a local weights file."""
    home = tmp_path_factory.mktemp("home")
    ok(home, "init")
    ok(home, "backbone", "add", "reg48", "--model", ARCH, "--weights", str(weights), *model_args(GEOMETRY))
    return home


def run_json(home: Path, *args: str) -> dict:
    return json.loads(ok(home, "scenario", "run", *args, "--json").stdout)


# ------------------------------------------------------------------------------------ must hold 1
def test_split_digits_on_a_registered_backbone(home, weights, tmp_path) -> None:
    """Both protocols, the memory strategy and a baseline: provenance recorded, images fed at 48 px."""
    with TaskStore(home) as store:
        sha = store.get_backbone("reg48").weights_sha256
    before = len(recorded(home))
    runs = {}
    for protocol in ("task", "class"):
        for strategy in ("memory-2", "naive"):
            runs[protocol, strategy] = run_json(
                home,
                "split-digits",
                "-s",
                strategy,
                "--protocol",
                protocol,
                "--backbone",
                "reg48",
                "--batch-size",
                "8",
                "--eval-batch-size",
                "32",
                *QUICK,
            )
    provenance = {"name": "reg48", "architecture": ARCH, "weights_sha256": sha, "source": str(weights)}
    stored = recorded(home)[before:]
    assert [(r.protocol, r.strategy) for r in stored] == list(runs)
    for run, record in zip(runs.values(), stored):
        assert run["config"]["backbone"] == provenance == record.config["backbone"]
        assert record.config["input"]["native_size"] == [8, 8] and record.config["input"]["native_channels"] == 1
        assert record.config["input"]["model_size"] == [48, 48] and record.config["input"]["model_channels"] == 3
        assert record.metrics["model_input_size"] == [48, 48]  # measured at the ViT's patch embedding
        assert record.config["budget"]["batch_size"] == 8 and record.config["budget"]["eval_batch_size"] == 32
    assert runs["task", "memory-2"]["metrics"]["forgetting"] == 0.0
    table = ok(home, "scenario", "runs").output.splitlines()
    assert table[0].split()[:5] == ["id", "scenario", "protocol", "strategy", "backbone"]
    assert [line.split()[1:5] for line in table[-4:]] == [["split-digits", p, s, "reg48"] for p, s in runs]

    report = tmp_path / "report"
    ok(
        home,
        "scenario",
        "run",
        "split-digits",
        "-s",
        "head-only",
        "--backbone",
        "reg48",
        *QUICK,
        "--report-dir",
        str(report),
    )
    text = (report / "report.md").read_text()
    assert f"reg48 (timm `{ARCH}`, weights sha256 `{sha[:12]}`, from {weights})" in text
    assert "8x8 px, 1 channel -> 48x48 px, 3 channels" in text


def test_compare_on_a_registered_backbone_reports_it(home, tmp_path) -> None:
    report = tmp_path / "report"
    out = ok(
        home,
        "scenario",
        "compare",
        "split-digits",
        "--protocol",
        "class",
        "--strategies",
        "ncm",
        "--backbone",
        "reg48",
        "--jobs",
        "1",
        "--report-dir",
        str(report),
        *QUICK,
        "--json",
    )
    (run,) = json.loads(out.stdout)["runs"]
    assert run["config"]["backbone"]["name"] == "reg48" and run["metrics"]["model_input_size"] == [48, 48]
    assert "backbone reg48" in (report / "report.md").read_text()


def test_one_off_backbone_from_a_weights_file(home, weights) -> None:
    run = run_json(
        home, "split-digits", "-s", "ncm", "--model", ARCH, "--weights", str(weights), *model_args(GEOMETRY), *QUICK
    )
    backbone = run["config"]["backbone"]
    assert backbone["name"] == "reg48.safetensors" and backbone["source"] == str(weights.resolve())
    with TaskStore(home) as store:  # the same tensors as the registered copy
        assert backbone["weights_sha256"] == store.get_backbone("reg48").weights_sha256
    assert run["metrics"]["model_input_size"] == [48, 48]


# ------------------------------------------------------------------------------------ must hold 2
def test_experiences_split_a_folder_and_uneven_sources(home, tmp_path) -> None:
    folder = tmp_path / "four"
    for c in range(4):
        (folder / f"class{c}").mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (20, 20), (60 * c, 30 * i, 90)).save(folder / f"class{c}" / f"{i}.png")
    refused = cmem(home, "scenario", "run", f"folder:{folder}", "-s", "ncm", "--backbone", "reg48", *QUICK)
    assert refused.exit_code == 1 and "cannot split 4 classes into 5 experiences" in refused.output
    two = run_json(home, f"folder:{folder}", "-s", "ncm", "--backbone", "reg48", "--experiences", "2", *QUICK)
    assert [len(e) for e in two["config"]["experiences"]] == [2, 2] and len(two["accuracy_matrix"]) == 2
    assert two["config"]["input"]["native_size"] == [20, 20] and two["metrics"]["model_input_size"] == [48, 48]

    three = run_json(home, "split-digits", "-s", "ncm", "--backbone", "reg48", "--experiences", "3", *QUICK)
    assert [len(e) for e in three["config"]["experiences"]] == [4, 3, 3]
    assert sorted(c for e in three["config"]["experiences"] for c in e) == [str(d) for d in range(10)]
    b5 = run_json(
        home, "split-digits", "-s", "ncm", "--backbone", "reg48", "--experiences", "6", "--first-classes", "5", *QUICK
    )
    assert [len(e) for e in b5["config"]["experiences"]] == [5, 1, 1, 1, 1, 1]


def _fake_mnist(root: Path, per_class: int) -> None:
    """torchvision's MNIST files (uncompressed idx), tiny: 28x28 images whose brightness is the label."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    labels = torch.arange(10).repeat_interleave(per_class).to(torch.uint8)
    images = (labels[:, None, None] * 25).expand(-1, 28, 28).contiguous()
    for split in ("train", "t10k"):
        (raw / f"{split}-images-idx3-ubyte").write_bytes(
            struct.pack(">iiii", 2051, len(labels), 28, 28) + images.numpy().tobytes()
        )
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(
            struct.pack(">ii", 2049, len(labels)) + labels.numpy().tobytes()
        )


def test_torchvision_sets_default_to_ten_experiences_and_take_the_option(home, tmp_path) -> None:
    """CIFAR-100 cannot be downloaded here: the torchvision path is checked on MNIST files of the real format."""
    _fake_mnist(tmp_path, per_class=4)
    name = f"torchvision:MNIST:{tmp_path}"
    ten = run_json(home, name, "-s", "ncm", "--backbone", "reg48", *QUICK)
    assert [len(e) for e in ten["config"]["experiences"]] == [1] * 10
    assert ten["config"]["input"]["native_size"] == [28, 28] and ten["metrics"]["model_input_size"] == [48, 48]
    five = run_json(home, name, "-s", "ncm", "--backbone", "reg48", "--experiences", "5", *QUICK)
    assert [len(e) for e in five["config"]["experiences"]] == [2] * 5


def test_cifar100_shaped_source_splits_into_ten_experiences_of_ten() -> None:
    from continual_mem.data import InputSpec, LabeledImages
    from scenarios.benchmarks import from_labeled_images

    labels = torch.arange(100).repeat(2)
    images = torch.rand(len(labels), 3, 32, 32)
    data = LabeledImages(images, labels, [f"c{i}" for i in range(100)], "generated, CIFAR-100 shaped")
    spec = InputSpec.from_backbone(tiny_vit(ARCH, **GEOMETRY))
    scenario = from_labeled_images("cifar100-shaped", data, data, spec, "class", 10)
    assert [len(c) for c in scenario.experience_classes] == [10] * 10
    assert [sorted(e.classes_in_this_experience) for e in scenario.benchmark.train_stream][3] == list(range(30, 40))
    assert scenario.benchmark.train_stream[0].dataset[0][0].shape == (3, 48, 48)


# ------------------------------------------------------------------------------------ must hold 3
@pytest.fixture(scope="module")
def bad_weights(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad")
    wider = {**GEOMETRY, "embed_dim": 96}
    no_class = {**GEOMETRY, "class_token": False, "global_pool": "avg"}
    return {
        "wider": save_weights(tiny_vit(ARCH, **wider), folder / "wider.safetensors"),
        "no_class": save_weights(tiny_vit(ARCH, **no_class), folder / "no-class.safetensors"),
    }


BAD_INPUT = {
    "unknown backbone": (["--backbone", "nope"], "unknown backbone 'nope'"),
    "more experiences than classes": (
        ["--backbone", "reg48", "--experiences", "11"],
        "cannot split 10 classes into 11",
    ),
    "zero experiences": (["--backbone", "reg48", "--experiences", "0"], "--experiences must be at least 1, got 0"),
    "first experience too large": (
        ["--backbone", "reg48", "--experiences", "3", "--first-classes", "9"],
        "9 classes in the first experience leave 1 for 2 more",
    ),
    "weights that do not fit": (["--model", ARCH, "--weights", "{wider}", *model_args(GEOMETRY)], "cannot load"),
    "no class token": (
        [
            "--model",
            ARCH,
            "--weights",
            "{no_class}",
            *model_args({**GEOMETRY, "class_token": False, "global_pool": "avg"}),
        ],
        "no class token",
    ),
    "amp without cuda": (["--backbone", "reg48", "--amp"], "--amp"),
    "unknown device": (["--backbone", "reg48", "--device", "tpu"], "device 'tpu' is not a device"),
    "backbone and model": (["--backbone", "reg48", "--model", ARCH, "--weights", "{wider}"], "not both"),
    "weights without model": (["--weights", "{wider}"], "--weights needs --model"),
    "zero batch size": (["--backbone", "reg48", "--batch-size", "0"], "--batch-size must be at least 1"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_and_records_nothing(home, bad_weights, case) -> None:
    args, message = BAD_INPUT[case]
    args = [a.format(**bad_weights) for a in args]
    before = len(recorded(home))
    result = cmem(home, "scenario", "run", "split-digits", "-s", "memory", *args, *QUICK)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output
    assert len(recorded(home)) == before


@pytest.mark.parametrize("command", [["compare", "split-digits", "--jobs", "1"], ["results", "--quick"]])
@pytest.mark.parametrize(
    ("args", "message"), [(["--backbone", "nope"], "unknown backbone 'nope'"), (["--amp"], "--amp")]
)
def test_compare_and_results_refuse_bad_input_the_same_way(home, tmp_path, command, args, message) -> None:
    before = len(recorded(home))
    result = cmem(home, "scenario", *command, *args, "--report-dir", str(tmp_path / "report"))
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0]
    assert len(recorded(home)) == before and not (tmp_path / "report").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_is_refused_where_there_is_none(home) -> None:
    result = cmem(home, "scenario", "run", "split-digits", "-s", "memory", "--backbone", "reg48", "--device", "cuda")
    assert result.exit_code == 1 and result.output.strip() == "Error: device 'cuda': no CUDA device is available here"


@pytest.mark.parametrize("name", ["demo", "random"])
def test_the_built_in_backbone_names_cannot_be_registered(home, weights, name) -> None:
    result = cmem(home, "backbone", "add", name, "--model", ARCH, "--weights", str(weights), *model_args(GEOMETRY))
    assert result.exit_code == 1 and "reserved" in result.output
    with TaskStore(home) as store:
        assert [b.name for b in store.list_backbones()] == ["reg48"]


# ------------------------------------------------------------------------------------ precision
@pytest.mark.parametrize(
    ("protocol", "strategy"),
    [("task", "memory-2"), ("class", "memory-2"), ("class", "naive"), ("class", "l2p"), ("class", "ncm")],
)
def test_amp_runs_in_bf16(protocol, strategy) -> None:
    """`amp` is bf16 autocast on the run's device; the CLI allows it on CUDA only, the path is checked on CPU."""
    from timm.layers import PatchEmbed

    from continual_mem.data import InputSpec
    from scenarios.benchmarks import split_digits
    from scenarios.runner import Budget, StrategySpec, run_strategy

    backbone = tiny_vit(ARCH, num_classes=7, **GEOMETRY)
    scenario = split_digits(InputSpec.from_backbone(backbone), protocol, limit_per_class=4, n_experiences=2)
    dtypes: set[torch.dtype] = set()

    def watch(i: int, trained) -> None:
        if i == 0:
            for module in trained.model.modules():
                if isinstance(module, PatchEmbed):
                    module.register_forward_hook(lambda m, inputs, out: dtypes.add(out.dtype))

    result = run_strategy(
        scenario,
        StrategySpec.parse(strategy),
        backbone,
        Budget(epochs=1, batch_size=8),
        progress=False,
        after_experience=watch,
        amp=True,
    )
    assert dtypes == {torch.bfloat16} and result.config["amp"] is True
    assert all(0.0 <= a <= 1.0 for row in result.accuracy_matrix for a in row)


# ------------------------------------------------------------------------------------ docs/results.md
def test_results_document_names_the_backbone_and_where_its_weights_came_from(tmp_path) -> None:
    from continual_mem.data import InputSpec, LabeledImages
    from scenarios.benchmarks import input_details
    from scenarios.results import ALL_RESULTS, backbone_facts, render_results
    from scenarios.runner import Budget, RunResult

    backbone = tiny_vit(ARCH, **GEOMETRY)
    provenance = {"name": "vits", "architecture": ARCH, "weights_sha256": "cd" * 32, "source": "/w/vits.safetensors"}
    eight = LabeledImages(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), ["0"], "builtin:digits")
    digits = input_details(eight, InputSpec.from_backbone(backbone), per_image=False)
    metrics = {"average_accuracy": 0.5, "forgetting": 0.0, "bwt": 0.0, "trainable_params_per_task": 10.0}
    metrics |= {"stored_bytes_per_task": 40.0, "backbone_passes_to_serve_all": 1.0}
    config = {"budget": {"seed": 0}, "backbone": provenance, "input": digits}
    result = RunResult("split-digits", "memory-5", "task", [[0.5]], metrics, config, 1.0)
    kept = {
        "facts": backbone_facts(backbone, provenance),
        "budget": vars(Budget()),
        "seeds": [0],
        "quick": True,
        "command": "cmem scenario results --seeds 0 --backbone vits --device cuda --amp",
        "machine": "x86_64, 16 CPU cores, torch 2.14.1, 1 thread(s), NVIDIA H100 80GB HBM3",
        "elapsed_s": 60.0,
        "generated_at": "2026-01-01T00:00:00+00:00",
        "results": [result.to_dict()],
    }
    (tmp_path / ALL_RESULTS).write_text(json.dumps(kept))
    doc = render_results(tmp_path)
    assert f"- **Backbone** `vits`: timm `{ARCH}` at 48 px images, patch 8, depth 2, width 48, 3 heads" in doc
    assert f"weights sha256 `{'cd' * 6}`, from /w/vits.safetensors)." in doc and "Pretrained on" not in doc
    assert "split-digits: 8x8 px, 1 channel -> 48x48 px, 3 channels" in doc
    assert "--device cuda --amp` on 2026-01-01 00:00 UTC in 1.0 min (x86_64, 16 CPU cores" in doc
    assert "NVIDIA H100 80GB HBM3)" in doc


def test_a_registered_backbone_whose_stored_weights_changed_is_refused(tmp_path, weights) -> None:
    home = tmp_path / "home"
    ok(home, "init")
    ok(home, "backbone", "add", "reg48", "--model", ARCH, "--weights", str(weights), *model_args(GEOMETRY))
    with TaskStore(home) as store:
        stored = store.backbone_weights_path("reg48")
    stored.chmod(0o644)
    save_weights(tiny_vit(ARCH, seed=1, num_classes=7, **GEOMETRY), stored)  # same shapes, other values
    result = cmem(home, "scenario", "run", "split-digits", "-s", "ncm", "--backbone", "reg48", *QUICK)
    assert result.exit_code == 1 and result.output.startswith("Error: ") and len(result.output.splitlines()) == 1
    assert "sha256" in result.output and recorded(home) == []
