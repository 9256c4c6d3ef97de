"""
# Time to the paper's ResNet-20 accuracy

Trains the `cpu` recipe (or what the trainer options ask for) once per seed, or reads finished runs
(`--runs`), and prints per run the training time and images to first reach the target on the per-epoch
test curve (watched only) and the final test accuracy, whose mean over seeds is the verdict. RESULTS.md
has the commands and explains the measurements.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import first_reaching, load_average, positive

PAPER_IMAGES = 64_000 * 128
# Table 6: ResNet-20 reaches 8.75% test error.
PAPER_RESNET20_ACCURACY = 0.9125


def summarize(run_dir: Path, target: float) -> dict[str, Any]:
    """A finished run's `results.json`, with when its per-epoch test curve first reached `target`."""
    metrics_path, results_path = run_dir / "metrics.jsonl", run_dir / "results.json"
    if not metrics_path.is_file() or not results_path.is_file():
        raise SystemExit(f"{run_dir} is not a finished run folder (needs metrics.jsonl and results.json)")
    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    r = json.loads(results_path.read_text())
    if r.get("data", {}).get("test_subset") or r.get("data", {}).get("valid_split"):
        raise SystemExit(f"{run_dir} trained with a test subset or a validation split; time to accuracy "
                         "is measured on full-data runs only")  # fmt: skip
    crossing = first_reaching(records, target) or {}
    return {
        **r, "final_test_accuracy": r["test_accuracy"], "first_epoch_at_target": crossing.get("epoch"),
        "train_time_to_target_s": crossing.get("train_time_s"),
        "images_to_target": crossing["epoch"] * r["data"]["train_images"] if crossing else None,
    }  # fmt: skip


def train(data_dir: Path, logs_dir: Path, seed: int, trainer_args: list[str]) -> Path:
    """One run of the trainer in this process; returns its run folder."""
    from experiments import cifar10

    results = logs_dir / f"results-seed{seed}.json"
    status = cifar10.main(["--data-dir", str(data_dir), "--logs-dir", str(logs_dir), "--seed", str(seed),
                           "--results", str(results), *trainer_args])  # fmt: skip
    if status != 0:
        raise SystemExit(f"the trainer exited with status {status} for seed {seed}")
    return Path(json.loads(results.read_text())["run_dir"])


def _seed_list(text: str) -> list[int]:
    return [positive(part, least=0) for part in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    epilog = "Other options go to experiments/cifar10.py, e.g. verify_checksums=false."
    p = argparse.ArgumentParser(prog="python -m benchmarks.time_to_accuracy", epilog=epilog,
                                description=__doc__.split("\n\n")[-1])  # fmt: skip
    p.add_argument("--data-dir", type=Path, help="CIFAR-10 folder (as for the trainer)")
    p.add_argument("--logs-dir", type=Path, default=Path("logs/time_to_accuracy"), help="where the runs go")
    # Comma-separated, so that trainer options such as verify_checksums=false may follow in any order.
    p.add_argument("--seeds", type=_seed_list, default=[0, 1], help="one run per seed (0,1)")
    p.add_argument("--target", type=float, default=PAPER_RESNET20_ACCURACY, help="test accuracy (0.9125)")
    p.add_argument("--runs", type=Path, nargs="+", metavar="RUN", help="summarise finished run folders")
    args, trainer_args = p.parse_known_args(argv)
    if not 0 < args.target < 1:
        p.error(f"--target is an accuracy between 0 and 1, got {args.target}")
    if args.runs is None and args.data_dir is None:
        p.error("give --data-dir to train, or --runs with finished run folders")
    trainer_args = trainer_args if "--recipe" in trainer_args else ["--recipe", "cpu", *trainer_args]
    run_dirs = args.runs or [train(args.data_dir, args.logs_dir, seed, trainer_args) for seed in args.seeds]
    rows = [summarize(run, args.target) for run in run_dirs]
    print(f"target: test accuracy >= {args.target:.4f}; {load_average()} now")
    for r in rows:
        reached = "never reached on the per-epoch test curve" if r["first_epoch_at_target"] is None else (
            f"reached at epoch {r['first_epoch_at_target']} after {r['train_time_to_target_s'] / 60:.1f} min "
            f"of training and {r['images_to_target'] / 1e6:.2f}M images")  # fmt: skip
        print(f"seed {r['seed']} ({r['recipe']}, {r['epochs']} epochs, amp {r.get('amp')}, {r.get('cpu')}, "
              f"{r.get('threads')} threads): final test accuracy {r['final_test_accuracy']:.4f}; {reached}; "
              f"whole run {r['train_time_s'] / 60:.1f} min, {r['images_seen'] / 1e6:.2f}M images "
              f"({r['images_seen'] / PAPER_IMAGES:.3f}x the paper's 8.19M), {r['train_images_per_s']:.0f} "
              "images/s")  # fmt: skip
    mean = statistics.mean(r["final_test_accuracy"] for r in rows)
    verdict = "meets" if mean >= args.target else "misses"
    print(f"mean final test accuracy over {len(rows)} run(s): {mean:.4f} ({verdict} {args.target:.4f} by "
          f"{abs(mean - args.target) * 100:.2f} points)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
