"""
# Time to the paper's ResNet-20 accuracy

```
python -m benchmarks.time_to_accuracy --data-dir DATA_DIR [--seeds 0,1] [trainer options ...]
python -m benchmarks.time_to_accuracy --runs logs/cifar10/<uuid> [...]   # runs that already finished
```

Trains the `cpu` recipe (or whatever trainer options follow) once per seed with the real trainer and,
for each run, prints how long training took to first reach the target on the per-epoch test curve
(Table 6's 91.25% for ResNet-20 by default), how many training images it had seen by then, and the
final epoch's test accuracy, which is the number a run reports. The mean over seeds of the final
accuracy is the verdict against the target; the first-crossing time is for watching only, because it
reads the test curve, which nothing may be chosen on.

Images seen are compared with the paper's budget, 64k iterations of 128 images (8.19M), the machine-
independent side of "fast"; training time excludes evaluation, as the trainer measures it.

Without a GPU or a quiet machine the times mean little: the script prints the CPU, the thread count
and the load average beside them.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import first_reaching, load_average  # noqa: E402

PAPER_IMAGES = 64_000 * 128
# Table 6: ResNet-20 reaches 8.75% test error.
PAPER_RESNET20_ACCURACY = 0.9125


def summarize(run_dir: Path, target: float) -> dict[str, Any]:
    """The numbers this benchmark prints, from one finished run folder."""
    metrics_path, results_path = run_dir / "metrics.jsonl", run_dir / "results.json"
    if not metrics_path.is_file() or not results_path.is_file():
        raise SystemExit(f"{run_dir} is not a finished run folder (needs metrics.jsonl and results.json)")
    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    results = json.loads(results_path.read_text())
    if results.get("data", {}).get("test_subset") or results.get("data", {}).get("valid_split"):
        raise SystemExit(
            f"{run_dir} trained with a test subset or a validation split; time to accuracy "
            f"is measured on full-data runs only"
        )
    images_per_epoch = results["data"]["train_images"]
    crossing = first_reaching(records, target)
    return {
        "run_dir": str(run_dir),
        "seed": results["seed"],
        "recipe": results["recipe"],
        "epochs": results["epochs"],
        "final_test_accuracy": results["test_accuracy"],
        "train_time_s": results["train_time_s"],
        "images_seen": results["images_seen"],
        "images_per_s": results["train_images_per_s"],
        "first_epoch_at_target": crossing["epoch"] if crossing else None,
        "train_time_to_target_s": crossing["train_time_s"] if crossing else None,
        "images_to_target": crossing["epoch"] * images_per_epoch if crossing else None,
        "amp": results.get("amp"),
        "cpu": results.get("cpu"),
        "threads": results.get("threads"),
    }


def train(data_dir: Path, logs_dir: Path, seed: int, trainer_args: list[str]) -> Path:
    """One run of the trainer in this process; returns its run folder."""
    from experiments import cifar10

    results = logs_dir / f"results-seed{seed}.json"
    argv = ["--data-dir", str(data_dir), "--logs-dir", str(logs_dir), "--seed", str(seed), "--results",
            str(results), *trainer_args]  # fmt: skip
    status = cifar10.main(argv)
    if status != 0:
        raise SystemExit(f"the trainer exited with status {status} for seed {seed}")
    return Path(json.loads(results.read_text())["run_dir"])


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seeds like 0,1, got {text!r}") from None
    if any(seed < 0 for seed in seeds):
        raise argparse.ArgumentTypeError(f"seeds are non-negative, got {text!r}")
    return seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.time_to_accuracy",
        description="Train a recipe (default: --recipe cpu) per seed and print time and images to a target "
        "test accuracy and the final accuracy; or summarise finished runs with --runs.",
        epilog="Options after the known ones go to experiments/cifar10.py, e.g. verify_checksums=false for "
        "a copy of CIFAR-10 that is not the official archive.",
    )
    # fmt: off
    parser.add_argument("--data-dir", type=Path, help="CIFAR-10 folder (as for the trainer)")
    parser.add_argument("--logs-dir", type=Path, default=Path("logs/time_to_accuracy"),
                        help="where the runs go (default logs/time_to_accuracy)")
    # Comma-separated, so that trainer options such as verify_checksums=false may follow in any order.
    parser.add_argument("--seeds", type=_seed_list, default=[0, 1], help="one run per seed (default 0,1)")
    parser.add_argument("--target", type=float, default=PAPER_RESNET20_ACCURACY,
                        help="test accuracy to reach (default 0.9125, Table 6's ResNet-20)")
    parser.add_argument("--runs", type=Path, nargs="+", metavar="RUN",
                        help="summarise these finished run folders instead of training")
    # fmt: on
    args, trainer_args = parser.parse_known_args(argv)
    if not 0 < args.target < 1:
        parser.error(f"--target is an accuracy between 0 and 1, got {args.target}")
    if args.runs is None and args.data_dir is None:
        parser.error("give --data-dir to train, or --runs with finished run folders")
    if args.runs is None and "--recipe" not in trainer_args:
        trainer_args = ["--recipe", "cpu", *trainer_args]

    run_dirs = args.runs or [train(args.data_dir, args.logs_dir, seed, trainer_args) for seed in args.seeds]
    rows = [summarize(run, args.target) for run in run_dirs]
    print(f"target: test accuracy >= {args.target:.4f}; {load_average()} now")
    for r in rows:
        reached = (
            f"reached at epoch {r['first_epoch_at_target']} after {r['train_time_to_target_s'] / 60:.1f} "
            f"min of training and {r['images_to_target'] / 1e6:.2f}M images"
            if r["first_epoch_at_target"]
            else "never reached on the per-epoch test curve"
        )
        print(
            f"seed {r['seed']} ({r['recipe']}, {r['epochs']} epochs, amp {r['amp']}, {r['cpu']}, "
            f"{r['threads']} threads): final test accuracy {r['final_test_accuracy']:.4f}; {reached}; "
            f"whole run {r['train_time_s'] / 60:.1f} min, {r['images_seen'] / 1e6:.2f}M images "
            f"({r['images_seen'] / PAPER_IMAGES:.3f}x the paper's 8.19M), {r['images_per_s']:.0f} images/s"
        )
    mean = statistics.mean(r["final_test_accuracy"] for r in rows)
    verdict = "meets" if mean >= args.target else "misses"
    print(
        f"mean final test accuracy over {len(rows)} run(s): {mean:.4f} ({verdict} {args.target:.4f} by "
        f"{abs(mean - args.target) * 100:.2f} points)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
