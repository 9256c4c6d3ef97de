"""
# Shipping a trained network with the package

```
python -m experiments.export_weights logs/cifar10/<uuid> --dataset cifar10 \\
    --command "<the training command>" --machine "<cores, CPU or GPU>"
```

Writes a finished run's network (its averaged weights, when the run kept an average) into
`resnet/weights/` as `<network>_<dataset>.safetensors` and its record, `<network>_<dataset>.json`
(`resnet.pretrained.WeightRecord`); the README's "Trained weights" says how they load. Only a named
network as its builder makes it can ship, and an existing file is never replaced.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from experiments.checkpoint import CHECKPOINT_DIR, LAST, evaluation_weights, load_checkpoint
from experiments.trainer import tta_views
from resnet.loading import trainer_options, weights_bytes
from resnet.pretrained import DATASETS, WEIGHTS_DIR, read_record, sha256_hex


def describe_tta(flip: bool, shift: int) -> str | None:
    """How the trainer's test-time augmentation averages (`flip_tta`, `shift_tta`), in words; None without."""
    parts = [*(["flip"] if flip else []), *([f"{shift}-pixel shift"] if shift else [])]
    return f"{' + '.join(parts)}, {tta_views(flip, shift)} views" if parts else None


def write_weights(
    state: dict[str, torch.Tensor], network: str, dataset: str, record: dict[str, Any], out_dir: Path
) -> Path:
    """Write `state` and its record (`record`, names, size and hash) into `out_dir`; replaces nothing."""
    weights = out_dir / f"{network}_{dataset}.safetensors"
    record_path = weights.with_suffix(".json")
    for path in (weights, record_path):
        if path.exists():
            raise SystemExit(f"{path} exists; remove it first if you mean to replace the shipped weights")
    data = weights_bytes(state, network, {"num_classes": len(DATASETS[dataset].classes)})
    names = {"network": network, "dataset": dataset, "file": weights.name}
    # The hash of the bytes written, not of the file read back: nothing can come in between.
    full = {**names, "file_size": len(data), "sha256": sha256_hex(data), **record}
    out_dir.mkdir(parents=True, exist_ok=True)
    weights.write_bytes(data)
    record_path.write_text(json.dumps(full, indent=2) + "\n")
    try:
        read_record(network, dataset, out_dir)
    except ValueError:
        weights.unlink()
        record_path.unlink()
        raise
    return weights


def export(
    run_dir: Path,
    dataset: str,
    command: str,
    machine: str,
    out_dir: Path = WEIGHTS_DIR,
    notes: str = "",
    single_view_accuracy: float | None = None,
) -> Path:
    """Write the weights and record of `run_dir`'s network (see above); returns the weight file."""
    if dataset not in DATASETS:
        raise SystemExit(f"unknown dataset {dataset!r}; resnet.pretrained.DATASETS has {', '.join(DATASETS)}")
    results = json.loads((run_dir / "results.json").read_text())
    saved = load_checkpoint(run_dir / CHECKPOINT_DIR / LAST)
    network, options = trainer_options(saved["config"], str(run_dir))
    classes = len(DATASETS[dataset].classes)
    expected = {"num_classes": classes, "zero_init_residual": options["zero_init_residual"]}
    if network == "custom" or options != expected:
        raise SystemExit(
            f"{run_dir} trained {network} with {options}; only a named network as its builder makes it "
            f"(with {classes} classes) loads with resnet.{network}(weights=...)"
        )
    # The weights the run's results were measured with (the average, when the run kept one).
    weights, _ = evaluation_weights(saved)
    data = results.get("data", {})
    if data.get("valid_split"):
        raise SystemExit(
            f"{run_dir} held out {data['valid_split']} training images to validate on and has no test "
            "accuracy; ship a run trained on all of them (without --valid-split)"
        )
    views = describe_tta(bool(data.get("flip_tta")), int(data.get("shift_tta") or 0))
    if "test_accuracy_tta" in results or views is None:
        # Since single view came first (2026-12-06) `test_accuracy` is the paper's one view, with the
        # test-time average beside it; a run without views has only the one number anyway.
        single_view, tta = results["test_accuracy"], results.get("test_accuracy_tta")
    elif single_view_accuracy is not None:
        # An older run's `test_accuracy` was its test-time average.
        single_view, tta = single_view_accuracy, results["test_accuracy"]
    else:
        raise SystemExit(
            f"{run_dir}/results.json comes from an older trainer and has only the TTA accuracy ({views}); "
            f"measure one view of each test image and pass it with --single-view-accuracy"
        )
    accuracy = {"test_accuracy_single_view": single_view, "test_accuracy_tta": tta, "tta_views": views}
    how = {"recipe": results["recipe"], "seed": results["seed"], "command": command, "machine": machine}
    return write_weights(dict(weights), network, dataset, {**accuracy, **how, "notes": notes}, out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.export_weights", description=__doc__.split("\n\n")[2]
    )
    parser.add_argument("run_dir", type=Path, help="a finished run folder (with results.json)")
    parser.add_argument("--dataset", default="cifar10", choices=DATASETS, help="what users pass as weights=")
    parser.add_argument("--command", required=True, help="the command that trained the run, for the record")
    parser.add_argument("--machine", required=True, help="where it trained (cores, CPU/GPU), for the record")
    parser.add_argument("--notes", default="", help="anything else a user should know about these weights")
    parser.add_argument("--single-view-accuracy", type=float, help="for a run that recorded only its TTA")
    parser.add_argument("--out-dir", type=Path, default=WEIGHTS_DIR, help="default: resnet/weights/")
    args = parser.parse_args(argv)
    if not (args.run_dir / "results.json").is_file():
        parser.error(f"{args.run_dir} has no results.json: export finished runs only")
    path = export(**vars(args))
    print(f"wrote {path} and {path.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
