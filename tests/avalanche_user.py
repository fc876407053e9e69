"""The memory strategy as a user's own Avalanche script builds it (helpers of test_avalanche_usage).

Avalanche's own generator with its defaults (`nc_benchmark(..., task_labels=True)` keeps global
class ids), Avalanche's EvaluationPlugin and metrics, a tiny random ViT on scikit-learn's 8x8
digits. Run as a script, it resumes a checkpointed run in a new process:
`python tests/avalanche_user.py CHECKPOINT_DIR OUT.json`.
"""

from __future__ import annotations

import hashlib
import json
import sys
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore", message=".*QP solver.*")

from avalanche.benchmarks import nc_benchmark  # noqa: E402
from avalanche.evaluation.metrics import accuracy_metrics, bwt_metrics, forgetting_metrics  # noqa: E402
from avalanche.training.plugins import EvaluationPlugin  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # run as a script: this checkout's code, not an installed one
from conftest import tiny_vit  # noqa: E402

from scenarios.metrics import TaskIdAccuracy  # noqa: E402
from scenarios.strategy import AdapterVariant, MemoryTokenModel, MemoryTokenStrategy  # noqa: E402

PROTOCOLS = ("task", "class")
TRAIN_PER_CLASS, TEST_PER_CLASS = 12, 6
STREAM_ACCURACY = "Top1_Acc_Stream/eval_phase/test_stream"
FORGETTING = "StreamForgetting/eval_phase/test_stream"
BWT = "StreamBWT/eval_phase/test_stream"


def digits_benchmark(protocol: str, **options):
    """split digits, 5 experiences of 2 classes, Avalanche's defaults (but a fixed seed)."""
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
    labels = torch.tensor(digits.target)
    rows = [(labels == c).nonzero(as_tuple=True)[0] for c in range(10)]
    train = torch.cat([r[:TRAIN_PER_CLASS] for r in rows])
    test = torch.cat([r[TRAIN_PER_CLASS : TRAIN_PER_CLASS + TEST_PER_CLASS] for r in rows])
    return nc_benchmark(
        TensorDataset(images[train], labels[train]),
        TensorDataset(images[test], labels[test]),
        n_experiences=5,
        task_labels=protocol == "task",
        seed=0,
        **options,
    )


def evaluator() -> EvaluationPlugin:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No loggers specified")  # results are read from eval()
        return EvaluationPlugin(
            accuracy_metrics(experience=True, stream=True),
            forgetting_metrics(experience=True, stream=True),
            bwt_metrics(experience=True, stream=True),
            TaskIdAccuracy(),
            loggers=[],
        )


def memory_strategy(protocol: str, **options) -> MemoryTokenStrategy:
    """A fresh memory-5 strategy on a tiny random ViT (seeded: the same one every call)."""
    vit = tiny_vit(img_size=8, patch_size=2, in_chans=1)
    model = MemoryTokenModel(vit, AdapterVariant(2), protocol)
    options = {"train_mb_size": 16, "train_epochs": 1, "eval_mb_size": 64, "evaluator": evaluator(), **options}
    return MemoryTokenStrategy(model=model, **options)


def adapters_digest(strategy: MemoryTokenStrategy) -> str:
    """sha256 of every task adapter's tensors and class ids."""
    digest = hashlib.sha256()
    for name, adapter in strategy.model.vit.tasks.items():
        digest.update(f"{name}{adapter.config.class_ids}".encode())
        for key, tensor in sorted(adapter.state_dict().items()):
            digest.update(key.encode() + tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def train_and_checkpoint(protocol: str, checkpoint: Path, stop_after: int | None = None) -> dict:
    """Train the stream (resuming from `checkpoint` if it exists), evaluating the seen experiences
    and saving a checkpoint after each; stop after experience `stop_after` (an interruption)."""
    from avalanche.checkpointing import maybe_load_checkpoint, save_checkpoint
    from avalanche.training.determinism.rng_manager import RNGManager

    RNGManager.set_random_seeds(0)
    benchmark = digits_benchmark(protocol)
    strategy, start = maybe_load_checkpoint(memory_strategy(protocol), checkpoint)
    metrics: dict[str, float] = {}
    for experience in benchmark.train_stream[start:]:
        strategy.train(experience)
        metrics = strategy.eval(benchmark.test_stream[: experience.current_experience + 1])
        save_checkpoint(strategy, checkpoint)
        if experience.current_experience == stop_after:
            break
    return {"metrics": metrics, "adapters": adapters_digest(strategy)}


def main() -> None:
    """Resume both protocols' runs from CHECKPOINT_DIR/{protocol}.pkl; write what they end with."""
    torch.set_num_threads(1)
    checkpoints, out = Path(sys.argv[1]), Path(sys.argv[2])
    results = {p: train_and_checkpoint(p, checkpoints / f"{p}.pkl") for p in PROTOCOLS}
    out.write_text(json.dumps(results))


if __name__ == "__main__":
    main()
