"""
# Shipping a trained network with the package

```
python -m experiments.export_weights logs/cifar10/<uuid> --dataset cifar10 --command "<the training command>"
```

Takes a finished run folder, writes the network's weights alone (no optimizer, no schedule: a state dict
of plain tensors, loadable with `weights_only=True`) to `resnet/weights/<network>_<dataset>.pt`, and a
JSON record beside it with the file's SHA-256, the run's final-epoch test accuracy, its recipe, seed and
the command that trained it. `resnet/pretrained.py` checks the hash and loads the file. A run with
`ema_decay` reported its averaged weights, so those are the ones exported.
"""

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from experiments.checkpoint import CHECKPOINT_DIR, LAST, evaluation_weights, load_checkpoint
from resnet.pretrained import WEIGHTS_DIR, sha256_of


def export(run_dir: Path, dataset: str, command: str, out_dir: Path = WEIGHTS_DIR, notes: str = "") -> Path:
    """Write `<network>_<dataset>.pt` and its JSON record from `run_dir`; returns the weight file."""
    results = json.loads((run_dir / "results.json").read_text())
    saved = load_checkpoint(run_dir / CHECKPOINT_DIR / LAST)
    # The weights the run's results were measured with (the average, when the run kept one).
    weights, _ = evaluation_weights(saved)
    # Contiguous float copies: the file should not depend on the memory layout the run trained in.
    state = {k: v.detach().cpu().contiguous().clone() for k, v in weights.items()}
    network = results["model"]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{network}_{dataset}.pt"
    if path.exists():
        raise SystemExit(f"{path} exists; remove it first if you mean to replace the shipped weights")
    torch.save(state, path)
    record = {
        "network": network,
        "dataset": dataset,
        "file": path.name,
        "sha256": sha256_of(path),
        "test_accuracy": results["test_accuracy"],
        "recipe": results["recipe"],
        "seed": results["seed"],
        "command": command,
        "notes": notes,
    }
    path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.export_weights",
        description="Export a finished run's weights into resnet/weights/.",
    )
    parser.add_argument("run_dir", type=Path, help="a finished run folder (with results.json)")
    parser.add_argument(
        "--dataset", default="cifar10", help="the name users pass as weights= (default cifar10)"
    )
    parser.add_argument("--command", required=True, help="the command that trained the run, for the record")
    parser.add_argument("--notes", default="", help="anything else a user should know about these weights")
    parser.add_argument("--out-dir", type=Path, default=WEIGHTS_DIR, help="default: resnet/weights/")
    args = parser.parse_args(argv)
    if not (args.run_dir / "results.json").is_file():
        parser.error(f"{args.run_dir} has no results.json: export finished runs only")
    path = export(args.run_dir, args.dataset, args.command, args.out_dir, args.notes)
    print(f"wrote {path} and {path.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
