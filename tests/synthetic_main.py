"""
Run the CIFAR-10 trainer on synthetic data, in a subprocess or in the test process.

Synthetic files cannot match the official md5 sums, so the launcher calls `experiments.cifar10.main`
with `verify_checksums=False` in front of the arguments it was given: the setting a user passes for a
data set of their own, which a later `verify_checksums=...` among the arguments overrides. Subprocess
tests (signals, torchrun, exit codes) run this file; in-process tests call
[`run_trainer`](#run_trainer). Real users never need it.

Both pin PyTorch to one thread: two cores are shared by everything that runs here, and the same thread
count in and out of process keeps CPU results bit-for-bit comparable between them.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from experiments import cifar10  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve()

# A network small enough to train in a second on one core: one block per stage, narrow stages.
# The tiny `custom` network most trainer tests train: one block per stage, 8/16/32 channels.
TINY_STAGES = {"n_blocks": [1, 1, 1], "n_channels": [8, 16, 32]}
TINY_MODEL = ["model=custom", *(f"{key}={value}".replace(" ", "") for key, value in TINY_STAGES.items())]
# 5 training batches of 64 images (320 in all) and 64 test images, in the real on-disk format.
IMAGES_PER_TRAIN_FILE = 64
TEST_IMAGES = 64


def write_data(root: Path, *, separable: bool = True) -> Path:
    """Synthetic CIFAR-10 (with easy-to-separate classes by default) under `root`; returns `root`."""
    from experiments.synthetic import write_synthetic_cifar10

    write_synthetic_cifar10(
        root, n_per_train_batch=IMAGES_PER_TRAIN_FILE, n_test=TEST_IMAGES, separable=separable
    )
    return root


def tiny_args(data_dir: Path, logs_dir: Path, *extra: str, epochs: int = 1) -> list[str]:
    """Command-line arguments for a tiny CPU run: 5 steps of 64 images per epoch."""
    return [
        "--data-dir",
        str(data_dir),
        "--logs-dir",
        str(logs_dir),
        "--device",
        "cpu",
        "--epochs",
        str(epochs),
        "--batch-size",
        "64",
        *TINY_MODEL,
        *extra,
    ]


# What a user passes for data in CIFAR-10's format that is not the official files. First, so that a
# test's own `verify_checksums=...` comes later and wins.
OWN_DATA = ["verify_checksums=False"]


def run_trainer(argv: list[str]) -> int:
    """`experiments.cifar10.main` in this process, on synthetic data; returns the exit status."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return cifar10.main([*OWN_DATA, *argv])
    except SystemExit as e:
        return int(e.code or 0)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(cifar10.main([*OWN_DATA, *sys.argv[1:]]))


def only_run(logs: Path) -> Path:
    """The one run folder a `--logs-dir` holds (it fails if there are more or none)."""
    (run_dir,) = (logs / "cifar10").iterdir()
    return run_dir


def trained_checkpoint(root: Path) -> Path:
    """A real checkpoint: a one-epoch tiny run on synthetic data under `root`; its `last.pt`."""
    data_dir = write_data(root / "data")
    assert run_trainer(tiny_args(data_dir, root / "logs")) == 0
    return only_run(root / "logs") / "checkpoints" / "last.pt"
