"""
Run the CIFAR-10 trainer on synthetic data in a subprocess (signals, torchrun/DDP, exit codes).

Synthetic files cannot match the official md5 sums, so this launcher switches the check off and then
calls `experiments.cifar10.main` with the command-line arguments it was given. Real users never need it.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from experiments import cifar10, data  # noqa: E402

if __name__ == "__main__":
    data.VERIFY_CHECKSUMS = False
    # Two cores are shared by everything running here; one thread per process keeps runs deterministic
    # and torchrun's two ranks from fighting over them.
    torch.set_num_threads(1)
    sys.exit(cifar10.main(sys.argv[1:]))
